"""How many requests an A/B test needs, and how long that takes at the scenario's rate.

The sizes are those of the fixed-horizon tests in `sim.stats.fixed`, so the power promised here
is the power those tests have (checked by simulation in tests/test_stats_design.py):
- two proportions: the z-test with the pooled variance under the null and the unpooled one under
  the alternative (Fleiss' formula without continuity correction; statsmodels'
  `power_proportions_2indep` computes the same power);
- two means: Welch's t-test, its power from the noncentral t with Welch-Satterthwaite degrees of
  freedom, so small samples are not promised the normal approximation's optimism.
Each size is the smallest `n_a` (with `n_b = ceil(ratio * n_a)`) whose power reaches the target.
`ratio` is `n_b / n_a`, the allocation's B share over its A share (`allocation_ratio`).
A sequential experiment (`sim.stats.sequential`) pays for being valid at every look with more
data at the same power: `sequential_*_sample_size` is the length to plan it for (a bound from
the last look alone; the test usually stops before it).
The minimum detectable effect is absolute (B - A in the metric's unit) and tests are two-sided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from scipy import special, stats

from sim.stats.sequential import confidence_radius


@dataclass(frozen=True)
class SampleSize:
    """Requests per variant the design needs, and the power the test has at exactly these."""

    n_a: int
    n_b: int
    power: float

    @property
    def total(self) -> int:
        return self.n_a + self.n_b


def _check(alpha: float, power: float, ratio: float, mde: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not ratio > 0:
        raise ValueError(f"ratio n_b / n_a must be > 0, got {ratio}")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError(f"the minimum detectable effect must be a finite non-zero difference, got {mde}")


def allocation_ratio(share_a: float, share_b: float) -> float:
    """`n_b / n_a` for traffic shares (weights) of A and B."""
    if not (share_a > 0 and share_b > 0):
        raise ValueError(f"both variants need a positive share, got {share_a} and {share_b}")
    return share_b / share_a


def proportion_power(baseline: float, mde: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-proportion z-test (pooled null variance) when B = A + mde."""
    p_a, p_b = baseline, baseline + mde
    pooled = (n_a * p_a + n_b * p_b) / (n_a + n_b)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se_alt = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    z = special.ndtri(1 - alpha / 2)
    d = abs(mde)
    return float(special.ndtr((d - z * se_null) / se_alt) + special.ndtr((-d - z * se_null) / se_alt))


def proportion_sample_size(baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                           ratio: float = 1.0) -> SampleSize:
    """Sample sizes to detect B - A = `mde` on a proportion whose A value is `baseline`."""
    _check(alpha, power, ratio, mde)
    if not 0 < baseline < 1 or not 0 < baseline + mde < 1:
        raise ValueError(f"baseline {baseline} and baseline + mde {baseline + mde} must both be in (0, 1)")
    p_a, p_b = baseline, baseline + mde
    pooled = (p_a + ratio * p_b) / (1 + ratio)
    z_a, z_b = special.ndtri(1 - alpha / 2), special.ndtri(power)
    root = z_a * math.sqrt(pooled * (1 - pooled) * (1 + 1 / ratio)) + z_b * math.sqrt(p_a * (1 - p_a) + p_b * (1 - p_b) / ratio)
    first_guess = math.ceil(root * root / (mde * mde))
    return _smallest(lambda n_a, n_b: proportion_power(baseline, mde, n_a, n_b, alpha), first_guess, ratio, power)


def mean_power(sd_a: float, mde: float, n_a: int, n_b: int, alpha: float = 0.05, sd_b: float | None = None) -> float:
    """Power of the two-sided Welch t-test when B's mean is A's + mde (noncentral t)."""
    sd_b = sd_a if sd_b is None else sd_b
    va, vb = sd_a * sd_a / n_a, sd_b * sd_b / n_b
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))
    t = float(stats.t.ppf(1 - alpha / 2, df))
    noncentrality = abs(mde) / se
    return float(stats.nct.sf(t, df, noncentrality) + stats.nct.cdf(-t, df, noncentrality))


