"""The quick preset's head, trained several ways on one set of features (MiniLM encoded once), scored on test.

Each argument after the data set is one run: comma-separated KEY=VALUE of seed (head init and row order), kb
(keep_best; 0 keeps the last step), epochs, lr, oof (vocab.oof_folds: cross-fitted wide logits) and C (the wide
LR's); ``base`` is the preset as shipped. Runs that differ only in seed are also averaged (their probabilities).

    python experiments/quick_head_seeds.py spamassassin base seed=1 seed=2 kb=0,seed=0 kb=0,seed=1 oof=5
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch

from tiergate.data import load_dataset
from tiergate.data.items import make_item
from tiergate.models import large as L
from tiergate.models.wide import VocabWide, VocabWideConfig
from tiergate.training.data import train_examples
from tiergate.training.loop import predict_logits


def main(data: str, specs: list[str]) -> None:
    ds = load_dataset(data)
    prep = L.prepare_training(ds, L.preset("quick"), progress=True)
    test = ds.split("test")
    items = [make_item(e.text) for e in test]
    y = np.array([prep.labels.index(e.label) for e in test])
    table, texts = prep.featurizer.table(items, y, progress=True), [L.texts_for(it)[1] for it in items]
    runs: dict[str, np.ndarray] = {}
    train_texts = None  # the wide path's texts of the train rows, read once for every refit
    for spec in specs:
        kw = dict(kv.split("=") for kv in spec.split(",") if "=" in kv)
        p = copy.copy(prep)
        p.cfg = L.config_from_dict(L.config_to_dict(prep.cfg))
        p.table, t = copy.copy(prep.table), copy.copy(table)
        p.cfg.train.seed = int(kw.get("seed", 0))
        p.cfg.train.keep_best = bool(int(kw.get("kb", 1)))
        if "epochs" in kw:
            p.cfg.train.epochs = float(kw["epochs"])
        if "lr" in kw:
            p.cfg.train.lr = float(kw["lr"])
        if "oof" in kw or "C" in kw:  # refit the wide path (the features above are reused)
            if train_texts is None:
                ex, _, _, _ = train_examples(ds, None)
                train_texts = [L.texts_for(make_item(e.text))[1] for e in ex]
            vc = VocabWideConfig(**{**L.config_to_dict(prep.cfg)["vocab"], "oof_folds": int(kw.get("oof", 0))})
            wide, _, p.table.wide, _ = VocabWide.fit(train_texts, prep.table.y, len(prep.labels), p.fit_idx,
                                                     p.hold_idx, [float(kw.get("C", 32.0))], vc)
            t.wide = wide.logits(texts)
        p.cfg = L.scale_to_budget(p.cfg, len(p.fit_idx))
        model, res = L.fit_head(p)
        logits = predict_logits(model, t)
        runs[spec] = torch.softmax(torch.from_numpy(logits), -1).numpy()
        print(f"{spec}: test errors {int((logits.argmax(1) != t.y).sum())} (wide LR alone "
              f"{int((t.wide.argmax(1) != t.y).sum())}); best step {res.best.get('step')} of {res.steps}, "
              f"held-out loss {res.best.get('val_loss'):.5f}", flush=True)
    families: dict[str, list[str]] = {}
    for k in runs:
        families.setdefault(",".join(x for x in k.split(",") if not x.startswith("seed")) or "base", []).append(k)
    for fam, ks in families.items():
        if len(ks) > 1:
            avg = np.mean([runs[k] for k in ks], 0)
            print(f"{fam}: average of {len(ks)} heads: test errors {int((avg.argmax(1) != y).sum())}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
