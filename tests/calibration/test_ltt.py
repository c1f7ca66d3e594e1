"""Learn-then-Test calibration: the guarantee holds over re-splits, and the certificate, ladder, shadowing and
staleness behave as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.calibration.conftest import cascade_for, synthetic_pool, take
from tiergate.calibration.ltt import (
    calibrate_cascade,
    certificate_status,
    evaluate_settings,
    thresholds_for_epsilon,
)
from tiergate.calibration.paths import GRID, shared_path
from tiergate.calibration.replay import scored_from_outputs, thresholds_matrix
from tiergate.calibration.risk import Risk
from tiergate.config import Thresholds
from tiergate.errors import CalibrationError

POOL_N = 20_000


@pytest.fixture(scope="module")
def pool():
    return synthetic_pool(POOL_N, seed=11)


def pool_risk_fn(outputs, y, risk="disagreement"):
    """Exact risk of a cascade's configured thresholds on any subset of the pool (replayed, scored once)."""
    whole = scored_from_outputs(outputs, y, cascade_for().config.tiers)
    rk = Risk.parse(risk)

    def risk_of(cascade, idx):
        s = whole.subset(np.asarray(idx))
        r = s.route(thresholds_matrix(cascade.config.tiers, s.labels))
        return rk.loss(s, r.pred_N).sum() / max(1, rk.mask(s).sum())
    return risk_of


def test_guarantee_is_honest_over_random_resplits(pool):
    """Over R re-splits of one scored pool, calibrate on n items, measure the risk on the rest.

    LTT promises P(held-out risk > epsilon) <= delta. Sampling slack: with R = 200 re-splits the observed share
    has sd sqrt(delta (1 - delta) / R) = 0.015, so we allow delta + 2.33 sd (a 1% one-sided chance of failing
    an honest procedure); the held-out sets (18,000 items) add an sd of about 0.001 to each risk, which the
    margin also covers. A naive choice (the most saving setting whose *empirical* risk is <= epsilon) on the
    same splits must break the promise far more often, or this test could not fail."""
    outputs, y = pool
    R, n, eps, delta = 200, 2000, 0.02, 0.05
    risk_of = pool_risk_fn(outputs, y)
    whole = scored_from_outputs(outputs, y, cascade_for().config.tiers)
    base = thresholds_matrix(cascade_for().config.tiers, whole.labels)
    rng = np.random.default_rng(0)
    ltt_bad, naive_bad, saved = 0, 0, []
    for _ in range(R):
        perm = rng.permutation(POOL_N)
        cal, held = perm[:n], perm[n:]
        c = cascade_for()
        outs, yy = take(outputs, y, cal)
        res = calibrate_cascade(c, outs, yy, epsilon=eps, delta=delta, report=False)
        saved.append(res["saved_fraction_calibration"])
        ltt_bad += risk_of(c, held) > eps
        # naive: walk the same grid down while the calibration risk stays within epsilon
        rows = evaluate_settings(whole.subset(cal), shared_path(base, [0]), Risk("disagreement"))
        last = next((j for j, r in enumerate(rows) if r["risk"] > eps), len(rows)) - 1
        naive = cascade_for()
        naive.config.tiers[0].threshold = Thresholds(default=float(GRID[max(last, 0)]))
        naive_bad += risk_of(naive, held) > eps
    slack = 2.33 * math.sqrt(delta * (1 - delta) / R)
    assert ltt_bad / R <= delta + slack, (ltt_bad, R)
    assert naive_bad / R > 0.25, naive_bad  # the test has teeth
    assert np.median(saved) > 0.5  # and LTT still certifies a useful setting


def test_writes_thresholds_certificate_and_a_monotone_ladder(pool):
    outputs, y = pool
    outs, yy = take(outputs, y, range(3000))
    c = cascade_for()
    res = calibrate_cascade(c, outs, yy, epsilon=0.02, delta=0.05, data_hash="abc", report=False)
    cert = c.config.certificate
    for key in ("epsilon", "delta", "n", "bound", "risk", "data_hash", "created", "versions", "thresholds"):
        assert key in cert
    assert cert["epsilon"] == 0.02 and cert["n"] == 3000 and cert["data_hash"] == "abc"
    assert cert["bound"] <= 0.02 and cert["losses"] / cert["n"] <= cert["bound"]
    assert c.config.tiers[0].threshold.default < 1.0  # something was certified
    assert res["path"] == "shared" and cert["n_selection"] == 0  # nothing learnt: every item tests
    eps = [r["epsilon"] for r in cert["ladder"]]
    assert eps == sorted(eps, reverse=True) and all(e < 0.02 for e in eps)
    saved = [cert["saved_fraction_calibration"]] + [r["saved_fraction"] for r in cert["ladder"]]
    assert saved == sorted(saved, reverse=True)  # stricter epsilon never saves more
    # Requests: the certified epsilon or looser -> configured thresholds; stricter -> a rung; too strict -> None.
    assert thresholds_for_epsilon(c.config, 0.05) == [t.threshold for t in c.config.tiers]
    rung = thresholds_for_epsilon(c.config, 0.01)
    assert rung is not None and rung[0].default >= c.config.tiers[0].threshold.default
    assert thresholds_for_epsilon(c.config, 1e-6) is None
    assert certificate_status(c, cert)["stale"] is False


