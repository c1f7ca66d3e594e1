"""What one item costs the fine-tuned large tier on CPU, eager torch against onnxruntime, side by side.

    python bench/finetune_serving.py                                   # the finetune preset's shapes, random weights
    python bench/finetune_serving.py --artifact runs/large --data spamassassin   # a trained tier on real texts
    python bench/finetune_serving.py --preset finetune-ensemble        # both members' shapes, their sum
    python bench/finetune_serving.py --artifact runs/ens               # a finetune-ensemble artifact (onnx: auto)

Without ``--artifact`` the model is the ``--preset``'s architecture (MiniLM, its top blocks upcycled into 8
experts, top-2) with random weights and random routers, fed full-length items of ``--tokens`` WordPiece
tokens: the cost of an item does not depend on the weights' values (the routers only decide which expert a
token visits, and every expert has the same shape), so this measures the shipped model's serving cost without
its 80 MB of weights. With ``--artifact`` the tier is loaded both ways from the artifact (``FinetuneTier.load(...,
runtime=...)``), fed ``--items`` texts of ``--data``'s test split, and the two runtimes' probabilities are
compared (max |dp|, labels that differ).

For each runtime and each thread count in ``--threads`` (torch intra-op threads; onnxruntime intra-op threads
of a fresh session), items are served in batches of each size in ``--batches``; a configuration warms up on
one batch, then runs for at least ``--min-s`` seconds. The table gives ms per item and onnx/torch time.
Results go to ``bench/reports/finetune_serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tiergate.models.finetune import FinetuneClassifier, finetune_preset
from tiergate.models.finetune_onnx import OnnxRunner

REPORT = Path(__file__).resolve().parent / "reports" / "finetune_serving.json"


def random_model(preset: str, n_classes: int) -> FinetuneClassifier:
    torch.manual_seed(0)
    cfg = finetune_preset(preset)
    model = FinetuneClassifier(cfg, n_classes)
    with torch.no_grad():
        for b in model.upcycled():
            b.moe.router.weight.normal_(std=0.5)
    return model.eval()


def token_batches(n_items: int, tokens: int, batch: int, wide: bool, n_classes: int,
                  bag: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for s in range(0, n_items, batch):
        b = min(batch, n_items - s)
        ids = torch.randint(1000, 30000, (b, tokens), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        d = {"ids": ids, "attn": torch.ones(b, tokens, dtype=torch.long)}
        if wide:
            d["wide_logits"] = torch.randn(b, n_classes, generator=g)
        if bag:  # the hashed wide path: each item's 2,048 heaviest of 2^17 buckets (the preset's max_per_text)
            d["bag_ids"] = torch.randint(0, 2 ** 17, (b * 2048,), generator=g)
            d["bag_offsets"] = torch.arange(0, b * 2048, 2048)
            d["bag_weights"] = torch.rand(b * 2048, generator=g)
        out.append(d)
    return out


def timed(fn, units: int, min_s: float) -> float:
    """Seconds per unit of ``fn`` (which serves ``units`` items), after one warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 >= min_s:
            return (time.perf_counter() - t0) / (n * units)


def bench_random(args) -> list[dict]:
    """``--preset finetune-ensemble``: each member's architecture timed in turn; the ensemble's time per item is
    their sum (it runs every member on every item; averaging two probability rows costs nothing beside them).
    A member with the hashed wide path does not export to ONNX, so its onnx column is its torch time (what
    ``runtime: auto`` serves it with)."""
    from tiergate.models.finetune import ENSEMBLE_MEMBERS

    presets = [p for p, _, _ in ENSEMBLE_MEMBERS] if args.preset == "finetune-ensemble" else [args.preset]
    models = {p: random_model(p, 2) for p in presets}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runners = {p: OnnxRunner(m, threads=threads) for p, m in models.items() if m.wide is None}
        for bs in args.batches:
            per = {}
            for p, model in models.items():
                batch = token_batches(bs, args.tokens, bs, model.wide_input, 2, bag=model.wide is not None)[0]
                with torch.inference_mode():
                    t_torch = timed(lambda m=model, b=batch: m(b), bs, args.min_s)
                per[p] = (t_torch, timed(lambda r=runners[p], b=batch: r(b), bs, args.min_s) if p in runners
                          else t_torch)
            t_torch, t_onnx = (sum(v[k] for v in per.values()) for k in (0, 1))
            rows.append({"threads": threads, "batch": bs, "tokens": args.tokens,
                         "torch_ms": 1e3 * t_torch, "onnx_ms": 1e3 * t_onnx,
                         "members": {p: {"torch_ms": 1e3 * a, "onnx_ms": 1e3 * b} for p, (a, b) in per.items()}})
            parts = "".join(f"  [{p}: {1e3 * a:.1f} / {1e3 * b:.1f}]" for p, (a, b) in per.items()) if len(per) > 1 else ""
            print(f"threads {threads} batch {bs:3d}: torch {1e3 * t_torch:7.1f} ms/item  onnx {1e3 * t_onnx:7.1f}"
                  f"  onnx/torch {t_onnx / t_torch:.2f}{parts}", flush=True)
    return rows


