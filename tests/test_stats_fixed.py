"""The fixed-horizon tests equal scipy's and statsmodels' on fixed data, and their intervals
cover the true difference at the nominal rate (by simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from scenarios.bench_ab_stats import AccuracyCase, LatencyCase, binomial_tolerance, fixed_at_design
from sim.stats.fixed import mann_whitney, pairwise_difference_order_statistic, two_proportion_z, welch_t
from sim.stats.summaries import MeanMoments, ProportionCounts

COUNTS = [((1000, 900), (1000, 930)), ((3213, 2890), (2500, 2301)), ((80, 3), (120, 11)), ((50, 25), (50, 25))]


@pytest.mark.parametrize("a, b", COUNTS)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_two_proportion_z_equals_statsmodels(a: tuple[int, int], b: tuple[int, int], alpha: float) -> None:
    result = two_proportion_z(ProportionCounts(*a), ProportionCounts(*b), alpha)
    z, p = proportions_ztest([b[1], a[1]], [b[0], a[0]])  # pooled variance, B - A
    low, high = confint_proportions_2indep(b[1], b[0], a[1], a[0], method="wald", compare="diff", alpha=alpha)
    assert result.estimate == pytest.approx(b[1] / b[0] - a[1] / a[0])
    assert result.statistic == pytest.approx(z)
    assert result.p_value == pytest.approx(p)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))


def test_two_proportion_z_without_any_variation_sees_no_difference() -> None:
    result = two_proportion_z(ProportionCounts(100, 100), ProportionCounts(50, 50))
    assert result.p_value == 1.0 and not result.significant and result.estimate == 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.05, 0.10])
def test_welch_from_moments_equals_scipy_on_the_samples(seed: int, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(-3.0, 0.5, 40 * seed), rng.lognormal(-2.9, 0.8, 25 + 7 * seed)
    result = welch_t(MeanMoments.of(a), MeanMoments.of(b), alpha)
    reference = stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(1 - alpha)
    assert result.estimate == pytest.approx(b.mean() - a.mean())
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-7)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-6)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-7)
    assert result.relative_lift == pytest.approx((b.mean() - a.mean()) / a.mean())


@pytest.mark.parametrize("sizes", [(30, 40), (200, 150), (7, 9)])
def test_mann_whitney_equals_scipy_and_its_shift_the_brute_force_hodges_lehmann(sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.lognormal(0.0, 0.6, sizes[0]), rng.lognormal(0.2, 0.6, sizes[1])
    result = mann_whitney(a, b)
    reference = stats.mannwhitneyu(b, a, alternative="two-sided")
    assert result.statistic == reference.statistic
    assert result.p_value == pytest.approx(reference.pvalue)
    differences = np.sort(np.subtract.outer(b, a).ravel())
    assert result.estimate == pytest.approx(np.median(differences))
    pairs = differences.size  # the interval that inverts the U test: order statistics k and N + 1 - k
    k = max(1, math.floor(pairs / 2 - stats.norm.ppf(0.975) * math.sqrt(a.size * b.size * (a.size + b.size + 1) / 12)))
    assert (result.ci_low, result.ci_high) == pytest.approx((differences[k - 1], differences[pairs - k]))


@settings(max_examples=100)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=15), st.lists(st.integers(0, 20), min_size=1, max_size=15),
       st.data())
def test_order_statistic_of_pairwise_differences_equals_sorting_them(a: list[int], b: list[int], data: st.DataObject) -> None:
    """Ties included: integers in a small range repeat."""
    xa, xb = np.sort(np.asarray(a, dtype=float) / 7), np.sort(np.asarray(b, dtype=float) / 7)
    differences = np.sort(np.subtract.outer(xb, xa).ravel())
    k = data.draw(st.integers(1, differences.size))
    assert pairwise_difference_order_statistic(xa, xb, k) == pytest.approx(differences[k - 1], abs=1e-12)


RUNS = 600


@pytest.mark.parametrize("case", [AccuracyCase(), LatencyCase()], ids=lambda c: c.name)
def test_intervals_cover_the_true_effect_at_their_nominal_rate(case: AccuracyCase | LatencyCase) -> None:
    """600 experiments at the design's size with an effect of exactly the MDE; the coverage may
    stray from 1 - alpha by 3 binomial standard errors (a 0.3% chance by luck alone)."""
    coverage = fixed_at_design(case, RUNS, np.random.default_rng(11)).coverage.value
    assert abs(coverage - (1 - case.alpha)) <= binomial_tolerance(1 - case.alpha, RUNS)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_alpha_outside_the_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        two_proportion_z(ProportionCounts(10, 5), ProportionCounts(10, 6), bad)
    with pytest.raises(ValueError, match="alpha"):
        welch_t(MeanMoments.of([1.0, 2.0]), MeanMoments.of([1.0, 3.0]), bad)
