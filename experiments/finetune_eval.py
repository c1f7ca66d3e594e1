"""Fine-tune the large tier (``--preset finetune``) on one data set and measure it on the test split.

Per variant (``upcycled``: top 2 blocks, 8 experts top-2; ``dense``: n_upcycled=0; a ``-wide`` suffix adds the
wide path, a frozen LR over the hashed n-gram bag that the fine-tuned encoder corrects) it trains with
:func:`tiergate.training.finetune_run.train_finetune` on the train split, reloads the saved artifact as a
:class:`~tiergate.models.finetune_io.FinetuneTier` (so what is measured is what ships: float16 shards), and
writes ``OUT/NAME-VARIANT.json`` with the test accuracy, each test item's predicted label and confidence
(for the side-by-side with the small tier, by item id), training seconds and serving milliseconds per item.
``--small`` also fits the small tier (TF-IDF + logistic regression, quickstart's recipe) and writes
``OUT/NAME-small.json`` the same way. A ``-wide`` variant also writes ``OUT/NAME-VARIANT-lr.json``: the same
artifact's wide path alone (the fitted LR, before the encoder's correction). ``experiments/finetune_table.py``
turns the files into the table.

The seed's techniques on this model: ``--optimizer lamb --batch-size 256 --warmup-frac 0.3`` (large batch),
``--keep 0.5`` (data pruning: the cross-fitted small-tier uncertainty, keep-hard; ``--prune-mode random`` for
its control), ``--top-k 1`` (upcycled experts at the dense model's active parameters per token).
``--cpu-threads N`` also serves the saved artifact on CPU and records how many labels differ from the GPU's.

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
from tiergate.models.finetune import ENSEMBLE_MEMBERS, finetune_preset, with_overrides


def variant_cfg(variant: str, args):
    base, _, suffix = variant.partition("-")
    if base not in ("upcycled", "dense") or suffix not in ("", "wide", "vocab"):
        raise SystemExit(f"variant {variant!r}: use upcycled or dense, alone or with -wide (hashed LR) or -vocab "
                         "(word + char LR of a fitted vocabulary)")
    cfg = finetune_preset("finetune-dense" if base == "dense" else "finetune")
    cfg.wide = bool(suffix)
    cfg.wide_features = "vocab" if suffix == "vocab" else "hashed"
    cfg.wide_C = [32.0] if suffix == "vocab" else [16.0]  # the values the two paths were measured with
    cfg.train.epochs = args.epochs
    cfg.max_tokens = args.max_tokens
    cfg.read_headers = args.read_headers
    if args.lr:
        cfg.train.lr = args.lr
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    cfg.train.max_steps = args.max_steps
    if args.optimizer:
        cfg.train.optimizer = args.optimizer
    if args.warmup_frac is not None:
        cfg.train.warmup_frac = args.warmup_frac
    if args.top_k:
        cfg.top_k = args.top_k
    return with_overrides(cfg, args.set)


def pruned_selection(ds, args) -> list[str] | None:
    """``--keep F``: the training ids kept by data pruning, with the metric that won on the head-only model
    (the cross-fitted small-tier uncertainty, keep-hard, per class; docs/benchmarks.md, "Pruning"), or at
    random (``--prune-mode random``)."""
    if args.keep is None:
        return None
    from tiergate.training.pruning import score_uncertainty, select

    train = ds.split("train")
    labels = sorted({e.label for e in train})
    y = np.array([labels.index(e.label) for e in train])
    items = [] if args.prune_mode == "random" else [make_item(e.text) for e in train]
    if args.prune_mode == "random":
        scores = np.zeros(len(train))
    elif len(labels) <= 10:
        scores = score_uncertainty([it.model_text for it in items], y, seed=args.seed)
    else:  # many classes: scikit-learn's solver takes minutes per fold; the same score in torch, as before
        from tiergate.models.finetune_io import bag_featurizer
        from tiergate.training.pruning import score_uncertainty_linear

        table = bag_featurizer(finetune_preset("finetune")).table(items, y, fit_rows=np.arange(len(items)))
        scores = score_uncertainty_linear(table, seed=args.seed,
                                          device="cuda" if torch.cuda.is_available() else "cpu")
    return select([e.id for e in train], [e.label for e in train], scores, args.keep, mode=args.prune_mode,
                  seed=args.seed)


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


ENSEMBLE = ("upcycled-vocab", "dense-wide")  # the finetune-ensemble preset's members, with ENSEMBLE_MEMBERS' overrides


def member_overrides(pairs, k: int) -> list[str]:
    """The ``KEY=VALUE`` of ``--member-set K:KEY=VALUE`` pairs that name member ``k``."""
    out = []
    for p in pairs:
        idx, colon, kv = p.partition(":")
        if not colon or not idx.isdigit():
            raise SystemExit(f"--member-set {p!r}: expected K:KEY=VALUE, e.g. 0:focus_weight=8")
        if int(idx) == k:
            out.append(kv)
    return out


def run_ensemble(ds, name: str, args, out: Path) -> dict:
    """``--variants ensemble``: the finetune-ensemble preset's two recipes, under this run's recipe flags,
    trained by ``train_ensemble`` into one artifact and served as its ``EnsembleTier``; each member's own
    test probabilities are written too (``<name>-ensemble-m<k>.json``)."""
    from tiergate.models.ensemble import EnsembleTier
    from tiergate.models.finetune_io import FinetuneTier
    from tiergate.training.finetune_run import train_ensemble

    model_dir = Path(args.models) / f"{name}-ensemble"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    members = [(variant_cfg(v, args), k, [*own, *member_overrides(args.member_set, k)])
               for k, (v, (_, _, own)) in enumerate(zip(ENSEMBLE, ENSEMBLE_MEMBERS, strict=True))]
    manifest = train_ensemble(ds, model_dir, members=members,
                              seed=args.seed, progress=False)
    test = ds.split("test")
    items = [make_item(e.text) for e in test]
    tier = EnsembleTier.load(model_dir, lambda d: FinetuneTier.load(d, device=device, batch_size=args.serve_batch))
    proba = tier.predict_proba(items)
    ms = serve_ms(tier, items, device)
    for k, m in enumerate(tier.members):
        mrec = record(ds, test, m.labels, m.predict_proba(items), {"variant": f"ensemble member {k}: {ENSEMBLE[k]}"})
        (out / f"{name}-ensemble-m{k}.json").write_text(json.dumps(mrec))
    rec = record(ds, test, tier.labels, proba, {
        "variant": "ensemble", "members": list(ENSEMBLE), "model_dir": str(model_dir),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "serve_ms_per_item": round(ms, 3),
        "train_seconds": sum(mm["metrics"]["train_seconds"] for mm in manifest["member_manifests"]),
        "total_seconds": manifest["total_seconds"],
        "holdout_acc": [mm["metrics"]["holdout_acc"] for mm in manifest["member_manifests"]],
        "steps": [mm["metrics"]["steps"] for mm in manifest["member_manifests"]]})
    (out / f"{name}-ensemble.json").write_text(json.dumps(rec))
    return rec


def run_variant(ds, name: str, variant: str, args, out: Path) -> dict:
    from tiergate.models.finetune_io import FinetuneTier
    from tiergate.training.finetune_run import train_finetune

    if variant == "ensemble":
        return run_ensemble(ds, name, args, out)

    model_dir = Path(args.models) / f"{name}-{variant}"
    t0 = time.perf_counter()
    selection = pruned_selection(ds, args)
    prune_s = time.perf_counter() - t0
    manifest = train_finetune(ds, model_dir, cfg=variant_cfg(variant, args), seed=args.seed, selection=selection,
                              progress=False)
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
        "keep": args.keep, "prune_mode": args.prune_mode if args.keep else None,
        "prune_seconds": round(prune_s, 2) if args.keep else None,
        **(cpu_check(model_dir, items, proba, args.cpu_threads) if args.cpu_threads else {}),
        **{k: v for k, v in manifest["metrics"].items() if k.startswith("wide_")}})
    (out / f"{name}-{variant}.json").write_text(json.dumps(rec))
    if tier.model.wide is not None or tier.vocab_wide is not None:
        lr = record(ds, test, tier.labels, wide_proba(tier, items), {"variant": f"{variant}: wide path alone"})
        (out / f"{name}-{variant}-lr.json").write_text(json.dumps(lr))
        print(f"{name} {variant} wide path alone: acc {lr['accuracy']:.4f} ({lr['errors']} errors)", flush=True)
    return rec


def cpu_check(model_dir: Path, items, gpu_proba, threads: int) -> dict:
    """The artifact served on CPU (``threads`` torch threads, the gateway's batch of 16): the labels that
    differ from the GPU's, the largest confidence difference, and ms per item."""
    from tiergate.models.finetune_io import FinetuneTier

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tier = FinetuneTier.load(model_dir, device="cpu", batch_size=16)
        tier.predict_proba(items[:16])
        t0 = time.perf_counter()
        proba = tier.predict_proba(items)
        ms = 1000 * (time.perf_counter() - t0) / max(len(items), 1)
    finally:
        torch.set_num_threads(before)
    return {"cpu_threads": threads, "cpu_ms_per_item": round(ms, 2),
            "cpu_labels_differ": int((proba.argmax(1) != gpu_proba.argmax(1)).sum()),
            "cpu_max_conf_diff": round(float(np.abs(proba - gpu_proba).max()), 5)}


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


def small_test_proba(ds, test_texts) -> tuple[np.ndarray, list[str], float]:
    """The small tier (quickstart's first preset) fitted on the train split: its probabilities on
    ``test_texts``, its labels, and its fit seconds."""
    from tiergate.models.small import fit_small, small_presets

    train = ds.split("train")
    cfg = small_presets(len(train), len(ds.labels))[0][1]
    t0 = time.perf_counter()
    fitted = fit_small([make_item(e.text).model_text for e in train], [e.label for e in train], cfg)
    secs = time.perf_counter() - t0
    clf = fitted.pipeline if hasattr(fitted, "pipeline") else fitted
    return np.asarray(clf.predict_proba(test_texts)), [str(c) for c in clf.classes_], secs


def run_small(ds, name: str, out: Path) -> dict:
    test = ds.split("test")
    proba, labels, secs = small_test_proba(ds, [make_item(e.text).model_text for e in test])
    rec = record(ds, test, labels, proba, {"variant": "small", "train_seconds": round(secs, 2)})
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
    ap.add_argument("--optimizer", default=None, help="adamw | lamb | lars | sgd (large-batch runs)")
    ap.add_argument("--warmup-frac", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None, help="experts per token (1: equal active params to dense)")
    ap.add_argument("--keep", type=float, default=None, help="data pruning: share of the train rows kept")
    ap.add_argument("--prune-mode", default="hard", choices=("hard", "random"))
    ap.add_argument("--cpu-threads", type=int, default=0, help="also serve the artifact on CPU with N threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a FinetuneConfig override, as `tiergate train large --set` (repeatable)")
    ap.add_argument("--member-set", action="append", default=[], metavar="K:KEY=VALUE",
                    help="--variants ensemble: an override for member K only (after --set and the member's own, "
                         "e.g. 0:focus_weight=0 for the unweighted member 0 of the runs before ft18)")
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
        cpu = (f", CPU {r['cpu_ms_per_item']} ms/item at {r['cpu_threads']} threads, {r['cpu_labels_differ']} labels "
               "differ" if args.cpu_threads else "")
        print(f"{args.name} {v}: acc {r['accuracy']:.4f} ({r['errors']} errors), train {r['train_seconds']} s, "
              f"serve {r['serve_ms_per_item']} ms/item, holdout {r['holdout_acc']}, steps {r['steps']}{cpu}",
              flush=True)


if __name__ == "__main__":
    main()
