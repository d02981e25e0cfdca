"""The mixture SPRT: valid under peeking (A/A by simulation), where the fixed test is not;
it finds a true effect; its confidence sequence covers at every look; it is Johari et al.'s."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.bench_ab_stats import (AccuracyCase, LatencyCase, Peeking, SequentialUnderEffect, aa_peeking,
                                      binomial_tolerance, sequential_under_effect)
from sim.stats.sequential import MixtureSPRT, confidence_radius, log_mixture_likelihood_ratio
from sim.stats.summaries import MeanMoments, ProportionCounts

CASES = {"accuracy": AccuracyCase(), "latency": LatencyCase()}
AA_RUNS = 600
LOOKS = 20


@cache
def peeking(case: str) -> Peeking:
    return aa_peeking(CASES[case], AA_RUNS, LOOKS, np.random.default_rng(2024))


@cache
def under_effect(case: str) -> SequentialUnderEffect:
    return sequential_under_effect(CASES[case], 200, LOOKS, 4.0, np.random.default_rng(7))


@pytest.mark.parametrize("case", CASES)
def test_aa_false_positive_rate_with_a_look_every_window_stays_within_alpha(case: str) -> None:
    """600 A/A experiments, 20 looks each: the share the mixture SPRT ever rejects may exceed
    alpha by at most 3 binomial standard errors of alpha at 600 runs (0.027)."""
    alpha = CASES[case].alpha
    assert peeking(case).sequential.value <= alpha + binomial_tolerance(alpha, AA_RUNS)


@pytest.mark.parametrize("case", CASES)
def test_naive_fixed_test_at_every_look_exceeds_alpha(case: str) -> None:
    """The same A/A experiments, the fixed test asked at every look: its false-positive rate is
    beyond anything alpha and Monte Carlo error explain."""
    alpha = CASES[case].alpha
    assert peeking(case).naive.value > alpha + binomial_tolerance(alpha, AA_RUNS)


@pytest.mark.parametrize("case", CASES)
def test_sequential_test_eventually_rejects_a_true_effect_of_the_mde(case: str) -> None:
    """Looked at every 1/20 of the fixed design's size, up to four times it: it rejects in at
    least 95% of 200 runs."""
    assert under_effect(case).rejected.value >= 0.95


@pytest.mark.parametrize("case", CASES)
def test_confidence_sequence_covers_the_effect_at_every_look_at_its_nominal_rate(case: str) -> None:
    """Uniform coverage: the share of runs whose interval held the true effect at *every* one of
    80 looks is at least 1 - alpha, less 3 binomial standard errors at 200 runs."""
    alpha = CASES[case].alpha
    assert under_effect(case).covered.value >= 1 - alpha - binomial_tolerance(1 - alpha, 200)


def test_likelihood_ratio_is_johari_et_als_for_two_equal_streams() -> None:
    """Their two-stream form: n pairs, per-observation variance sigma^2, difference of means d:
    Lambda = sqrt(2 s2 / (2 s2 + n t2)) exp(n^2 t2 d^2 / (4 s2 (2 s2 + n t2)))."""
    n, s2, t2, d = 500, 0.09, 0.02**2, 0.013
    paper = 0.5 * math.log(2 * s2 / (2 * s2 + n * t2)) + n * n * t2 * d * d / (4 * s2 * (2 * s2 + n * t2))
    assert log_mixture_likelihood_ratio(d, 2 * s2 / n, math.sqrt(t2)) == pytest.approx(paper)


@given(st.floats(1e-6, 1.0), st.floats(1e-3, 1.0), st.floats(0.001, 0.2), st.floats(-1.0, 1.0))
def test_confidence_radius_is_where_the_likelihood_ratio_reaches_one_over_alpha(variance: float, tau: float, alpha: float,
                                                                                 estimate: float) -> None:
    r = confidence_radius(variance, tau, alpha)
    for theta_0 in (estimate - r, estimate + r):
        assert log_mixture_likelihood_ratio(estimate, variance, tau, theta_0) == pytest.approx(math.log(1 / alpha), rel=1e-9)


windows = st.lists(st.tuples(st.integers(50, 400), st.floats(0.5, 0.95), st.floats(0.5, 0.95)), min_size=1, max_size=15)


@given(windows)
def test_p_value_never_rises_and_agrees_with_the_interval(sequence: list[tuple[int, float, float]]) -> None:
    test: MixtureSPRT[ProportionCounts] = MixtureSPRT(tau=0.05, min_samples=100)
    previous_p, previous = 1.0, (-math.inf, math.inf)
    for n, rate_a, rate_b in sequence:
        look = test.update(ProportionCounts(n, int(n * rate_a)), ProportionCounts(n, int(n * rate_b)))
        assert look.p_value <= previous_p
        assert look.rejected == (look.p_value <= look.alpha)
        if not look.rejected:  # 0 was in every look's confidence set: the intersection holds it and narrows
            assert look.ci_low <= 0 <= look.ci_high
            assert previous[0] <= look.ci_low <= look.ci_high <= previous[1]
        previous_p, previous = look.p_value, (look.ci_low, look.ci_high)


def test_a_rejection_excludes_zero_from_the_interval() -> None:
    rng = np.random.default_rng(3)
    test: MixtureSPRT[MeanMoments] = MixtureSPRT.for_design(0.1)
    looks = [test.update(MeanMoments.of(rng.normal(0, 1, 100)), MeanMoments.of(rng.normal(0.3, 1, 100))) for _ in range(10)]
    rejected = [look for look in looks if look.rejected]
    assert rejected, "an effect of 0.3 sd over 1,000 samples per variant is found"
    assert all(look.ci_low > 0 for look in rejected)


def test_no_decision_before_each_variant_has_min_samples() -> None:
    test: MixtureSPRT[ProportionCounts] = MixtureSPRT(tau=0.1, min_samples=100)
    looks = [test.update(ProportionCounts(40, 4), ProportionCounts(40, 36)) for _ in range(3)]
    assert [look.p_value for look in looks[:2]] == [1.0, 1.0]  # 40 and 80 per variant: burn-in
    assert math.isinf(looks[0].ci_low) and math.isinf(looks[0].ci_high)
    assert looks[2].rejected  # 120 each, 10% against 90%


@pytest.mark.parametrize("kwargs", [dict(tau=0.0), dict(tau=math.inf), dict(tau=0.1, alpha=1.0), dict(tau=0.1, min_samples=1)])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MixtureSPRT(**kwargs)  # type: ignore[arg-type]


def test_aa_false_positive_rate_stays_within_alpha_with_a_90_10_split() -> None:
    """Unequal allocation (a 10% treatment, as a cautious experiment starts): the variance term
    of each variant carries its own n. 600 A/A runs, 20 looks of 900 + 100 requests, accuracy 0.9."""
    rng = np.random.default_rng(9)
    alpha, rejected = 0.05, 0
    for _ in range(AA_RUNS):
        test: MixtureSPRT[ProportionCounts] = MixtureSPRT.for_design(0.03, alpha)
        for _ in range(LOOKS):
            test.update(ProportionCounts(900, int(rng.binomial(900, 0.9))), ProportionCounts(100, int(rng.binomial(100, 0.9))))
        rejected += test.rejected
    assert rejected / AA_RUNS <= alpha + binomial_tolerance(alpha, AA_RUNS)


@pytest.mark.parametrize("case", CASES)
def test_sequential_design_size_delivers_its_power(case: str) -> None:
    """The size `sequential_*_sample_size` plans for is a lower bound's: by then the test has
    rejected in at least the designed share of 200 runs, less 3 binomial standard errors."""
    power = CASES[case].power
    assert under_effect(case).rejected_by_sequential_n.value >= power - binomial_tolerance(power, 200)


def test_an_arm_with_no_event_yet_does_not_make_a_rare_event_significant() -> None:
    """0 errors of 108 against 16 of 524: the plug-in variance of the first arm is 0, which put
    z at 4 and rejected (always-valid p 0.009) where the pooled two-proportion z says p = 0.07;
    the pooled variance is the floor."""
    from sim.stats.fixed import two_proportion_z

    control, treatment = ProportionCounts(108, 0), ProportionCounts(524, 16)
    look = MixtureSPRT.for_design(0.01).update(control, treatment)
    assert not look.rejected and two_proportion_z(control, treatment).p_value > 0.05
