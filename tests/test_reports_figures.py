"""reports.figures: every figure is written, atomically, as a real PNG, from one run or two."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.figures import (
    LoadPoint,
    measured_latency_s,
    plot_latency_cdf,
    plot_load_curve,
    plot_timeseries,
    write_compare_figures,
    write_run_figures,
)
from tests.test_reports_support import PNG_SIGNATURE, load_points, twin_runs


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 20_000, f"{path}: {len(data)} bytes, suspiciously small for a plot"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_compare_figures(tmp_path: Path) -> None:
    sim, real = twin_runs(tmp_path)
    figs = write_compare_figures(tmp_path / "figs", sim, real, load_curve=load_points(), capacity=400.0)
    assert list(figs) == ["latency_cdf", "timeseries", "load_curve"]
    for path in figs.values():
        assert_png(path)


def test_single_run_figures(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    figs = write_run_figures(tmp_path / "figs", sim)
    assert list(figs) == ["latency_cdf", "timeseries"]
    for path in figs.values():
        assert_png(path)


def test_measured_latency_matches_the_summary(tmp_path: Path) -> None:
    """The CDF plots the population the summary describes, so its marked p50 is the table's."""
    sim, _ = twin_runs(tmp_path)
    import numpy as np

    lat = measured_latency_s(sim)
    assert len(lat) == sim.summary["status_counts"]["ok"]
    assert float(np.percentile(lat, 50)) == pytest.approx(sim.summary["latency_s"]["p50"])


def test_figures_survive_missing_data(tmp_path: Path) -> None:
    """A run with no answered requests or a sweep with no real side still gets its figures."""
    sim, real = twin_runs(tmp_path)
    real.requests = real.requests.iloc[0:0]
    real.timeseries = real.timeseries.iloc[0:0]
    assert_png(plot_latency_cdf(tmp_path / "out" / "cdf.png", {"sim": sim, "real": real}))
    assert_png(plot_timeseries(tmp_path / "out" / "ts.png", {"sim": sim, "real": real}))
    sim_only = [LoadPoint(rate, s) for rate, s, _ in load_points()]
    assert_png(plot_load_curve(tmp_path / "out" / "load.png", sim_only))
