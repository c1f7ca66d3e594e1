"""How much can a final tier add over the small tier, and how much traffic must reach it? (train split only)

Cross-validated (K folds over the TRAIN split; calibration and test are never read) out-of-fold probabilities
for the small tier's recipe and for candidate final tiers, then, on the items the shipped rule pack leaves
undecided:

* accuracy of each candidate alone, and on the quarter / half of those items the small tier is least sure of;
* how many items the small tier would have to escalate (most uncertain first) so that at most ``b`` of the
  items it keeps disagree with the candidate: the share a disagreement-certified cascade sends to the final
  tier, for a few disagreement budgets ``b`` (a share of all items);
* how many rule-decided items the candidate disagrees with (and on how many of them the rule is right).

    python experiments/tier_headroom.py --data spamassassin --out runs/headroom/spamassassin

Writes ``results.json`` and ``headroom.md`` (the table) under ``--out``. Candidates: ``small`` (the small
tier's recipe), ``char`` (character 3–5-gram TF-IDF + logistic regression), ``head`` (the large tier's MoE
head without its linear member), ``small+head`` (the large tier as quickstart builds it: the average of the
head and a linear member trained like the small tier), ``stack`` (a logistic regression over the three members'
out-of-fold log-odds, itself cross-validated; binary data only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from tiergate.data import load_dataset, make_item
from tiergate.models.large import Featurizer, SparseClassifier, preset, texts_for
from tiergate.models.small import fit_small
from tiergate.training.data import FeatureTable, bag_to_csr, stratified_holdout
from tiergate.training.loop import predict_logits, train


def small_oof(texts, y, folds, n_classes):
    P = np.zeros((len(y), n_classes))
    for tr, te in folds:
        f = fit_small([texts[i] for i in tr], [str(v) for v in y[tr]])
        cols = [int(c) for c in f.pipeline.named_steps["clf"].classes_]
        P[np.ix_(te, cols)] = f.pipeline.predict_proba([texts[i] for i in te])
    return P


def char_oof(texts, y, folds, n_classes, max_chars=5000):
    P = np.zeros((len(y), n_classes))
    for tr, te in folds:
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                              max_features=300_000, dtype=np.float32)
        X = vec.fit_transform([texts[i][:max_chars] for i in tr])
        m = LogisticRegression(C=20.0, max_iter=300).fit(X, y[tr])
        P[np.ix_(te, m.classes_)] = m.predict_proba(vec.transform([texts[i][:max_chars] for i in te]))
    return P


def head_oof(items, y, folds, n_classes):
    cfg = preset("quick")
    feat = Featurizer(cfg)
    emb = feat.encoder.encode([texts_for(it)[0] for it in items])
    counts = feat.bag.counts([texts_for(it)[1] for it in items])
    P = np.zeros((len(y), n_classes))
    for tr, te in folds:
        fit, hold = stratified_holdout(y[tr], cfg.holdout_frac, 0)
        feat.bag.fit_counts([counts[tr[i]] for i in fit])
        ids, off, w = feat.bag.transform_counts(counts)
        table = FeatureTable(emb, bag_to_csr(ids, off, w, len(y), cfg.bag.n_buckets), y)
        torch.manual_seed(0)
        model = SparseClassifier(cfg, n_classes, emb.shape[1])
        part = table.subset(tr)
        train(model, part.subset(fit), part.subset(hold), cfg.train)
        P[te] = torch.softmax(torch.tensor(predict_logits(model, table.subset(te))), -1).numpy()
    return P


def stack_oof(members: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    def logodds(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p[:, 1] / p[:, 0])
    X = np.stack([logodds(p) for p in members], 1)
    return cross_val_predict(LogisticRegression(C=1.0), X, y, cv=StratifiedKFold(5, shuffle=True, random_state=1),
                             method="predict_proba")


def escalation_needed(small_P, cand_pred, undecided, budget_items: int) -> int:
    """Items the small tier must escalate (least confident first) so that at most ``budget_items`` of the items
    it keeps disagree with the candidate."""
    idx = np.where(undecided)[0]
    order = idx[np.argsort(-small_P[idx].max(1), kind="stable")]  # most confident first
    dis = small_P[order].argmax(1) != cand_pred[order]
    cum = np.cumsum(dis)
    keep = int(np.searchsorted(cum, budget_items + 1))  # the longest confident prefix within the budget
    return len(order) - keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="spamassassin")
    ap.add_argument("--out", type=Path, default=Path("runs/headroom"))
    ap.add_argument("--folds", type=int, default=4)
    args = ap.parse_args()
    t0 = time.time()
    ds = load_dataset(args.data)
    exs = ds.split("train")
    labels = sorted({e.label for e in exs})
    y = np.array([labels.index(e.label) for e in exs])
    items = [make_item(e.text) for e in exs]
    texts = [it.model_text for it in items]
    C = len(labels)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    try:
        from tiergate.rules.tier import RulesTier, pack_path

        rule = [o.label for o in RulesTier.from_path(pack_path(args.data)).predict(items)]
    except Exception:  # no pack for this data set: every item is undecided
        rule = [None] * len(items)
    undecided = np.array([r is None for r in rule])
    P = {"small": small_oof(texts, y, folds, C)}
    print(f"small done ({time.time() - t0:.0f} s)", flush=True)
    P["char"] = char_oof(texts, y, folds, C)
    print(f"char done ({time.time() - t0:.0f} s)", flush=True)
    P["head"] = head_oof(items, y, folds, C)
    print(f"head done ({time.time() - t0:.0f} s)", flush=True)
    P["small+head"] = 0.5 * (P["small"] + P["head"])
    if C == 2:
        P["stack"] = stack_oof([P["small"], P["char"], P["head"]], y)

    n = len(y)
    ruled = ~undecided
    rule_idx = np.array([labels.index(r) if r is not None else -1 for r in rule])
    small_pred = P["small"].argmax(1)
    und = np.where(undecided)[0]
    low = und[np.argsort(P["small"][und].max(1), kind="stable")]
    budgets = [0, 0.001, 0.002, 0.004]
    rows = []
    for name, Q in P.items():
        pred = Q.argmax(1)
        row = {"candidate": name, "accuracy": float((pred == y).mean()),
               "undecided_accuracy": float((pred[und] == y[und]).mean()) if len(und) else None}
        for q in (0.25, 0.5):
            part = low[: int(q * len(low))]
            row[f"least_sure_{int(q * 100)}"] = {"small": float((small_pred[part] == y[part]).mean()),
                                                 "this": float((pred[part] == y[part]).mean())}
        row["disagrees_with_small_undecided"] = int((pred[und] != small_pred[und]).sum())
        row["escalated_share"] = {str(b): escalation_needed(P["small"], pred, undecided, int(b * n)) / n
                                  for b in budgets}
        row["rule_decided_disagreements"] = int((rule_idx[ruled] != pred[ruled]).sum())
        row["rule_decided_errors_of_this"] = int((pred[ruled] != y[ruled]).sum())
        rows.append(row)
    res = {"data": args.data, "n_train": n, "folds": args.folds, "undecided_by_rules": int(undecided.sum()),
           "rule_errors": int((rule_idx[ruled] != y[ruled]).sum()), "rows": rows,
           "seconds": round(time.time() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    head = (f"{args.data}, train split, {args.folds}-fold out-of-fold; {n} items, {int(undecided.sum())} left "
            f"undecided by the rule pack (rules wrong on {res['rule_errors']} of the {int(ruled.sum())} they decide)\n\n"
            "| candidate | acc (all) | acc (undecided) | least-sure 25%: small / this | disagrees with small "
            "(undecided) | escalated share at budget 0 / 0.1% / 0.2% / 0.4% | disagrees with rules (its errors there) |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ls = r["least_sure_25"]
        esc = " / ".join(f"{100 * v:.1f}%" for v in r["escalated_share"].values())
        lines.append(f"| {r['candidate']} | {100 * r['accuracy']:.2f}% | {100 * r['undecided_accuracy']:.2f}% | "
                     f"{100 * ls['small']:.1f}% / {100 * ls['this']:.1f}% | {r['disagrees_with_small_undecided']} | "
                     f"{esc} | {r['rule_decided_disagreements']} ({r['rule_decided_errors_of_this']}) |")
    table = "\n".join(lines)
    (args.out / "headroom.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