def mean_sample_size(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                     sd_b: float | None = None) -> SampleSize:
    """Sample sizes to detect a difference of means B - A = `mde` with Welch's test; `sd` is A's
    standard deviation, `sd_b` B's (default: the same)."""
    _check(alpha, power, ratio, mde)
    sd_b = sd if sd_b is None else sd_b
    if not (sd > 0 and sd_b > 0):
        raise ValueError(f"standard deviations must be > 0, got {sd} and {sd_b}")
    z_a, z_b = special.ndtri(1 - alpha / 2), special.ndtri(power)
    first_guess = max(2, math.ceil((z_a + z_b) ** 2 * (sd * sd + sd_b * sd_b / ratio) / (mde * mde)))
    return _smallest(lambda n_a, n_b: mean_power(sd, mde, n_a, n_b, alpha, sd_b), first_guess, ratio, power)


def _smallest(power_at: Callable[[int, int], float], first_guess: int, ratio: float, target: float) -> SampleSize:
    """The smallest n_a (n_b = ceil(ratio n_a), both >= 2) whose power reaches `target`, searched
    from the closed form's answer (which is right, or off by a few, for every design here)."""

    def at(n_a: int) -> float:
        return power_at(n_a, max(2, math.ceil(ratio * n_a)))

    n = max(2, first_guess)
    if at(n) < target:  # the closed form is a normal approximation: go up, doubling, then bisect
        low, high = n, n * 2
        while at(high) < target:
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if at(mid) < target else (low, mid)
        n = high
    while n > 2 and at(n - 1) >= target:
        n -= 1
    return SampleSize(n, max(2, math.ceil(ratio * n)), at(n))


def sequential_power(mde: float, variance: float, tau: float, alpha: float = 0.05) -> float:
    """A lower bound on the mixture SPRT's power by a look where its estimate's variance is
    `variance`: the chance that this one look is beyond the boundary (a crossing at any earlier
    look only adds to it; the estimate is taken as normal around B - A = mde)."""
    boundary = confidence_radius(variance, tau, alpha)
    se = math.sqrt(variance)
    d = abs(mde)
    return float(special.ndtr((d - boundary) / se) + special.ndtr((-d - boundary) / se))


def sequential_proportion_sample_size(baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                                      ratio: float = 1.0, tau: float | None = None) -> SampleSize:
    """Sizes by which the mixture SPRT (`sim.stats.sequential`, tau = |mde| unless given) has at
    least `power` against B - A = mde on a proportion: the length to plan a sequential experiment
    for. A bound, so conservative: the test often stops well before it (`make bench-ab-stats`)."""
    _check(alpha, power, ratio, mde)
    if not 0 < baseline < 1 or not 0 < baseline + mde < 1:
        raise ValueError(f"baseline {baseline} and baseline + mde {baseline + mde} must both be in (0, 1)")
    p_a, p_b = baseline, baseline + mde
    mixing = abs(mde) if tau is None else tau
    fixed = proportion_sample_size(baseline, mde, alpha, power, ratio)
    return _smallest(lambda n_a, n_b: sequential_power(mde, p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b, mixing, alpha),
                     fixed.n_a, ratio, power)


def sequential_mean_sample_size(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                                sd_b: float | None = None, tau: float | None = None) -> SampleSize:
    """As `sequential_proportion_sample_size`, for a difference of means with spreads sd (A), sd_b (B)."""
    _check(alpha, power, ratio, mde)
    sd_b = sd if sd_b is None else sd_b
    if not (sd > 0 and sd_b > 0):
        raise ValueError(f"standard deviations must be > 0, got {sd} and {sd_b}")
    mixing = abs(mde) if tau is None else tau
    fixed = mean_sample_size(sd, mde, alpha, power, ratio, sd_b)
    return _smallest(lambda n_a, n_b: sequential_power(mde, sd * sd / n_a + sd_b * sd_b / n_b, mixing, alpha),
                     fixed.n_a, ratio, power)


def duration_s(sizes: Sequence[int], allocation: Sequence[float], rate: float) -> float:
    """Seconds of traffic at `rate` requests/s until every variant i has `sizes[i]` requests when
    it gets the share `allocation[i]`: the slowest variant to fill decides."""
    if len(sizes) != len(allocation):
        raise ValueError(f"{len(sizes)} sizes for {len(allocation)} allocation shares")
    if not rate > 0:
        raise ValueError(f"the request rate must be > 0, got {rate}")
    if any(share <= 0 for share in allocation):
        raise ValueError(f"every variant needs a positive share, got {list(allocation)}")
    return max(n / share for n, share in zip(sizes, allocation)) / rate
