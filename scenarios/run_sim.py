"""mode=sim: run the twin and write the run's outputs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.text import format_summary
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths, report_run, write_run
from scenarios.profile import profile_warnings
from sim.config import ScenarioConfig, version_names
from sim.control import Event
from sim.files import write_json, write_parquet
from sim.policy.rollout import CanaryController, controller_from_config
from sim.profile import load_profile
from sim.records import requests_frame, summarize, timeseries, version_windows
from sim.service import capacity_rps
from sim.twin import Twin, default_progress


def mean_offered_rate(cfg: ScenarioConfig) -> float:
    """The scenario's long-run offered rate, req/s (closed loop: users over think time, an
    upper bound; trace: unknown without reading it, so the configured rate)."""
    a = cfg.arrival
    if a.kind == "bursty":
        return (a.high_rate * a.high_dwell_s + a.low_rate * a.low_dwell_s) / (a.high_dwell_s + a.low_dwell_s)
    if a.kind == "closed":
        return a.users / a.think_s if a.think_s > 0 else float("inf")
    return a.rate


def simulate(cfg: ScenarioConfig, progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """The twin's requests table, summary and time series for one scenario."""
    paths = {cfg.service.profile if cfg.service.kind == "empirical" else "", cfg.overhead.profile} - {""}
    loaded = {path: load_profile(path) for path in sorted(paths)}
    profile = loaded.get(cfg.service.profile) if cfg.service.kind == "empirical" else None
    overhead = loaded.get(cfg.overhead.profile)
    warnings = [note for p in loaded.values() for note in profile_warnings(p, cfg)]
    expected = None if cfg.arrival.kind in ("closed", "trace") else int(cfg.arrival.rate * cfg.duration_s)
    bar = default_progress(expected) if progress else None
    wall = time.perf_counter()
    samples = overhead.overhead_samples(mean_offered_rate(cfg)) if overhead else None
    controller = controller_from_config(cfg)
    result = Twin(cfg, profile=profile, progress=bar, overhead_samples=samples, controller=controller).run()
    wall = time.perf_counter() - wall
    frame = requests_frame(result.columns)
    summary = summarize(
        frame,
        warmup_s=cfg.warmup_s,
        duration_s=cfg.duration_s,
        replicas=cfg.replicas,
        concurrency=cfg.concurrency,
        capacity_rps=capacity_rps(cfg, profile),
        extra={
            "source": "sim",
            "backend": f"twin:{cfg.service.kind}",
            "seed": cfg.seed,
            "sim_end_s": result.end_s,
            "wall_s": wall,
            "sim_requests_per_wall_s": len(frame) / wall if wall > 0 else float(np.inf),
            "warnings": warnings,
            **({"rollout": rollout_summary(controller, result.events)} if controller is not None else {}),
        },
    )
    series = timeseries(frame, cfg.window_s, end_s=max(cfg.duration_s, result.end_s))
    return frame, summary, series


def rollout_summary(controller: CanaryController, events: list[Event]) -> dict[str, Any]:
    """The rollout's outcome, and every decision and change with its time and reason (events.json)."""
    last = controller.decisions[-1] if controller.decisions else None
    decided = last if last is not None and last.kind in ("promoted", "aborted") else None
    return {
        "strategy": "canary",
        "outcome": controller.state,
        "decided_s": decided.time_s if decided else None,
        "reason": decided.reason if decided else None,
        "failed_measurements": controller.failures,
        "decisions": [dataclasses.asdict(d) for d in controller.decisions],
        "events": [dataclasses.asdict(e) for e in events],
    }


def write_rollout(out_dir: Path, cfg: ServelabConfig, frame: pd.DataFrame, summary: dict[str, Any]) -> None:
    """events.json and rollout.parquet, for runs with a rollout. The decision and event lists
    move out of the summary into events.json: summary.json and the report keep the outcome."""
    rollout = summary.get("rollout")
    if rollout is None:
        return
    log = {"decisions": rollout.pop("decisions"), "events": rollout.pop("events")}
    write_json(out_dir / "events.json", log)
    weights = [(e["time_s"], e["detail"]["weights"]) for e in log["events"] if e["detail"].get("action") == "SetWeights"]
    write_parquet(out_dir / "rollout.parquet", version_windows(frame, cfg.window_s, weights, version_names(cfg.model)))


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    frame, summary, series = simulate(cfg, progress=cfg.progress)
    write_rollout(out_dir, cfg, frame, summary)
    write_run(out_dir, cfg, frame, summary, series)
    print(format_summary(summary, title="twin (mode=sim)"))
    if "rollout" in summary:
        r = summary["rollout"]
        when = f" at {r['decided_s']:.1f} s: {r['reason']}" if r["decided_s"] is not None else " (no decision before the run ended)"
        print(f"  rollout   canary {r['outcome']}{when}; events.json, rollout.parquet")
    paths = report_run(out_dir, cfg, frame, summary, series,
                       title=f"servelab sim: twin:{cfg.service.kind}, {cfg.replicas} replicas, {cfg.lb.policy}")
    print(format_report_paths(out_dir, paths))
    return 0
