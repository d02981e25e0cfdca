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

from reports.compare import Run, measurement_validity
from reports.rollout import draw_rollout, plot_rollout, read_rollout, rollout_axes
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


def plotted_ranks(n: int, body: int = 1500, tail: int = 1500) -> np.ndarray:
    """Ranks of a sorted sample worth drawing: an even grid for the body of the CDF and a
    geometric one towards the maximum for its tail (p99.9 of 1M requests is the top 1000), so a
    figure costs the same for 1M requests as for 3000 and still shows the tail to the last one."""
    if n <= body + tail:
        return np.arange(n)
    even = np.linspace(0, n - 1, body)
    top = n - np.geomspace(1, n, tail)
    return np.unique(np.concatenate([even, top]).round().astype(np.int64).clip(0, n - 1))


def _title_suffix(runs: Mapping[str, Run]) -> str:
    return " vs ".join(f"{label} ({run.backend})" for label, run in runs.items())


def step_cdf(ax: Any, latency_s: Any, **style: Any) -> None:
    """One sample's CDF as steps on `ax`, latency in ms, drawn at `plotted_ranks`."""
    lat_ms = np.sort(np.asarray(latency_s, dtype=float)) * 1e3
    keep = plotted_ranks(len(lat_ms))
    ax.step(lat_ms[keep], (keep + 1) / len(lat_ms), where="post", **style)


def plot_latency_cdf(path: str | Path, runs: Mapping[str, Run], *, title: str | None = None) -> Path:
    return _save(latency_cdf_figure(runs, title=title), path)


def latency_cdf_figure(runs: Mapping[str, Run], *, title: str | None = None) -> Figure:
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
        keep = plotted_ranks(len(lat_ms))
        frac = (keep + 1) / len(lat_ms)
        cdf_ax.step(lat_ms[keep], frac, where="post", color=color, lw=1.8, label=f"{label} (n={len(lat_ms)})")
        tail_ax.step(lat_ms[keep], 1.0 - frac + 1.0 / len(lat_ms), where="post", color=color, lw=1.8, label=label)
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
        # right of the axes, not inside: the tail curves end at the bottom right, over any label there
        tail_ax.annotate(name, (1.0, yq), xycoords=("axes fraction", "data"), xytext=(3, 0),
                         textcoords="offset points", fontsize=7, color="0.3", ha="left", va="center",
                         annotation_clip=False)
    if any(len(line.get_xdata()) for line in tail_ax.get_lines()):
        tail_ax.legend(fontsize=8, loc="lower left")
    for ax in (cdf_ax, tail_ax):
        _style(ax)
    fig.suptitle(title or f"Latency distribution: {_title_suffix(runs)}", fontsize=12)
    return fig


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


