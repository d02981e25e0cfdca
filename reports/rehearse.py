"""The rehearsal figure: when each rollout decided, and how much the canary served first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sim.files import atomic_write


def plot_rehearsal(path: Path, runs: pd.DataFrame) -> Path:
    fig = Figure(figsize=(11, 4))
    decide_ax, exposure_ax = fig.subplots(1, 2)
    for i, (scenario, group) in enumerate(runs.groupby("scenario", sort=False)):
        color = f"C{i}"
        for outcome, marker in (("aborted", "x"), ("promoted", "o")):
            sel = group[group["outcome"] == outcome]
            decide_ax.hist(sel["decided_s"].dropna(), bins=20, alpha=0.5, color=color, histtype="stepfilled" if outcome == "aborted" else "step",
                           label=f"{scenario}: {outcome} ({len(sel)})")
        exposure_ax.hist(group["canary_requests"], bins=20, alpha=0.5, color=color, label=str(scenario))
    decide_ax.set(title="decision time", xlabel="time of rollback or promotion (s)", ylabel="rehearsals")
    exposure_ax.set(title="requests the canary served before the decision", xlabel="requests", ylabel="rehearsals")
    for ax in (decide_ax, exposure_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
