"""scenario=patterns: one model and one demand served three ways, side by side.

The demand is the scenario's arrival schedule (rate x duration_s requests, the seed's schedule),
the same for every pattern:
- **sync** (real time, pattern=sync): each request waits for its answer, as every other run.
- **async** (pattern=async): each request is submitted (202 and an id), queued, run by a worker
  in a batch, and the client polls for it (async_jobs.*). Its latency is submit to the client
  learning the result (the result's *ready* time plus the wait for the next poll); the polls
  are its extra cost.
- **batch** (offline, mode=batch's job): the period's requests are collected as rows and scored
  as one job when the period (duration_s) ends, batch.parallelism workers in model calls of
  batch.batch_size rows. A row's latency is **from its arrival to the job's completion**: the
  period's end minus its arrival (waiting for the job) plus the job's completion time, since
  the job's output is usable as a whole (a downstream reader takes the finished table).

For each: the latency distribution (p50, p99, the CDF), throughput (sync and async: answers
completed per second in the measurement window, bound by the demand; batch: the job's rows/s,
running flat out), the replicas the load needs, and the cost per 1,000 predictions at that
count (batch.price_per_replica_hour for every pattern). Replicas needed, decided by the twin:
- sync: the fewest replicas whose predicted p99 is at most patterns.p99_target_s with nothing
  shed or timed out (the capacity a real-time service must hold for its tail);
- async: the fewest workers whose load, the offered rate over their capacity at
  async_jobs.batch_size, is at most patterns.max_utilisation (the queue absorbs bursts; only the
  mean must be carried);
- batch: the fewest workers whose predicted job finishes within the period (before the next
  period's job is due).
Sync and async pay for their replicas the whole period; batch pays only while the job runs.

mode=sim runs the twin only. mode=compare also measures each pattern on the real stack (one
profile of the stack calibrates the twin for sync and async, as mode=compare does; the batch
job is calibrated and measured as mode=batch does) and compares p50, p99 and throughput per
pattern against the fidelity targets (reports.compare.DEFAULT_TARGETS). Outputs under out_dir:
patterns.json, <pattern>/sim/ and <pattern>/real/ (each pattern's run files; batch's
requests.parquet holds a record per row with the latency defined above), the report and
figures/patterns.png.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from reports.compare import DEFAULT_TARGETS, compare_metric
from reports.patterns import PATTERNS, READY, format_patterns_table, write_patterns_report
from scenarios.config import ServelabConfig
from sim.files import write_config, write_json, write_parquet
from sim.arrivals import ArrivalSchedule, make_schedule
from sim.async_serving import async_capacity_rps
from sim.batch_job import BatchJob, JobCosts, JobPrediction, cost_per_1000, predict
from sim.config import ConfigError, ScenarioConfig, to_plain, validate_async, validate_batch_job, version_specs
from sim.records import requests_frame
from sim.rng import make_streams
from sim.service import ServiceTime, capacity_rps

PATTERN_MODES = ("sim", "compare")
# comparison rows per pattern: (patterns.json figure, the fidelity target's key in DEFAULT_TARGETS)
COMPARED = (("p50_s", "latency_p50"), ("p99_s", "latency_p99"), ("throughput_rps", "throughput"))
BATCH_LATENCY = ("a batch row's latency: from its arrival to the job's completion, i.e. the period's end (duration_s) "
                 "minus its arrival, plus the job's completion time (the job starts when the period ends and its "
                 "output is used as a whole)")
RULES = {
    "sync": "fewest replicas with predicted p99 <= patterns.p99_target_s, none shed or timed out",
    "async": "fewest workers with offered rate / their capacity at async_jobs.batch_size <= patterns.max_utilisation",
    "batch": "fewest workers whose predicted job finishes within the period (duration_s)",
}


def validate_patterns(cfg: ServelabConfig) -> None:
    """The preset's keys, and what its patterns need of the scenario: one line naming the key."""
    p = cfg.patterns
    names = [str(n) for n in p.run]
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise ConfigError("patterns.run", f"{unknown[0]!r} is not a serving pattern; use some of {', '.join(PATTERNS)}")
    if len(set(names)) != len(names):
        raise ConfigError("patterns.run", f"names a pattern twice: {names}")
    if cfg.mode not in PATTERN_MODES:
        raise ConfigError("patterns.run", f"the patterns preset runs in mode={' or mode='.join(PATTERN_MODES)}, not mode={cfg.mode}")
    if not (math.isfinite(p.p99_target_s) and p.p99_target_s > 0):
        raise ConfigError("patterns.p99_target_s", f"must be a finite number > 0, got {p.p99_target_s}")
    if not (math.isfinite(p.max_utilisation) and 0 < p.max_utilisation <= 1):
        raise ConfigError("patterns.max_utilisation", f"must be in (0, 1], got {p.max_utilisation}")
    if not 1 <= p.max_replicas <= 256:
        raise ConfigError("patterns.max_replicas", f"must be in [1, 256], got {p.max_replicas}")
    if cfg.arrival.kind == "closed":
        raise ConfigError("arrival.kind", "the patterns preset serves one open-loop demand (async and batch do not wait for answers); "
                                          "use poisson, constant, bursty, diurnal or trace")
    if cfg.rollout.strategy != "none" or cfg.experiment.variants:
        raise ConfigError("patterns.run", "the patterns preset serves one version: drop rollout.*/experiment.*")
    if "async" in names:  # what pattern=async needs (REST load, no feature store), as its own run asks it
        validate_async(dataclasses.replace(cfg, pattern="async"))
    if "batch" in names:
        validate_batch_job(cfg.batch)
        if cfg.batch.input:
            raise ConfigError("batch.input", "the patterns preset's batch job scores the demand's own requests; leave batch.input empty")


