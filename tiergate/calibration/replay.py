"""Vectorised replay of the cascade over precomputed outputs, for the thousands of settings calibration tries.

:func:`tiergate.cascade.route` is the reference (one item at a time, the rule the server applies);
:meth:`Scored.route` applies the same rule to arrays and is tested equal to it. A *setting* is a matrix of
thresholds ``thr_TC``: tier ``i`` decides an item whose label is ``c`` when its confidence is at least
``thr_TC[i, c]``; the final tier always decides; forced escalations jump as :func:`tiergate.cascade.step` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tiergate.config import Thresholds, TierConfig
from tiergate.registry import capabilities_of
from tiergate.tiers import TierOutput

NEVER = 1.01  # a threshold no confidence reaches: the tier never decides


@dataclass
class Routing:
    """Where every item of one setting ended: the predicted label index, the deciding tier, the cost paid."""

    pred_N: np.ndarray        # label index decided (into Scored.labels)
    tier_N: np.ndarray        # index of the deciding tier
    cost_N: np.ndarray        # cost paid, in units of the final tier's cost per item


@dataclass
class Scored:
    """Every tier's outputs on ``n`` items as arrays (``T`` tiers, ``C`` labels, ``N`` items)."""

    labels: list[str]
    label_TN: np.ndarray      # int, -1 when the tier abstained
    conf_TN: np.ndarray       # float64 confidence
    jump_TN: np.ndarray       # int, -1: no forced escalation, else the tier it jumps to
    reason_TN: np.ndarray     # object: the tier's reason (a rule id for the rules tier)
    y_N: np.ndarray           # int true label, -1 when unknown
    cost_T: np.ndarray        # cost per item of each tier, in units of the final tier's

    @property
    def n(self) -> int:
        return int(self.label_TN.shape[1])

    @property
    def final_N(self) -> np.ndarray:
        return self.label_TN[-1]

    def subset(self, idx: np.ndarray) -> Scored:
        return Scored(self.labels, self.label_TN[:, idx], self.conf_TN[:, idx], self.jump_TN[:, idx],
                      self.reason_TN[:, idx], self.y_N[idx], self.cost_T)

    def route(self, thr_TC: np.ndarray) -> Routing:
        """Replay one setting (same rule as :func:`tiergate.cascade.step`)."""
        T, N = self.label_TN.shape
        at_N = np.zeros(N, dtype=np.int64)           # tier each item is at
        pred_N = np.full(N, -1, dtype=np.int64)
        tier_N = np.full(N, -1, dtype=np.int64)
        cost_N = np.zeros(N)
        open_N = np.ones(N, dtype=bool)
        for i in range(T):
            here = open_N & (at_N == i)
            if not here.any():
                continue
            cost_N[here] += self.cost_T[i]
            lab = self.label_TN[i]
            if i == T - 1:
                pred_N[here] = lab[here]
                tier_N[here] = i
                open_N[here] = False
                break
            jump = self.jump_TN[i]
            jumps = here & (jump >= 0)
            at_N[jumps] = jump[jumps]
            rest = here & ~jumps
            thr_N = np.where(lab >= 0, thr_TC[i][np.maximum(lab, 0)], np.inf)
            decide = rest & (self.conf_TN[i] >= thr_N)
            pred_N[decide] = lab[decide]
            tier_N[decide] = i
            open_N[decide] = False
            at_N[rest & ~decide] = i + 1
        return Routing(pred_N, tier_N, cost_N)


def _jump_of(out: TierOutput, i: int, names: Sequence[str]) -> int:
    if not out.escalate_to:
        return -1
    if out.escalate_to != "next":
        for j, name in enumerate(names):
            if name == out.escalate_to and j > i:
                return j
    return i + 1  # "next", or an unknown or earlier tier: go on (as cascade.step reads it)


def scored_from_outputs(outputs: Sequence[Sequence[TierOutput]], y: Sequence[str] | None,
                        tiers: Sequence[TierConfig], extra_labels: Sequence[str] = ()) -> Scored:
    """Arrays from ``outputs[i][n]`` (tier ``i`` on item ``n``), with a label list covering every label seen."""
    seen: dict[str, int] = {}
    for lab in list(extra_labels) + [o.label for outs in outputs for o in outs if o.label is not None] + list(y or []):
        if lab not in seen:
            seen[lab] = len(seen)
    T, N = len(outputs), len(outputs[0]) if outputs else 0
    names = [t.name for t in tiers]
    label_TN = np.full((T, N), -1, dtype=np.int64)
    conf_TN = np.zeros((T, N))
    jump_TN = np.full((T, N), -1, dtype=np.int64)
    reason_TN = np.empty((T, N), dtype=object)
    for i, outs in enumerate(outputs):
        for k, o in enumerate(outs):
            label_TN[i, k] = seen[o.label] if o.label is not None else -1
            conf_TN[i, k] = o.confidence
            jump_TN[i, k] = _jump_of(o, i, names) if i < T - 1 else -1
            reason_TN[i, k] = o.reason
    y_N = np.array([seen[v] for v in y], dtype=np.int64) if y is not None else np.full(N, -1, dtype=np.int64)
    unit = tiers[-1].cost.usd_per_item
    if unit > 0:
        cost_T = np.array([t.cost.usd_per_item / unit for t in tiers])
    else:  # costs not measured: count only what reaches the final tier
        cost_T = np.array([0.0] * (T - 1) + [1.0])
    return Scored(list(seen), label_TN, conf_TN, jump_TN, reason_TN, y_N, cost_T)


def movable_tiers(tiers: Sequence[TierConfig]) -> list[int]:
    """Indices of the tiers whose thresholds calibration sets: every non-final tier with a distribution (a rule
    set's confidence is the rule's own; the final tier always decides)."""
    return [i for i, t in enumerate(tiers[:-1]) if capabilities_of(t).distribution]


def thresholds_matrix(tiers: Sequence[TierConfig], labels: Sequence[str]) -> np.ndarray:
    """The setting a config describes, as a (T, C) matrix."""
    return np.array([[t.threshold.for_label(lab) for lab in labels] for t in tiers], dtype=np.float64)


def to_thresholds(row_C: np.ndarray, labels: Sequence[str]) -> Thresholds:
    """One tier's row back to ``Thresholds``: the most conservative value as default, exceptions per class."""
    values = [float(v) for v in row_C]
    if not values:
        return Thresholds()
    default = max(values)
    return Thresholds(default=default, per_class={lab: v for lab, v in zip(labels, values, strict=True) if v != default})
