"""Fixed-horizon tests of B against A, for the planned end of an experiment.

Valid once, at the sample size the design chose: applied at every window they reject a true
null far more often than alpha (the reason `sim.stats.sequential` exists; the A/A simulation in
tests/test_stats_sequential.py shows both). Each returns a `Comparison`: the difference B - A,
its interval at 1 - alpha, the two-sided p-value.
- `two_proportion_z`: the z statistic with the pooled proportion's variance (the null's), the
  interval with the unpooled one (Wald), as statsmodels' `proportions_ztest` and
  `confint_proportions_2indep(method="wald")` do;
- `welch_t`: Welch's t from each variant's count, sum and sum of squares, with
  Welch-Satterthwaite degrees of freedom (scipy's `ttest_ind(equal_var=False)`);
- `mann_whitney`: scipy's U test on the raw samples, for latency's long tail, with the
  Hodges-Lehmann shift (the median of all B - A differences) and its distribution-free interval
  (Bauer 1972) as the estimate: order statistics of the n_a * n_b differences, found by
  bisection on counts from sorted arrays, so memory and time stay O(n log n).
The arithmetic is scipy.special's, not scipy.stats' frozen distributions: a simulation calls
these a hundred thousand times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from sim.stats.summaries import MeanMoments, ProportionCounts, WindowMeans


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric: `estimate` is B - A, [ci_low, ci_high] its interval at 1 - alpha."""

    test: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float
    baseline: float  # A's value (proportion, mean or median) the lift is relative to
    statistic: float  # z, t or U

    @property
    def significant(self) -> bool:
        """p <= alpha (not <: the sequential test rejects when its likelihood ratio reaches 1 / alpha,
        and both kinds of comparison read the same way)."""
        return self.p_value <= self.alpha

    @property
    def relative_lift(self) -> float | None:
        """estimate / A's value; None when A's value is zero or unknown."""
        if self.baseline == 0 or not math.isfinite(self.baseline):
            return None
        return self.estimate / self.baseline


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def normal_quantile(p: float) -> float:
    return float(special.ndtri(p))


def two_sided_normal_p(z: float) -> float:
    return float(2.0 * special.ndtr(-abs(z)))


def two_proportion_z(a: ProportionCounts, b: ProportionCounts, alpha: float = 0.05) -> Comparison:
    _check_alpha(alpha)
    if a.n == 0 or b.n == 0:
        raise ValueError(f"both variants need trials, got n_a={a.n}, n_b={b.n}")
    p_a, p_b = a.mean, b.mean
    diff = p_b - p_a
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
    if se_null > 0:
        z = diff / se_null
        p = two_sided_normal_p(z)
    else:  # every trial in both variants succeeded, or none did: no evidence of a difference
        z, p = 0.0, 1.0
    half = normal_quantile(1 - alpha / 2) * math.sqrt(a.variance_of_mean + b.variance_of_mean)
    return Comparison("two-proportion z", diff, diff - half, diff + half, p, alpha, p_a, z)


def welch_t(a: MeanMoments, b: MeanMoments, alpha: float = 0.05) -> Comparison:
    _check_alpha(alpha)
    if a.n < 2 or b.n < 2:
        raise ValueError(f"Welch's test needs at least 2 samples per variant, got n_a={a.n}, n_b={b.n}")
    name = "Welch t (window means)" if isinstance(a, WindowMeans) else "Welch t"
    va, vb = a.variance_of_mean, b.variance_of_mean
    diff = b.mean - a.mean
    if not (va >= 0 and vb >= 0):  # too few windows to know the spread: no verdict
        return Comparison(name, diff, -math.inf, math.inf, 1.0, alpha, a.mean, math.nan)
    se = math.sqrt(va + vb)
    if se == 0:  # no spread at all: the difference is exact
        return Comparison(name, diff, diff, diff, 1.0 if diff == 0 else 0.0, alpha, a.mean,
                          0.0 if diff == 0 else math.copysign(math.inf, diff))
    df = (va + vb) ** 2 / (va * va / a.df + vb * vb / b.df)
    t = diff / se
    p = float(2.0 * special.stdtr(df, -abs(t)))
    half = float(special.stdtrit(df, 1 - alpha / 2)) * se
    return Comparison(name, diff, diff - half, diff + half, p, alpha, a.mean, t)


