"""Plain threshold search: for each non-final model tier, in cascade order, the lowest threshold on a grid
whose decisions disagree with the final tier on at most ``epsilon / (number of such tiers)`` of the
calibration items. Fast and transparent, but with no guarantee on new data (see the Learn-then-Test module)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiergate.calibration.replay import movable_tiers
from tiergate.cascade import route
from tiergate.config import Thresholds, TierConfig
from tiergate.tiers import TierOutput

DEFAULT_GRID = tuple(np.round(np.concatenate([np.arange(0.5, 0.9, 0.05), np.arange(0.9, 0.99, 0.01),
                                              np.arange(0.99, 1.0, 0.001)]), 4))


def disagreement(outputs: Sequence[Sequence[TierOutput]], tiers: Sequence[TierConfig]) -> float:
    final = [o.label for o in outputs[-1]]
    routed = route(outputs, tiers)
    return float(np.mean([r.output.label != f for r, f in zip(routed, final, strict=True)])) if final else 0.0


def plain_thresholds(outputs: Sequence[Sequence[TierOutput]], tiers: Sequence[TierConfig], *,
                     epsilon: float = 0.01, grid: Sequence[float] = DEFAULT_GRID) -> list[TierConfig]:
    """Return copies of ``tiers`` with thresholds set; rules tiers keep theirs, the final tier is untouched."""
    tiers = [t.model_copy(deep=True) for t in tiers]
    movable = movable_tiers(tiers)
    for i in movable:
        tiers[i].threshold = Thresholds(default=1.01)
    budget = epsilon / max(1, len(movable))
    spent = disagreement(outputs, tiers)  # what the rules alone already cost
    for i in movable:
        chosen = 1.01
        for t in sorted(grid):
            tiers[i].threshold = Thresholds(default=float(t))
            if disagreement(outputs, tiers) <= spent + budget:
                chosen = float(t)
                break
        tiers[i].threshold = Thresholds(default=chosen)
        spent = disagreement(outputs, tiers)
    return tiers
