"""Cross-fitted wide logits (``vocab.oof_folds``) against the served LR's in-sample ones, for the `quick` large
tier on this CPU, side by side in one run.

The large tier's head learns a correction on top of the frozen word + char LR's logits. Fitted on the same rows,
that LR is near-certain on every one of them, so the head trains on rows where the LR is almost never wrong and
sees little of where it errs on new items. With ``oof_folds=K`` the fit rows' logits come from K LRs that did
not see them (the served LR is still the one fitted on all fit rows). Per data set and K: test errors, the
small tier's (fitted here on the same train split), and accuracy on the items the small tier is unsure of
(max p < 0.95, the escalated items of docs/benchmarks.md's tables).

    python experiments/oof_wide.py --data spamassassin --folds 0 5 --out experiments/results/oof
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from finetune_eval import small_test_proba

from tiergate.data import load_dataset, make_item
from tiergate.models.large import LargeTier, preset, train_large

ESCALATE_BELOW = 0.95


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", default="/tmp/oof-models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    name = Path(args.data).stem
    test = ds.split("test")
    items = [make_item(e.text) for e in test]
    sp, slabels, _ = small_test_proba(ds, [it.model_text for it in items])
    y = np.array([slabels.index(e.label) for e in test])
    esc = sp.max(1) < ESCALATE_BELOW
    small_err = int((sp.argmax(1) != y).sum())
    small_esc = float((sp.argmax(1)[esc] == y[esc]).mean()) if esc.any() else float("nan")
    rows = []
    for seed in args.seeds:
        for k in args.folds:
            cfg = preset("quick")
            cfg.vocab = replace(cfg.vocab, oof_folds=k)
            d = Path(args.models) / f"{name}-k{k}-s{seed}"
            t0 = time.perf_counter()
            manifest = train_large(ds, d, preset=cfg, seed=seed, progress=False)
            secs = time.perf_counter() - t0
            tier = LargeTier.load(d)
            p = np.asarray(tier.predict_proba(items))
            p = p[:, [list(tier.labels).index(lab) for lab in slabels]]
            pred = p.argmax(1)
            rec = {"dataset": name, "folds": k, "seed": seed, "n_test": len(test), "labels": slabels,
                   "errors": int((pred != y).sum()), "small_errors": small_err,
                   "escalated": int(esc.sum()), "escalated_acc": float((pred[esc] == y[esc]).mean()),
                   "small_escalated_acc": small_esc, "train_seconds": round(secs, 1),
                   "metrics": {k2: v for k2, v in manifest.get("metrics", {}).items() if "wide" in k2 or "holdout" in k2},
                   "ids": [e.id for e in test], "pred": pred.tolist(), "y": y.tolist(),
                   "conf": [round(float(c), 5) for c in p.max(1)]}
            (out / f"{name}-k{k}-s{seed}.json").write_text(json.dumps(rec))
            rows.append(rec)
            print(f"{name} folds={k} seed={seed}: {rec['errors']} errors (small {small_err}), escalated "
                  f"{rec['escalated_acc']:.1%} (small {small_esc:.1%}, {rec['escalated']} items), {secs:.0f} s",
                  flush=True)
    print("\n| data | oof folds | seed | test errors (small) | escalated acc (small, items) | train s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['folds']} | {r['seed']} | {r['errors']} ({r['small_errors']}) | "
              f"{r['escalated_acc']:.1%} ({r['small_escalated_acc']:.1%}, {r['escalated']}) | {r['train_seconds']} |")


if __name__ == "__main__":
    main()
