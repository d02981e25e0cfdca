"""mode=compare: what the twin predicted, what the real stack measured, how far apart.

1. Calibrate: a profile of this machine's stack (device time per batch size, per-hop
   overheads), measured on its own stack launch (as the compare.profile_* keys ask), or the one
   named by `overhead.profile`, reused as it is: no profiling (a profile written by
   mode=profile or by an earlier compare, its profile.json).
2. Measure: the real stack under the scenario's load (the load generator replays the schedule
   the seed gives) into out_dir/real/.
3. Predict: the twin on the same config and seed, replaying the profile, into out_dir/sim/.
4. Compare: comparison.json and a table; optionally more load points (compare.load_fractions
   of capacity) in both, for a latency-versus-load curve; figures and an HTML/Markdown report.
   The twin alone also runs a few cheap points from light load to past capacity
   (PREDICTED_FRACTIONS), so the curve shows where throughput flattens at capacity, the knee,
   even when every measured point stays below it.
The twin never sees the measurement it is compared against: only the separate profile.

With `rollout.strategy` set, both sides run the rollout (the twin its controller on its clock,
the real stack the same controller through its driver) and write events.json and
rollout.parquet; the comparison adds issue 10's rollout targets (the same decision, its time
within one analysis window (`analysis_window_s`), the candidate's requests before it within
20%) and the report draws both timelines side by side. An extra load point is the same
scenario at another rate, its rollout included (compare.load_fractions=[] skips them).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from reports.compare import (add_rollout_comparison, compare_summaries, format_comparison_table, invalid_point_names,
                             load_run, measurement_validity)
from reports.experiment import add_experiment_comparison, read_experiment_doc
from reports.figures import LoadPoint
from reports.report import write_report
from scenarios import experiment
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths, write_json, write_run
from scenarios.profile import format_profile, measure_profile, profile_warnings
from scenarios.run_sim import simulate, write_rollout
from sim.config import ScenarioConfig, rollout_versions
from sim.profile import load_profile
from sim.host import stack_capacity

EXIT_INVALID_MEASUREMENT = 3
# twin-only points of the load curve, as fractions of capacity: dense around and past the knee
PREDICTED_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)


def calibrated(cfg: ScenarioConfig, profile_path: Path) -> ScenarioConfig:
    """The twin's view of the scenario: the profile's host model (or its overheads replayed),
    and its measured device times, except for the emulated device with a host model: that
    device sleeps the scenario's own service model, plus the lateness the profile measured
    (sim.host.HostCosts.device_wake_s), so one profile of the host serves any device times."""
    overhead = dataclasses.replace(cfg.overhead, profile=str(profile_path))
    if cfg.model.backend == "emulated" and cfg.overhead.model == "host" and load_profile(str(profile_path)).host is not None:
        return dataclasses.replace(cfg, overhead=overhead)
    return dataclasses.replace(cfg, overhead=overhead,
                               service=dataclasses.replace(cfg.service, kind="empirical", profile=str(profile_path)))


def measure_real(cfg: ScenarioConfig, out_dir: Path, capacity: float, planned: dict[str, Any] | None = None) -> dict[str, Any]:
    from scenarios.run_real import measure

    frame, summary, series = measure(cfg, out_dir, capacity=capacity)
    experiment.finish(out_dir, cfg, frame, summary, planned)
    write_rollout(out_dir, cfg, frame, summary)
    write_run(out_dir, cfg, frame, summary, series)
    return summary


def _predict(cfg: ScenarioConfig, out_dir: Path, warnings: list[str], planned: dict[str, Any] | None = None) -> dict[str, Any]:
    from scenarios.run_real import candidate_exposure

    frame, summary, series = simulate(cfg)
    experiment.finish(out_dir, cfg, frame, summary, planned)
    if warnings:
        summary["warnings"] = list(summary.get("warnings", [])) + warnings
    if "rollout" in summary:  # what the real side's summary reports of its rollout, predicted
        summary["rollout"].update(candidate_exposure(frame, rollout_versions(cfg)[1], summary["rollout"].get("decided_s")))
    write_rollout(out_dir, cfg, frame, summary)
    write_run(out_dir, cfg, frame, summary, series)
    return summary


def analysis_window_s(cfg: ScenarioConfig) -> float:
    """Issue 10's tolerance on the decision time: one analysis window, the span an analysis
    reads (window_s), and never finer than a tick (rollout.interval_s). Two runs of the same
    rollout whose windows straddle the same change differ by up to that much in when a
    measurement first fails, however faithful the model."""
    return max(cfg.window_s, cfg.rollout.interval_s)


def point_config(cfg: ServelabConfig, rate: float) -> ServelabConfig:
    """One point of the load curve: Poisson at `rate` for compare.point_duration_s after warm-up."""
    return dataclasses.replace(cfg, duration_s=cfg.warmup_s + cfg.compare.point_duration_s,
                               arrival=dataclasses.replace(cfg.arrival, kind="poisson", rate=rate))


def predicted_curve(cfg: ServelabConfig, profile_path: Path, capacity: float) -> list[dict[str, Any]]:
    """The twin's summaries at PREDICTED_FRACTIONS of capacity, in memory: a second of twin
    time per point buys a curve whose knee is visible without measuring past saturation."""
    points = []
    for fraction in PREDICTED_FRACTIONS:
        _, summary, _ = simulate(calibrated(point_config(cfg, fraction * capacity), profile_path))
        points.append(summary)
    return points


def load_curve_entry(point: LoadPoint, capacity: float) -> dict[str, Any]:
    """comparison.json's entry for one measured load point: its rate and load, whether its
    measurement is valid and why not (`valid`, `invalid_reasons`), and its fidelity rows."""
    return {"offered_rate": point.offered_rate, "load": point.offered_rate / capacity, **measurement_validity(point.real),
            "comparison": {k: v for k, v in compare_summaries(point.sim or {}, point.real or {}).items()
                           if k in ("metrics", "all_within_target")}}


def _log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def calibration_profile(cfg: ServelabConfig, out_dir: Path, log: Callable[[str], None] = _log) -> Path:
    """The profile that calibrates the twin: `overhead.profile` when given, else one measured
    on this machine now (written to out_dir/profile.json and printed)."""
    if cfg.overhead.profile:
        log(f"calibration: {cfg.overhead.profile}")
        return Path(cfg.overhead.profile)
    log(f"calibrating: profiling the {cfg.model.backend} stack on this machine ...")
    measured = measure_profile(cfg, out_dir / "stack" / "profile", cfg.compare, async_ways="async" in cfg.patterns.run)
    profile_path = out_dir / "profile.json"
    write_json(profile_path, measured.to_json())
    print(format_profile(measured))
    return profile_path


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_path = calibration_profile(cfg, out_dir)
    profile = load_profile(str(profile_path))
    warnings = profile_warnings(profile, cfg)
    for note in warnings:
        _log(f"WARNING: {note}")
    twin_cfg = calibrated(cfg, profile_path)
    stack = stack_capacity(cfg, profile)
    capacity = stack.rps  # load fractions are of what the stack as deployed carries
    described = f"the stack as deployed: {stack.describe()}"
    if cfg.pattern == "async":  # the workers carry it, not the replicas: the twin's summary quotes the same
        from scenarios.run_real import async_workers_capacity

        capacity = async_workers_capacity(twin_cfg) or capacity
        described = f"the async workers: {capacity:.0f} req/s ({cfg.async_jobs.workers} x batches of {cfg.async_jobs.batch_size})"
    load = cfg.arrival.rate / capacity if cfg.arrival.kind in ("poisson", "constant") else None
    _log(f"predicted capacity of {described}; offered load {'-' if load is None else f'{load:.0%}'}")

    planned = experiment.plan(twin_cfg, [out_dir / "real", out_dir / "sim"])  # the calibrated twin designs it
    _log(f"measuring the real stack for {cfg.duration_s:g} s ...")
    real = measure_real(cfg, out_dir / "real", capacity, planned)
    _log("predicting with the twin ...")
    sim = _predict(twin_cfg, out_dir / "sim", warnings, planned)
    comparison = compare_summaries(sim, real)
    if "rollout" in sim and "rollout" in real:
        add_rollout_comparison(comparison, sim["rollout"], real["rollout"], analysis_window_s(cfg))
    sim_experiment, real_experiment = read_experiment_doc(out_dir / "sim"), read_experiment_doc(out_dir / "real")
    if sim_experiment is not None and real_experiment is not None:
        add_experiment_comparison(comparison, sim_experiment, real_experiment)
    comparison["profile"] = str(profile_path)
    comparison["capacity_rps"] = capacity
    if cfg.pattern != "async":  # async: the workers' capacity (no host model), not the replicas' stack
        comparison["stack_capacity"] = stack.to_json()

    points: list[LoadPoint] = []
    for fraction in cfg.compare.load_fractions:
        rate = fraction * capacity
        point_cfg = point_config(cfg, rate)
        point_dir = out_dir / "load" / f"{fraction:.2f}"
        _log(f"load point {fraction:.0%} of capacity ({rate:.0f} req/s) ...")
        point_real = measure_real(point_cfg, point_dir / "real", capacity)
        point_sim = _predict(calibrated(point_cfg, profile_path), point_dir / "sim", warnings)
        points.append(LoadPoint(rate, point_sim, point_real))
    comparison["load_curve"] = [load_curve_entry(p, capacity) for p in points]
    predicted: list[dict[str, Any]] = []
    if cfg.rollout.strategy == "none" and not cfg.experiment.variants:  # a rollout's or experiment's compare is about its timeline
        _log(f"predicting the load curve past capacity ({len(PREDICTED_FRACTIONS)} twin-only points) ...")
        predicted = predicted_curve(cfg, profile_path, capacity)
    comparison["predicted_curve"] = [
        {"offered_rate": s["offered_rate"], "throughput": s["throughput"], "load": s["offered_rate"] / capacity,
         "latency_p50_s": s["latency_s"]["p50"], "latency_p99_s": s["latency_s"]["p99"]} for s in predicted]
    write_json(out_dir / "comparison.json", comparison)
    # the main run is a point of the curve too, when its load is a rate
    main = [LoadPoint(cfg.arrival.rate, sim, real)] if load is not None else []
    curve = points + main + [LoadPoint(s["offered_rate"], s) for s in predicted]
    paths = write_report(out_dir, comparison=comparison, sim_run=load_run(out_dir / "sim"),
                         real_run=load_run(out_dir / "real"), load_curve=curve, capacity=capacity,
                         title=f"servelab compare: {cfg.model.backend} backend, {cfg.replicas} replicas, {cfg.lb.policy}")
    print()
    print(format_comparison_table(comparison))  # ends with the verdict and any warnings
    print(format_report_paths(out_dir, paths))
    invalid = invalid_point_names(comparison)
    if invalid:  # the last line: which measured points are invalid (why: the INVALID lines above)
        print(f"servelab: {len(invalid)} of {1 + len(points)} measured points INVALID (exit status "
              f"{EXIT_INVALID_MEASUREMENT}): {', '.join(invalid)}")
    return exit_status(comparison)


def exit_status(comparison: dict[str, Any]) -> int:
    """0, or EXIT_INVALID_MEASUREMENT when any measured point (the main run or a load point)
    is flagged invalid: its figures are in the outputs, marked, but must not pass CI as a result."""
    return EXIT_INVALID_MEASUREMENT if invalid_point_names(comparison) else 0
