"""The vectorised replay must route exactly as the cascade's one routing rule does."""

import numpy as np
import pytest

from tiergate.calibration.replay import scored_from_outputs, thresholds_matrix, to_thresholds
from tiergate.cascade import route
from tiergate.config import CostConfig, Thresholds, TierConfig
from tiergate.tiers import TierOutput

LABELS = ["a", "b", "c"]


def random_outputs(rng, n, kinds):
    outs = []
    names = [f"t{i}" for i in range(len(kinds))]
    for kind in kinds:
        tier = []
        for _ in range(n):
            r = rng.random()
            if kind == "rules":
                if r < 0.3:
                    tier.append(TierOutput(label=LABELS[rng.integers(3)], confidence=float(rng.choice([0.9, 1.0])),
                                           reason=f"rule-{rng.integers(4)}"))
                elif r < 0.4:
                    tier.append(TierOutput(label=None, escalate_to=str(rng.choice(["next", names[-1], "nope", names[0]])),
                                           reason="esc"))
                else:
                    tier.append(TierOutput(label=None))
            else:
                tier.append(TierOutput(label=LABELS[rng.integers(3)], confidence=float(rng.random())))
        outs.append(tier)
    return outs


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_route_matches_cascade_route(seed):
    rng = np.random.default_rng(seed)
    kinds = ["rules", "onnx", "onnx", "torch"] if seed % 2 else ["onnx", "rules", "torch"]
    tiers = []
    for i, kind in enumerate(kinds):
        th = Thresholds(default=0.0) if kind == "rules" else Thresholds(
            default=float(rng.random()), per_class={"b": float(rng.random())} if rng.random() < 0.7 else {})
        tiers.append(TierConfig(name=f"t{i}", kind=kind, path="x", threshold=th,
                                cost=CostConfig(seconds_per_item=0.001 * (i + 1) ** 2, usd_per_hour=1.0)))
    outputs = random_outputs(rng, 400, kinds)
    s = scored_from_outputs(outputs, None, tiers)
    got = s.route(thresholds_matrix(tiers, s.labels))
    want = route(outputs, tiers)
    assert [s.labels[p] for p in got.pred_N] == [r.output.label for r in want]
    assert list(got.tier_N) == [r.tier_index for r in want]
    unit = tiers[-1].cost.usd_per_item
    assert np.allclose(got.cost_N, [sum(tiers[i].cost.usd_per_item for i in r.path) / unit for r in want])


def test_thresholds_round_trip_through_a_row():
    th = to_thresholds(np.array([0.9, 0.97, 0.9]), LABELS)
    assert th.default == 0.97 and th.per_class == {"a": 0.9, "c": 0.9}
    assert [th.for_label(lab) for lab in LABELS] == [0.9, 0.97, 0.9]
    assert th.for_label("unseen") == 0.97  # a label calibration never saw gets the most conservative value
