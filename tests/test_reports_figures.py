"""reports.figures: every figure is written, atomically, as a real PNG, from one run or two."""

from __future__ import annotations

from pathlib import Path

import pytest

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg

from reports.figures import (
    LoadPoint,
    latency_cdf_figure,
    load_curve_figure,
    measured_latency_s,
    offered_steps,
    plot_latency_cdf,
    plot_load_curve,
    plot_timeseries,
    plotted_ranks,
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


def test_cdf_of_a_million_requests_draws_a_few_thousand_points_tail_included() -> None:
    assert list(plotted_ranks(500)) == list(range(500))
    n = 1_000_000
    ranks = plotted_ranks(n)
    assert len(ranks) <= 3000 and ranks[0] == 0 and ranks[-1] == n - 1
    assert (ranks >= n - 1000).sum() >= 300  # the top 0.1% (beyond p99.9) keeps its shape
    assert np.all(np.diff(ranks) > 0)


def test_tail_labels_sit_outside_the_curves(tmp_path: Path) -> None:
    """p50/p99/p99.9 labels go right of the tail plot, where no curve can cover them."""
    sim, _ = twin_runs(tmp_path)
    fig = latency_cdf_figure({"sim": sim})
    tail_ax = fig.axes[1]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # lays out (constrained layout) as saving does
    labels = {t.get_text(): t for t in tail_ax.texts}
    assert set(labels) >= {"p50", "p99", "p99.9"}
    box = tail_ax.get_window_extent(renderer)
    for text in labels.values():
        assert text.get_window_extent(renderer).x0 >= box.x1  # wholly right of the axes


def test_offered_line_stops_at_duration() -> None:
    """After duration_s nothing is offered: the step ends there, no slope into the drain."""
    series = pd.DataFrame({"window_start_s": np.arange(14.0), "offered_rate": [600.0] * 10 + [0.0] * 4})
    values, edges = offered_steps(series, 10.0)
    assert list(values) == [600.0] * 10 and edges[0] == 0.0 and edges[-1] == 10.0
    values, edges = offered_steps(series, 9.5)  # a last partial window ends with the sending
    assert len(values) == 10 and edges[-1] == 9.5
    assert len(offered_steps(series, None)[0]) == 14


def test_load_curve_marks_capacity_and_the_knee() -> None:
    """Throughput against offered: a ceiling at capacity (the knee is where the curve meets it)
    and the offered/capacity axis on top when one capacity holds for all curves."""
    capacity = 400.0
    pts = [(rate, {"offered_rate": rate, "throughput": min(rate, capacity), "capacity_rps": capacity,
                   "latency_s": {"p50": 0.01, "p99": 0.02}}) for rate in (100.0, 300.0, 500.0, 600.0)]
    fig = load_curve_figure({"sim": pts})
    _, rate_ax = fig.axes[:2]
    lines = {ln.get_label(): ln for ln in rate_ax.get_lines()}
    ceiling = lines["capacity 400 req/s"]
    assert list(ceiling.get_ydata()) == [capacity, capacity]
    assert list(lines["sim throughput"].get_ydata()) == [100.0, 300.0, 400.0, 400.0]
    assert [a.get_xlabel() for a in rate_ax.child_axes] == ["offered / capacity"]
