"""Which CPU-trainable final tier beats the small tier alone? (train split to fit, test split to judge)

For one data set: the small tier's recipe, and candidate final tiers that never copy it — the large tier's
head over frozen MiniLM + hashed n-grams as the quick preset builds it (``head``: the wide path fit first as a
logistic regression), trained jointly from zeros instead (``head-joint``), with the old 384 n-grams per text
(``head-384``), an independent character n-gram member, and averages — each fit on the train split and scored
alone on the test split, on all items and on the items the small tier is least sure of (max p < 0.95: what a
cascade escalates).

    python experiments/final_tier_candidates.py --data spamassassin --out runs/candidates/spamassassin

MiniLM embeddings are cached by text under ``--cache`` (the five-group JSONL shares spamassassin's texts).
Writes ``results.json`` and ``candidates.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from tiergate.data import load_dataset, make_item
from tiergate.models import encoder as enc_mod


def cached_encode(cache_dir: Path):
    """Wrap MiniLMEncoder.encode with a per-text cache on disk (keyed by the text's sha1 and the encoder's
    reading length)."""
    orig = enc_mod.MiniLMEncoder.encode

    def encode(self, texts, progress=False):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{self.max_tokens}x{self.max_chunks}"
        keys = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
        store = cache_dir / f"minilm-{tag}.npz"
        have = dict(np.load(store)) if store.exists() else {}
        miss = sorted({k for k in keys if k not in have})
        if miss:
            first = {k: t for k, t in zip(keys, texts, strict=True)}
            new = orig(self, [first[k] for k in miss], progress=progress)
            have.update(zip(miss, new, strict=True))
            np.savez(store, **have)
        return np.stack([have[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)

    enc_mod.MiniLMEncoder.encode = encode


def proba_small(train, test, cfg=None):
    from tiergate.models.small import fit_small

    f = fit_small([make_item(e.text).model_text for e in train], [e.label for e in train], cfg)
    classes = list(f.pipeline.named_steps["clf"].classes_)
    return classes, f.pipeline.predict_proba([make_item(e.text).model_text for e in test])


def proba_char(train, test, max_chars=5000):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                          max_features=300_000, dtype=np.float32)
    X = vec.fit_transform([make_item(e.text).model_text[:max_chars] for e in train])
    m = LogisticRegression(C=20.0, max_iter=300).fit(X, [e.label for e in train])
    return list(m.classes_), m.predict_proba(vec.transform([make_item(e.text).model_text[:max_chars] for e in test]))


def proba_head(ds, test, tmp: Path, **overrides):
    from tiergate.models.large import LargeTier, preset, train_large

    cfg = preset("quick")
    for k, v in overrides.items():
        obj, _, name = k.rpartition(".")
        setattr(getattr(cfg, obj) if obj else cfg, name, v)
    train_large(ds, tmp, preset=cfg, progress=False)
    tier = LargeTier.load(tmp)
    return tier.labels, tier.predict_proba([make_item(e.text) for e in test])


def align(labels, classes, P):
    return P[:, [list(classes).index(c) for c in labels]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--out", type=Path, default=Path("runs/candidates"))
    ap.add_argument("--cache", type=Path, default=Path("runs/candidates/_cache"))
    ap.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    args = ap.parse_args()
    cached_encode(args.cache)
    ds = load_dataset(args.data)
    train, test = ds.split("train"), ds.split("test")
    labels = sorted({e.label for e in train})
    y = np.array([labels.index(e.label) for e in test])
    args.out.mkdir(parents=True, exist_ok=True)
    members: dict[str, np.ndarray] = {}
    secs: dict[str, float] = {}
    runs = {
        "small": lambda: proba_small(train, test),
        "char": lambda: proba_char(train, test),
        "head": lambda: proba_head(ds, test, args.out / "head"),  # the quick preset as shipped
        "head-nobag": lambda: proba_head(ds, test, args.out / "nobag", deep_bag=False),
        "head-joint": lambda: proba_head(ds, test, args.out / "joint", wide_fit="joint"),
        "head-384": lambda: proba_head(ds, test, args.out / "h384", wide_fit="joint", **{"bag.max_per_text": 384}),
        "head-b19": lambda: proba_head(ds, test, args.out / "b19", **{"bag.n_buckets": 2 ** 19}),
        "head-b19-all": lambda: proba_head(ds, test, args.out / "b19all", **{"bag.n_buckets": 2 ** 19,
                                                                              "bag.max_per_text": 8192}),
    }
    only = [s for s in args.only.split(",") if s] or list(runs)
    for name in only:
        t0 = time.perf_counter()
        classes, P = runs[name]()
        members[name] = align(labels, classes, P)
        secs[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {np.mean(members[name].argmax(1) == y):.4f} ({secs[name]} s)", flush=True)
    heads = [h for h in members if h.startswith("head")]
    for h in heads:
        if "char" in members:
            members[f"{h}+char"] = (members[h] + members["char"]) / 2
        if "small" in members:
            members[f"{h}+small (today)"] = (members[h] + members["small"]) / 2
    unsure = members["small"].max(1) < 0.95 if "small" in members else np.zeros(len(y), bool)
    rows = []
    for name, P in members.items():
        pred = P.argmax(1)
        rows.append({"candidate": name, "acc": float(np.mean(pred == y)), "errors": int(np.sum(pred != y)),
                     "acc_unsure": float(np.mean(pred[unsure] == y[unsure])) if unsure.any() else None,
                     "seconds": secs.get(name)})
    doc = {"data": args.data, "n_test": len(y), "n_unsure": int(unsure.sum()), "labels": labels, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    lines = [f"{args.data}: test split, {len(y)} items; {int(unsure.sum())} where the small tier's max p < 0.95", "",
             "| candidate | accuracy | errors | on the small tier's unsure items | fit + predict, s |", "|---|---|---|---|---|"]
    for r in rows:
        u = "—" if r["acc_unsure"] is None else f"{100 * r['acc_unsure']:.1f}%"
        lines.append(f"| {r['candidate']} | {100 * r['acc']:.2f}% | {r['errors']} | {u} | {r['seconds'] or '—'} |")
    (args.out / "candidates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
