"""p-values and confidence bounds for a risk that is a mean of {0, 1} losses.

The null hypothesis of one candidate setting is H: R > epsilon (the setting is *not* safe). Observing ``k``
losses among ``n`` exchangeable items, the exact binomial p-value is P(Bin(n, epsilon) <= k): small when so
few losses would be unlikely if the risk really exceeded epsilon. It is valid for any risk > epsilon because
the binomial CDF falls as the success probability grows. Rejecting H at level delta is the same as the
one-sided Clopper–Pearson upper bound at level 1 - delta falling to epsilon or below.

The Hoeffding–Bentkus p-value (Bates et al. 2021) is offered for comparison: valid for any loss in [0, 1], and
never better than the exact binomial one for {0, 1} losses.

>>> round(binomial_pvalue(2, 780, 0.01), 4)
0.0137
>>> max_losses(780, 0.005, 0.05)     # at n = 780, epsilon = 0.005 needs zero losses
0
"""

from __future__ import annotations

import math

from scipy import special, stats


def binomial_pvalue(k: int, n: int, epsilon: float) -> float:
    """P(Bin(n, epsilon) <= k): the exact p-value of H: R > epsilon after ``k`` losses in ``n`` items."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(special.bdtr(k, n, epsilon))  # the binomial CDF as a plain ufunc (stats.binom is ~50x slower)


def hoeffding_bentkus_pvalue(k: int, n: int, epsilon: float) -> float:
    """min(Hoeffding, Bentkus) p-value of H: R > epsilon for a mean of ``n`` losses in [0, 1]."""
    if n <= 0:
        return 1.0
    r = k / n
    if r >= epsilon:
        hoeffding = 1.0
    else:
        # exp(-n * KL(r || epsilon)): the Bernoulli relative entropy of the empirical risk from epsilon.
        kl = (r * math.log(r / epsilon) if r > 0 else 0.0) + (1 - r) * math.log((1 - r) / (1 - epsilon))
        hoeffding = math.exp(-n * kl)
    bentkus = math.e * binomial_pvalue(math.ceil(k), n, epsilon)
    return min(1.0, hoeffding, bentkus)


PVALUES = {"binomial": binomial_pvalue, "hoeffding-bentkus": hoeffding_bentkus_pvalue}


def upper_bound(k: int, n: int, delta: float) -> float:
    """One-sided Clopper–Pearson upper confidence bound at level 1 - delta on the risk after ``k`` of ``n``."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(1 - delta, k + 1, n - k))


def lower_bound(k: int, n: int, delta: float) -> float:
    """One-sided Clopper–Pearson lower confidence bound at level 1 - delta on the risk after ``k`` of ``n``."""
    if n <= 0 or k <= 0:
        return 0.0
    return float(stats.beta.ppf(delta, k, n - k + 1))


def max_losses(n: int, epsilon: float, delta: float) -> int:
    """The most losses among ``n`` items that still certify ``epsilon`` at level ``delta`` (-1: none do)."""
    k = -1
    while k + 1 <= n and binomial_pvalue(k + 1, n, epsilon) <= delta:
        k += 1
    return k


def min_items(epsilon: float, delta: float) -> int:
    """The fewest items that can certify ``epsilon`` at all (with zero losses): (1 - epsilon)^n <= delta."""
    return math.ceil(math.log(delta) / math.log1p(-epsilon))
