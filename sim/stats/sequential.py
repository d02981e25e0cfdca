"""A test of B against A that stays valid however often it is looked at: the mixture SPRT.

A dashboard that shows a fixed-horizon p-value after every window and stops at the first one
below 0.05 rejects a true null far more often than 5% (about a quarter of A/A tests with 20
looks: tests/test_stats_sequential.py and `make bench-ab-stats` measure it). Johari, Pekelis
and Walsh ("Always Valid Inference", Operations Research 2022) give the fix used here.

After each window, with the running difference theta_hat = mean_B - mean_A and its variance
V = var_A / n_A + var_B / n_B (plug-in, so the validity is asymptotic, like the z-test's; for
proportions never below the pooled variance, so an arm with no event yet cannot make V vanish), the
likelihood ratio of "the difference is theta_0" mixed over a normal prior N(theta_0, tau^2) on
the alternative is

    Lambda(theta_0) = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta_0)^2 / (2 V (V + tau^2)))

Under the null it is a martingale, so by Ville's inequality it exceeds 1/alpha at *any* look
with probability at most alpha. Hence
- the always-valid p-value p_n = min(p_{n-1}, 1 / Lambda_n(0)): reject when p_n <= alpha;
- the confidence sequence {theta_0 : Lambda_n(theta_0) < 1/alpha}, i.e. theta_hat +- r_n with
  r_n^2 = V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)), intersected over the
  looks so far; 0 leaves that intersection exactly when p_n <= alpha, so the interval and the
  p-value do not disagree (but for the rare look that would empty the intersection, when this
  look's set is reported: `update`). It covers the true difference at every look at once with probability
  >= 1 - alpha.
Discrete looks only make it more conservative than alpha (the bound holds for continuous
monitoring).

The mixing variance tau^2: for a true difference theta, the mixture likelihood ratio at a look
with variance V is largest when tau^2 = theta^2 - V; by the time a test has the data to detect
theta, V is a small fraction of theta^2 (theta^2 / V >= 2 log(1/alpha) + log(1 + theta^2 / V),
about 8 to 15 at alpha = 0.05), so tau = |MDE| is the choice that detects an effect of exactly the design's MDE
soonest (`MixtureSPRT.for_design`). Smaller true effects are still detected, later.

`min_samples` per variant must arrive before the first decision: the plug-in variance of a
handful of requests is too noisy for the normal approximation the validity rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

from sim.stats.fixed import Comparison
from sim.stats.summaries import MeanMoments, ProportionCounts

S = TypeVar("S", ProportionCounts, MeanMoments)


@dataclass(frozen=True)
class SequentialLook:
    """What the mixture SPRT says after one window (all figures over the data so far)."""

    look: int  # 1 for the first window
    n_a: int
    n_b: int
    estimate: float  # B - A
    ci_low: float  # the always-valid interval: the confidence sequence, intersected over looks
    ci_high: float
    p_value: float  # always valid: stop the first time it is <= alpha, or never
    log_likelihood_ratio: float  # log Lambda_n(0); -inf before the burn-in is over
    z: float  # estimate / sqrt(V): the statistic to plot against z_boundary
    z_boundary: float  # |z| at which this look's Lambda reaches 1 / alpha (inf during burn-in)
    alpha: float
    baseline: float  # A's mean so far
    rejected: bool  # p_value <= alpha: B differs from A, at this look or before

    def comparison(self) -> Comparison:
        return Comparison("mixture SPRT", self.estimate, self.ci_low, self.ci_high, self.p_value, self.alpha,
                          self.baseline, self.z)


def log_mixture_likelihood_ratio(estimate: float, variance: float, tau: float, theta_0: float = 0.0) -> float:
    """log Lambda(theta_0) for a normal estimate with `variance` and a N(theta_0, tau^2) mixture."""
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + t2 * (estimate - theta_0) ** 2 / (2 * variance * (variance + t2))


def confidence_radius(variance: float, tau: float, alpha: float) -> float:
    """r with Lambda(theta_hat +- r) = 1 / alpha: half the width of this look's confidence set."""
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))


class MixtureSPRT(Generic[S]):
    """The always-valid test of B - A = 0, fed one window of per-variant statistics at a time
    (`ProportionCounts` or `MeanMoments`, the same kind for both variants and every window)."""

    def __init__(self, tau: float, alpha: float = 0.05, min_samples: int = 100) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"the mixing standard deviation tau must be finite and > 0, got {tau}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {min_samples}")
        self.tau = tau
        self.alpha = alpha
        self.min_samples = min_samples
        self.a: S | None = None
        self.b: S | None = None
        self.looks: list[SequentialLook] = []
        self._p = 1.0
        self._low = -math.inf
        self._high = math.inf

    @classmethod
    def for_design(cls, mde: float, alpha: float = 0.05, min_samples: int = 100) -> MixtureSPRT[S]:
        """tau = |MDE|: fastest to detect an effect of the design's size (module docstring)."""
        return cls(abs(mde), alpha, min_samples)

    @property
    def rejected(self) -> bool:
        return self._p <= self.alpha

    def update(self, a_window: S, b_window: S) -> SequentialLook:
        """Add one window's statistics of A and B; the look at everything seen so far."""
        a = a_window if self.a is None else self.a + a_window  # type: ignore[operator]
        b = b_window if self.b is None else self.b + b_window  # type: ignore[operator]
        self.a, self.b = a, b
        estimate = b.mean - a.mean if a.n and b.n else math.nan
        variance = a.variance_of_mean + b.variance_of_mean if a.n >= 2 and b.n >= 2 else math.nan
        if isinstance(a, ProportionCounts) and isinstance(b, ProportionCounts) and a.n and b.n:
            # never below the pooled (null) variance: an arm with no event yet (0 errors of 100)
            # has a plug-in variance of 0, which would make any event in the other arm "significant"
            pooled = (a.successes + b.successes) / (a.n + b.n)
            variance = max(variance, pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
        informative = min(a.n, b.n) >= self.min_samples and variance > 0  # NaN compares False
        if informative:
            log_lr = log_mixture_likelihood_ratio(estimate, variance, self.tau)
            self._p = min(self._p, math.exp(-log_lr) if log_lr < 700 else 0.0)
            radius = confidence_radius(variance, self.tau, self.alpha)
            low, high = max(self._low, estimate - radius), min(self._high, estimate + radius)
            if low > high:  # the data contradict an earlier look (probability <= alpha): this look's set
                low, high = estimate - radius, estimate + radius
            self._low, self._high = low, high
            z, boundary = estimate / math.sqrt(variance), radius / math.sqrt(variance)
        else:
            log_lr, z, boundary = -math.inf, math.nan, math.inf
        look = SequentialLook(len(self.looks) + 1, a.n, b.n, estimate, self._low, self._high, self._p, log_lr, z,
                              boundary, self.alpha, a.mean if a.n else math.nan, self.rejected)
        self.looks.append(look)
        return look
