"""Per-window latency percentiles: one sort for every window, equal to np.percentile per window."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.records import _window_percentiles


@given(st.lists(st.tuples(st.floats(0, 9.999), st.floats(0, 5)), max_size=60), st.integers(1, 12))
@settings(max_examples=150, deadline=None)
def test_each_window_matches_numpy_percentile(answers: list[tuple[float, float]], n_windows: int) -> None:
    finish = np.array([f for f, _ in answers], dtype=float)
    latency = np.array([lat for _, lat in answers], dtype=float)
    edges = np.linspace(0, 10, n_windows + 1)
    p50, p99 = _window_percentiles(latency, finish, edges)
    idx = np.clip(np.searchsorted(edges, finish, side="right") - 1, 0, n_windows - 1)
    for w in range(n_windows):
        sel = latency[idx == w]
        for got, q in ((p50[w], 50), (p99[w], 99)):
            if len(sel) == 0:
                assert math.isnan(got)
            else:
                assert got == np.percentile(sel, q) or math.isclose(got, np.percentile(sel, q), rel_tol=1e-12, abs_tol=1e-12)
