"""mode=real: launch the real stack, drive the scenario's load through it, write the run's outputs.

Same outputs and the same end-of-run summary as mode=sim, measured instead of predicted. A run
whose load generator fell behind (send lag p99 over `loadgen.max_lag_p99_s`), or that did not
send every scheduled request, is written with `valid: false` and a warning, and exits with
status 3: its latencies include the generator's own delay and must not pass for the server's.

With `rollout.strategy` set, the rollout controller runs beside the stack as Argo Rollouts and
Flagger do (`real.controller.ControllerDriver` on a thread of its own): its time 0 is the load's
time 0 (the wall time the load generator's workers announce in `started-<i>.json`), it ticks
every `rollout.interval_s` until the arrivals end or it decides, and acts through the gateway's
control API and the launcher. events.json and rollout.parquet are written as in mode=sim; a
rollout whose control calls failed is recorded and flags the run invalid (exit 3).

Without a rollout there is no driver, but the replicas still learn the load's time 0 the same
way (`real.controller.TimeZeroTeller`, as the driver does before its first tick): a replica
applies its version's `error_rate` and `faults` schedule only once it knows it. A run whose
replicas could not be told is flagged invalid (exit 3): its versions did not behave as
configured.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from real.controller import BackgroundDriver, ControllerDriver, TimeZeroTeller
from real.launcher import LaunchError, RunningStack, absolute, launch
from real.loadgen.merge import fetch_shadow, send_lag_summary, shadow_dropped
from real.loadgen.runner import LoadgenError, LoadResult, check, infer_path, run_load
from reports.compare import measurement_validity
from reports.text import format_summary
from scenarios import experiment
from scenarios.config import ServelabConfig
from scenarios.outputs import format_report_paths, report_run, write_parquet, write_run
from scenarios.run_sim import format_rollout_line, rollout_summary, write_rollout
from sim.async_serving import async_capacity_rps
from sim.config import ConfigError, ScenarioConfig, rollout_versions, version_names
from sim.features import coverage_warnings, predicted_hit_ratio
from sim.host import stack_capacity
from sim.policy.rollout import controller_from_config
from sim.policy.split import WARMUP_HEADER
from sim.policy.strategy import RolloutController
from sim.profile import load_profile
from sim.records import series_window_s, summarize, timeseries
from sim.service import capacity_rps

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INVALID_MEASUREMENT = 3  # the same status mode=compare uses for an invalid measurement
EXIT_INTERRUPTED = 130
RATE_TOLERANCE = 0.01  # achieved send rate below offered by more than this is worth a warning
WARMUP_BODY = (b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":['
               + b",".join([b"1.5"] * 64) + b"]}]}")


class _ProgressLine:
    """`real: 12.3 / 30.0 s` rewritten in place on a terminal; silent when piped or in CI."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False
        self._last = -1.0

    def __call__(self, elapsed_s: float, total_s: float) -> None:
        if not self.enabled or elapsed_s - self._last < 0.2:
            return
        self._last = elapsed_s
        shown = min(elapsed_s, total_s)
        tail = "" if elapsed_s <= total_s else "  (collecting the last answers)"
        sys.stderr.write(f"\r  real: {shown:5.1f} / {total_s:.1f} s{tail}")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def warm_up(url: str, path: str, requests: int, parallel: int) -> None:
    """A short burst before the load, not recorded: first requests pay for lazy initialisation
    (imports, model load, connection set-up) that is no part of serving. Marked as such
    (WARMUP_HEADER): the gateway routes them with a throwaway stream, so the run's first request
    takes the seed's first routing draw, as the twin's first request does."""
    parts = urlsplit(url)

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
        try:
            for i in range(k, requests, parallel):
                conn.request("POST", path, body=WARMUP_BODY,
                             headers={"Content-Type": "application/json", "x-user-id": str(i), WARMUP_HEADER: "1"})
                response = conn.getresponse()
                response.read()
                if response.status >= 500 and response.status != 503:
                    raise LaunchError(f"warm-up request to {url}{path} answered {response.status}")
        finally:
            conn.close()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(worker, range(parallel)))


def _validity(cfg: ScenarioConfig, summary: dict[str, Any], result: LoadResult) -> tuple[bool, list[str]]:
    warnings = list(result.notes)
    valid = result.complete and not result.notes
    lag = summary["send_lag_s"]
    limit = cfg.loadgen.max_lag_p99_s
    if lag["p99"] is not None and lag["p99"] > limit:
        valid = False
        warnings.append(f"load generator fell behind: send lag p99 {lag['p99'] * 1e3:.2f} ms > loadgen.max_lag_p99_s "
                        f"{limit * 1e3:.2f} ms (max {lag['max'] * 1e3:.2f} ms); latencies include the generator's "
                        f"own delay. Lower the rate, add loadgen.workers or hosts")
    never = result.merged.never_sent
    if never:
        valid = False
        warnings.append(f"{never} scheduled requests were never sent (counted as error)")
    offered, sent = summary["offered_rate"], summary["achieved_send_rate"]
    if not result.plan.closed and offered > 0 and sent < offered * (1 - RATE_TOLERANCE):
        warnings.append(f"load generator sent {sent:.1f} req/s of {offered:.1f} offered in the measurement window "
                        f"({sent / offered - 1:+.1%})")
    return valid, warnings