def bench_artifact(args) -> tuple[list[dict], dict]:
    from tiergate.data import load_dataset, make_item
    from tiergate.models.ensemble import EnsembleTier, is_ensemble_artifact
    from tiergate.models.finetune_io import FinetuneTier

    items = [make_item(e.text) for e in load_dataset(args.data).split("test")[: args.items]]
    ensemble = is_ensemble_artifact(Path(args.artifact))
    rows, parity = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        tiers = {}
        for rt in ("torch", "onnx"):
            os.environ["TIERGATE_ORT_THREADS"] = str(threads)
            if ensemble:  # "onnx": runtime auto, onnx for each member whose graph exports (the hashed one: torch)
                tiers[rt] = EnsembleTier.load(
                    Path(args.artifact), lambda d, r=rt: FinetuneTier.load(d, runtime="auto" if r == "onnx" else r))
            else:
                tiers[rt] = FinetuneTier.load(args.artifact, runtime=rt)
            torch.set_num_threads(threads)  # load() applies the serving policy; the bench sets its own
        if not parity:
            a, b = (tiers[rt].predict_proba(items) for rt in ("torch", "onnx"))
            parity = {"items": len(items), "max_abs_dp": float(np.abs(a - b).max()),
                      "labels_differ": int((a.argmax(1) != b.argmax(1)).sum())}
            print(f"parity over {len(items)} items: max |dp| {parity['max_abs_dp']:.2e}, "
                  f"{parity['labels_differ']} labels differ", flush=True)
        for bs in args.batches:
            per = {}
            for rt, tier in tiers.items():
                for t in getattr(tier, "members", [tier]):
                    t.batch_size = bs
                chunks = [items[s: s + bs] for s in range(0, len(items), bs)]
                per[rt] = timed(lambda t=tier, cs=chunks: [t.predict_proba(c) for c in cs], len(items), args.min_s)
            first = getattr(tiers["torch"], "members", [tiers["torch"]])[0]
            rows.append({"threads": threads, "batch": bs, "tokens": first.cfg.max_tokens,
                         "torch_ms": 1e3 * per["torch"], "onnx_ms": 1e3 * per["onnx"]})
            print(f"threads {threads} batch {bs:3d}: torch {1e3 * per['torch']:7.1f} ms/item  "
                  f"onnx {1e3 * per['onnx']:7.1f}  onnx/torch {per['onnx'] / per['torch']:.2f}", flush=True)
    return rows, parity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", help="a trained finetune artifact folder (else random weights)")
    ap.add_argument("--data", default="spamassassin", help="with --artifact: the data set whose test texts to serve")
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--preset", default="finetune")
    ap.add_argument("--tokens", type=int, default=256, help="without --artifact: tokens per item")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--min-s", type=float, default=3.0)
    ap.add_argument("--out", default=str(REPORT))
    args = ap.parse_args()
    args.threads = [int(x) for x in args.threads.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    parity = None
    rows = bench_random(args) if not args.artifact else None
    if args.artifact:
        rows, parity = bench_artifact(args)
    print("\n| threads | batch | tokens | torch ms/item | onnx ms/item | onnx / torch |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['batch']} | {r['tokens']} | {r['torch_ms']:.1f} | {r['onnx_ms']:.1f} | "
              f"{r['onnx_ms'] / r['torch_ms']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"artifact": args.artifact, "preset": args.preset, "rows": rows, "parity": parity,
                               "torch": torch.__version__, "cpus": torch.get_num_threads()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
