"""Sufficient statistics of one variant's metric over a window, and how windows add up.

Every test in sim.stats needs no more than these: a proportion metric (correct answers, errors)
is summed up by its count and successes; a continuous one (latency) by its count, sum and sum of
squares. The twin and the gateway hand over one of these per variant per window, and the
experiment accumulates them with `+`; only Mann-Whitney at the end needs the raw samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class ProportionCounts:
    """`successes` of `n` trials (correct answers of judged ones, errors of requests)."""

    n: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.successes <= self.n:
            raise ValueError(f"need 0 <= successes <= n, got successes={self.successes}, n={self.n}")

    def __add__(self, other: ProportionCounts) -> ProportionCounts:
        return ProportionCounts(self.n + other.n, self.successes + other.successes)

    @property
    def mean(self) -> float:
        """The observed proportion (NaN before any trial)."""
        return self.successes / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Bernoulli variance at the observed proportion, p (1 - p)."""
        p = self.mean
        return p * (1.0 - p)

    @property
    def variance_of_mean(self) -> float:
        """The squared standard error of `mean`: p (1 - p) / n."""
        return self.variance / self.n if self.n else math.nan


@dataclass(frozen=True)
class MeanMoments:
    """Count, sum and sum of squares of a continuous metric: enough for a mean and its variance."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 0 or self.total_sq < 0:
            raise ValueError(f"need n >= 0 and total_sq >= 0, got n={self.n}, total_sq={self.total_sq}")

    @classmethod
    def of(cls, samples: Iterable[float] | np.ndarray) -> MeanMoments:
        x = np.asarray(samples, dtype=float)
        return cls(int(x.size), float(x.sum()), float(np.dot(x, x)))

    def __add__(self, other: MeanMoments) -> MeanMoments:
        return MeanMoments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 in the denominator); NaN below two samples. Computed from
        the raw moments, which lose digits only when the spread is ~1e-8 of the mean: far below
        any latency's."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    @property
    def variance_of_mean(self) -> float:
        """The squared standard error of `mean`: s^2 / n."""
        return self.variance / self.n if self.n else math.nan

    @property
    def df(self) -> float:
        """Degrees of freedom of `variance_of_mean` (a t interval's)."""
        return self.n - 1


@dataclass(frozen=True)
class WindowMeans(MeanMoments):
    """A mean whose observations are not independent within a window: latency under load, where
    a busy spell slows every request in it alike. s^2 / n then understates the mean's variance
    (an A/A experiment at a third of capacity found a latency "difference" in 10-14% of runs at
    alpha 0.05: `make bench-ab-twin`). The batch-means estimate reads it from how the windows'
    means scatter instead: with window j's count n_j and mean m_j, and N = sum n_j,

        Var(mean) = sum_j n_j (m_j - mean)^2 / ((k - 1) N),

    never less than s^2 / N (what independent requests would give: a lower value is the chance
    of a few windows agreeing), with k - 1 degrees of freedom. Below MIN_WINDOWS windows it is
    unknown (NaN), so a test waits for them: few window means say little about a spread."""

    windows: int = 0  # windows with at least one observation
    window_sq: float = 0.0  # sum over windows of total_j^2 / n_j

    MIN_WINDOWS = 5

    @classmethod
    def window(cls, n: int, total: float, total_sq: float) -> WindowMeans:
        """One window's observations."""
        return cls(n, total, total_sq, 1 if n else 0, total * total / n if n else 0.0)

    def __add__(self, other: MeanMoments) -> WindowMeans:
        if not isinstance(other, WindowMeans):
            raise TypeError("a WindowMeans adds up windows: add WindowMeans.window(...)")
        return WindowMeans(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq,
                           self.windows + other.windows, self.window_sq + other.window_sq)

    @property
    def variance_of_mean(self) -> float:
        if self.windows < self.MIN_WINDOWS or self.n < 2:
            return math.nan
        between = max(0.0, self.window_sq - self.total * self.total / self.n) / (self.windows - 1)
        return max(between, self.variance) / self.n

    @property
    def df(self) -> float:
        return self.windows - 1


Summary = ProportionCounts | MeanMoments