def mann_whitney(a: ArrayLike, b: ArrayLike, alpha: float = 0.05) -> Comparison:
    """U test of B against A (two-sided, scipy's exact or asymptotic p-value as it chooses); the
    estimate is the Hodges-Lehmann shift B - A with the interval that inverts the test (normal
    approximation to U's null distribution, without a tie correction: meant for latencies)."""
    _check_alpha(alpha)
    xa = np.sort(np.asarray(a, dtype=float))
    xb = np.sort(np.asarray(b, dtype=float))
    if xa.size == 0 or xb.size == 0:
        raise ValueError(f"both variants need samples, got n_a={xa.size}, n_b={xb.size}")
    result = stats.mannwhitneyu(xb, xa, alternative="two-sided")
    pairs = xa.size * xb.size
    if pairs % 2:
        shift = pairwise_difference_order_statistic(xa, xb, (pairs + 1) // 2)
    else:
        shift = 0.5 * (pairwise_difference_order_statistic(xa, xb, pairs // 2)
                       + pairwise_difference_order_statistic(xa, xb, pairs // 2 + 1))
    spread = math.sqrt(xa.size * xb.size * (xa.size + xb.size + 1) / 12.0)
    k = max(1, math.floor(pairs / 2 - normal_quantile(1 - alpha / 2) * spread))
    low = pairwise_difference_order_statistic(xa, xb, k)
    high = pairwise_difference_order_statistic(xa, xb, pairs + 1 - k)
    return Comparison("Mann-Whitney U", shift, low, high, float(result.pvalue), alpha, float(np.median(xa)),
                      float(result.statistic))


def pairwise_difference_order_statistic(a_sorted: np.ndarray, b_sorted: np.ndarray, k: int) -> float:
    """The k-th smallest (1-based) of the differences b_j - a_i over all pairs, without forming
    them: bisect on the value x, counting the pairs with b_j - a_i <= x by binary search in the
    sorted A, then snap to the smallest difference above the bracket's low end."""
    pairs = a_sorted.size * b_sorted.size
    if not 1 <= k <= pairs:
        raise ValueError(f"k must be in [1, {pairs}], got {k}")

    def first_within(x: float) -> np.ndarray:
        """Per b_j, the first index i from which b_j - a_i <= x (a suffix of the sorted A, since the
        difference falls as a_i grows). The binary search for a_i >= b_j - x can land a tie block
        off, as b_j - a_i and b_j - x round differently: step it until the computed differences agree."""
        index = np.searchsorted(a_sorted, b_sorted - x, side="left")
        last = a_sorted.size - 1
        for _ in range(64):
            before = a_sorted[np.clip(index - 1, 0, last)]
            down = (index > 0) & (b_sorted - before <= x)
            at = a_sorted[np.clip(index, 0, last)]
            up = ~down & (index <= last) & (b_sorted - at > x)
            if not (down.any() or up.any()):
                break
            index = np.where(down, np.searchsorted(a_sorted, before, side="left"), index)
            index = np.where(up, np.searchsorted(a_sorted, at, side="right"), index)
        return index

    def at_most(x: float) -> int:
        return int(pairs - first_within(x).sum())

    low = float(b_sorted[0] - a_sorted[-1])  # the smallest difference
    high = float(b_sorted[-1] - a_sorted[0])  # the largest: at_most(high) == pairs
    if at_most(low) >= k:
        return low
    # invariant: at_most(low) < k <= at_most(high); the answer lies in (low, high]
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid <= low or mid >= high:
            break
        if at_most(mid) >= k:
            high = mid
        else:
            low = mid
    # the smallest difference > low: for each b_j, the one with the last a_i before first_within(low)
    index = first_within(low) - 1
    valid = index >= 0
    candidates = b_sorted[valid] - a_sorted[index[valid]]
    return float(candidates.min()) if candidates.size else high
