"""One variant's metric with its confidence interval: what the per-window figures plot.

- a proportion (accuracy, error rate): the Wilson score interval, which stays inside [0, 1] and
  keeps its coverage for small windows and rates near 0 or 1, where the Wald interval fails
  (Brown, Cai and DasGupta, 2001); statsmodels' `proportion_confint(method="wilson")`;
- a mean (latency): the t interval from count, sum and sum of squares.
These describe one variant; comparisons of B with A live in `sim.stats.fixed` and
`sim.stats.sequential`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from sim.stats.summaries import MeanMoments, ProportionCounts


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int


def proportion_estimate(counts: ProportionCounts, alpha: float = 0.05) -> Estimate:
    """The proportion with its Wilson interval; NaN throughout before any trial."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if counts.n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    p, n = counts.mean, counts.n
    z = float(special.ndtri(1 - alpha / 2))
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_estimate(moments: MeanMoments, alpha: float = 0.05) -> Estimate:
    """The mean with its t interval; the interval is NaN below two samples."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if moments.n < 2 or not moments.variance_of_mean >= 0:  # NaN: too few windows of a WindowMeans
        return Estimate(moments.mean, math.nan, math.nan, moments.n)
    half = float(special.stdtrit(moments.df, 1 - alpha / 2)) * math.sqrt(moments.variance_of_mean)
    return Estimate(moments.mean, moments.mean - half, moments.mean + half, moments.n)


def estimate(summary: ProportionCounts | MeanMoments, alpha: float = 0.05) -> Estimate:
    if isinstance(summary, ProportionCounts):
        return proportion_estimate(summary, alpha)
    return mean_estimate(summary, alpha)