# --- the demand ----------------------------------------------------------------------------------

def demand(cfg: ScenarioConfig) -> ArrivalSchedule:
    """The arrival schedule every pattern serves: the one the twin and the load generator draw
    from the seed (sim.rng's arrivals and users streams)."""
    streams = make_streams(cfg.seed)
    return make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users)


def pattern_config(cfg: ServelabConfig, pattern: str) -> ServelabConfig:
    """The scenario as one pattern runs it: sync and async differ only in `pattern`."""
    return dataclasses.replace(cfg, pattern=pattern, patterns=dataclasses.replace(cfg.patterns, run=[]))


def measured_mask(arrival_s: np.ndarray, status: np.ndarray, cfg: ScenarioConfig) -> np.ndarray:
    """The population every figure describes: answered requests sent in [warmup_s, duration_s)."""
    return (status == "ok") & (arrival_s >= cfg.warmup_s) & (arrival_s < cfg.duration_s)


def latency_figures(latency_s: np.ndarray) -> dict[str, float | None]:
    if len(latency_s) == 0:
        return {"p50_s": None, "p99_s": None, "mean_s": None}
    p50, p99 = np.percentile(latency_s, [50.0, 99.0])
    return {"p50_s": float(p50), "p99_s": float(p99), "mean_s": float(latency_s.mean())}


def serving_cost_per_1000(price: float, replicas: int | None, period_s: float, answered: int) -> float | None:
    """A serving pattern's replicas are paid the whole period, whatever they answer in it."""
    if replicas is None or answered <= 0:
        return None
    return cost_per_1000(price, replicas, period_s, answered)


# --- sync and async ----------------------------------------------------------------------------------

