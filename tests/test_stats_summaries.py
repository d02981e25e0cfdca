"""Per-window sufficient statistics add up to the statistics of all the windows' data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.stats.summaries import MeanMoments, ProportionCounts, WindowMeans

samples = st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=0, max_size=30)


@given(st.lists(samples, min_size=1, max_size=6))
def test_moments_of_windows_add_up_to_the_moments_of_all_samples(windows: list[list[float]]) -> None:
    total = MeanMoments()
    for w in windows:
        total = total + MeanMoments.of(w)
    everything = np.concatenate([np.asarray(w, dtype=float) for w in windows])
    assert total.n == everything.size
    if everything.size:
        assert total.mean == pytest.approx(everything.mean(), abs=1e-9)
    if everything.size >= 2:
        assert total.variance == pytest.approx(np.var(everything, ddof=1), rel=1e-6, abs=1e-9)
    else:
        assert math.isnan(total.variance)


@given(st.lists(st.tuples(st.integers(0, 1000), st.floats(0.0, 1.0)), min_size=1, max_size=8))
def test_counts_of_windows_add_up(windows: list[tuple[int, float]]) -> None:
    parts = [ProportionCounts(n, int(n * share)) for n, share in windows]
    total = sum(parts, ProportionCounts())
    assert total.n == sum(p.n for p in parts)
    assert total.successes == sum(p.successes for p in parts)
    if total.n:
        assert total.variance_of_mean == pytest.approx(total.mean * (1 - total.mean) / total.n)


@pytest.mark.parametrize("n, successes", [(10, 11), (-1, 0), (5, -1)])
def test_impossible_counts_are_refused(n: int, successes: int) -> None:
    with pytest.raises(ValueError):
        ProportionCounts(n, successes)


def test_empty_summaries_have_no_mean() -> None:
    assert math.isnan(ProportionCounts().mean) and math.isnan(MeanMoments().mean)


# --- WindowMeans: a mean whose requests share their window's queue -------------------------------

def _windows(values: np.ndarray) -> WindowMeans:
    total = WindowMeans()
    for row in values:
        total = total + WindowMeans.window(len(row), float(row.sum()), float((row * row).sum()))
    return total


def test_window_means_widen_the_variance_when_windows_differ_and_keep_it_when_they_do_not() -> None:
    rng = np.random.default_rng(0)
    independent = rng.normal(10.0, 1.0, size=(40, 50))
    shared = independent + rng.normal(0.0, 1.0, size=(40, 1))  # every request of a window shifted alike
    iid = MeanMoments.of(shared.ravel())
    assert _windows(shared).variance_of_mean > 20 * iid.variance_of_mean  # ~ (1 + 50) / 2 times
    alike = _windows(independent)
    assert alike.variance_of_mean >= MeanMoments.of(independent.ravel()).variance_of_mean  # never below i.i.d.
    assert alike.variance_of_mean == pytest.approx(MeanMoments.of(independent.ravel()).variance_of_mean, rel=0.5)
    assert (alike.n, alike.windows, alike.df) == (2000, 40, 39)


def test_window_means_say_nothing_of_the_spread_before_five_windows() -> None:
    from sim.stats.fixed import welch_t

    few = _windows(np.ones((4, 10)) + np.arange(10))
    assert math.isnan(few.variance_of_mean)
    c = welch_t(few, few)
    assert (c.ci_low, c.ci_high, c.significant) == (-math.inf, math.inf, False)


def test_window_means_add_only_windows() -> None:
    with pytest.raises(TypeError):
        WindowMeans.window(2, 1.0, 1.0) + MeanMoments(2, 1.0, 1.0)
