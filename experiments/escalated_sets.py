"""Accuracy of saved final-tier runs on the items a real cascade escalates past its small tier.

``finetune_table.py`` scores runs on the items the small tier is unsure of (max p < 0.95). This scores them on
the set a calibrated cascade sends on: the test items its rules tier does not decide and whose small-tier
confidence is below the small tier's calibrated threshold, with the config's own rules and small tier (both
cheap, run here on CPU). Runs are read from experiments/results/finetune/ (globs, ``|``-separated).

    python experiments/escalated_sets.py --config runs/qs/tiergate.yaml --data spamassassin \\
        --small-run spamassassin-small --runs "spamE[0-9]*-ensemble" "spamE[0-9]*-ensemble-m0" "spamE[0-9]*-ensemble-m1"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from finetune_table import aligned, load, matching

from tiergate.config import load_config
from tiergate.data import load_dataset
from tiergate.data.items import make_item
from tiergate.registry import build_tier, capabilities_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a calibrated tiergate.yaml (rules, small tier, thresholds)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--small-run", required=True, help="the saved small-tier run whose ids and labels to align on")
    ap.add_argument("--small-tier", default="small", help="the config's tier whose threshold escalates")
    ap.add_argument("--runs", nargs="+", required=True)
    args = ap.parse_args()
    cfg, base = load_config(args.config)
    by_id = {e.id: e for e in load_dataset(args.data).split("test")}
    s = load(args.small_run)
    ids, y = s["ids"], np.array(s["y"])
    items = [make_item(by_id[i].text) for i in ids]
    tier_of = {tc.name: tc for tc in cfg.tiers}
    ruled = np.zeros(len(ids), bool)
    for tc in cfg.tiers:
        if not capabilities_of(tc).distribution:  # a rules tier: what it decides never reaches the models
            tier = build_tier(tc, Path(base), model_dirs=cfg.model_dirs)
            ruled |= np.array([d.label is not None for d in tier.predict(items)])
    small_tc = tier_of[args.small_tier]
    small = build_tier(small_tc, Path(base), model_dirs=cfg.model_dirs)
    proba = small.predict_proba(items)
    pred = np.array([s["labels"].index(small.labels[k]) for k in proba.argmax(1)])
    threshold = small_tc.threshold.default
    esc = ~ruled & (proba.max(1) < threshold)
    print(f"{esc.sum()} of {len(ids)} test items escalated past {args.small_tier} (rules decide {ruled.sum()}, "
          f"threshold {threshold:.5f}); {args.small_tier} right on {(pred[esc] == y[esc]).mean():.1%} of them")
    print("| runs | accuracy on the escalated items, per run | mean | vs the small tier |\n|---|---|---|---|")
    for pattern in args.runs:
        accs = [(aligned(load(r), ids, s["labels"])[esc] == y[esc]).mean() for r in matching(pattern)]
        if accs:
            print(f"| {pattern} | {', '.join(f'{a:.1%}' for a in accs)} | {np.mean(accs):.1%} | "
                  f"{100 * (np.mean(accs) - (pred[esc] == y[esc]).mean()):+.1f} pp |")


if __name__ == "__main__":
    main()
