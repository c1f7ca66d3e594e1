"""Fine-tune the large tier (``--preset finetune``) on one data set and measure it on the test split.

Per variant (``upcycled``: top 2 blocks, 8 experts top-2; ``dense``: n_upcycled=0; a ``-wide`` suffix adds the
wide path, a frozen LR over the hashed n-gram bag that the fine-tuned encoder corrects) it trains with
:func:`tiergate.training.finetune_run.train_finetune` on the train split, reloads the saved artifact as a
:class:`~tiergate.models.finetune_io.FinetuneTier` (so what is measured is what ships: float16 shards), and
writes ``OUT/NAME-VARIANT.json`` with the test accuracy, each test item's predicted label and confidence
(for the side-by-side with the small tier, by item id), training seconds and serving milliseconds per item.
``--small`` also fits the small tier (TF-IDF + logistic regression, quickstart's recipe) and writes
``OUT/NAME-small.json`` the same way. A ``-wide`` variant also writes ``OUT/NAME-VARIANT-lr.json``: the same
artifact's wide path alone (the fitted LR, before the encoder's correction). ``experiments/finetune_table.py`` turns the files into the table.

    python experiments/finetune_eval.py --data spamassassin --name spamassassin --variants upcycled,upcycled-wide --out OUT
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tiergate.data import load_dataset, make_item
from tiergate.models.finetune import finetune_preset


def variant_cfg(variant: str, args):
    base, _, suffix = variant.partition("-")
    if base not in ("upcycled", "dense") or suffix not in ("", "wide", "vocab"):
        raise SystemExit(f"variant {variant!r}: use upcycled or dense, alone or with -wide (hashed LR) or -vocab "
                         "(word + char LR of a fitted vocabulary)")
    cfg = finetune_preset("finetune-dense" if base == "dense" else "finetune")
    cfg.wide = bool(suffix)
    cfg.wide_features = "vocab" if suffix == "vocab" else "hashed"
    if suffix == "vocab":
        cfg.wide_C = [32.0]
    cfg.train.epochs = args.epochs
    cfg.max_tokens = args.max_tokens
    cfg.read_headers = args.read_headers
    if args.lr:
        cfg.train.lr = args.lr
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    cfg.train.max_steps = args.max_steps
    return cfg


def serve_ms(tier, items, device: str) -> float:
    """Milliseconds of one predict_proba call over ``items``, per item (after a warm-up call)."""
    tier.predict_proba(items[:32])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tier.predict_proba(items)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / max(len(items), 1)


def record(ds, test, labels, proba_NC, extra: dict) -> dict:
    pred = proba_NC.argmax(1)
    y = np.array([labels.index(e.label) if e.label in labels else -1 for e in test])
    return {"dataset": ds.name, "labels": labels, "n_test": len(test), "accuracy": float((pred == y).mean()),
            "errors": int((pred != y).sum()), "ids": [e.id for e in test], "pred": pred.tolist(),
            "conf": [round(float(c), 5) for c in proba_NC.max(1)], "y": y.tolist(),
            "proba": np.round(proba_NC, 5).tolist(), **extra}


def run_variant(ds, name: str, variant: str, args, out: Path) -> dict:
    from tiergate.models.finetune_io import FinetuneTier
    from tiergate.training.finetune_run import train_finetune

    model_dir = Path(args.models) / f"{name}-{variant}"
    manifest = train_finetune(ds, model_dir, cfg=variant_cfg(variant, args), seed=args.seed, progress=False)
    test = ds.split("test")
    items = [make_item(e.text) for e in test]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tier = FinetuneTier.load(model_dir, device=device, batch_size=args.serve_batch)
    proba = tier.predict_proba(items)
    ms = serve_ms(tier, items, device)
    rec = record(ds, test, tier.labels, proba, {
        "variant": variant, "model_dir": str(model_dir), "device": torch.cuda.get_device_name() if device == "cuda"
        else "cpu", "serve_ms_per_item": round(ms, 3), "serve_batch": args.serve_batch,
        "train_seconds": manifest["metrics"]["train_seconds"], "total_seconds": manifest["metrics"]["total_seconds"],
        "holdout_acc": manifest["metrics"]["holdout_acc"], "best_step": manifest["metrics"]["best_step"],
        "steps": manifest["metrics"]["steps"], "n_params": manifest["n_params"],
        "active_params_per_token": manifest["active_params_per_token"],
        "config": json.loads((model_dir / "config.json").read_text())["model"],
        **{k: v for k, v in manifest["metrics"].items() if k.startswith("wide_")}})
    (out / f"{name}-{variant}.json").write_text(json.dumps(rec))
    if tier.model.wide is not None or tier.vocab_wide is not None:
        lr = record(ds, test, tier.labels, wide_proba(tier, items), {"variant": f"{variant}: wide path alone"})
        (out / f"{name}-{variant}-lr.json").write_text(json.dumps(lr))
        print(f"{name} {variant} wide path alone: acc {lr['accuracy']:.4f} ({lr['errors']} errors)", flush=True)
    return rec


@torch.inference_mode()
def wide_proba(tier, items) -> np.ndarray:
    """The artifact's wide path alone: softmax of the frozen LR's logits over each item's n-grams."""
    from tiergate.training.data import FeatureTable

    if tier.vocab_wide is not None:
        return torch.softmax(torch.from_numpy(tier.vocab_wide.logits([it.model_text for it in items])), -1).numpy()

    table = FeatureTable(None, tier.bag.table(items).bag, np.zeros(len(items), np.int64))
    out = [torch.softmax(tier.model.wide(table.batch(np.arange(s, min(s + 512, len(items))), tier.device)), -1)
           for s in range(0, len(items), 512)]
    return torch.cat(out).cpu().numpy()


def run_small(ds, name: str, out: Path) -> dict:
    from tiergate.models.small import fit_small, small_presets

    train, test = ds.split("train"), ds.split("test")
    cfg = small_presets(len(train), len(ds.labels))[0][1]
    t0 = time.perf_counter()
    fitted = fit_small([make_item(e.text).model_text for e in train], [e.label for e in train], cfg)
    secs = time.perf_counter() - t0
    clf = fitted.pipeline if hasattr(fitted, "pipeline") else fitted
    proba = clf.predict_proba([make_item(e.text).model_text for e in test])
    labels = [str(c) for c in clf.classes_]
    rec = record(ds, test, labels, np.asarray(proba), {"variant": "small", "train_seconds": round(secs, 2)})
    (out / f"{name}-small.json").write_text(json.dumps(rec))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--variants", default="upcycled,dense")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--read-headers", action="store_true")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--serve-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    ds.name = args.name
    if args.small:
        r = run_small(ds, args.name, out)
        print(f"{args.name} small: acc {r['accuracy']:.4f} ({r['errors']} errors), {r['train_seconds']} s", flush=True)
    for v in [v for v in args.variants.split(",") if v]:
        r = run_variant(ds, args.name, v, args, out)
        print(f"{args.name} {v}: acc {r['accuracy']:.4f} ({r['errors']} errors), train {r['train_seconds']} s, "
              f"serve {r['serve_ms_per_item']} ms/item, holdout {r['holdout_acc']}", flush=True)


if __name__ == "__main__":
    main()
