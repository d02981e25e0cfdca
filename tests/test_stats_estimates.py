"""Per-variant intervals equal statsmodels' Wilson and scipy's t interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from sim.stats.estimates import estimate, mean_estimate, proportion_estimate
from sim.stats.summaries import MeanMoments, ProportionCounts


@pytest.mark.parametrize("n, successes", [(100, 93), (20, 0), (20, 20), (3213, 2890), (7, 3)])
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_proportion_interval_is_wilsons(n: int, successes: int, alpha: float) -> None:
    e = proportion_estimate(ProportionCounts(n, successes), alpha)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    assert e.value == successes / n
    assert (e.ci_low, e.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_mean_interval_is_the_t_interval() -> None:
    x = np.random.default_rng(0).lognormal(-3, 0.5, 57)
    e = mean_estimate(MeanMoments.of(x), 0.05)
    low, high = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    assert (e.value, e.ci_low, e.ci_high) == pytest.approx((x.mean(), low, high))


def test_estimate_dispatches_on_the_kind_of_summary_and_has_nothing_before_data() -> None:
    assert estimate(ProportionCounts(10, 5)).value == 0.5
    assert estimate(MeanMoments.of([1.0, 3.0])).value == 2.0
    assert math.isnan(estimate(ProportionCounts()).ci_low) and math.isnan(estimate(MeanMoments.of([1.0])).ci_high)
