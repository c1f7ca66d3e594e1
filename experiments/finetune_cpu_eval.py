"""Evaluate a finetune artifact (one model, or an ensemble folder with ``ensemble.json``) brought back from
the GPU on this machine's CPU, on the test split.

Writes ``OUT`` (JSON): accuracy, errors, how many test items get another label than on the GPU (read from
the GPU run's result file; for an ensemble whose members were trained in separate runs, pass each member's
file and their probabilities are averaged, with ``--weights``, as the ensemble averages them), and CPU
milliseconds per item (one predict_proba call over the split, after a warm-up; threads as tiergate.models.threads sets them for serving, here TIERGATE_TORCH_THREADS or the cores).

    python experiments/finetune_cpu_eval.py --model runs/spam-ft --data spamassassin \
        --gpu experiments/results/finetune/spamassassin-upcycled.json --out experiments/results/finetune/spamassassin-upcycled-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tiergate.config import TierConfig
from tiergate.data import load_dataset, make_item
from tiergate.registry import build_tier


def gpu_reference(files: list[str], weights: list[float] | None, labels: list[str]) -> dict:
    """The GPU's probabilities (in ``labels`` order, rows by test id): one result file, or the weighted mean of
    one file per ensemble member."""
    weights = weights or [1.0] * len(files)
    if len(weights) != len(files):
        raise SystemExit(f"--weights: {len(weights)} given for {len(files)} --gpu files")
    total, ids = None, None
    for f, w in zip(files, weights, strict=True):
        doc = json.loads(Path(f).read_text())
        if ids is not None and doc["ids"] != ids:
            raise SystemExit(f"{f}: its test ids differ from {files[0]}'s")
        ids = doc["ids"]
        cols = [list(doc["labels"]).index(lab) for lab in labels]
        p = w * np.asarray(doc["proba"], np.float64)[:, cols]
        total = p if total is None else total + p
    return {"index": {i: k for k, i in enumerate(ids)}, "proba": total / sum(weights)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--gpu", required=True, nargs="+", help="the GPU run's result file, or one per member")
    ap.add_argument("--weights", type=float, nargs="+", help="one per --gpu file (default: equal)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    test = load_dataset(args.data).split("test")
    items = [make_item(e.text) for e in test]
    t0 = time.perf_counter()
    # Loaded as a `kind: torch` tier is served (one model or an ensemble; runtime auto, batches of 16).
    model = Path(args.model).resolve()
    tier = build_tier(TierConfig(name="large", kind="torch", path=str(model)), model.parent)
    load_s = time.perf_counter() - t0
    tier.predict_proba(items[:16])
    t0 = time.perf_counter()
    proba = tier.predict_proba(items)
    secs = time.perf_counter() - t0
    pred = proba.argmax(1)
    y = np.array([tier.labels.index(e.label) for e in test])
    gpu = gpu_reference(args.gpu, args.weights, tier.labels)
    order = [gpu["index"][e.id] for e in test]
    gpu_pred, gpu_conf = gpu["proba"][order].argmax(1), gpu["proba"][order].max(1)
    differ = int((gpu_pred != pred).sum())
    rec = {"model": args.model, "dataset": args.data, "n_test": len(test), "accuracy": float((pred == y).mean()),
           "errors": int((pred != y).sum()), "gpu_files": args.gpu,
           "gpu_accuracy": float((gpu_pred == y).mean()), "gpu_errors": int((gpu_pred != y).sum()),
           "labels_differing_from_gpu": differ,
           "max_abs_conf_diff_vs_gpu": float(np.max(np.abs(proba.max(1) - gpu_conf))),
           "cpu_ms_per_item": round(1000 * secs / len(test), 2), "load_seconds": round(load_s, 2),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    Path(args.out).write_text(json.dumps(rec, indent=2))
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
