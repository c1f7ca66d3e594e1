"""Offline evaluation: every tier scores every item once, then the cascade is replayed (:func:`route`).

Scoring every tier on every item is what gives each tier's ``alone_accuracy`` and the final tier's accuracy
on all items (the counterfactual "everything to the final tier"), and it lets calibration try thousands of
threshold settings without re-running a model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score
from tqdm import tqdm

from tiergate.cascade import Cascade, route
from tiergate.config import TierConfig
from tiergate.data.items import Item
from tiergate.registry import capabilities_of
from tiergate.tiers import TierOutput


def score_tiers(cascade: Cascade, items: Sequence[Item], *, batch_size: int = 32, progress: bool = True,
                timings: dict[str, list[float]] | None = None) -> list[list[TierOutput]]:
    """``outputs[i][n]``: tier ``i`` on item ``n``. With ``timings``, each tier's seconds per item of every
    full batch after the first (the warm-up) are appended under its name: the cost measurement rides on the
    scoring pass instead of running the models a second time."""
    outputs: list[list[TierOutput]] = []
    for tier in cascade.tiers:
        outs: list[TierOutput] = []
        bar = tqdm(total=len(items), desc=f"scoring {tier.name}", unit="item", disable=not progress, leave=False)
        for s in range(0, len(items), batch_size):
            batch = items[s : s + batch_size]
            t0 = time.perf_counter()
            outs.extend(tier.predict(batch))
            if timings is not None and s > 0 and len(batch) == batch_size:
                timings.setdefault(tier.name, []).append((time.perf_counter() - t0) / len(batch))
            bar.update(len(batch))
        bar.close()
        outputs.append(outs)
    return outputs


def _acc(pred: Sequence[str | None], y: Sequence[str]) -> float | None:
    if not len(y):
        return None
    return float(np.mean([p == t for p, t in zip(pred, y, strict=True)]))


def _alone_accuracy(tc: TierConfig, outs: Sequence[TierOutput], y: Sequence[str]) -> float | None:
    """Accuracy of tier ``tc`` answering every item itself; None for a tier without a distribution (a rule set
    abstains on most items, so its accuracy alone says nothing)."""
    return _acc([o.label for o in outs], y) if capabilities_of(tc).distribution else None


def tier_checks(tiers: Sequence[TierConfig], outputs: Sequence[Sequence[TierOutput]], y_true: Sequence[str]) -> list[str]:
    """What a user should hear before trusting thresholds: the guarantee is relative to the final tier, so a
    final tier less accurate alone (on these labelled items) than a cheaper model tier before it makes
    escalation pay for nothing. One sentence per problem found; [] when there is none."""
    if not len(y_true) or len(tiers) < 2:
        return []
    final = _acc([o.label for o in outputs[-1]], y_true)
    out = []
    for i, tc in enumerate(tiers[:-1]):
        a = _alone_accuracy(tc, outputs[i], y_true)
        if a is not None and a > final:
            out.append(f"on the {len(y_true)} calibration items the final tier {tiers[-1].name!r} alone is less "
                       f"accurate ({100 * final:.2f}%) than {tc.name!r} alone ({100 * a:.2f}%): items it escalates "
                       "pay more for no gain; the disagreement guarantee is relative to the final tier")
    return out


def summarize(outputs: Sequence[Sequence[TierOutput]], y_true: Sequence[str], tiers: Sequence[TierConfig], *,
              dataset: str, split: str, certificate: dict | None = None) -> dict:
    """The evaluation report (the keys ``tiergate evaluate --json`` promises)."""
    n = len(y_true)
    routed = route(outputs, tiers)
    final_i = len(tiers) - 1
    pred = [r.output.label for r in routed]
    final_pred = [o.label for o in outputs[final_i]]
    per_tier = []
    for i, tc in enumerate(tiers):
        mine = [k for k, r in enumerate(routed) if r.tier_index == i]
        alone = _alone_accuracy(tc, outputs[i], y_true)
        per_tier.append({
            "name": tc.name, "kind": tc.kind, "share": len(mine) / n if n else 0.0, "n": len(mine),
            "accuracy": _acc([pred[k] for k in mine], [y_true[k] for k in mine]),
            "cost_usd_per_1k": tc.cost.usd_per_item * 1000, "alone_accuracy": alone,
            "reached": sum(1 for r in routed if i in r.path) / n if n else 0.0,
        })
    esc = [k for k, r in enumerate(routed) if final_i in r.path]
    prev_i = final_i - 1
    prev_acc = None
    if esc and prev_i >= 0 and capabilities_of(tiers[prev_i]).distribution:
        prev_acc = _acc([outputs[prev_i][k].label for k in esc], [y_true[k] for k in esc])
    cascade_usd = sum(sum(tiers[i].cost.usd_per_item for i in r.path) for r in routed)
    final_usd = n * tiers[final_i].cost.usd_per_item
    report = {
        "dataset": dataset, "split": split, "n": n,
        "accuracy": _acc(pred, y_true),
        "macro_f1": float(f1_score(y_true, [p or "" for p in pred], average="macro", zero_division=0)) if n else None,
        "final_tier_accuracy": _acc(final_pred, y_true),
        "disagreement_with_final_tier": float(np.mean([p != f for p, f in zip(pred, final_pred, strict=True)])) if n else 0.0,
        "tiers": per_tier,
        "on_escalated": {"n": len(esc),
                         "final_tier_accuracy": _acc([final_pred[k] for k in esc], [y_true[k] for k in esc]),
                         "previous_tier_accuracy": prev_acc},
        "cost": {"cascade_usd": cascade_usd, "final_tier_only_usd": final_usd,
                 "saved_usd": final_usd - cascade_usd,
                 "saved_fraction": (1 - cascade_usd / final_usd) if final_usd > 0 else 0.0},
    }
    if certificate is not None:
        report["certificate"] = certificate
    return report


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def format_table(r: dict) -> str:
    """The report as a readable table (what ``tiergate evaluate`` prints without ``--json``)."""
    lines = [f"{r['dataset']} / {r['split']}: n={r['n']}  accuracy {_fmt(r['accuracy'])}  macro-F1 "
             f"{_fmt(r['macro_f1'], False)}  final tier alone {_fmt(r['final_tier_accuracy'])}  disagreement "
             f"with final tier {_fmt(r['disagreement_with_final_tier'])}", "",
             f"{'tier':<10} {'share':>8} {'accuracy':>9} {'alone':>8} {'USD/1k items':>13}"]
    for t in r["tiers"]:
        lines.append(f"{t['name']:<10} {_fmt(t['share']):>8} {_fmt(t['accuracy']):>9} {_fmt(t['alone_accuracy']):>8} "
                     f"{t['cost_usd_per_1k']:>13.6f}")
    e, c = r["on_escalated"], r["cost"]
    lines += ["", f"escalated to the final tier: {e['n']} items; final tier {_fmt(e['final_tier_accuracy'])} vs "
                  f"tier before it {_fmt(e['previous_tier_accuracy'])}",
              f"cost: cascade {c['cascade_usd']:.6f} USD vs all-to-final {c['final_tier_only_usd']:.6f} USD: "
              f"saved {_fmt(c['saved_fraction'])}"]
    if r.get("certificate"):
        cert = r["certificate"]
        lines.append(f"certificate: P(risk <= {cert.get('epsilon')}) >= 1 - {cert.get('delta')} "
                     f"(n={cert.get('n')}, bound {cert.get('bound')}){' STALE' if cert.get('stale') else ''}")
    return "\n".join(lines)
