"""Figures of run outputs: latency CDFs, per-window time series, latency against load.

Every plot takes runs keyed by a label ("sim", "real"), so the same function draws one run or
the twin over the measurement; colours follow the label, so sim is the same blue in every
figure of a report. Figures are built on `matplotlib.figure.Figure` directly (no pyplot), which
keeps no global state and needs no display, and are written atomically as PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from reports.compare import Run
from sim.files import atomic_write

DPI = 110
COLORS = {"sim": "#1f77b4", "twin": "#1f77b4", "predicted": "#1f77b4",
          "real": "#d62728", "measured": "#d62728"}
FALLBACK_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def color_for(label: str, index: int = 0) -> str:
    return COLORS.get(label, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


@dataclass(frozen=True)
class LoadPoint:
    """One rate of a sweep: what the twin predicted and (if run) what the real stack measured."""

    offered_rate: float
    sim: Mapping[str, Any] | None
    real: Mapping[str, Any] | None = None


def _points(points: Iterable[LoadPoint | tuple[Any, ...]]) -> list[LoadPoint]:
    out = [p if isinstance(p, LoadPoint) else LoadPoint(*p) for p in points]
    return sorted(out, key=lambda p: p.offered_rate)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _style(ax: Axes) -> None:
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _plain_log(axis: Any) -> None:
    """Log-axis ticks as plain numbers ("5", "10", "20"), not 5x10^0: latency axes often span
    less than a decade, where matplotlib's default labels only minor ticks, in exponents."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))


def measured_latency_s(run: Run) -> np.ndarray:
    """Latencies of answered requests sent in the measurement window, the population the
    summary's percentiles describe, so a marked p99 sits where the table says it is."""
    frame = run.requests
    if frame.empty:
        return np.empty(0)
    mask = (frame["status"].to_numpy(dtype=object) == "ok")
    warmup = run.config.get("warmup_s")
    duration = run.config.get("duration_s")
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    if warmup is not None:
        mask &= arrival >= float(warmup)
    if duration is not None:
        mask &= arrival < float(duration)
    lat = frame["latency_s"].to_numpy(dtype=float)[mask]
    return np.sort(lat[np.isfinite(lat) & (lat > 0)])


def _title_suffix(runs: Mapping[str, Run]) -> str:
    return " vs ".join(f"{label} ({run.backend})" for label, run in runs.items())


