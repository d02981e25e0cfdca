"""Sample-ratio mismatch: an injected assignment bias is flagged; an honest split is flagged at
the threshold's rate and no more."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from scenarios.bench_ab_stats import binomial_tolerance, srm_flag_rate
from sim.stats.srm import sample_ratio_mismatch


def test_a_52_48_split_of_20000_planned_50_50_is_flagged() -> None:
    check = sample_ratio_mismatch([10_400, 9_600], [0.5, 0.5])
    assert check.mismatch
    reference = stats.chisquare([10_400, 9_600], [10_000, 10_000])
    assert (check.chi2, check.p_value) == pytest.approx((reference.statistic, reference.pvalue))


def test_a_split_as_planned_is_not_flagged() -> None:
    assert not sample_ratio_mismatch([10_040, 9_960], [0.5, 0.5]).mismatch
    assert not sample_ratio_mismatch([9_000, 1_000], [0.9, 0.1]).mismatch
    assert sample_ratio_mismatch([9_000, 1_000], [0.5, 0.5]).mismatch


def test_three_variants_are_checked_against_their_shares() -> None:
    check = sample_ratio_mismatch([5_000, 2_600, 2_400], [0.5, 0.25, 0.25])
    assert check.expected == pytest.approx((5_000, 2_500, 2_500))
    assert check.p_value == pytest.approx(stats.chisquare([5_000, 2_600, 2_400], [5_000, 2_500, 2_500]).pvalue)


RUNS = 2000


def test_honest_splits_are_flagged_at_the_thresholds_rate() -> None:
    """2,000 binomial 50/50 assignments of 20,000 requests, threshold 0.05: the flagged share lies
    within 3 binomial standard errors of 0.05."""
    rate = srm_flag_rate(RUNS, 20_000, 0.5, 0.05, np.random.default_rng(1)).value
    assert abs(rate - 0.05) <= binomial_tolerance(0.05, RUNS)


def test_an_injected_bias_is_flagged_in_most_experiments() -> None:
    """A's share 0.52 instead of 0.5 at 20,000 requests: the expected chi-square is ~33, flagged
    at p < 0.001 unless chance pulls the split ~2.4 standard deviations back toward 50/50."""
    assert srm_flag_rate(500, 20_000, 0.52, 0.001, np.random.default_rng(2)).value >= 0.95


@pytest.mark.parametrize("counts, allocation", [([1, 2], [0.5, 0.6]), ([1, 2], [1.0, 0.0]), ([1, 2, 3], [0.5, 0.5]), ([5], [1.0])])
def test_impossible_plans_are_refused(counts: list[int], allocation: list[float]) -> None:
    with pytest.raises(ValueError):
        sample_ratio_mismatch(counts, allocation)
