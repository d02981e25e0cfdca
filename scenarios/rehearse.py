"""mode=rehearse: a rollout policy's operating characteristics, from many seeds of the twin.

The question no rollout tool answers before a release: with this policy, how likely is a bad
version caught (power), how often is a good one rolled back anyway (false rollback rate), how
fast is the decision, and how many requests and users does the bad version serve first. The
configured scenario is the bad one (its canary as configured: slower, ...); the good one is the
same scenario with the canary made like stable (`service_factor` 1). Each runs `rehearse.runs`
times with seeds `seed, seed+1, ...`, spread over `rehearse.workers` processes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from reports.rehearse import plot_rehearsal
from scenarios.config import ServelabConfig
from sim.config import ScenarioConfig, VersionConfig, rollout_versions, version_specs
from sim.files import write_json, write_parquet, write_text
from sim.policy.rollout import controller_from_config
from sim.twin import Twin


def good_version_of(cfg: ScenarioConfig) -> ScenarioConfig:
    """The same scenario with the canary made like stable: what a rollout of a good version sees."""
    canary = rollout_versions(cfg)[1]
    versions = [VersionConfig(v.name) if v.name == canary else v for v in version_specs(cfg.model)]
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, versions=[dataclasses.asdict(v) for v in versions]))


def rehearse_once(cfg: ScenarioConfig, scenario: str, seed: int) -> dict[str, Any]:
    """One rollout in the twin: its decision and what the canary served before it."""
    run_cfg = dataclasses.replace(cfg, seed=seed)
    controller = controller_from_config(run_cfg)
    assert controller is not None
    columns = Twin(run_cfg, controller=controller, stop_when_done=True).run().columns
    canary = rollout_versions(cfg)[1]
    last = controller.decisions[-1] if controller.decisions else None
    decided_s = last.time_s if last is not None and last.kind in ("promoted", "aborted") else math.nan
    on_canary = columns["version"] == canary
    if not math.isnan(decided_s):
        on_canary &= columns["arrival_s"] < decided_s
    return {
        "scenario": scenario,
        "seed": seed,
        "outcome": controller.state,
        "rolled_back": controller.state == "aborted",
        "decided_s": decided_s,
        "canary_requests": int(on_canary.sum()),
        "canary_users": int(len(np.unique(columns["user_id"][on_canary]))),
        "failed_measurements": controller.failures,
    }


def _task(args: tuple[ScenarioConfig, str, int]) -> dict[str, Any]:
    return rehearse_once(*args)


def operating_characteristics(runs: pd.DataFrame) -> dict[str, Any]:
    """Per scenario: rollback probability with a 95% Wilson interval, decision time and
    exposure of the runs that rolled back (bad) or of all runs (good)."""
    out: dict[str, Any] = {}
    for scenario, group in runs.groupby("scenario", sort=False):
        n, k = len(group), int(group["rolled_back"].sum())
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        decided = group["decided_s"].dropna()
        exposure = group["canary_requests"]
        out[str(scenario)] = {
            "runs": n,
            "rollbacks": k,
            "rollback_probability": k / n,
            "rollback_probability_ci95": [float(ci.low), float(ci.high)],
            "undecided_runs": int(group["decided_s"].isna().sum()),
            "decision_time_s": _quantiles(decided.to_numpy()),
            "canary_requests": _quantiles(exposure.to_numpy(dtype=float)),
            "canary_users": _quantiles(group["canary_users"].to_numpy(dtype=float)),
        }
    return out


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None}
    p50, p90 = np.percentile(values, [50, 90])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90)}


def format_table(oc: dict[str, Any]) -> str:
    def num(d: dict[str, float | None], key: str, fmt: str) -> str:
        return "-" if d[key] is None else format(d[key], fmt)

    lines = ["| scenario | runs | rollback probability (95% CI) | decision time p50 / p90 (s) | canary requests p50 / p90 | canary users p50 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for scenario, s in oc.items():
        lo, hi = s["rollback_probability_ci95"]
        lines.append(f"| {scenario} | {s['runs']} | {s['rollback_probability']:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{num(s['decision_time_s'], 'p50', '.1f')} / {num(s['decision_time_s'], 'p90', '.1f')} | "
                     f"{num(s['canary_requests'], 'p50', '.0f')} / {num(s['canary_requests'], 'p90', '.0f')} | "
                     f"{num(s['canary_users'], 'p50', '.0f')} |")
    return "\n".join(lines)


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    started = time.perf_counter()
    scenarios = {"bad (as configured)": cfg, "good (canary like stable)": good_version_of(cfg)}
    tasks = [(scenario_cfg, name, cfg.seed + k) for name, scenario_cfg in scenarios.items() for k in range(cfg.rehearse.runs)]
    print(f"rehearsing the {cfg.rollout.strategy} rollout {cfg.rehearse.runs} times per scenario "
          f"({len(tasks)} twin runs of {cfg.duration_s:g} s on {cfg.rehearse.workers} worker(s)) ...", flush=True)
    if cfg.rehearse.workers > 1:
        with ProcessPoolExecutor(cfg.rehearse.workers) as pool:
            rows = list(pool.map(_task, tasks, chunksize=max(1, len(tasks) // (4 * cfg.rehearse.workers))))
    else:
        rows = [_task(t) for t in tasks]
    runs = pd.DataFrame(rows)
    oc = operating_characteristics(runs)
    wall = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(out_dir / "rehearsal.parquet", runs)
    write_json(out_dir / "experiment.json", {"mode": "rehearse", "strategy": cfg.rollout.strategy,
                                             "runs_per_scenario": cfg.rehearse.runs, "wall_s": wall,
                                             "operating_characteristics": oc})
    figure = plot_rehearsal(out_dir / "rehearsal.png", runs)
    table = format_table(oc)
    write_text(out_dir / "report.md", f"# servelab rehearsal: {cfg.rollout.strategy}\n\n{table}\n\n"
                                      f"Power = rollback probability of the bad scenario; false rollback rate = that of the good one.\n\n"
                                      f"![decision times and exposure]({figure.name})\n")
    print(table)
    print(f"{len(tasks)} rehearsals in {wall:.1f} s")
    print(f"report: {out_dir / 'report.md'}")
    print(f"outputs: {out_dir}")
    return 0
