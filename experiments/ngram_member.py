"""An *independent* n-gram member for the averaging experiment: character 3-5-gram TF-IDF (within word
boundaries) + a linear model trained by SGD on the log loss. It reads other features than the small tier (word
1-2-grams + lbfgs logistic regression), so averaging it with the fine-tuned tier is not a copy of the tier
before it. Writes ``OUT/NAME-char.json`` as finetune_eval.py does.

    python experiments/ngram_member.py --data debian-packages --name debian --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_eval import record  # noqa: E402

from tiergate.data import load_dataset, make_item  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ds = load_dataset(args.data)
    ds.name = args.name
    train, test = ds.split("train"), ds.split("test")
    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, max_features=2 ** 19, sublinear_tf=True,
                          dtype=np.float32)
    X = vec.fit_transform([make_item(e.text).model_text[:20_000] for e in train])
    clf = SGDClassifier(loss="log_loss", alpha=2e-6, max_iter=30, tol=1e-4, n_jobs=-1, random_state=0)
    clf.fit(X, [e.label for e in train])
    secs = time.perf_counter() - t0
    proba = clf.predict_proba(vec.transform([make_item(e.text).model_text[:20_000] for e in test]))
    rec = record(ds, test, [str(c) for c in clf.classes_], np.asarray(proba), {"variant": "char",
                                                                               "train_seconds": round(secs, 2)})
    Path(args.out, f"{args.name}-char.json").write_text(json.dumps(rec))
    print(f"{args.name} char: acc {rec['accuracy']:.4f} ({rec['errors']} errors), {secs:.1f} s", flush=True)


if __name__ == "__main__":
    main()