def served_figures(cfg: ServelabConfig, frame: pd.DataFrame, summary: Mapping[str, Any], replicas_run: int,
                   replicas_needed: int | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """A serving run's figures for patterns.json, its measured latencies (for the CDF), and
    async's ready latencies (submit to the result ready on the server; None for sync)."""
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    mask = measured_mask(arrival, frame["status"].to_numpy(dtype=object), cfg)
    latency = np.sort(frame["latency_s"].to_numpy(dtype=float)[mask])
    answered = int((frame["status"].to_numpy(dtype=object) == "ok").sum())
    price = cfg.batch.price_per_replica_hour
    doc: dict[str, Any] = {
        "requests": int(len(frame)), "answered": answered, **latency_figures(latency),
        "throughput_rps": float(summary["throughput"]), "replicas": replicas_run,
        "cost_per_1000": serving_cost_per_1000(price, replicas_needed, cfg.duration_s, answered),
        "cost_per_1000_as_run": serving_cost_per_1000(price, replicas_run, cfg.duration_s, answered),
        "status_counts": dict(summary.get("status_counts", {})),
    }
    if cfg.pattern != "async":
        return doc, latency, None
    ready = frame["ready_s"].to_numpy(dtype=float)[mask] - arrival[mask]
    ready = np.sort(ready[np.isfinite(ready)])
    doc.update({"modelled": bool(len(ready)),
                "ready_p50_s": float(np.percentile(ready, 50)) if len(ready) else None,
                "ready_p99_s": float(np.percentile(ready, 99)) if len(ready) else None,
                "polls_per_request": float(frame["polls"].to_numpy(dtype=float)[mask].mean()) if mask.any() else None})
    return doc, latency, ready


def sync_replicas_needed(cfg: ServelabConfig) -> int | None:
    """The fewest replicas (up to patterns.max_replicas) whose twin run of the demand keeps p99
    at most patterns.p99_target_s with nothing shed or timed out; None if none does. Starts at
    the count the mean load alone needs: fewer cannot keep up."""
    from scenarios.run_sim import simulate

    one = dataclasses.replace(cfg, replicas=1)
    rate = len(demand(cfg)) / cfg.duration_s
    start = max(1, math.ceil(rate / capacity_rps(one)))
    for replicas in range(start, cfg.patterns.max_replicas + 1):
        _, summary, _ = simulate(dataclasses.replace(cfg, replicas=replicas, pattern="sync"))
        counts = summary["status_counts"]
        p99 = summary["latency_s"]["p99"]
        if p99 is not None and p99 <= cfg.patterns.p99_target_s and counts.get("shed", 0) == 0 and counts.get("timeout", 0) == 0:
            return replicas
    return None


def async_workers_needed(cfg: ServelabConfig) -> int | None:
    """The fewest workers (up to patterns.max_replicas) whose load, the demand's mean rate over
    their capacity (sim.async_serving.async_capacity_rps: full batches of async_jobs.batch_size,
    one at a time, whatever the replicas' concurrency), is at most patterns.max_utilisation."""
    per_worker = async_capacity_rps(dataclasses.replace(cfg, async_jobs=dataclasses.replace(cfg.async_jobs, workers=1)))
    rate = len(demand(cfg)) / cfg.duration_s
    needed = max(1, math.ceil(rate / (per_worker * cfg.patterns.max_utilisation) - 1e-9))
    return needed if needed <= cfg.patterns.max_replicas else None


# --- batch -----------------------------------------------------------------------------------------

def service_job_costs(cfg: ScenarioConfig) -> JobCosts:
    """The twin's batch job costs from the scenario's service model alone (mode=sim: nothing is
    measured): an emulated device's time per model call, or the numpy model's as CPU time on
    service.shared_cores. Worker start is not modelled here; mode=compare calibrates it."""
    version = version_specs(cfg.model)[0]
    service = ServiceTime(cfg.service, np.random.default_rng(cfg.seed))

    def mean(b: int) -> float:
        return service.mean(b) * version.service_factor

    if cfg.model.backend == "emulated":
        return JobCosts(batch_cpu_s=lambda b: 0.0, batch_device_s=mean)
    return JobCosts(batch_cpu_s=mean, cores=cfg.service.shared_cores or None)


def batch_job(cfg: ServelabConfig, rows: int, parallelism: int) -> BatchJob:
    return BatchJob.split(rows, cfg.batch.chunk_rows, cfg.batch.batch_size, parallelism)


def batch_parallelism_needed(cfg: ServelabConfig, rows: int, costs: JobCosts) -> tuple[int | None, JobPrediction | None]:
    """The fewest workers whose predicted job of `rows` rows completes within the period."""
    for p in range(1, cfg.patterns.max_replicas + 1):
        prediction = predict(batch_job(cfg, rows, p), costs)
        if prediction.completion_s <= cfg.duration_s:
            return p, prediction
    return None, None


def batch_latency_s(arrival_s: np.ndarray, period_s: float, completion_s: float) -> np.ndarray:
    """A batch row's latency (BATCH_LATENCY): it waits for the period to end, then for the job."""
    return (period_s - np.asarray(arrival_s, dtype=float)) + completion_s


def batch_records(schedule: ArrivalSchedule, cfg: ServelabConfig, completion_s: float, version: str) -> pd.DataFrame:
    """One record per row in the run schema: served by the job that starts at the period's end
    (start_s) and is complete at finish_s; queue_s is the wait for the period's end."""
    n = len(schedule)
    arrival = schedule.times_s
    period = cfg.duration_s
    rows_per_chunk = cfg.batch.chunk_rows
    return requests_frame({
        "request_id": np.arange(n, dtype=np.int64), "user_id": schedule.user_ids, "arrival_s": arrival,
        "start_s": np.full(n, period), "finish_s": np.full(n, period + completion_s),
        "latency_s": batch_latency_s(arrival, period, completion_s), "queue_s": period - arrival,
        "service_s": np.full(n, completion_s), "replica": np.zeros(n, dtype=np.int64), "version": [version] * n,
        "batch_id": np.arange(n, dtype=np.int64) // cfg.batch.batch_size,
        "batch_size": np.full(n, min(cfg.batch.batch_size, rows_per_chunk), dtype=np.int64), "status": ["ok"] * n,
    })


def batch_figures(cfg: ServelabConfig, schedule: ArrivalSchedule, job: JobPrediction | Any, parallelism_needed: int | None,
                  needed_completion_s: float | None) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """A batch job's figures (predicted or measured), its rows' latencies and records."""
    frame = batch_records(schedule, cfg, job.completion_s, version_specs(cfg.model)[0].name)
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    latency = np.sort(frame["latency_s"].to_numpy(dtype=float)[measured_mask(arrival, frame["status"].to_numpy(dtype=object), cfg)])
    price = cfg.batch.price_per_replica_hour
    doc = {"requests": int(len(frame)), "answered": int(len(frame)), **latency_figures(latency),
           "throughput_rps": float(job.rows_per_s), "replicas": cfg.batch.parallelism,
           "cost_per_1000": (cost_per_1000(price, parallelism_needed, needed_completion_s, job.rows)
                             if parallelism_needed is not None and needed_completion_s is not None and job.rows else None),
           "cost_per_1000_as_run": cost_per_1000(price, cfg.batch.parallelism, job.completion_s, job.rows) if job.rows else None,
           "startup_s": float(job.startup_s), "scoring_s": float(job.scoring_s), "completion_s": float(job.completion_s)}
    return doc, latency, frame


# --- one side (twin or real) of each pattern ------------------------------------------------------------

Latencies = dict[tuple[str, str], np.ndarray]  # (pattern, "twin" | "real") -> sorted latencies, s


def _log(message: str) -> None:
    print(f"[patterns {time.strftime('%H:%M:%S')}] {message}", flush=True)


def twin_patterns(cfg: ServelabConfig, out_dir: Path, schedule: ArrivalSchedule, doc: dict[str, Any], latencies: Latencies,
                  twin_cfg: ServelabConfig | None = None, batch_costs: JobCosts | None = None) -> None:
    """Each pattern in the twin: into doc["patterns"][p]["twin"] and <p>/sim/. `twin_cfg`: the
    scenario as the twin sees it (compare: calibrated by the stack's profile)."""
    from scenarios.outputs import write_run
    from scenarios.run_sim import simulate

    base = twin_cfg or cfg
    for pattern in cfg.patterns.run:
        entry = doc["patterns"].setdefault(pattern, {"replicas_rule": RULES[pattern]})
        if pattern == "batch":
            costs = batch_costs or service_job_costs(base)
            prediction = predict(batch_job(base, len(schedule), base.batch.parallelism), costs)
            needed, at_needed = batch_parallelism_needed(base, len(schedule), costs)
            figures, latency, frame = batch_figures(base, schedule, prediction, needed,
                                                    at_needed.completion_s if at_needed is not None else None)
            write_config(out_dir / pattern / "sim" / "config.yaml", base)
            write_parquet(out_dir / pattern / "sim" / "requests.parquet", frame)
        else:
            run_cfg = pattern_config(base, pattern)
            frame, summary, series = simulate(run_cfg)
            write_run(out_dir / pattern / "sim", run_cfg, frame, summary, series)
            if pattern == "sync":
                needed, replicas_run = sync_replicas_needed(run_cfg), run_cfg.replicas
            else:
                needed, replicas_run = async_workers_needed(run_cfg), run_cfg.async_jobs.workers
            figures, latency, ready = served_figures(run_cfg, frame, summary, replicas_run, needed)
            if ready is not None:
                latencies[(READY, "twin")] = ready
            if pattern == "async" and not figures["modelled"]:
                doc["warnings"].append("async: the twin's records carry no ready times: its row is not async serving's")
        entry["replicas_needed"] = needed
        entry["twin"] = figures
        latencies[(pattern, "twin")] = latency


def comparison(twin: Mapping[str, Any], real: Mapping[str, Any]) -> dict[str, Any]:
    """p50, p99 and throughput, twin against real, each against its fidelity target."""
    rows = {key: compare_metric(twin.get(key), real.get(key), DEFAULT_TARGETS[target]) for key, target in COMPARED}
    return {"metrics": rows, "all_within_target": all(r["within_target"] is True for r in rows.values())}


def new_doc(cfg: ServelabConfig, schedule: ArrivalSchedule) -> dict[str, Any]:
    return {
        "mode": cfg.mode,
        "demand": {"requests": len(schedule), "rate": len(schedule) / cfg.duration_s, "duration_s": cfg.duration_s,
                   "warmup_s": cfg.warmup_s, "arrival_kind": cfg.arrival.kind, "seed": cfg.seed},
        "backend": cfg.model.backend,
        "price_per_replica_hour": cfg.batch.price_per_replica_hour,
        "definitions": {"batch_latency": BATCH_LATENCY,
                        "throughput": "sync, async: answers completed per second in the measurement window (bound by the "
                                      "demand); batch: the job's rows per second (running flat out)",
                        "cost_per_1000": "price per replica-hour x replicas needed x hours paid, per 1,000 predictions: "
                                         "sync and async pay the period, batch the job's completion time",
                        "replicas_needed": RULES},
        "patterns": {},
        "warnings": [],
    }


def finish(cfg: ServelabConfig, out_dir: Path, doc: dict[str, Any], latencies: Latencies) -> int:
    from scenarios.outputs import format_report_paths

    write_json(out_dir / "patterns.json", doc)
    print()
    print(format_patterns_table(doc))
    for note in doc["warnings"]:
        print(f"  WARNING   {note}")
    paths = write_patterns_report(out_dir, doc, latencies, to_plain(cfg))
    print(format_report_paths(out_dir, paths))
    return 0


# --- mode=compare: the real stack beside the twin -------------------------------------------------------

def measure_batch(cfg: ServelabConfig, rows: int, out_dir: Path) -> tuple[Any, JobCosts, str]:
    """The batch job of the demand's `rows` rows on this machine, as mode=batch runs one: the
    generated digits input, a calibration of what the workers do (the twin's costs), then the
    job at batch.parallelism. Returns (the measured job, the calibrated costs, their source)."""
    from scenarios.batch import BatchJobError, calibrate, generate_input, job_costs, plan_chunks, run_job
    from real.batch import WorkerSpec

    b = cfg.batch
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / "input.parquet"
    generate_input(input_path, rows)
    version = version_specs(cfg.model)[0]
    spec = WorkerSpec(str(input_path), str(out_dir / "predictions"), rows, b.chunk_rows, b.batch_size, cfg.model.backend,
                      version.name, cfg.service, version.service_factor, cfg.seed)
    todo, _ = plan_chunks(spec, resume=False)
    try:
        calibration = calibrate(spec, [b.batch_size])
        costs, source = job_costs(cfg, calibration, len(os.sched_getaffinity(0)))
        measured = run_job(spec, todo, b.parallelism)
    except BatchJobError as exc:
        raise BatchFailed(str(exc)) from exc
    return measured, costs, source


class BatchFailed(RuntimeError):
    """The real batch job failed (a worker died): the preset stops with exit status 1."""


def real_batch_figures(cfg: ServelabConfig, schedule: ArrivalSchedule, measured: Any, entry: Mapping[str, Any],
                       costs: JobCosts) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """The measured job's figures. Its cost at the parallelism needed, when that is not the one
    run, is the measured completion scaled by the twin's ratio between the two (said in
    `cost_scaled_by_twin`)."""
    needed = entry.get("replicas_needed")
    completion_needed: float | None = None
    if needed is not None:
        completion_needed = measured.completion_s
        if needed != cfg.batch.parallelism:
            at_run = predict(batch_job(cfg, len(schedule), cfg.batch.parallelism), costs).completion_s
            at_needed = predict(batch_job(cfg, len(schedule), needed), costs).completion_s
            completion_needed = measured.completion_s * at_needed / at_run if at_run > 0 else None
    figures, latency, frame = batch_figures(cfg, schedule, measured, needed, completion_needed)
    figures["cost_scaled_by_twin"] = needed is not None and needed != cfg.batch.parallelism
    return figures, latency, frame


def run_compare(cfg: ServelabConfig, out_dir: Path) -> int:
    """Each pattern measured on the real stack and predicted by the calibrated twin."""
    from reports.compare import measurement_validity
    from scenarios.compare import EXIT_INVALID_MEASUREMENT, calibrated
    from scenarios.outputs import write_run
    from scenarios.compare import calibration_profile
    from scenarios.profile import profile_warnings
    from scenarios.run_real import async_workers_capacity, measure
    from sim.host import stack_capacity
    from sim.profile import load_profile

    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir / "config.yaml", cfg)
    schedule = demand(cfg)
    doc = new_doc(cfg, schedule)
    latencies: Latencies = {}
    serving = [p for p in cfg.patterns.run if p != "batch"]
    twin_cfg, capacity = cfg, None
    if serving:
        profile_path = calibration_profile(cfg, out_dir, _log)
        profile = load_profile(str(profile_path))
        doc["warnings"] += profile_warnings(profile, cfg)
        twin_cfg = calibrated(cfg, profile_path)  # type: ignore[assignment]
        capacity = stack_capacity(cfg, profile).rps
        doc["profile"] = str(profile_path)
    batch_measured, batch_costs = None, None
    if "batch" in cfg.patterns.run:
        _log(f"batch: calibrating and running the job of {len(schedule):,} rows ({cfg.batch.parallelism} worker(s)) ...")
        try:
            batch_measured, batch_costs, source = measure_batch(cfg, len(schedule), out_dir / "batch" / "real")
        except BatchFailed as exc:
            print(f"servelab: patterns: the batch job failed: {exc}", file=sys.stderr)
            return 1
        doc["batch_costs"] = source
    _log("the twin serves the demand as " + ", ".join(cfg.patterns.run) + " ...")
    twin_patterns(cfg, out_dir, schedule, doc, latencies, twin_cfg=twin_cfg, batch_costs=batch_costs)
    invalid: list[str] = []
    for pattern in cfg.patterns.run:
        entry = doc["patterns"][pattern]
        if pattern == "batch":
            figures, latency, frame = real_batch_figures(cfg, schedule, batch_measured, entry, batch_costs)  # type: ignore[arg-type]
            write_config(out_dir / pattern / "real" / "config.yaml", cfg)
            write_parquet(out_dir / pattern / "real" / "requests.parquet", frame)
        else:
            run_cfg = pattern_config(cfg, pattern)
            _log(f"{pattern}: measuring the real stack for {cfg.duration_s:g} s ...")
            # async: the workers' capacity from the twin's device times, as the twin's summary and
            # an async compare quote it; the replicas' stack serves no async request
            served_capacity = capacity if pattern == "sync" else async_workers_capacity(pattern_config(twin_cfg, pattern))
            frame, summary, series = measure(run_cfg, out_dir / pattern / "real", capacity=served_capacity)
            write_run(out_dir / pattern / "real", run_cfg, frame, summary, series)
            replicas_run = run_cfg.replicas if pattern == "sync" else run_cfg.async_jobs.workers
            figures, latency, ready = served_figures(run_cfg, frame, summary, replicas_run, entry["replicas_needed"])
            if ready is not None:
                latencies[(READY, "real")] = ready
            validity = measurement_validity(summary)
            figures.update(validity)
            if not validity["valid"]:
                invalid.append(pattern)
                doc["warnings"] += [f"{pattern} (real): {w}" for w in validity["invalid_reasons"]]
        entry["real"] = figures
        entry["comparison"] = comparison(entry["twin"], figures)
        latencies[(pattern, "real")] = latency
    doc["all_within_target"] = all(doc["patterns"][p]["comparison"]["all_within_target"] for p in cfg.patterns.run)
    status = finish(cfg, out_dir, doc, latencies)
    if invalid:
        print(f"servelab: {len(invalid)} of {len(cfg.patterns.run)} patterns measured INVALID (exit status "
              f"{EXIT_INVALID_MEASUREMENT}): {', '.join(invalid)}")
        return EXIT_INVALID_MEASUREMENT
    return status


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    if cfg.mode == "compare":
        return run_compare(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir / "config.yaml", cfg)
    schedule = demand(cfg)
    doc = new_doc(cfg, schedule)
    latencies: Latencies = {}
    _log(f"the demand: {len(schedule):,} requests over {cfg.duration_s:g} s; the twin serves it as "
         f"{', '.join(cfg.patterns.run)} ...")
    twin_patterns(cfg, out_dir, schedule, doc, latencies)
    return finish(cfg, out_dir, doc, latencies)

