"""The rollout timeline: traffic weights, per-version p99, errors (and accuracy), replica counts,
and the rollout's verdict (promoted or rolled back), for every strategy.

A pure function of the run's outputs (rollout.parquet, events.json), so a rollout read back
from disk draws the same figure as the run that wrote it. `draw_rollout` draws into axes it is
given, so a compare report can put the twin's timeline and the real one side by side by
calling it twice on two columns of one figure (`rollout_axes` makes a column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from sim.files import atomic_write

ROLLOUT_PNG = "rollout.png"
# the panels of a timeline, top to bottom: what draw_rollout expects its axes to be
ROLLOUT_PANELS = ("weight", "p99", "errors", "replicas")
# "concluded": an experiment stopped on a decision, traffic back on control (reports.experiment)
VERDICT_COLORS = {"promoted": "green", "aborted": "red", "concluded": "blue"}
VERDICT_VERBS = {"promoted": "promoted", "aborted": "rolled back", "concluded": "concluded"}


def rollout_axes(fig: Figure | SubFigure) -> list[Axes]:
    """One column of timeline panels (ROLLOUT_PANELS) in `fig` (a figure, or one of its
    subfigures for a side-by-side), sharing the time axis."""
    return list(fig.subplots(len(ROLLOUT_PANELS), 1, sharex=True))


def draw_rollout(axes: Sequence[Axes], table: pd.DataFrame, decisions: Sequence[dict[str, Any]], title: str = "") -> None:
    """Draw one rollout's timeline into `axes` (one per ROLLOUT_PANELS entry, top to bottom).

    `table` is rollout.parquet (per window and version: weight, latency_p99_s, errors,
    requests, and when present accuracy, replicas_ready, replicas_live); `decisions` is
    events.json's list. Every promote (green) and rollback (red) is a dashed line across the
    panels, labelled on the top one. `title` names the column (e.g. "twin", "real")."""
    weight_ax, p99_ax, error_ax, replica_ax = axes
    accuracy_ax: Axes | None = None
    has_replicas = "replicas_ready" in table.columns and table["replicas_ready"].notna().any()
    for i, (version, rows) in enumerate(table.groupby("version", sort=True)):
        color, label = f"C{i}", f"version {version}"
        x = rows["window_start_s"].to_numpy(dtype=float)
        weight_ax.step(x, rows["weight"].to_numpy(dtype=float) * 100, where="post", color=color, label=label)
        p99_ax.plot(x, rows["latency_p99_s"].to_numpy(dtype=float) * 1e3, ".-", color=color, label=label)
        requests = rows["requests"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            errors = np.where(requests > 0, rows["errors"].to_numpy(dtype=float) / requests * 100, np.nan)
        error_ax.plot(x, errors, ".-", color=color, label=f"{label} errors")
        if "accuracy" in rows.columns and rows["accuracy"].notna().any():
            accuracy_ax = accuracy_ax or error_ax.twinx()
            accuracy_ax.plot(x, rows["accuracy"].to_numpy(dtype=float) * 100, ":", color=color, label=f"{label} accuracy")
        if has_replicas:
            replica_ax.step(x, rows["replicas_ready"].to_numpy(dtype=float), where="post", color=color, label=f"{label} ready (fewest)")
            replica_ax.step(x, rows["replicas_live"].to_numpy(dtype=float), where="post", color=color, ls="--", lw=0.9,
                            label=f"{label} live (most)")
    if not has_replicas:
        replica_ax.text(0.5, 0.5, "no replica counts recorded", transform=replica_ax.transAxes, ha="center", va="center", color="#777")
    for d in decisions:
        color = VERDICT_COLORS.get(d["kind"])
        if color is None:
            continue
        for ax in axes:
            ax.axvline(d["time_s"], color=color, ls="--", lw=1.2)
        verb = VERDICT_VERBS[d["kind"]]
        weight_ax.annotate(f"{verb} at {d['time_s']:.1f} s: {d['reason']}", (d["time_s"], 103), fontsize=7, annotation_clip=False,
                           color=color)
    weight_ax.set(ylabel="traffic weight (%)", ylim=(-2, 110))
    if title:
        weight_ax.set_title(title, pad=14)
    p99_ax.set(ylabel="p99 latency (ms)")
    error_ax.set(ylabel="errors (%)")
    if accuracy_ax is not None:
        accuracy_ax.set(ylabel="accuracy (%), dotted")
        accuracy_ax.legend(fontsize=7, loc="lower right")
    replica_ax.set(ylabel="replicas", xlabel="window start (s)")
    replica_ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")


def rollout_figure(windows: pd.DataFrame, decisions: Sequence[dict[str, Any]], title: str = "") -> Figure:
    fig = Figure(figsize=(10, 9))
    draw_rollout(rollout_axes(fig), windows, decisions)
    fig.suptitle(title or "Rollout timeline")
    fig.tight_layout()
    return fig


def read_rollout(run_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]] | None:
    """A run's rollout.parquet and events.json decisions; None for a run without a rollout."""
    windows_path, events_path = run_dir / "rollout.parquet", run_dir / "events.json"
    if not windows_path.is_file() or not events_path.is_file():
        return None
    return pd.read_parquet(windows_path), json.loads(events_path.read_text())["decisions"]


def plot_rollout(out_dir: Path, run_dir: Path) -> Path | None:
    """The figure of a run that had a rollout; None for one that had not."""
    rollout = read_rollout(run_dir)
    if rollout is None:
        return None
    fig = rollout_figure(*rollout)
    path = out_dir / ROLLOUT_PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