def async_workers_capacity(cfg: ScenarioConfig) -> float | None:
    """pattern=async: what the workers can finish (sim.async_serving.async_capacity_rps), the
    figure the twin's summary quotes, from the same device times: a measured profile
    (service.kind=empirical), or the emulated backend's service model; a numpy model not yet
    profiled: None. The replicas' capacity says nothing here: they serve no async request."""
    if cfg.service.kind == "empirical":
        return async_capacity_rps(cfg, load_profile(cfg.service.profile))
    return async_capacity_rps(cfg) if cfg.model.backend == "emulated" else None


def known_capacity(cfg: ScenarioConfig) -> float | None:
    """The stack's capacity when something describes its device times: a measured profile
    (overhead.profile, or service.kind=empirical), or the emulated backend, whose device sleeps
    the service model. A numpy model's speed is known only once profiled: None. Async: the workers'."""
    if cfg.pattern == "async":
        return async_workers_capacity(cfg)
    if cfg.overhead.profile:  # with a host model: the lesser of the devices' and the host's
        return stack_capacity(cfg, load_profile(cfg.overhead.profile)).rps
    if cfg.service.kind == "empirical" or cfg.model.backend == "emulated":
        return capacity_rps(cfg)
    return None


def load_time_zero(loadgen_dir: Path, not_before: float) -> Callable[[], float | None]:
    """A poll for the wall time of the load's time 0: what the first worker to hear it wrote
    in started-<i>.json (every worker hears the same one), None until then. A file announcing
    a time before `not_before` is a previous run's, left in a reused directory: ignored."""

    def poll() -> float | None:
        for path in sorted(loadgen_dir.glob("started-*.json")):  # real.loadgen.plan.started_path
            try:
                t0 = float(json.loads(path.read_text())["t0_wall"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or not ours
            if t0 >= not_before:
                return t0
        return None

    return poll


def candidate_exposure(frame: pd.DataFrame, candidate: str, decided_s: float | None) -> dict[str, int]:
    """What the rollout's candidate version served before the decision (all run long when none
    was made): requests sent to it and distinct users, primary traffic only. The figure a
    rehearsal reports as exposure, and compare's third rollout target."""
    rows = frame[frame["version"].astype(str) == candidate]
    if "shadow" in rows:
        rows = rows[~rows["shadow"].astype(bool)]
    if decided_s is not None:
        rows = rows[rows["arrival_s"] < decided_s]
    return {"candidate_requests": int(len(rows)), "candidate_users": int(rows["user_id"].nunique())}


@dataclasses.dataclass
class RealRollout:
    """A rollout controller running beside the real stack for the length of one load."""

    cfg: ScenarioConfig
    controller: RolloutController
    driver: ControllerDriver
    background: BackgroundDriver
    error: BaseException | None = None

    @classmethod
    def start(cls, cfg: ScenarioConfig, controller: RolloutController, stack: RunningStack, loadgen_dir: Path) -> RealRollout:
        driver = ControllerDriver(controller, stack.gateway_url, stack.token, launcher=stack)
        background = BackgroundDriver(driver, cfg.duration_s, load_time_zero(loadgen_dir, time.time()))
        return cls(cfg, controller, driver, background.start())

    def stop(self) -> None:
        self.error = self.background.stop()

    def summary(self, frame: pd.DataFrame) -> tuple[dict[str, Any], list[str]]:
        """summary.json's `rollout` (decisions and events inside, for write_rollout to move to
        events.json) and the warnings the run's summary should carry."""
        doc = rollout_summary(self.controller, self.driver.events, self.driver.replica_counts, frame,
                              window_s=self.cfg.window_s, duration_s=self.cfg.duration_s)
        decided = doc.get("decided_s")
        doc.update(candidate_exposure(frame, rollout_versions(self.cfg)[1], decided))
        doc["notes"] = list(self.driver.notes)
        doc["tick_lag_max_s"] = self.driver.tick_lag_max_s
        warnings = [f"rollout: {note}" for note in self.driver.notes]
        if self.error is not None:
            doc["error"] = f"{type(self.error).__name__}: {self.error}"
            warnings.append(f"the rollout controller stopped on an error, so the rollout did not run as decided: {doc['error']}")
        return doc, warnings


def _shadow_dropped_now(gateway_url: str) -> int:
    """The gateway's count of dropped shadow copies so far (0 if it cannot say: the read after
    the load notes that)."""
    try:
        return shadow_dropped(fetch_shadow(gateway_url))
    except (OSError, ValueError):
        return 0


@dataclasses.dataclass
class RealTimeZero:
    """A run without a rollout: its replicas told the load's time 0 once the load announces it."""

    teller: TimeZeroTeller
    background: BackgroundDriver
    error: BaseException | None = None

    @classmethod
    def start(cls, cfg: ScenarioConfig, stack: RunningStack, loadgen_dir: Path) -> RealTimeZero:
        teller = TimeZeroTeller(stack.gateway_url, stack.token)
        background = BackgroundDriver(teller, cfg.duration_s, load_time_zero(loadgen_dir, time.time()))
        return cls(teller, background.start())

    def stop(self) -> None:
        self.error = self.background.stop()

    def warnings(self) -> tuple[bool, list[str]]:
        """(whether every replica was told, the warnings the run's summary should carry)."""
        notes = [f"time 0: {note}" for note in self.teller.notes]
        if self.error is not None:
            return False, notes + [f"the replicas could not be told the load's time 0, so their versions' error_rate "
                                   f"and faults did not apply: {type(self.error).__name__}: {self.error}"]
        if self.teller.t0_unix is not None and not self.teller.told:
            return False, notes + ["the replicas were not told the load's time 0 before the run ended, so their "
                                   "versions' error_rate and faults did not apply"]
        return True, notes


def measure(cfg: ScenarioConfig, out_dir: Path, *, capacity: float | None = None,
            ) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """Launch, warm up, load, collect, tear down: the measured requests table, summary and series.

    The stack's files go to out_dir/stack/, the load generator's (plan, schedule, Locust logs,
    raw records, per-request send times in sends.parquet) to out_dir/loadgen/. Writes none of
    the run's four outputs: the caller does (mode=real, mode=compare). `capacity` (req/s) is the
    summary's capacity_rps; default what the config knows of it (known_capacity). With a rollout,
    the summary's `rollout` holds its outcome, decisions and events (`write_rollout` writes them)."""
    check(cfg)
    capacity = capacity if capacity is not None else known_capacity(cfg)  # a missing profile fails before launch
    out_dir = absolute(out_dir)  # the stack's and the load generator's children run elsewhere
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _ProgressLine(bool(getattr(cfg, "progress", False)))
    controller = controller_from_config(cfg)
    rollout: RealRollout | None = None
    time_zero: RealTimeZero | None = None
    dropped_before = 0  # shadow copies the gateway dropped before the load
    wall = time.perf_counter()
    path = infer_path(cfg)
    try:
        with launch(cfg, run_dir=out_dir) as stack:
            warm_up(stack.gateway_url, path, requests=max(40, 4 * cfg.replicas * cfg.concurrency),
                    parallel=min(8, max(2, cfg.replicas * cfg.concurrency)))
            if cfg.gateway.shadow_version:  # the warm-up's copies are no part of the run: their drops neither
                dropped_before = _shadow_dropped_now(stack.gateway_url)
            if controller is not None:
                # the first tick's window must not hold the warm-up's answers (the twin's has
                # none): time 0 is start_lead_s or more after run_load starts, so this wait puts
                # it at least window_s after the warm-up's last answer
                time.sleep(max(cfg.window_s - cfg.loadgen.start_lead_s, 0.0))
                rollout = RealRollout.start(cfg, controller, stack, out_dir / "loadgen")
            else:  # the driver tells the replicas time 0; without one, this does
                time_zero = RealTimeZero.start(cfg, stack, out_dir / "loadgen")
            try:
                result = run_load(cfg, stack.load_target(cfg.loadgen.protocol), out_dir / "loadgen", progress=progress, path=path)
            finally:
                if rollout is not None:
                    rollout.stop()  # inside the stack: starts and stops under way end before it does
                if time_zero is not None:
                    time_zero.stop()
    finally:
        progress.close()
    wall = time.perf_counter() - wall
    frame = result.merged.requests
    write_parquet(out_dir / "loadgen" / "sends.parquet", result.merged.sends)
    lag = send_lag_summary(result.merged.sends, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s)
    # with a rollout's replicas: every one that served (the twin counts every one that existed)
    served = int(frame["replica"].max()) + 1 if len(frame) else 0
    # async: the workers serve (as the twin counts them), one batch at a time each
    servers, instances = (cfg.async_jobs.workers, 1) if cfg.pattern == "async" else (max(cfg.replicas, served), cfg.concurrency)
    summary = summarize(frame, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=servers,
                        concurrency=instances, capacity_rps=capacity, versions=version_names(cfg.model),
                        hit_ratio_at=predicted_hit_ratio(cfg),  # with a feature store: the caches' theory beside the run
                        extra={"source": "real", "backend": cfg.model.backend, "seed": cfg.seed, **lag})
    if result.shadow_dropped is not None:  # as the twin's Twin.shadow_dropped
        summary["shadow_dropped"] = result.shadow_dropped - dropped_before
    valid, warnings = _validity(cfg, summary, result)
    warnings += coverage_warnings(cfg)
    if rollout is not None:
        summary["rollout"], rollout_warnings = rollout.summary(frame)
        warnings += rollout_warnings
        valid = valid and rollout.error is None
    if time_zero is not None:
        told, time_zero_warnings = time_zero.warnings()
        warnings += time_zero_warnings
        valid = valid and told
    summary.update({
        "valid": valid,
        "warnings": warnings,
        "loadgen": {"workers": cfg.loadgen.workers, "dispatch": cfg.loadgen.dispatch,
                    "max_lag_p99_s": cfg.loadgen.max_lag_p99_s, "never_sent": result.merged.never_sent,
                    "complete": result.complete, "closed_loop": result.plan.closed},
        "wall_s": wall,
    })
    finish = frame["finish_s"].to_numpy(dtype=float)
    end = max(cfg.duration_s, float(np.nanmax(finish))) if np.isfinite(finish).any() else cfg.duration_s
    summary["timeseries_window_s"] = series_window_s(end, cfg.window_s, cfg.timeseries_window_s)
    series = timeseries(frame, summary["timeseries_window_s"], end_s=end, versions=version_names(cfg.model))
    return frame, summary, series


def failed(mode: str, exc: Exception) -> int:
    """One line on stderr and the exit status for a run the stack could not serve. A ConfigError
    (loadgen.dispatch or remote_workers checked at launch, a gateway.port in use) names its key
    and exits 2, as a bad override does; the rest exit 1. Shared by every mode that launches."""
    if isinstance(exc, ConfigError):
        print(f"servelab: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"servelab: mode={mode} failed: {exc}", file=sys.stderr)
    return EXIT_FAILED


def format_send_lag(summary: dict[str, Any]) -> str:
    lag = summary["send_lag_s"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.2f} ms"

    verdict = "valid" if summary.get("valid") else "INVALID (see warnings)"
    return (f"  send lag  p50 {ms(lag['p50'])}, p99 {ms(lag['p99'])}, max {ms(lag['max'])} "
            f"(limit p99 {ms(summary['loadgen']['max_lag_p99_s'])}); sent {summary['achieved_send_rate']:.1f} req/s\n"
            f"  measure   {verdict}")


def format_rollout(rollout: dict[str, Any]) -> str:
    """mode=sim's rollout lines, and what the candidate served before the decision, and a failure."""
    lines = [format_rollout_line(rollout)]
    if "candidate_requests" in rollout:
        lines.append(f"            candidate {rollout['candidate_requests']} requests from {rollout['candidate_users']} users before the decision")
    if rollout.get("error"):
        lines.append(f"            FAILED: {rollout['error']}")
    return "\n".join(lines)


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    print(f"real stack: {cfg.replicas} replica(s) x {cfg.concurrency}, {cfg.model.backend} backend, "
          f"{cfg.arrival.kind} load for {cfg.duration_s:g} s, {cfg.loadgen.workers} Locust worker(s)", flush=True)
    try:
        planned = experiment.plan(cfg, [out_dir])
        frame, summary, series = measure(cfg, out_dir)
    except KeyboardInterrupt:
        print("\nservelab: mode=real interrupted; the stack and the load generator were stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, LaunchError, LoadgenError) as exc:
        return failed("real", exc)
    done = experiment.finish(out_dir, cfg, frame, summary, planned)
    write_rollout(out_dir, cfg, frame, summary)
    write_run(out_dir, cfg, frame, summary, series)
    print(format_summary(summary, title=f"real stack (mode=real, {cfg.model.backend} backend)"))
    print(format_send_lag(summary))
    if done is not None:  # its controller's stop is the experiment's
        print(experiment.format_experiment(done))
        if summary["rollout"].get("error"):
            print(f"             FAILED: {summary['rollout']['error']}")
    elif "rollout" in summary:
        print(format_rollout(summary["rollout"]))
    paths = report_run(out_dir, cfg, frame, summary, series,
                       title=f"servelab real: {cfg.model.backend} backend, {cfg.replicas} replicas, {cfg.lb.policy}")
    print(format_report_paths(out_dir, paths))
    validity = measurement_validity(summary)
    if not validity["valid"]:  # the last line says why, as mode=compare's names its invalid points
        print(f"servelab: measurement INVALID (exit status {EXIT_INVALID_MEASUREMENT}): {'; '.join(validity['invalid_reasons'])}")
    return 0 if validity["valid"] else EXIT_INVALID_MEASUREMENT
