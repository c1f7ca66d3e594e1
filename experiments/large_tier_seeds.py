"""The large tier alone on a test split, trained at several seeds, beside the small tier's recipe.

    python experiments/large_tier_seeds.py --data spamassassin --seeds 0,1,2,3,4 --out runs/large_seeds

Trains ``train_large`` (the quickstart preset) once per seed on the train split, scores the large tier alone on
``--split`` (test by default; it is measured, never used to choose anything), and prints one JSON line per seed
plus a final line for the small tier as quickstart trains it (same rows). Writes ``results.jsonl`` under ``--out``.
How much of a one-message difference between the two tiers is the seed: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tiergate.data import load_dataset, make_item
from tiergate.models.large import LargeTier, train_large
from tiergate.models.small import OnnxTier, small_presets, train_small


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=Path("runs/large_seeds"))
    args = ap.parse_args()
    ds = load_dataset(args.data)
    rows = ds.split(args.split)
    items = [make_item(e.text) for e in rows]
    y = np.array([e.label for e in rows])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.jsonl", "w") as log:
        def score(tier) -> dict:
            pred = np.array(tier.labels)[tier.predict_proba(items).argmax(1)]
            return {"split": args.split, "acc": float((pred == y).mean()), "errors": int((pred != y).sum())}

        def emit(rec: dict) -> None:
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")

        for seed in (int(s) for s in args.seeds.split(",")):
            d = args.out / f"large_seed{seed}"
            manifest = train_large(ds, d, seed=seed, progress=False)
            emit({"tier": "large", "seed": seed, **score(LargeTier.load(d)),
                  "holdout_acc": manifest["metrics"]["holdout_acc"]})
        train = ds.split("train")
        _, cfg = small_presets(len(train), len(ds.labels))[-1]  # the small tier quickstart builds
        small = train_small([make_item(e.text).model_text for e in train], [e.label for e in train],
                            args.out / "small", cfg)
        emit({"tier": "small", **score(OnnxTier(args.out / "small")), "version": small["version"]})


if __name__ == "__main__":
    main()
