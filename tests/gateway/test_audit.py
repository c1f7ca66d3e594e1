"""The live risk from shadow audits: the share-weighted disagreement and its union of Clopper–Pearson bounds."""

from __future__ import annotations

import pytest
from scipy import stats

from tiergate.gateway.audit import LiveRisk, TierCounts


def live(**tiers: tuple[int, int, int]) -> LiveRisk:
    r = LiveRisk()
    for name, (decided, audits, disagreed) in tiers.items():
        r.tiers[name] = TierCounts(decided, audits, disagreed)
    r.total = sum(c.decided for c in r.tiers.values()) + 100  # and 100 decided by the final tier
    return r


def test_no_disagreement_in_enough_audits_holds_the_epsilon():
    s = live(small=(900, 100, 0)).summary(epsilon=0.05, delta=0.05)
    ub = 0.9 * (1 - 0.05 ** (1 / 100))  # Clopper-Pearson with zero losses: 1 - delta^(1/n)
    assert s["upper_bound"] == pytest.approx(ub, abs=1e-6)
    assert (s["risk"], s["verdict"], s["within_epsilon"], s["audits"]) == (0.0, "holds", True, 100)


def test_too_few_audits_are_undetermined_and_many_disagreements_a_violation():
    assert live(small=(900, 100, 0)).summary(epsilon=0.01, delta=0.05)["verdict"] == "undetermined"
    s = live(small=(900, 100, 50)).summary(epsilon=0.05, delta=0.05)
    assert s["risk"] == pytest.approx(0.45) and s["verdict"] == "violated"
    assert s["lower_bound"] == pytest.approx(0.9 * stats.beta.ppf(0.05, 50, 51), abs=1e-6)


def test_two_tiers_share_delta_and_an_unaudited_tier_counts_in_full():
    s = live(rules=(500, 50, 1), small=(400, 0, 0)).summary(epsilon=0.01, delta=0.1)
    total = 1000
    ub_rules = stats.beta.ppf(1 - 0.05, 2, 49)  # delta / 2 tiers
    assert s["upper_bound"] == pytest.approx(500 / total * ub_rules + 400 / total * 1.0, abs=1e-6)
    assert s["per_tier"]["small"]["upper_bound"] == 1.0
    assert s["verdict"] == "undetermined"


def test_without_a_certificate_there_is_nothing_to_hold():
    assert live(small=(10, 1, 0)).summary(epsilon=None, delta=0.05)["verdict"] == "no certificate"
