"""mode=sim: run the twin and write the run's outputs."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from reports.text import format_summary
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths, report_run, write_run
from scenarios.profile import profile_warnings
from sim.async_serving import AsyncTwin, AsyncWayScale, async_capacity_rps
from sim.config import ScenarioConfig, version_names
from sim.features import coverage_warnings, measured_lookups, predicted_hit_ratio
from sim.control import Event, ReplicaCount
from sim.files import write_json, write_parquet
from sim.policy.rollout import controller_from_config
from sim.policy.split import Router
from sim.policy.strategy import RolloutController
from sim.profile import Profile, load_profile
from sim.records import primary, requests_frame, series_window_s, summarize, timeseries, version_windows
from sim.host import stack_capacity
from sim.service import capacity_rps
from sim.twin import Twin, TwinResult, default_progress


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
    warnings = [note for p in loaded.values() for note in profile_warnings(p, cfg)] + coverage_warnings(cfg)
    expected = None if cfg.arrival.kind in ("closed", "trace") else int(cfg.arrival.rate * cfg.duration_s)
    bar = default_progress(expected) if progress else None
    wall = time.perf_counter()
    host = overhead.host if overhead is not None and cfg.overhead.model == "host" else None
    samples = overhead.overhead_samples(mean_offered_rate(cfg)) if overhead is not None and host is None else None
    controller = controller_from_config(cfg)
    if cfg.pattern == "async":  # submit, a queue, workers pulling batches, polls (sim.async_serving)
        result = async_result(cfg, profile, overhead)
    else:
        result = Twin(cfg, profile=profile, progress=bar, overhead_samples=samples, controller=controller, host=host,
                      lookups=measured_lookups(list(loaded.values()), mean_offered_rate(cfg))).run()
    wall = time.perf_counter() - wall
    capacity = capacity_rps(cfg, profile)  # the devices'; with the host modelled, the lesser of both
    if cfg.pattern == "async":  # the workers' (the host is not modelled for async: sim.async_serving)
        capacity, host = async_capacity_rps(cfg, profile), None
    frame = requests_frame(result.columns)
    summary = summarize(
        frame,
        warmup_s=cfg.warmup_s,
        duration_s=cfg.duration_s,
        replicas=len(result.busy_s),  # with a rollout's replicas: every one that existed
        concurrency=cfg.concurrency if cfg.pattern != "async" else 1,  # async: one batch at a time per worker
        capacity_rps=capacity if overhead is None or host is None else stack_capacity(cfg, overhead).rps,
        versions=version_names(cfg.model),
        hit_ratio_at=predicted_hit_ratio(cfg),
        extra={
            "source": "sim",
            "backend": f"twin:{cfg.service.kind}",
            "seed": cfg.seed,
            "sim_end_s": result.end_s,
            "wall_s": wall,
            "sim_requests_per_wall_s": len(frame) / wall if wall > 0 else float(np.inf),
            "warnings": warnings,
            # copies due but not sent (over gateway.shadow_max_in_flight, or no shadow replica routable)
            **({"shadow_dropped": result.shadow_dropped} if result.shadow_dropped is not None else {}),
            **({"rollout": rollout_summary(controller, result.events, result.replica_counts, frame,
                                           window_s=cfg.window_s, duration_s=cfg.duration_s)} if controller is not None else {}),
        },
    )
    end = max(cfg.duration_s, result.end_s)
    summary["timeseries_window_s"] = series_window_s(end, cfg.window_s, cfg.timeseries_window_s)
    series = timeseries(frame, summary["timeseries_window_s"], end_s=end, versions=version_names(cfg.model))
    return frame, summary, series


def async_result(cfg: ScenarioConfig, profile: Profile | None, overhead: Profile | None) -> TwinResult:
    """pattern=async in the twin (sim.async_serving): the ways in and out of a submission or a
    poll from the overhead profile's samples at the offered rate (or overhead.before_s/after_s),
    the emulated device's measured lateness from its host part."""
    samples = overhead.overhead_samples(mean_offered_rate(cfg)) if overhead is not None else None
    wake = overhead.host.device_wake_s if overhead is not None and overhead.host is not None and cfg.model.backend == "emulated" \
        and cfg.service.kind != "empirical" else 0.0
    scale = AsyncWayScale.from_overheads(overhead.overheads_s) if overhead is not None else None
    return AsyncTwin(cfg, profile, overhead_samples=samples, device_wake_s=wake, way_scale=scale).run()