def plot_latency_cdf(path: str | Path, runs: Mapping[str, Run], *, title: str | None = None) -> Path:
    """Left: the CDF on a log latency axis with p50/p99 marked. Right: the tail (1 - CDF, log-log),
    where a p99 gap that the CDF squashes into its top pixel becomes visible."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    cdf_ax, tail_ax = fig.subplots(1, 2)
    for i, (label, run) in enumerate(runs.items()):
        lat_ms = measured_latency_s(run) * 1e3
        color = color_for(label, i)
        if len(lat_ms) == 0:
            cdf_ax.plot([], [], color=color, label=f"{label}: no answered requests")
            continue
        frac = np.arange(1, len(lat_ms) + 1) / len(lat_ms)
        cdf_ax.step(lat_ms, frac, where="post", color=color, lw=1.8, label=f"{label} (n={len(lat_ms)})")
        tail_ax.step(lat_ms, 1.0 - frac + 1.0 / len(lat_ms), where="post", color=color, lw=1.8, label=label)
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(lat_ms, q))
            for ax in (cdf_ax, tail_ax):
                ax.axvline(v, color=color, ls=style, lw=1.1, alpha=0.8)
            cdf_ax.plot([], [], color=color, ls=style, lw=1.1, label=f"{label} p{q} = {v:.2f} ms")
    cdf_ax.set_xscale("log")
    _plain_log(cdf_ax.xaxis)
    cdf_ax.set_ylim(0, 1.02)
    cdf_ax.set_xlabel("latency (ms, log scale)")
    cdf_ax.set_ylabel("fraction of requests <= latency")
    cdf_ax.set_title("latency CDF (answered requests, after warm-up)")
    cdf_ax.legend(fontsize=8, loc="upper left")
    tail_ax.set_xscale("log")
    tail_ax.set_yscale("log")
    _plain_log(tail_ax.xaxis)
    tail_ax.set_xlabel("latency (ms, log scale)")
    tail_ax.set_ylabel("fraction of requests > latency")
    tail_ax.set_title("tail (complementary CDF)")
    for yq, name in ((0.5, "p50"), (0.01, "p99"), (0.001, "p99.9")):
        tail_ax.axhline(yq, color="0.5", lw=0.7, alpha=0.6)
        tail_ax.annotate(name, (1.0, yq), xycoords=("axes fraction", "data"), fontsize=7, color="0.4",
                         ha="right", va="bottom")
    if any(len(line.get_xdata()) for line in tail_ax.get_lines()):
        tail_ax.legend(fontsize=8, loc="lower left")
    for ax in (cdf_ax, tail_ax):
        _style(ax)
    fig.suptitle(title or f"Latency distribution: {_title_suffix(runs)}", fontsize=12)
    return _save(fig, path)


def _window_x(series: Any) -> np.ndarray:
    start = series["window_start_s"].to_numpy(dtype=float)
    width = float(start[1] - start[0]) if len(start) > 1 else 1.0
    return start + width / 2  # plot at the window's middle: a window's figure describes all of it


def _window_width(runs: Mapping[str, Run]) -> float:
    for run in runs.values():
        start = run.timeseries["window_start_s"].to_numpy(dtype=float) if "window_start_s" in run.timeseries else []
        if len(start) > 1:
            return float(start[1] - start[0])
    return 1.0


def plot_timeseries(path: str | Path, runs: Mapping[str, Run], *, title: str | None = None) -> Path:
    """Three panels on one time axis: rate (achieved solid, offered dashed), latency (p50 solid,
    p99 dashed) and queue (waiting solid, in flight dotted); warm-up shaded, since its windows
    are not part of the summary."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    rate_ax, lat_ax, queue_ax = fig.subplots(3, 1, sharex=True)
    warmups: list[float] = []
    ends: list[float] = []
    for i, (label, run) in enumerate(runs.items()):
        ts = run.timeseries
        color = color_for(label, i)
        if ts.empty or "window_start_s" not in ts:
            rate_ax.plot([], [], color=color, label=f"{label}: no time series")
            continue
        x = _window_x(ts)
        rate_ax.plot(x, ts["achieved_rate"], color=color, lw=1.8, marker=".", label=f"{label} achieved")
        rate_ax.plot(x, ts["offered_rate"], color=color, lw=1.0, ls="--", alpha=0.7, label=f"{label} offered")
        lat_ax.plot(x, ts["latency_p50_s"] * 1e3, color=color, lw=1.8, marker=".", label=f"{label} p50")
        lat_ax.plot(x, ts["latency_p99_s"] * 1e3, color=color, lw=1.2, ls="--", label=f"{label} p99")
        queue_ax.plot(x, ts["queue_len"], color=color, lw=1.8, marker=".", label=f"{label} queued")
        queue_ax.plot(x, ts["in_flight"], color=color, lw=1.2, ls=":", label=f"{label} in flight")
        if run.config.get("warmup_s"):
            warmups.append(float(run.config["warmup_s"]))
        if run.config.get("duration_s"):
            ends.append(float(run.config["duration_s"]))
    last = max((float(r.timeseries["window_start_s"].max()) for r in runs.values()
                if not r.timeseries.empty and "window_start_s" in r.timeseries), default=0.0)
    for ax, ylabel, name in ((rate_ax, "req/s", "throughput per window"),
                             (lat_ax, "latency (ms)", "latency per window (answered requests)"),
                             (queue_ax, "requests", "queue length and in-flight at window end")):
        if warmups:
            ax.axvspan(0, max(warmups), color="0.85", alpha=0.5, lw=0, label="warm-up" if ax is rate_ax else None)
        if ends and last + _window_width(runs) > min(ends) + 1e-9:
            # after duration_s nothing is sent: these windows only drain what is in flight
            ax.axvspan(min(ends), last + _window_width(runs), color="#f4e1c1", alpha=0.5, lw=0,
                       label="drain (no new arrivals)" if ax is rate_ax else None)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylim(bottom=0)
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    queue_ax.set_xlabel("time since start (s)")
    fig.suptitle(title or f"Per-window time series: {_title_suffix(runs)}", fontsize=12)
    return _save(fig, path)


