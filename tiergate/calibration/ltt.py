"""Learn-then-Test calibration of a whole cascade, its certificate, and the certificate's staleness.

The promise: with probability at least 1 - delta over the calibration sample, the chosen setting's risk
(:mod:`tiergate.calibration.risk`) on traffic exchangeable with that sample is at most epsilon.

Procedure (:func:`calibrate_cascade`):

1. Split the calibration items once, at random with a fixed seed, into a *selection* part and a *test* part
   when something must be learnt from data (which rules to shadow; a per-class order of settings). With
   nothing to learn, every item tests.
2. Rules tier (from 2,000 calibration items, or ``shadow="on"``): rules whose decisions on the selection part
   disagree with the final tier (or are wrong, for the error risk) are put in shadow mode (still evaluated and counted, never acting), repeatedly, since
   a lower-priority rule may then act instead. The ids are written to ``config.calibration["shadow_rules"]``
   and applied whenever the config is loaded.
3. Order candidate settings from the most conservative to the least (:mod:`tiergate.calibration.paths`).
4. Fixed-sequence testing on the test part: for each setting in order, test H: risk > epsilon with the exact
   binomial p-value; reject while p <= delta; stop at the first setting not rejected. Every rejected setting
   is certified together (the family-wise error is at most delta, with no Bonferroni split: each test is
   reached only if all before it rejected). Among them, take the one that saves the most cost.
5. The setting in which every tier but the final one is off has risk exactly 0 and needs no test: it is the
   answer when nothing else is certified.

The same sequence is walked again for a ladder of stricter epsilons, so a request may ask for one
(:func:`thresholds_for_epsilon`).

With a ``budget`` (the most the cascade may cost, as a share of sending everything to the final tier), step 4
picks differently among the certified settings: not the one that saves the most, but the most conservative one
whose cost fits the budget, i.e. the budget is spent on agreeing with the final tier (FrugalGPT's question,
"best quality for this spend", answered with a certificate). Any choice among certified settings keeps the
guarantee, since all of them hold together with probability 1 - delta.

>>> result = calibrate_cascade(cascade, outputs, y, epsilon=0.01, delta=0.05, data_hash=ds.fingerprint())  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.calibration.bounds import PVALUES, min_items, upper_bound
from tiergate.calibration.paths import greedy_path, modelled_path, shared_path, start_setting
from tiergate.calibration.replay import (
    NEVER,
    Scored,
    movable_tiers,
    scored_from_outputs,
    thresholds_matrix,
    to_thresholds,
)
from tiergate.calibration.risk import Risk
from tiergate.calibration.shadow import choose_shadow_rules, rules_tier_indices, shadow_of
from tiergate.config import Thresholds, TiergateConfig
from tiergate.data.items import Item
from tiergate.errors import CalibrationError
from tiergate.registry import capabilities_of
from tiergate.tiers import TierOutput

log = logging.getLogger(__name__)

METHOD = "learn-then-test/fixed-sequence"
LADDER_FACTORS = (0.5, 0.2, 0.1)   # stricter epsilons certified beside the requested one
SELECTION_FRACTION = 0.3           # share of calibration items spent on learning, when anything is learnt
SHADOW_MIN_ITEMS = 2000            # below this, a selection part costs more test items than it can win
PATHS = ("shared", "modelled", "greedy")


def calibrate_cascade(cascade, outputs: Sequence[Sequence[TierOutput]], y: Sequence[str], *, epsilon: float,
                      delta: float, risk: str = "disagreement", data_hash: str = "",
                      items: Sequence[Item] | None = None, path: str = "auto",
                      selection_fraction: float | None = None, shadow: str = "auto", pvalue: str = "binomial",
                      seed: int = 0, ladder: Sequence[float] | None = None, report: bool = True,
                      budget: float | None = None) -> dict:
    """Choose every non-final model tier's thresholds with a Learn-then-Test guarantee; write them, the
    certificate and the ladder into ``cascade.config``; return a summary.

    ``outputs[i][n]`` is tier ``i`` on calibration item ``n`` (:func:`tiergate.evaluate.score_tiers`), ``y`` the
    labels. ``items`` (the same calibration items) lets calibration re-run the rules tier with rules in shadow
    mode; without them the rules are kept as they are. ``path``: ``shared`` (one threshold for all classes,
    the default), ``modelled`` (per-class thresholds moving with one knob, from a shrunk logistic model of the
    loss learnt on the selection part) or ``greedy`` (per class, best saving per loss first, on the selection
    part). ``shadow``: ``on``, ``off`` or ``auto`` (on from 2,000 items).
    ``selection_fraction``: share of items spent on learning (default 0.3 when anything is learnt, else 0).
    ``budget``: spend up to this share of the all-to-final-tier cost (see the module's docstring).
    """
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise CalibrationError(f"epsilon ({epsilon}) and delta ({delta}) must lie strictly between 0 and 1")
    if budget is not None and not 0 < budget <= 1:
        raise CalibrationError(f"budget ({budget}) is a share of the all-to-final-tier cost: it must lie in (0, 1]")
    if pvalue not in PVALUES:
        raise CalibrationError(f"pvalue {pvalue!r}: use one of {sorted(PVALUES)}")
    rk = Risk.parse(risk)
    cfg: TiergateConfig = cascade.config
    tiers = cfg.tiers
    n = len(y)
    if not outputs or len(outputs) != len(tiers) or any(len(o) != n for o in outputs):
        raise CalibrationError("outputs must hold one list per tier with one output per calibration item")
    movable = movable_tiers(tiers)
    for tc in tiers:  # rules a previous calibration switched off start from their own threshold again
        if not capabilities_of(tc).distribution and tc.name in (cfg.calibration or {}).get("rules_off", []):
            tc.threshold = Thresholds(default=0.0)
    rules_idx = rules_tier_indices(cascade)
    if shadow not in ("auto", "on", "off"):
        raise CalibrationError(f"shadow {shadow!r}: use auto, on or off")
    # Shadowing is learnt, so it costs test items; at a few hundred items each one is worth more than what a
    # selection part of 30% could find (at n = 780, 3 losses certify epsilon = 0.01; at n = 546, only 1).
    wants_shadow = shadow == "on" or (shadow == "auto" and n >= SHADOW_MIN_ITEMS)
    can_shadow = wants_shadow and items is not None and bool(rules_idx)
    if path == "auto":
        # Measured (docs/calibration.md): on both reference sets the shared path, tested on every item, certified
        # as much saving as per-class orders learnt on 30% and tested on the rest; so it is the default.
        path = "shared"
    if path not in PATHS:
        raise CalibrationError(f"path {path!r}: use one of {', '.join(PATHS)} or auto")
    learns = can_shadow or path != "shared"
    frac = (SELECTION_FRACTION if learns else 0.0) if selection_fraction is None else selection_fraction
    if path != "shared" and frac <= 0:
        raise CalibrationError(f"the {path} path is learnt from data: it needs selection_fraction > 0")
    perm = np.random.default_rng(seed).permutation(n)
    n_sel = int(round(frac * n))
    sel_idx, test_idx = np.sort(perm[:n_sel]), np.sort(perm[n_sel:])

    outputs = [list(o) for o in outputs]
    shadowed: dict[str, list[str]] = {}
    if can_shadow:
        assert items is not None
        shadowed = choose_shadow_rules(cascade, outputs, list(y), items, sel_idx, rk, previous=cfg.calibration)
    else:
        shadowed = shadow_of(cascade)
    scored = scored_from_outputs(outputs, y, tiers, extra_labels=cfg.labels)
    base_TC = thresholds_matrix(tiers, scored.labels)
    test = scored.subset(test_idx)
    if path == "greedy":
        sel = scored.subset(sel_idx)
        n_sel_counted = int(rk.mask(sel).sum())
        settings = greedy_path(sel, base_TC, movable, lambda p: rk.loss(sel, p), n_sel_counted,
                               stop_risk=3 * epsilon)
    elif path == "modelled":
        sel = scored.subset(sel_idx)
        settings = modelled_path(sel, base_TC, movable, lambda p: rk.loss(sel, p))
    else:
        settings = [start_setting(base_TC, movable)] + shared_path(base_TC, movable)[1:]

    frontier = evaluate_settings(test, settings, rk)
    n_test = int(rk.mask(test).sum())
    if n_test < min_items(epsilon, delta):
        log.warning("only %d calibration items count towards the risk; epsilon %.4g at delta %.3g needs at least "
                    "%d even with zero losses, so nothing but the final tier alone can be certified",
                    n_test, epsilon, delta, min_items(epsilon, delta))
    chosen, rejected, pvals = fixed_sequence(frontier, n_test, epsilon, delta, pvalue)
    off_cost = 1 - _off_saved(test)  # the final tier alone, the fallback when nothing is certified
    chosen, budget_met = within_budget(frontier, rejected, chosen, budget, off_cost)
    off_TC = np.full_like(base_TC, NEVER)  # every tier but the final one off: risk exactly 0
    chosen_TC = settings[chosen] if chosen >= 0 else off_TC
    for j, row in enumerate(frontier):
        row["p_value"], row["certified"], row["chosen"] = pvals[j], j < rejected, j == chosen
    rules_off = _write_thresholds(cfg, chosen_TC, scored.labels)

    rungs = []
    for eps in sorted({round(epsilon * f, 10) for f in (ladder or LADDER_FACTORS)} - {epsilon}, reverse=True):
        if eps >= epsilon:
            continue
        j, rej, _ = fixed_sequence(frontier, n_test, eps, delta, pvalue)
        j, _ = within_budget(frontier, rej, j, budget, off_cost)
        rung_TC = settings[j] if j >= 0 else off_TC
        rungs.append({"epsilon": eps, "bound": _bound(frontier, j, n_test, delta),
                      "saved_fraction": frontier[j]["saved_fraction"] if j >= 0 else _off_saved(test),
                      "final_only": j < 0, "thresholds": _thresholds_dump(rung_TC, scored.labels, cfg)})

    k = frontier[chosen]["losses"] if chosen >= 0 else 0
    cert: dict[str, Any] = {
        "epsilon": epsilon, "delta": delta, "n": n_test, "bound": _bound(frontier, chosen, n_test, delta),
        "risk": str(rk), "data_hash": data_hash,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": cascade.versions(),
        "thresholds": {t.name: t.threshold.model_dump() for t in tiers},
        "shadow_rules": shadowed,
        "method": METHOD, "pvalue": pvalue, "p_value": frontier[chosen]["p_value"] if chosen >= 0 else 0.0,
        "losses": int(k), "empirical_risk": (k / n_test) if n_test else 0.0,
        "final_only": chosen < 0,
        "saved_fraction_calibration": frontier[chosen]["saved_fraction"] if chosen >= 0 else _off_saved(test),
        # the share of items each tier decides under the chosen setting: what the live mix is compared with
        "shares_calibration": ({t.name: frontier[chosen]["tier_shares"][i] for i, t in enumerate(tiers)}
                               if chosen >= 0 else {t.name: float(i == len(tiers) - 1) for i, t in enumerate(tiers)}),
        "final_tier_accuracy_calibration": (float((test.final_N == test.y_N).mean())
                                            if test.n and (test.y_N >= 0).all() else None),
        "n_calibration": n, "n_selection": int(n_sel), "path": path, "seed": seed,
        "settings": len(settings), "settings_certified": rejected,
        "assumption": "calibration items are exchangeable with the traffic the cascade serves",
        "ladder": rungs,
    }
    if budget is not None:
        cert["budget"] = budget
        cert["budget_met"] = budget_met
    cfg.certificate = cert
    report_path = None
    if report and getattr(cascade, "base", None) is not None:
        from tiergate.calibration.report import write_report

        report_path = write_report(Path(cascade.base) / "calibration", frontier, cert, title=cfg.dataset or "cascade")
    cfg.calibration = {"method": "ltt", "epsilon": epsilon, "delta": delta, "risk": str(rk), "n": n,
                       "shadow_rules": shadowed, "rules_off": rules_off, "data_hash": data_hash, "path": path,
                       **({"budget": budget} if budget is not None else {}),
                       **({"report": str(report_path)} if report_path else {})}
    warnings = _diagnose(test, movable, tiers)
    if not budget_met:
        cost = 1 - frontier[chosen]["saved_fraction"] if chosen >= 0 else off_cost
        warnings.append(f"no setting certified at epsilon {epsilon:g} costs as little as the budget {budget:g} of the "
                        f"all-to-final-tier cost; chose the cheapest certified one ({cost:.4f}): raise epsilon or "
                        "the budget")
    for w in warnings:  # returned in the summary as well, which is what the CLI prints (once, as "warning: ...")
        log.info("warning: %s", w)
    summary = {"method": "ltt", "risk": str(rk), "epsilon": epsilon, "delta": delta, "n": n_test,
               "losses": int(k), "bound": round(cert["bound"], 6),
               "saved_fraction_calibration": round(cert["saved_fraction_calibration"], 4),
               "final_only": chosen < 0, "path": path, "settings_certified": rejected,
               "shadowed_rules": sum(len(v) for v in shadowed.values()),
               "thresholds": cert["thresholds"], "shadow_rules": shadowed, "ladder": rungs, "warnings": warnings,
               **({"budget": budget, "budget_met": budget_met} if budget is not None else {})}
    if report_path:
        summary["report"] = str(report_path)
    log.info("calibrated (%s): n=%d, %d losses, bound %.4g <= %.4g, saved %.3f on calibration", METHOD, n_test,
             k, cert["bound"], epsilon, cert["saved_fraction_calibration"])
    return summary


def _diagnose(s: Scored, movable: Sequence[int], tiers) -> list[str]:
    """Plain-language warnings about what the certificate will mean on this cascade."""
    if not s.n or (s.y_N < 0).any():
        return []
    out = []
    final_acc = float((s.final_N == s.y_N).mean())
    for i in movable:
        acc = float((s.label_TN[i] == s.y_N).mean())
        if acc > final_acc:
            out.append(f"tier {tiers[i].name} alone is more accurate than the final tier on the calibration items "
                       f"({acc:.4f} vs {final_acc:.4f}): disagreement with the final tier will mostly count the final "
                       "tier's errors; consider --risk error, or a better final tier")
    return out


def evaluate_settings(s: Scored, settings: Sequence[np.ndarray], risk: Risk) -> list[dict]:
    """Every setting on ``s``: losses, cost saved, disagreement, accuracy, share decided before the final tier."""
    mask = risk.mask(s)
    has_y = bool((s.y_N >= 0).all()) and s.n > 0
    rows = []
    for j, thr in enumerate(settings):
        r = s.route(thr)
        loss = risk.loss(s, r.pred_N)
        rows.append({
            "index": j, "losses": int(loss.sum()), "n": int(mask.sum()),
            "risk": float(loss.sum() / max(1, mask.sum())),
            "saved_fraction": float(1 - r.cost_N.mean()) if s.n else 0.0,
            "disagreement": float((r.pred_N != s.final_N).mean()) if s.n else 0.0,
            "accuracy": float((r.pred_N == s.y_N).mean()) if has_y else None,
            "early_share": float((r.tier_N < len(s.cost_T) - 1).mean()) if s.n else 0.0,
            "tier_shares": [float((r.tier_N == i).mean()) if s.n else 0.0 for i in range(len(s.cost_T))],
        })
    return rows


def fixed_sequence(frontier: list[dict], n: int, epsilon: float, delta: float, pvalue: str = "binomial"
                   ) -> tuple[int, int, list[float]]:
    """Walk the settings in order, rejecting H: risk > epsilon while p <= delta; stop at the first that is not.

    Returns (index of the certified setting saving the most, -1 if none; how many settings were rejected;
    every setting's p-value, for the report: those after the stop were never used)."""
    pv = PVALUES[pvalue]
    pvals = [pv(row["losses"], n, epsilon) for row in frontier]
    best, best_saved, rejected = -1, -np.inf, 0
    for j, row in enumerate(frontier):
        if pvals[j] > delta:
            break
        rejected = j + 1
        if row["saved_fraction"] > best_saved:
            best, best_saved = j, row["saved_fraction"]
    return best, rejected, pvals


def within_budget(frontier: list[dict], certified: int, best: int, budget: float | None,
                  off_cost: float = 1.0) -> tuple[int, bool]:
    """Among the first ``certified`` settings (the order runs from the most conservative), the first whose cost
    (1 - saved fraction) is at most ``budget``: it spends the budget on agreeing with the final tier. Returns
    (its index, True); without a budget, or when no certified setting fits it, (``best``, whether ``best`` fits;
    ``off_cost`` is the cost of the final tier alone, the answer when ``best`` is -1)."""
    if budget is None:
        return best, True
    for j in range(certified):
        if 1 - frontier[j]["saved_fraction"] <= budget + 1e-12:
            return j, True
    cost = 1 - frontier[best]["saved_fraction"] if best >= 0 else off_cost
    return best, cost <= budget + 1e-12


def _bound(frontier: list[dict], j: int, n: int, delta: float) -> float:
    return 0.0 if j < 0 else upper_bound(frontier[j]["losses"], n, delta)


def _off_saved(s: Scored) -> float:
    return float(1 - s.cost_T[-1]) if s.n else 0.0


def _write_thresholds(cfg: TiergateConfig, thr_TC: np.ndarray, labels: list[str]) -> list[str]:
    """Write the chosen setting; returns the rules tiers switched off (restored by the next calibration)."""
    off = []
    for i, tc in enumerate(cfg.tiers[:-1]):
        if not capabilities_of(tc).distribution:
            # Rules keep their own threshold unless everything before the final tier is switched off.
            if np.all(thr_TC[i] >= NEVER) and tc.threshold.default < NEVER:
                tc.threshold = Thresholds(default=NEVER)
                off.append(tc.name)
            continue
        tc.threshold = to_thresholds(thr_TC[i], labels)
    return off


def _thresholds_dump(thr_TC: np.ndarray, labels: list[str], cfg: TiergateConfig) -> dict[str, dict]:
    out = {}
    for i, tc in enumerate(cfg.tiers):
        if i == len(cfg.tiers) - 1:
            out[tc.name] = tc.threshold.model_dump()
        elif not capabilities_of(tc).distribution:
            out[tc.name] = (Thresholds(default=NEVER) if np.all(thr_TC[i] >= NEVER) else tc.threshold).model_dump()
        else:
            out[tc.name] = to_thresholds(thr_TC[i], labels).model_dump()
    return out


# ------------------------------------------------------------------------------------------ serving side
def thresholds_for_epsilon(config: TiergateConfig, epsilon: float) -> list[Thresholds] | None:
    """Thresholds (one per tier, in config order) certified for a request that asks for ``epsilon``.

    ``epsilon`` at or above the certificate's: the configured thresholds. Stricter: the least strict rung of
    the ladder whose epsilon is at most the one asked for. None when nothing is certified that strictly (or
    there is no certificate): send the request to the final tier only, whose risk is 0 by definition.

    >>> thresholds_for_epsilon(cfg, 0.002)   # doctest: +SKIP
    [Thresholds(default=0.0, ...), Thresholds(default=0.9993, ...), Thresholds(default=1.01, ...)]
    """
    cert = config.certificate
    if not cert or "epsilon" not in cert:
        return None
    if epsilon >= float(cert["epsilon"]) - 1e-15:
        if cert.get("final_only"):
            return None
        return [t.threshold for t in config.tiers]
    fits = [r for r in cert.get("ladder", []) if float(r["epsilon"]) <= epsilon + 1e-15]
    if not fits:
        return None
    rung = max(fits, key=lambda r: float(r["epsilon"]))
    if rung.get("final_only") or not rung.get("thresholds"):
        return None
    try:
        return [Thresholds.model_validate(rung["thresholds"][t.name]) for t in config.tiers]
    except KeyError:  # the tiers changed since calibration: the rung no longer describes this cascade
        return None


def certificate_status(cascade, cert: dict | None) -> dict | None:
    """The certificate with ``stale`` (bool) and ``stale_reasons`` (list of str): it is stale when the rule set,
    a model, a threshold or the shadowed rules differ from what it was computed for."""
    if cert is None:
        return None
    reasons: list[str] = []
    certified = dict(cert.get("versions") or {})
    current = cascade.versions()
    for name, version in current.items():
        if name not in certified:
            reasons.append(f"tier {name} was not part of the certified cascade")
        elif certified[name] != version:
            what = "model swapped or retrained" if _has_distribution(cascade, name) else "rule set reloaded"
            reasons.append(f"tier {name}: {what} (version {certified[name]} -> {version})")
    for name in certified:
        if name not in current:
            reasons.append(f"tier {name} was certified but is no longer in the cascade")
    thresholds = cert.get("thresholds") or {}
    for tc in cascade.config.tiers:
        was = thresholds.get(tc.name)
        if was is not None and not _same_thresholds(was, tc.threshold.model_dump()):
            reasons.append(f"tier {tc.name}: thresholds changed since calibration")
    now_shadow = shadow_of(cascade)
    was_shadow = {k: sorted(v) for k, v in (cert.get("shadow_rules") or {}).items() if v}
    if {k: v for k, v in now_shadow.items() if v} != was_shadow:
        reasons.append("rules in shadow mode differ from the calibrated ones")
    return {**cert, "stale": bool(reasons), "stale_reasons": reasons}


def _has_distribution(cascade, name: str) -> bool:
    for tc in cascade.config.tiers:
        if tc.name == name:
            return capabilities_of(tc).distribution
    return True


def _same_thresholds(a: dict, b: dict) -> bool:
    if abs(float(a.get("default", 0)) - float(b.get("default", 0))) > 1e-12:
        return False
    pa, pb = a.get("per_class") or {}, b.get("per_class") or {}
    return set(pa) == set(pb) and all(abs(float(pa[k]) - float(pb[k])) <= 1e-12 for k in pa)
