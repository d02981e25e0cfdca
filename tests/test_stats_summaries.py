"""Per-window sufficient statistics add up to the statistics of all the windows' data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.stats.summaries import MeanMoments, ProportionCounts

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