def _latency_ms(summary: Mapping[str, Any] | None, key: str) -> float:
    value = None if summary is None else (summary.get("latency_s") or {}).get(key)
    return float("nan") if value is None else float(value) * 1e3


def _rate(summary: Mapping[str, Any] | None) -> float:
    value = None if summary is None else summary.get("achieved_rate")
    return float("nan") if value is None else float(value)


def plot_load_curve(
    path: str | Path,
    points: Sequence[LoadPoint | tuple[Any, ...]],
    *,
    capacity: float | None = None,
    title: str | None = None,
) -> Path:
    """Left: p50 and p99 against offered rate (log latency: the knee near capacity spans decades).
    Right: achieved against offered, where saturation and shedding show as a bend from y = x.
    `points` are LoadPoint or (offered_rate, sim_summary, real_summary | None) tuples."""
    pts = _points(points)
    x = np.array([p.offered_rate for p in pts], dtype=float)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    lat_ax, rate_ax = fig.subplots(1, 2)
    for i, (label, pick) in enumerate((("sim", lambda p: p.sim), ("real", lambda p: p.real))):
        summaries = [pick(p) for p in pts]
        if all(s is None for s in summaries):
            continue
        color = color_for(label, i)
        for key, style, marker in (("p50", "-", "o"), ("p99", "--", "s")):
            y = np.array([_latency_ms(s, key) for s in summaries])
            lat_ax.plot(x, y, color=color, ls=style, marker=marker, ms=5, lw=1.6, label=f"{label} {key}")
        rate_ax.plot(x, [_rate(s) for s in summaries], color=color, marker="o", ms=5, lw=1.6, label=f"{label} achieved")
    if len(x):
        lo, hi = float(x.min()), float(x.max())
        rate_ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls=":", label="achieved = offered")
    if capacity:
        for ax in (lat_ax, rate_ax):
            ax.axvline(capacity, color="0.3", ls="-.", lw=1.1, label=f"capacity {capacity:.0f} req/s")
    lat_ax.set_yscale("log")
    _plain_log(lat_ax.yaxis)
    lat_ax.set_xlabel("offered rate (req/s)")
    lat_ax.set_ylabel("latency (ms, log scale)")
    lat_ax.set_title("latency against load")
    rate_ax.set_xlabel("offered rate (req/s)")
    rate_ax.set_ylabel("achieved rate (req/s)")
    rate_ax.set_title("throughput against load")
    for ax in (lat_ax, rate_ax):
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "Latency-versus-load curve", fontsize=12)
    return _save(fig, path)


# File names are part of the report's layout (Markdown links them), so they live in one place.
CDF_PNG, TIMESERIES_PNG, LOAD_CURVE_PNG = "latency_cdf.png", "timeseries.png", "load_curve.png"


def write_compare_figures(
    out_dir: str | Path,
    sim: Run,
    real: Run,
    *,
    load_curve: Sequence[LoadPoint | tuple[Any, ...]] | None = None,
    capacity: float | None = None,
) -> dict[str, Path]:
    """The figure set of a compare run: name -> path, in the order a report shows them."""
    out = Path(out_dir)
    runs = {"sim": sim, "real": real}
    figs = {
        "latency_cdf": plot_latency_cdf(out / CDF_PNG, runs),
        "timeseries": plot_timeseries(out / TIMESERIES_PNG, runs),
    }
    if load_curve:
        figs["load_curve"] = plot_load_curve(out / LOAD_CURVE_PNG, load_curve, capacity=capacity)
    return figs


def write_run_figures(out_dir: str | Path, run: Run, *, label: str | None = None) -> dict[str, Path]:
    """The figure set of a single run (mode=sim or mode=real alone)."""
    out = Path(out_dir)
    runs = {label or run.label: run}
    return {
        "latency_cdf": plot_latency_cdf(out / CDF_PNG, runs),
        "timeseries": plot_timeseries(out / TIMESERIES_PNG, runs),
    }
