"""mode=sim: run the twin and write the run's outputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.text import format_summary
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths, report_run, write_run
from sim.config import ScenarioConfig
from scenarios.profile import profile_warnings
from sim.profile import load_profile
from sim.records import requests_frame, summarize, timeseries
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
    result = Twin(cfg, profile=profile, progress=bar, overhead_samples=samples).run()
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
        },
    )
    series = timeseries(frame, cfg.window_s, end_s=max(cfg.duration_s, result.end_s))
    return frame, summary, series


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    frame, summary, series = simulate(cfg, progress=cfg.progress)
    write_run(out_dir, cfg, frame, summary, series)
    print(format_summary(summary, title="twin (mode=sim)"))
    paths = report_run(out_dir, cfg, frame, summary, series,
                       title=f"servelab sim: twin:{cfg.service.kind}, {cfg.replicas} replicas, {cfg.lb.policy}")
    print(format_report_paths(out_dir, paths))
    return 0
