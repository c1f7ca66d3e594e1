"""The p-values and bounds behind the certificate, against first principles."""

import math

import pytest

from tiergate.calibration.bounds import (
    binomial_pvalue,
    hoeffding_bentkus_pvalue,
    max_losses,
    min_items,
    upper_bound,
)


def test_binomial_pvalue_is_the_lower_tail():
    n, eps = 50, 0.05
    for k in (0, 1, 3, 7):
        direct = sum(math.comb(n, j) * eps**j * (1 - eps) ** (n - j) for j in range(k + 1))
        assert binomial_pvalue(k, n, eps) == pytest.approx(direct, rel=1e-9)


def test_sample_sizes_quoted_in_the_docs():
    # n = 780 (the spamassassin calibration split): epsilon 0.005 only with zero losses, 0.01 with three.
    assert max_losses(780, 0.005, 0.05) == 0
    assert max_losses(780, 0.01, 0.05) == 3
    assert 0.995**780 <= 0.05 < binomial_pvalue(1, 780, 0.005)
    # (1 - eps)^n <= delta is the least n that can certify anything.
    assert min_items(0.01, 0.05) == 299 and 0.99**299 <= 0.05 < 0.99**298
    assert max_losses(298, 0.01, 0.05) == -1


@pytest.mark.parametrize("n", [100, 780, 5000])
def test_rejecting_is_the_clopper_pearson_bound_falling_to_epsilon(n):
    eps, delta = 0.02, 0.05
    for k in range(0, int(3 * eps * n)):
        assert (binomial_pvalue(k, n, eps) <= delta) == (upper_bound(k, n, delta) <= eps + 1e-12)


def test_hoeffding_bentkus_is_valid_but_never_sharper_on_binary_losses():
    for n, k in [(780, 0), (780, 3), (5000, 30)]:
        assert hoeffding_bentkus_pvalue(k, n, 0.01) >= binomial_pvalue(k, n, 0.01) - 1e-12
    assert hoeffding_bentkus_pvalue(10, 100, 0.05) == 1.0  # empirical risk above epsilon: no evidence at all
