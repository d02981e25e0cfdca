"""The rollout timeline: traffic weights, per-version p99 and error rate, and the decision.

A pure function of the run's outputs (rollout.parquet, events.json), so a rollout read back
from disk draws the same figure as the run that wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from sim.files import atomic_write

ROLLOUT_PNG = "rollout.png"


def rollout_figure(windows: pd.DataFrame, decisions: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 7))
    weight_ax, p99_ax, error_ax = fig.subplots(3, 1, sharex=True)
    for i, (version, rows) in enumerate(windows.groupby("version", sort=True)):
        color = f"C{i}"
        x = rows["window_start_s"].to_numpy()
        weight_ax.step(x, rows["weight"].to_numpy() * 100, where="post", color=color, label=f"version {version}")
        p99_ax.plot(x, rows["latency_p99_s"].to_numpy() * 1e3, ".-", color=color, label=f"version {version}")
        error_ax.plot(x, (rows["errors"] / rows["requests"]).to_numpy() * 100, ".-", color=color, label=f"version {version}")
    for d in decisions:
        if d["kind"] in ("promoted", "aborted"):
            for ax in (weight_ax, p99_ax, error_ax):
                ax.axvline(d["time_s"], color="green" if d["kind"] == "promoted" else "red", ls="--", lw=1.2)
            weight_ax.annotate(f"{d['kind']}: {d['reason']}", (d["time_s"], 102), fontsize=8, annotation_clip=False)
    weight_ax.set(ylabel="traffic weight (%)", ylim=(-2, 110))
    p99_ax.set(ylabel="p99 latency (ms)")
    error_ax.set(ylabel="errors (%)", xlabel="window start (s)")
    for ax in (weight_ax, p99_ax, error_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Rollout timeline")
    fig.tight_layout()
    return fig


def plot_rollout(out_dir: Path, run_dir: Path) -> Path | None:
    """The figure of a run that had a rollout; None for one that had not."""
    windows_path, events_path = run_dir / "rollout.parquet", run_dir / "events.json"
    if not windows_path.is_file() or not events_path.is_file():
        return None
    fig = rollout_figure(pd.read_parquet(windows_path), json.loads(events_path.read_text())["decisions"])
    path = out_dir / ROLLOUT_PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
