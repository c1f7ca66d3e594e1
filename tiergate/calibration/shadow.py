"""The rules tier inside the certified cascade: which rules calibration puts in shadow mode.

A rule in shadow mode is still evaluated and counted (``tiergate_rules_shadow_hits_total``) but never acts,
so the items it used to decide go on to the model tiers. Calibration shadows the rules whose decisions on the
*selection* part of the calibration data carry a loss (disagree with the final tier, or are wrong for the
error risk), round after round, because once a rule is shadowed a lower-priority one may act on its items.
The test part, which certifies, never takes part in that choice.

The chosen ids live in ``config.calibration["shadow_rules"]`` (``{tier name: [rule ids]}``) and
:func:`apply_shadow_rules` applies them whenever a config is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tiergate.calibration.paths import start_setting
from tiergate.calibration.replay import movable_tiers, scored_from_outputs, thresholds_matrix
from tiergate.calibration.risk import Risk
from tiergate.data.items import Item
from tiergate.registry import capabilities_of
from tiergate.tiers import TierOutput

log = logging.getLogger(__name__)

MAX_ROUNDS = 10


def _is_rules(tier) -> bool:
    return hasattr(tier, "set_shadow") and hasattr(tier, "engine")


def rules_tier_indices(cascade) -> list[int]:
    return [i for i, (t, tc) in enumerate(zip(cascade.tiers, cascade.config.tiers, strict=True))
            if not capabilities_of(tc).distribution and _is_rules(t)]


def shadow_of(cascade) -> dict[str, list[str]]:
    """The runtime shadow overrides of every rules tier: ``{tier name: sorted ids}``."""
    return {cascade.config.tiers[i].name: sorted(cascade.tiers[i].engine.shadow_overrides)
            for i in rules_tier_indices(cascade)}


def apply_shadow_rules(cascade) -> list[str]:
    """Put the rules named in ``config.calibration["shadow_rules"]`` in shadow mode; returns the ids applied.
    Ids the loaded rule set no longer has are skipped (the certificate then reads stale anyway)."""
    wanted = (cascade.config.calibration or {}).get("shadow_rules") or {}
    applied: list[str] = []
    for i in rules_tier_indices(cascade):
        tier = cascade.tiers[i]
        ids = [r for r in wanted.get(cascade.config.tiers[i].name, []) if r in tier.engine.all_by_id]
        if ids:
            tier.set_shadow(ids)
            applied += ids
    return applied


def _rescore(tier, items: Sequence[Item]) -> list[TierOutput]:
    from tiergate.rules.tier import output_of

    engine = tier.engine
    return [output_of(engine.decide(it, record=False)) for it in items]  # record=False: no metrics touched


def choose_shadow_rules(cascade, outputs: list[list[TierOutput]], y: Sequence[str], items: Sequence[Item],
                        sel_idx: np.ndarray, risk: Risk, previous: dict | None = None) -> dict[str, list[str]]:
    """Shadow the rules whose selection-part decisions carry a loss; re-run the rules tier on every item so
    ``outputs`` (updated in place) describe the set as it will be served. Returns the shadow overrides."""
    tiers = cascade.config.tiers
    movable = movable_tiers(tiers)
    prev = (previous or {}).get("shadow_rules") or {}
    result: dict[str, list[str]] = {}
    for i in rules_tier_indices(cascade):
        tier, name = cascade.tiers[i], tiers[i].name
        old = [r for r in prev.get(name, []) if r in tier.engine.shadow_overrides]
        if old:  # start again from the rule file's own modes: last calibration's choice is not evidence
            tier.set_shadow(old, shadow=False)
        outputs[i] = _rescore(tier, items)
        chosen: set[str] = set()
        for _ in range(MAX_ROUNDS):
            if not len(sel_idx):
                break
            sub = [[outs[k] for k in sel_idx] for outs in outputs]
            s = scored_from_outputs(sub, [y[k] for k in sel_idx], tiers, extra_labels=cascade.config.labels)
            r = s.route(start_setting(thresholds_matrix(tiers, s.labels), movable))
            bad_N = risk.loss(s, r.pred_N) & (r.tier_N == i)
            bad = {str(s.reason_TN[i, k]) for k in np.flatnonzero(bad_N) if s.reason_TN[i, k]} - chosen
            bad &= set(tier.engine.all_by_id)
            if not bad:
                break
            tier.set_shadow(bad)
            chosen |= bad
            fresh = _rescore(tier, [items[k] for k in sel_idx])
            for k, o in zip(sel_idx, fresh, strict=True):
                outputs[i][k] = o
        if chosen:
            outputs[i] = _rescore(tier, items)
            log.info("rules put in shadow mode by calibration (tier %s): %s", name, ", ".join(sorted(chosen)))
        result[name] = sorted(tier.engine.shadow_overrides)
    return result