def offered_steps(series: Any, duration_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(values, edges) of the offered rate as a step over the windows that send, ending at
    duration_s: nothing is offered after it, and a line through window middles would slope
    down into the drain as if load tapered off."""
    start = series["window_start_s"].to_numpy(dtype=float)
    width = float(start[1] - start[0]) if len(start) > 1 else 1.0
    edges = np.append(start, start[-1] + width) if len(start) else np.zeros(1)
    values = series["offered_rate"].to_numpy(dtype=float)
    if duration_s is not None:
        n = int(np.searchsorted(start, duration_s - 1e-9, side="left"))  # windows starting before the end
        values, edges = values[:n], np.minimum(edges[:n + 1], duration_s)
    return values, edges


def plot_timeseries(path: str | Path, runs: Mapping[str, Run], *, title: str | None = None) -> Path:
    """Three panels on one time axis: rate (throughput solid, offered dashed steps up to
    duration_s), latency (p50 solid, p99 dashed) and queue (waiting solid, in flight dotted);
    warm-up shaded, since its windows are not part of the summary, and the drain after it."""
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
        rate_ax.plot(x, ts["throughput"], color=color, lw=1.8, marker=".", label=f"{label} throughput")
        duration = run.config.get("duration_s")
        values, edges = offered_steps(ts, None if duration is None else float(duration))
        rate_ax.stairs(values, edges, color=color, lw=1.0, ls="--", alpha=0.7, baseline=None, label=f"{label} offered")
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
    per = f"per {_window_width(runs):g}-s window"  # the series' window, not always window_s (a long horizon widens it)
    for ax, ylabel, name in ((rate_ax, "req/s", f"throughput {per}"),
                             (lat_ax, "latency (ms)", f"latency {per} (answered requests)"),
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


def _number(summary: Mapping[str, Any] | None, key: str) -> float:
    value = None if summary is None else summary.get(key)
    return float("nan") if value is None else float(value)


# One curve of a load-curve figure: (offered rate, summary) per point, any order.
CurvePoints = Sequence[tuple[float, Mapping[str, Any]]]


def _offered(rate: float, summary: Mapping[str, Any]) -> float:
    """A point's x: the rate the summary measured as offered, else the nominal one. The measured
    rate is what the throughput is bounded by, so throughput <= offered reads true on the plot."""
    value = summary.get("offered_rate")
    return float(value) if value is not None else float(rate)


def _capacities(curves: Mapping[str, CurvePoints], capacity: float | Mapping[str, float] | None) -> dict[str, float]:
    """label -> capacity, from the argument or else from the summaries' own `capacity_rps`."""
    if isinstance(capacity, (int, float)):
        return {label: float(capacity) for label in curves}
    given = dict(capacity or {})
    for label, pts in curves.items():
        if label not in given:
            caps = [s.get("capacity_rps") for _, s in pts if s.get("capacity_rps")]
            if caps:
                given[label] = float(np.median(caps))
    return {k: v for k, v in given.items() if v and np.isfinite(v)}


INVALID_COLOR = "#d62728"


def _mark_invalid(ax: Axes, x: np.ndarray, y: np.ndarray, marker: str, label: str | None) -> None:
    """Hollow markers, ringed in red, over the points whose measurement is flagged invalid (the
    load generator fell behind, ...): drawn, since dropping them would hide what happened, but
    never to be read as the server's figures."""
    if len(x):
        ax.plot(x, y, ls="none", marker=marker, ms=10, mfc="white", mec=INVALID_COLOR, mew=1.8, zorder=5,
                label=None if label is None else f"{label}: INVALID measurement")


def plot_load_curves(
    path: str | Path,
    curves: Mapping[str, CurvePoints],
    *,
    capacity: float | Mapping[str, float] | None = None,
    title: str | None = None,
    capacity_name: str = "capacity",
) -> Path:
    return _save(load_curve_figure(curves, capacity=capacity, title=title, capacity_name=capacity_name), path)


def load_curve_figure(
    curves: Mapping[str, CurvePoints],
    *,
    capacity: float | Mapping[str, float] | None = None,
    title: str | None = None,
    capacity_name: str = "capacity",
) -> Figure:
    """Left: p50 and p99 against offered rate (log latency: the knee near capacity spans decades).
    Right: throughput (completions in the window per second) against offered rate: it follows
    y = x until the servers saturate, then flattens at capacity, the knee. Capacity is marked on
    both (a vertical line where the knee should be, and the ceiling on the right), and when one
    capacity holds for every curve the top axis reads offered load as a fraction of it.
    `capacity`: one figure for all curves, or label -> capacity; default each curve's summaries'
    `capacity_rps`; `capacity_name` what it is ("stack capacity": the lesser of the device and
    host limits). A measured point flagged invalid is ringed in red, hollow (`_mark_invalid`)."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    lat_ax, rate_ax = fig.subplots(1, 2)
    caps = _capacities(curves, capacity)
    xs_all: list[float] = []
    for i, (label, pts) in enumerate(curves.items()):
        pts = sorted(((_offered(r, s), s) for r, s in pts), key=lambda p: p[0])
        if not pts:
            continue
        x = np.array([p[0] for p in pts])
        xs_all += list(x)
        color = color_for(label, i)
        invalid = np.array([not measurement_validity(s)["valid"] for _, s in pts])
        for key, style, marker in (("p50", "-", "o"), ("p99", "--", "s")):
            y = np.array([_latency_ms(s, key) for _, s in pts])
            lat_ax.plot(x, y, color=color, ls=style, marker=marker, ms=4, lw=1.6, label=f"{label} {key}")
            _mark_invalid(lat_ax, x[invalid], y[invalid], marker, label if key == "p50" else None)
        throughput = np.array([_number(s, "throughput") for _, s in pts])
        rate_ax.plot(x, throughput, color=color, marker="o", ms=4, lw=1.6, label=f"{label} throughput")
        _mark_invalid(rate_ax, x[invalid], throughput[invalid], "o", label)
    if xs_all:
        hi = max(xs_all)
        rate_ax.plot([0, hi], [0, hi], color="0.5", lw=1, ls=":", label="throughput = offered")
    distinct = sorted(set(caps.values()))
    for cap in distinct:
        owners = [label for label, c in caps.items() if c == cap]
        color = "0.3" if len(distinct) == 1 else color_for(owners[0], list(curves).index(owners[0]))
        name = f"{capacity_name} {cap:,.0f} req/s" + ("" if len(distinct) == 1 else f" ({', '.join(owners)})")
        for ax in (lat_ax, rate_ax):
            ax.axvline(cap, color=color, ls="-.", lw=1.1, label=name if ax is lat_ax else None)
        rate_ax.axhline(cap, color=color, ls="-.", lw=1.1, alpha=0.6, label=name)
    if len(distinct) == 1:
        cap = distinct[0]
        for ax in (lat_ax, rate_ax):
            top = ax.secondary_xaxis("top", functions=(lambda v, c=cap: v / c, lambda f, c=cap: f * c))
            top.set_xlabel(f"offered / {capacity_name}", fontsize=8)
            top.tick_params(labelsize=8)
    lat_ax.set_yscale("log")
    _plain_log(lat_ax.yaxis)
    lat_ax.set_xlabel("offered rate (req/s)")
    lat_ax.set_ylabel("latency (ms, log scale)")
    lat_ax.set_title("latency against load", fontsize=10)
    rate_ax.set_xlabel("offered rate (req/s)")
    rate_ax.set_ylabel("throughput (req/s, completions in window)")
    rate_ax.set_title("throughput against load", fontsize=10)
    rate_ax.set_xlim(left=0)
    rate_ax.set_ylim(bottom=0)
    for ax in (lat_ax, rate_ax):
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "Latency and throughput against offered load", fontsize=12)
    return fig


def plot_load_curve(
    path: str | Path,
    points: Sequence[LoadPoint | tuple[Any, ...]],
    *,
    capacity: float | None = None,
    title: str | None = None,
    capacity_name: str = "capacity",
) -> Path:
    """A compare's load curve: the twin's points and the measured ones (a point may have only
    one side, e.g. twin-only points past capacity). `points` are LoadPoint or (offered_rate,
    sim_summary, real_summary | None) tuples."""
    pts = _points(points)
    curves = {label: [(p.offered_rate, s) for p in pts if (s := pick(p)) is not None]
              for label, pick in (("sim", lambda p: p.sim), ("real", lambda p: p.real))}
    return plot_load_curves(path, {k: v for k, v in curves.items() if v}, capacity=capacity,
                            title=title or "Latency-versus-load curve", capacity_name=capacity_name)


def plot_rollout_comparison(path: str | Path, runs: Mapping[str, Path]) -> Path | None:
    """Rollout timelines side by side, one column per run directory (twin, real), with one time
    axis and one scale per panel across the columns, so a decision a tick apart shows as such;
    None unless every run had a rollout."""
    rollouts = {label: read_rollout(Path(run_dir)) for label, run_dir in runs.items()}
    if not rollouts or any(r is None for r in rollouts.values()):
        return None
    fig = Figure(figsize=(6.5 * len(rollouts), 10), layout="constrained")
    columns = fig.subfigures(1, len(rollouts), squeeze=False)[0]
    panels: list[list[Axes]] = []
    for column, (label, rollout) in zip(columns, rollouts.items()):
        assert rollout is not None
        axes = rollout_axes(column)
        draw_rollout(axes, *rollout, title=label)
        panels.append(axes)
    for row in zip(*panels):  # the same panel of every column: one scale
        xs = [ax.get_xlim() for ax in row]
        ys = [ax.get_ylim() for ax in row]
        for ax in row:
            ax.set_xlim(min(x[0] for x in xs), max(x[1] for x in xs))
            ax.set_ylim(min(y[0] for y in ys), max(y[1] for y in ys))
    fig.suptitle("Rollout timeline: " + " against ".join(rollouts))
    return _save(fig, path)


# File names are part of the report's layout (Markdown links them), so they live in one place.
CDF_PNG, TIMESERIES_PNG, LOAD_CURVE_PNG = "latency_cdf.png", "timeseries.png", "load_curve.png"
ROLLOUT_COMPARE_PNG = "rollout_compare.png"


def write_compare_figures(
    out_dir: str | Path,
    sim: Run,
    real: Run,
    *,
    load_curve: Sequence[LoadPoint | tuple[Any, ...]] | None = None,
    capacity: float | None = None,
    capacity_name: str = "capacity",
) -> dict[str, Path]:
    """The figure set of a compare run: name -> path, in the order a report shows them."""
    out = Path(out_dir)
    runs = {"sim": sim, "real": real}
    figs = {
        "latency_cdf": plot_latency_cdf(out / CDF_PNG, runs),
        "timeseries": plot_timeseries(out / TIMESERIES_PNG, runs),
    }
    if load_curve:
        figs["load_curve"] = plot_load_curve(out / LOAD_CURVE_PNG, load_curve, capacity=capacity, capacity_name=capacity_name)
    rollout = plot_rollout_comparison(out / ROLLOUT_COMPARE_PNG, {"twin (predicted)": sim.path, "real (measured)": real.path})
    if rollout is not None:
        figs["rollout_compare"] = rollout
    return figs


def write_run_figures(out_dir: str | Path, run: Run, *, label: str | None = None) -> dict[str, Path]:
    """The figure set of a single run (mode=sim or mode=real alone)."""
    out = Path(out_dir)
    runs = {label or run.label: run}
    figures = {
        "latency_cdf": plot_latency_cdf(out / CDF_PNG, runs),
        "timeseries": plot_timeseries(out / TIMESERIES_PNG, runs),
    }
    rollout = plot_rollout(out, run.path)
    if rollout is not None:
        figures["rollout"] = rollout
    return figures