def rollout_summary(controller: RolloutController, events: Sequence[Event | Mapping[str, Any]],
                    replica_counts: Sequence[ReplicaCount | Mapping[str, Any]] = (),
                    frame: pd.DataFrame | None = None, *, window_s: float | None = None,
                    duration_s: float | None = None) -> dict[str, Any]:
    """The rollout's outcome (strategy, outcome, decided_s, reason, failed measurements), every
    decision and change with its time and reason, the analysis' measurements, and with the
    replica counts (`replica_counts`, as `sim.control` logs them) the capacity dip: for
    events.json, rollout.parquet and summary.json. With the run's records (`frame`), also what
    was not answered while the rollout ran (`during`): the zero-loss check; and with the run's
    `window_s` and `duration_s`, the capacity dip in req/s (`throughput_dip`)."""
    decided = controller.decision
    doc: dict[str, Any] = {
        "strategy": controller.strategy,
        "outcome": controller.state,
        "decided_s": decided.time_s if decided else None,
        "reason": decided.reason if decided else None,
        "failed_measurements": controller.failures,
        "decisions": [dataclasses.asdict(d) for d in controller.decisions],
        "events": [e if isinstance(e, Mapping) else dataclasses.asdict(e) for e in events],
        "measurements": [dataclasses.asdict(m) for m in controller.analysis.measurements] if controller.analysis else [],
        "replica_counts": [c if isinstance(c, Mapping) else dataclasses.asdict(c) for c in replica_counts],
    }
    end = _rollout_end_s(controller, doc["events"])
    if doc["replica_counts"]:
        doc["capacity_dip"] = capacity_dip(doc["replica_counts"], end)
    if frame is not None:
        doc["during"] = unanswered_during(frame, end)
        start = _rollout_start_s(doc["events"])
        if window_s is not None and duration_s is not None and start is not None:
            doc.setdefault("capacity_dip", {}).update(throughput_dip(frame, window_s, duration_s, start, end))
    return doc


def _rollout_start_s(events: Sequence[Mapping[str, Any]]) -> float | None:
    """When the rollout first changed the deployment (its first action), None if it never did."""
    return min((float(e["time_s"]) for e in events if e["kind"] == "action"), default=None)


def throughput_dip(frame: pd.DataFrame, window_s: float, duration_s: float, start_s: float,
                   end_s: float = math.inf) -> dict[str, Any]:
    """The capacity dip in req/s, from the records: the lowest throughput (primary answers
    completed per second, by finish time) of a window during the rollout (the windows from the
    one holding `start_s`, its first action, to the one holding `end_s`), against the mean
    throughput of the windows before that one; a rollout that acts at once (at time 0) has none
    before it, and is measured against the rate offered during it (`throughput_baseline` says
    which). Only whole windows before `duration_s` count: after it the load stops, and so does
    the throughput, whatever the rollout does. Empty when no whole window covers the rollout."""
    n = int(math.floor(duration_s / window_s + 1e-9))
    first = int(math.floor(start_s / window_s + 1e-9))
    last = min(int(math.floor(end_s / window_s + 1e-9)) if math.isfinite(end_s) else n - 1, n - 1)
    if first > last:
        return {}
    rows = primary(frame)
    ok = rows["status"].astype(str).to_numpy() == "ok"
    edges = np.arange(n + 1) * window_s
    done = np.histogram(rows["finish_s"].to_numpy(dtype=float)[ok], edges)[0] / window_s
    during = done[first:last + 1]
    low = int(np.argmin(during))
    if first > 0:
        before, basis = float(done[:first].mean()), "before the rollout"
    else:
        arrival = rows["arrival_s"].to_numpy(dtype=float)
        sent = ((arrival >= edges[first]) & (arrival < edges[last + 1])).sum()
        before, basis = float(sent / (edges[last + 1] - edges[first])), "offered during the rollout"
    lowest = float(during[low])
    return {"throughput_before_rps": before, "throughput_baseline": basis, "throughput_min_rps": lowest,
            "throughput_min_at_s": float(edges[first + low]), "throughput_min_fraction": lowest / before if before > 0 else None}


