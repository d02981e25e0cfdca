"""The design's sample sizes: the power they promise is the fixed tests' power (statsmodels'
formula on fixed inputs, and simulation), they are the smallest that reach it, and they move
the way a design must."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.proportion import power_proportions_2indep, samplesize_proportions_2indep_onetail

from scenarios.bench_ab_stats import AccuracyCase, LatencyCase, binomial_tolerance, fixed_at_design
from sim.stats.design import (allocation_ratio, duration_s, mean_power, mean_sample_size, proportion_power,
                              proportion_sample_size, sequential_mean_sample_size, sequential_power,
                              sequential_proportion_sample_size)

DESIGNS = [(0.90, 0.02, 0.05, 0.8, 1.0), (0.10, -0.03, 0.01, 0.9, 1.0), (0.50, 0.05, 0.05, 0.8, 0.25), (0.97, 0.01, 0.10, 0.7, 3.0)]


@pytest.mark.parametrize("baseline, mde, alpha, power, ratio", DESIGNS)
def test_proportion_power_is_statsmodels_power_of_the_pooled_z_test(baseline: float, mde: float, alpha: float, power: float,
                                                                   ratio: float) -> None:
    size = proportion_sample_size(baseline, mde, alpha, power, ratio)
    # statsmodels' sample 1 is the one with prop2 + diff, i.e. B; its ratio is nobs2 / nobs1 = n_a / n_b
    reference = power_proportions_2indep(mde, baseline, size.n_b, ratio=size.n_a / size.n_b, alpha=alpha).power
    assert size.power == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("baseline, mde, alpha, power, ratio", DESIGNS)
def test_proportion_size_is_the_smallest_that_reaches_the_power(baseline: float, mde: float, alpha: float, power: float,
                                                                ratio: float) -> None:
    size = proportion_sample_size(baseline, mde, alpha, power, ratio)
    assert size.n_b == math.ceil(ratio * size.n_a)
    assert size.power >= power
    assert proportion_power(baseline, mde, size.n_a - 1, math.ceil(ratio * (size.n_a - 1)), alpha) < power


def test_proportion_size_at_equal_allocation_is_statsmodels_rounded_up() -> None:
    size = proportion_sample_size(0.90, 0.02, 0.05, 0.8)
    assert size.n_a == math.ceil(samplesize_proportions_2indep_onetail(0.02, 0.90, 0.8, ratio=1, alpha=0.05))


@pytest.mark.parametrize("sd, mde, alpha, power, ratio", [(0.025, 0.0025, 0.05, 0.8, 1.0), (1.0, 0.5, 0.01, 0.9, 1.0),
                                                          (2.0, -0.3, 0.05, 0.8, 0.5)])
def test_welch_size_agrees_with_statsmodels_pooled_t_for_equal_spreads(sd: float, mde: float, alpha: float, power: float,
                                                                     ratio: float) -> None:
    """Equal spreads: Welch's and the pooled t differ only in their degrees of freedom."""
    size = mean_sample_size(sd, mde, alpha, power, ratio)
    reference = TTestIndPower().solve_power(effect_size=abs(mde) / sd, alpha=alpha, power=power, ratio=ratio)
    assert size.n_a == pytest.approx(reference, rel=0.01, abs=1)
    assert size.power >= power > mean_power(sd, mde, size.n_a - 1, math.ceil(ratio * (size.n_a - 1)), alpha)


RUNS = 600


@pytest.mark.parametrize("case", [AccuracyCase(), LatencyCase()], ids=lambda c: c.name)
def test_fixed_test_power_at_the_designed_size_matches_the_design(case: AccuracyCase | LatencyCase) -> None:
    """600 simulated experiments with an effect of exactly the MDE at the designed size: the
    share the fixed test rejects lies within 3 binomial standard errors of the promised power."""
    result = fixed_at_design(case, RUNS, np.random.default_rng(5))
    assert abs(result.power.value - result.design.power) <= binomial_tolerance(result.design.power, RUNS)


@given(st.floats(0.05, 0.9), st.floats(0.005, 0.05), st.floats(0.6, 0.95))
def test_sizes_grow_for_smaller_effects_and_more_power(baseline: float, mde: float, power: float) -> None:
    size = proportion_sample_size(baseline, mde, 0.05, power).n_a
    assert proportion_sample_size(baseline, mde / 2, 0.05, power).n_a > size
    assert proportion_sample_size(baseline, mde, 0.05, min(0.99, power + 0.04)).n_a >= size
    assert proportion_sample_size(baseline, mde, 0.01, power).n_a > size


def test_duration_is_the_slowest_variant_to_fill_at_its_share() -> None:
    size = proportion_sample_size(0.90, 0.02)
    assert duration_s([size.n_a, size.n_b], [0.5, 0.5], 200.0) == pytest.approx(2 * size.n_a / 200.0)
    # a 90/10 split fills B nine times slower than A
    assert duration_s([1000, 1000], [0.9, 0.1], 10.0) == pytest.approx(1000 / 0.1 / 10.0)
    assert allocation_ratio(0.9, 0.1) == pytest.approx(1 / 9)


@pytest.mark.parametrize("kwargs, word", [
    (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"), (dict(power=1.0), "power"), (dict(power=0.0), "power"),
    (dict(mde=0.0), "minimum detectable effect"), (dict(mde=0.2), "baseline"), (dict(ratio=0.0), "ratio"),
])
def test_impossible_designs_are_refused(kwargs: dict[str, float], word: str) -> None:
    args = dict(baseline=0.9, mde=0.02, alpha=0.05, power=0.8, ratio=1.0) | kwargs
    with pytest.raises(ValueError, match=word):
        proportion_sample_size(**args)


def test_a_mean_design_without_spread_is_refused() -> None:
    with pytest.raises(ValueError, match="standard deviation"):
        mean_sample_size(0.0, 0.1)


@pytest.mark.parametrize("baseline, mde, alpha, power, ratio", DESIGNS)
def test_a_sequential_design_needs_more_than_a_fixed_one_and_no_more_than_it_must(baseline: float, mde: float, alpha: float,
                                                                                 power: float, ratio: float) -> None:
    """Validity at every look costs data; the size is still the smallest whose bound reaches the power."""
    fixed = proportion_sample_size(baseline, mde, alpha, power, ratio)
    size = sequential_proportion_sample_size(baseline, mde, alpha, power, ratio)
    assert size.n_a > fixed.n_a and size.power >= power
    n_a, n_b = size.n_a - 1, math.ceil(ratio * (size.n_a - 1))
    variance = baseline * (1 - baseline) / n_a + (baseline + mde) * (1 - baseline - mde) / n_b
    assert sequential_power(mde, variance, abs(mde), alpha) < power
    assert sequential_mean_sample_size(1.0, mde * 10, alpha, power, ratio).n_a > mean_sample_size(1.0, mde * 10, alpha, power, ratio).n_a
