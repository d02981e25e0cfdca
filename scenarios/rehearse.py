"""mode=rehearse: a rollout policy's operating characteristics, from many seeds of the twin.

The question no rollout tool answers before a release: with this policy, how likely is a bad
version caught (power), how often is a good one rolled back anyway (false rollback rate), how
fast is the decision, and how many requests and users does the bad version serve first. The
configured scenario is the bad one (its candidate as configured: slower, failing, less accurate,
or turning bad under its `faults`); the good one is the same scenario with the candidate made like
stable (`good_version_of`). Each runs `rehearse.runs` times with seeds `seed, seed+1, ...`,
spread over `rehearse.workers` processes, every run stopping once its rollout is done. Any
strategy (`rollout.strategy`): canary, linear, blue_green, rolling, recreate.
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
from scipy.stats import binom, binomtest

from reports.rehearse import format_oc_table, write_rehearsal_report
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths
from sim.config import ScenarioConfig, rollout_versions, to_plain, version_specs
from sim.files import write_config, write_json, write_parquet
from sim.policy.rollout import controller_from_config
from sim.policy.versions import NUMPY_DIGITS_ACCURACY
from sim.twin import Twin


BAD, GOOD = "bad (as configured)", "good (canary like stable)"


def good_version_of(cfg: ScenarioConfig) -> ScenarioConfig:
    """The same scenario with the candidate made like stable (its speed, error rate, accuracy;
    no fault of its own): what a rollout of a good version sees. The numpy backend's accuracy
    is its model's, which follows the version's name; the twin only reads it as a number, so
    the good scenario states every version's accuracy as the emulated backend would."""
    stable_name, candidate = rollout_versions(cfg)
    specs = version_specs(cfg.model)
    numpy = cfg.model.backend == "numpy"
    if numpy:
        specs = [dataclasses.replace(v, accuracy=NUMPY_DIGITS_ACCURACY.get(v.name)) for v in specs]
    stable = next(v for v in specs if v.name == stable_name)
    versions = [dataclasses.replace(stable, name=v.name, faults=[]) if v.name == candidate else v for v in specs]
    model = dataclasses.replace(cfg.model, versions=[dataclasses.asdict(v) for v in versions],
                                backend="emulated" if numpy else cfg.model.backend)
    return dataclasses.replace(cfg, model=model)


def rehearse_once(cfg: ScenarioConfig, scenario: str, seed: int) -> dict[str, Any]:
    """One rollout in the twin: its decision, and what the candidate served before it."""
    run_cfg = dataclasses.replace(cfg, seed=seed)
    controller = controller_from_config(run_cfg)
    assert controller is not None
    columns = Twin(run_cfg, controller=controller, stop_when_done=True).run().columns
    candidate = rollout_versions(cfg)[1]
    decision = controller.decision
    decided_s = decision.time_s if decision is not None else math.nan
    served = (columns["version"] == candidate) & ~np.asarray(columns["shadow"], dtype=bool)
    on_candidate = served & (columns["arrival_s"] < decided_s) if decision is not None else served
    return {
        "scenario": scenario,
        "seed": seed,
        "outcome": controller.state,
        "rolled_back": decision is not None and decision.kind == "aborted",
        "decided_s": decided_s,
        "canary_requests": int(on_candidate.sum()),
        "canary_users": int(len(np.unique(columns["user_id"][on_candidate]))),
        "canary_requests_total": int(served.sum()),  # a rolling rollback serves some more after the verdict
        "failed_measurements": controller.failures,
    }


def _task(args: tuple[ScenarioConfig, str, int]) -> dict[str, Any]:
    return rehearse_once(*args)


def balanced(tasks: list[tuple[ScenarioConfig, str, int]]) -> list[tuple[ScenarioConfig, str, int]]:
    """The good scenario first: its rollouts run to promotion, often many times longer than a
    caught bad one, so handing them out first (one task at a time) keeps the workers evenly busy
    to the end. Rows are sorted back by the caller (`run` keeps scenario, seed order)."""
    return sorted(tasks, key=lambda t: t[1] != GOOD)


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


def _quantiles(values: np.ndarray) -> dict[str, Any]:
    """Mean, p50 with its 95% interval, p90. The median's interval is distribution-free (order
    statistics: the ranks a Binomial(n, 1/2) puts 2.5% beyond on each side), so it holds for
    the skewed, discrete times and counts a rehearsal yields. Below six runs it is their whole
    range, and covers the median less often than 95%."""
    if len(values) == 0:
        return {"mean": None, "p50": None, "p50_ci95": None, "p90": None}
    p50, p90 = np.percentile(values, [50, 90])
    ordered = np.sort(values)
    n = len(ordered)
    below = int(binom.ppf(0.025, n, 0.5))  # order statistic (1-based) of the lower bound
    low, high = ordered[max(below - 1, 0)], ordered[min(n - below, n - 1)]
    return {"mean": float(values.mean()), "p50": float(p50), "p50_ci95": [float(low), float(high)], "p90": float(p90)}


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    started = time.perf_counter()
    scenarios = {BAD: cfg, GOOD: good_version_of(cfg)}
    tasks = [(scenario_cfg, name, cfg.seed + k) for name, scenario_cfg in scenarios.items() for k in range(cfg.rehearse.runs)]
    print(f"rehearsing the {cfg.rollout.strategy} rollout {cfg.rehearse.runs} times per scenario "
          f"({len(tasks)} twin runs of {cfg.duration_s:g} s on {cfg.rehearse.workers} worker(s)) ...", flush=True)
    if cfg.rehearse.workers > 1:
        with ProcessPoolExecutor(cfg.rehearse.workers) as pool:
            rows = list(pool.map(_task, balanced(tasks)))
    else:
        rows = [_task(t) for t in tasks]
    order = {name: i for i, name in enumerate(scenarios)}
    runs = pd.DataFrame(rows).sort_values(["scenario", "seed"], key=lambda c: c.map(order) if c.name == "scenario" else c,
                                          ignore_index=True)
    oc = operating_characteristics(runs)
    wall = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(out_dir / "rehearsal.parquet", runs)
    write_json(out_dir / "experiment.json", {"mode": "rehearse", "strategy": cfg.rollout.strategy,
                                             "runs_per_scenario": cfg.rehearse.runs, "wall_s": wall,
                                             "operating_characteristics": oc})
    write_config(out_dir / "config.yaml", cfg)
    paths = write_rehearsal_report(out_dir, runs, oc, to_plain(cfg), strategy=cfg.rollout.strategy, wall_s=wall)
    print(format_oc_table(oc))
    print(f"{len(tasks)} rehearsals in {wall:.1f} s")
    print(format_report_paths(out_dir, paths))
    return 0