def _rollout_end_s(controller: RolloutController, events: Sequence[Mapping[str, Any]]) -> float:
    """When the rollout stopped changing the deployment: its last action once it is done (a
    rolling rollback ends well after its verdict), else never (it was still under way)."""
    if not controller.done:
        return math.inf
    actions = [e["time_s"] for e in events if e["kind"] == "action"]
    last = max([d.time_s for d in controller.decisions] + actions)
    return float(last)


def capacity_dip(counts: Sequence[Mapping[str, Any]], end_s: float = math.inf) -> dict[str, Any]:
    """The fewest ready replicas (all versions) from the rollout's start to its end, against the
    count before it, and how long nothing at all was ready (recreate's downtime). `counts`: the
    ready and live replicas per version after each change, in time order, the first at time 0."""
    times = [float(c["time_s"]) for c in counts]
    ready = [int(sum(c["ready"])) for c in counts]
    before = ready[0]
    during = [k for k, t in enumerate(times) if t <= end_s] or [0]
    low = min(during, key=lambda k: ready[k])
    downtime = 0.0
    for k in during:
        if ready[k] == 0:
            until = min(times[k + 1] if k + 1 < len(times) else end_s, end_s)
            downtime += (until - times[k]) if math.isfinite(until) else math.inf
    return {"ready_before": before, "ready_min": ready[low], "ready_min_at_s": times[low],
            "ready_min_fraction": ready[low] / before if before else None, "downtime_s": downtime}


def unanswered_during(frame: pd.DataFrame, end_s: float) -> dict[str, Any]:
    """The primary requests sent while the rollout ran (time 0 to its end) and how many of them
    were not answered, by status: zero for an update that loses nothing."""
    rows = primary(frame)
    rows = rows[rows["arrival_s"].to_numpy(dtype=float) < end_s]
    status = rows["status"].astype(str)
    return {"requests": int(len(rows)), "not_ok": {str(k): int(v) for k, v in status[status != "ok"].value_counts().items()}}


def replica_windows(counts: Sequence[Mapping[str, Any]], window_s: float, n_windows: int,
                    versions: Sequence[str]) -> pd.DataFrame:
    """Per window and version: the fewest ready replicas during the window (`replicas_ready`)
    and the most live ones, ready or not (`replicas_live`: starting and draining count), from
    the counts logged after each change. O(windows + changes)."""
    times = np.array([float(c["time_s"]) for c in counts])
    ready = np.array([list(c["ready"]) for c in counts], dtype=np.int64).reshape(len(counts), len(versions))
    live = np.array([list(c["live"]) for c in counts], dtype=np.int64).reshape(len(counts), len(versions))
    starts = np.arange(n_windows) * window_s
    first = np.maximum(np.searchsorted(times, starts, side="right") - 1, 0)  # in effect at the window's start
    last = np.maximum(np.searchsorted(times, starts + window_s, side="left") - 1, first)  # the last change inside
    rows = []
    for w in range(n_windows):
        lo, hi = first[w], last[w] + 1
        for v, name in enumerate(versions):
            rows.append((starts[w], name, int(ready[lo:hi, v].min()), int(live[lo:hi, v].max())))
    return pd.DataFrame(rows, columns=["window_start_s", "version", "replicas_ready", "replicas_live"])


def analysis_windows(measurements: Sequence[Mapping[str, Any]], window_s: float) -> pd.DataFrame:
    """Per window: the analysis' verdict on it (failed if any measurement in it failed, else
    passed if any passed, else inconclusive), and how many measurements failed."""
    rank = {"inconclusive": 0, "passed": 1, "failed": 2}
    verdicts: dict[float, tuple[str, int]] = {}
    for m in measurements:
        start = math.floor(m["time_s"] / window_s) * window_s
        worst, failed = verdicts.get(start, ("inconclusive", 0))
        result = m["result"]
        verdicts[start] = (result if rank[result] > rank[worst] else worst, failed + (result == "failed"))
    return pd.DataFrame([(t, r, f) for t, (r, f) in sorted(verdicts.items())],
                        columns=["window_start_s", "analysis", "analysis_failures"])


