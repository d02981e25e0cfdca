"""The rehearsal's report: the operating characteristics table and the figure of decision times
and exposure, as report.html and report.md (the run reports' renderer, `reports.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

from reports.report import FIGURES_DIR, md_table, write_tables_report
from sim.files import atomic_write

REHEARSAL_PNG = "rehearsal.png"
OC_HEADER = ["scenario", "runs", "rollback probability (95% CI)", "decision time p50 (95% CI) / p90 (s)",
             "candidate requests before the decision p50 / p90", "candidate users p50", "undecided"]


def plot_rehearsal(path: Path, runs: pd.DataFrame) -> Path:
    fig = Figure(figsize=(11, 4))
    decide_ax, exposure_ax = fig.subplots(1, 2)
    for i, (scenario, group) in enumerate(runs.groupby("scenario", sort=False)):
        color = f"C{i}"
        for outcome, filled in (("aborted", True), ("promoted", False)):
            sel = group[group["rolled_back"] == filled]
            label = "rolled back" if filled else "promoted"
            decide_ax.hist(sel["decided_s"].dropna(), bins=20, alpha=0.5, color=color, histtype="stepfilled" if filled else "step",
                           label=f"{scenario}: {label} ({len(sel)})")
        exposure_ax.hist(group["canary_requests"], bins=20, alpha=0.5, color=color, label=str(scenario))
    decide_ax.set(title="decision time", xlabel="time of rollback or promotion (s)", ylabel="rehearsals")
    exposure_ax.set(title="requests the candidate served before the decision", xlabel="requests", ylabel="rehearsals")
    for ax in (decide_ax, exposure_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def oc_rows(oc: Mapping[str, Any]) -> list[list[str]]:
    """One row per scenario of the operating characteristics (`scenarios.rehearse`)."""
    def num(d: Mapping[str, float | None], key: str, fmt: str) -> str:
        return "-" if d[key] is None else format(d[key], fmt)

    def interval(d: Mapping[str, Any]) -> str:
        ci = d.get("p50_ci95")
        return "" if ci is None else f" ({ci[0]:.1f}-{ci[1]:.1f})"

    rows = []
    for scenario, s in oc.items():
        lo, hi = s["rollback_probability_ci95"]
        rows.append([str(scenario), str(s["runs"]), f"{s['rollback_probability']:.2f} ({lo:.2f}-{hi:.2f})",
                     f"{num(s['decision_time_s'], 'p50', '.1f')}{interval(s['decision_time_s'])} / {num(s['decision_time_s'], 'p90', '.1f')}",
                     f"{num(s['canary_requests'], 'p50', '.0f')} / {num(s['canary_requests'], 'p90', '.0f')}",
                     num(s["canary_users"], "p50", ".0f"), str(s["undecided_runs"])])
    return rows


def format_oc_table(oc: Mapping[str, Any]) -> str:
    return "\n".join(md_table(OC_HEADER, oc_rows(oc)))


def write_rehearsal_report(out_dir: Path, runs: pd.DataFrame, oc: Mapping[str, Any], config: Mapping[str, Any], *,
                           strategy: str, wall_s: float) -> tuple[Path, Path]:
    """report.html and report.md of a rehearsal, with its figure in figures/."""
    figure = plot_rehearsal(out_dir / FIGURES_DIR / REHEARSAL_PNG, runs)
    n = int(runs.groupby("scenario").size().max()) if len(runs) else 0
    notes = [["power", "the rollback probability of the bad scenario (the candidate as configured)"],
             ["false rollback rate", "the rollback probability of the good scenario (the candidate made like stable)"],
             ["decision time", "from the rollout's start (time 0) to its promote or rollback verdict"],
             ["candidate requests / users", "what the candidate version served before the verdict (all run long when undecided)"]]
    return write_tables_report(
        out_dir,
        title=f"servelab rehearsal: {strategy}",
        subtitle=f"{n} twin runs per scenario (seeds {config.get('seed', 0)}, {config.get('seed', 0)} + 1, ...) in {wall_s:.1f} s",
        tables=[("Operating characteristics", OC_HEADER, oc_rows(oc)), ("What the figures mean", ["figure", "meaning"], notes)],
        figures={"rehearsal": figure},
        config=config,
    )