def test_too_few_items_certify_only_the_final_tier(pool):
    outputs, y = pool
    outs, yy = take(outputs, y, range(200))  # 200 < 299 = the least n that can certify 0.01 at all
    c = cascade_for()
    res = calibrate_cascade(c, outs, yy, epsilon=0.01, delta=0.05, report=False)
    assert res["final_only"] and c.config.tiers[0].threshold.default > 1.0
    assert c.config.certificate["bound"] == 0.0
    assert thresholds_for_epsilon(c.config, 0.01) is None


def test_class_conditional_risk_counts_only_that_class(pool):
    outputs, y = pool
    outs, yy = take(outputs, y, range(4000))
    c = cascade_for()
    calibrate_cascade(c, outs, yy, epsilon=0.01, delta=0.05, risk="disagreement@ham", report=False)
    cert = c.config.certificate
    assert cert["risk"] == "disagreement@ham"
    assert cert["n"] == sum(o.label == "ham" for o in outs[1])
    with pytest.raises(CalibrationError, match="use one of"):
        calibrate_cascade(cascade_for(), outs, yy, epsilon=0.01, delta=0.05, risk="loss", report=False)


def test_error_risk_is_certified_against_labels(pool):
    outputs, y = pool
    outs, yy = take(outputs, y, range(4000))
    c = cascade_for()
    calibrate_cascade(c, outs, yy, epsilon=0.01, delta=0.05, risk="error", report=False)
    s = scored_from_outputs(outs, yy, c.config.tiers)
    r = s.route(thresholds_matrix(c.config.tiers, s.labels))
    excess = ((r.pred_N != s.y_N) & (s.final_N == s.y_N)).sum()
    assert excess == c.config.certificate["losses"]


@pytest.mark.parametrize("path", ["greedy", "modelled"])
def test_learnt_paths_set_per_class_thresholds_and_keep_the_promise(path):
    labels = tuple(f"c{i}" for i in range(6))
    outputs, y = synthetic_pool(30_000, labels=labels, seed=3)
    outs, yy = take(outputs, y, range(6000))
    c = cascade_for(labels)
    res = calibrate_cascade(c, outs, yy, epsilon=0.02, delta=0.05, path=path, report=False)
    assert res["path"] == path and c.config.certificate["n_selection"] == 1800
    th = c.config.tiers[0].threshold
    assert len({th.for_label(lab) for lab in labels}) > 1  # the classes got different thresholds
    held = pool_risk_fn(outputs, y)(c, range(6000, 30_000))
    assert held <= 0.02
    assert res["saved_fraction_calibration"] > 0.3


def test_certificate_goes_stale_on_threshold_and_version_changes(pool):
    outputs, y = pool
    outs, yy = take(outputs, y, range(2000))
    c = cascade_for()
    calibrate_cascade(c, outs, yy, epsilon=0.02, delta=0.05, report=False)
    cert = c.config.certificate
    assert certificate_status(c, cert)["stale"] is False
    c.config.tiers[0].threshold = Thresholds(default=0.5)
    st = certificate_status(c, cert)
    assert st["stale"] and any("thresholds changed" in r for r in st["stale_reasons"])
    c.config.tiers[0].threshold = Thresholds.model_validate(cert["thresholds"]["small"])
    c.tiers[1].version = lambda: "retrained"  # a model swap changes the version the certificate bound to
    st = certificate_status(c, cert)
    assert st["stale"] and any("final" in r and "retrained" in r for r in st["stale_reasons"])
    assert certificate_status(c, None) is None


def _calibrated(pool, budget=None):
    """A fresh cascade calibrated on the first 3,000 pooled items at epsilon 0.02 (with ``budget``, if given)."""
    outs, yy = take(*pool, range(3000))
    c = cascade_for()
    return c, calibrate_cascade(c, outs, yy, epsilon=0.02, delta=0.05, report=False, budget=budget)


def test_a_budget_buys_agreement_with_the_most_conservative_certified_setting_that_fits(pool):
    free, _ = _calibrated(pool)
    cheapest = free.config.certificate
    cost0 = 1 - cheapest["saved_fraction_calibration"]
    budget = cost0 + 0.1
    c, res = _calibrated(pool, budget)
    cert = c.config.certificate
    cost = 1 - cert["saved_fraction_calibration"]
    assert res["budget_met"] and cert["budget"] == budget and c.config.calibration["budget"] == budget
    assert cost0 < cost <= budget  # the budget is spent, not exceeded
    assert cert["losses"] <= cheapest["losses"] and cert["bound"] <= 0.02  # and still certified at epsilon
    assert c.config.tiers[0].threshold.default >= free.config.tiers[0].threshold.default
    # the most conservative setting that fits: a budget a little below what it costs must choose a cheaper one
    tighter, _ = _calibrated(pool, cost - 1e-6)
    assert 1 - tighter.config.certificate["saved_fraction_calibration"] < cost
    # a stricter rung may not fit the budget: it then saves what it can, never more than the requested epsilon's
    assert all(r["saved_fraction"] <= cert["saved_fraction_calibration"] + 1e-12 for r in cert["ladder"])


def test_a_budget_no_certified_setting_fits_falls_back_to_the_cheapest_and_says_so(pool):
    free, _ = _calibrated(pool)
    c, res = _calibrated(pool, 1e-4)
    assert res["budget_met"] is False and any("budget" in w for w in res["warnings"])
    assert c.config.tiers[0].threshold == free.config.tiers[0].threshold
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(CalibrationError, match="budget"):
            _calibrated(pool, bad)