def write_rollout(out_dir: Path, cfg: ServelabConfig, frame: pd.DataFrame, summary: dict[str, Any]) -> None:
    """events.json and rollout.parquet, for runs with a rollout. The decision and event lists
    move out of the summary into events.json (with the replica counts and the analysis'
    measurements): summary.json and the report keep the outcome. rollout.parquet: per window
    and version, the records' figures (`sim.records.version_windows`), the replicas ready and
    live, and the analysis' verdict on the window."""
    rollout = summary.get("rollout")
    if rollout is None:
        return
    log = {key: rollout.pop(key, []) for key in ("decisions", "events", "measurements", "replica_counts")}
    write_json(out_dir / "events.json", log)
    versions = version_names(cfg.model)
    start = Router.from_config(cfg).version_weights  # the weights before the rollout's first change
    weights = [(0.0, [w / sum(start) for w in start])]
    weights += [(e["time_s"], e["detail"]["weights"]) for e in log["events"] if e["detail"].get("action") == "SetWeights"]
    table = version_windows(frame, cfg.window_s, weights, versions)
    if log["replica_counts"] and len(table):
        n_windows = int(round(table["window_start_s"].max() / cfg.window_s)) + 1
        table = table.merge(replica_windows(log["replica_counts"], cfg.window_s, n_windows, versions),
                            on=["window_start_s", "version"], how="left")
    if len(table):
        table = table.merge(analysis_windows(log["measurements"], cfg.window_s), on="window_start_s", how="left")
    write_parquet(out_dir / "rollout.parquet", table)


def format_rollout_line(r: Mapping[str, Any]) -> str:
    """The rollout's line on stdout: outcome, when and why, and the capacity dip."""
    when = f" at {r['decided_s']:.1f} s: {r['reason']}" if r["decided_s"] is not None else " (no decision before the run ended)"
    line = f"  rollout   {r['strategy']} {r['outcome']}{when}"
    dip = r.get("capacity_dip") or {}
    if "ready_before" in dip:
        line += (f"\n            ready replicas {dip['ready_before']} before, {dip['ready_min']} at the fewest "
                 f"({dip['ready_min_at_s']:.1f} s)" + (f", none ready for {dip['downtime_s']:.2f} s" if dip["downtime_s"] else ""))
    if "throughput_min_rps" in dip:
        share = f" ({dip['throughput_min_fraction']:.0%})" if dip["throughput_min_fraction"] is not None else ""
        line += (f"\n            throughput {dip['throughput_before_rps']:.1f} req/s {dip['throughput_baseline']}, "
                 f"{dip['throughput_min_rps']:.1f} req/s{share} in the lowest window ({dip['throughput_min_at_s']:.1f} s)")
    during = r.get("during")
    if during:
        lost = ", ".join(f"{n} {s}" for s, n in during["not_ok"].items()) or "none"
        line += f"\n            requests sent during the rollout {during['requests']}, not answered: {lost}"
    return line + "; events.json, rollout.parquet"


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    from scenarios import experiment

    planned = experiment.plan(cfg, [out_dir])
    frame, summary, series = simulate(cfg, progress=cfg.progress)
    done = experiment.finish(out_dir, cfg, frame, summary, planned)
    write_rollout(out_dir, cfg, frame, summary)
    write_run(out_dir, cfg, frame, summary, series)
    print(format_summary(summary, title="twin (mode=sim)"))
    if done is not None:  # its controller's stop is the experiment's
        print(experiment.format_experiment(done))
    elif "rollout" in summary:
        print(format_rollout_line(summary["rollout"]))
    paths = report_run(out_dir, cfg, frame, summary, series,
                       title=f"servelab sim: twin:{cfg.service.kind}, {cfg.replicas} replicas, {cfg.lb.policy}")
    print(format_report_paths(out_dir, paths))
    return 0
