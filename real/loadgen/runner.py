"""Run the load generator: Locust subprocesses (one, or a master and N workers), then the merge.

The parent never imports Locust. It writes the plan and schedule, starts the processes (each in
its own process group, killed by the kernel if the parent dies), waits for every worker's records
file, and stops them all on every way out: done, deadline, a process that died, Ctrl-C. A worker
that is stopped early still writes what it has (Locust fires `quitting` on SIGTERM); what no
worker recorded becomes `error` rows in the merge, never a missing request.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from real.launcher import absolute, child_path, free_ports, log_tail, stop_all
from real.loadgen.merge import Merged, fetch_shadow, merge, shadow_dropped, with_shadow
from real.models.digits import test_split
from real.loadgen.plan import (
    PLAN_ENV,
    WORKER_ENV,
    LoadPlan,
    records_path,
    started_path,
    write_inputs,
    write_schedule,
)
from sim.arrivals import make_schedule
from sim.config import LoadgenConfig, ScenarioConfig, validate
from sim.rng import make_streams

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
ROOT = Path(__file__).resolve().parents[2]
# Timeouts, the connection pool, the start lead and the priority are config keys (loadgen.*).
POLL_S = 0.1  # how often the parent looks for the workers' records
FINISH_SLACK_S = 15.0  # past the last send and the drain: workers write their records, Locust exits
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29
# Linux lets a sleeping thread's timer fire up to its timer slack late (50 µs by default) to
# batch wake-ups; every such microsecond is send lag and latency. 1 ns (the least) for the
# generator's processes (inherited by their exec).
TIMER_SLACK_NS = 1
# The generator shares 2 cores with the stack it measures. When it wakes for a send while the
# gateway and replicas hold both cores, CFS may run it milliseconds later: send lag. A higher
# priority (lower nice, loadgen.nice) lets it preempt them for the few microseconds a send takes;
# its total CPU is small, so the server loses little. Best effort: without the privilege it stays 0.
DEFAULT_NICE = LoadgenConfig().nice
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

Progress = Callable[[float, float], None]  # (elapsed since t0, total) -> None


class LoadgenError(RuntimeError):
    """The load generator could not run; the message ends with the failing process's log."""


@dataclass
class LoadResult:
    merged: Merged
    plan: LoadPlan
    t0_wall: float | None  # when the schedule's time 0 was, on the wall clock
    complete: bool  # every worker finished its share by itself
    notes: list[str] = field(default_factory=list)
    # with a shadow version: copies due but not sent since the gateway started (over
    # gateway.shadow_max_in_flight, or no replica of the shadow version routable): merge.shadow_dropped
    shadow_dropped: int | None = None


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def infer_path(cfg: ScenarioConfig) -> str:
    return f"/v2/models/{cfg.model.name}/infer"


def check(cfg: ScenarioConfig) -> None:
    """The config's own validation, for callers that did not come through the CLI."""
    validate(cfg)


def make_plan(cfg: ScenarioConfig, url: str, out_dir: Path, *, path: str | None = None) -> LoadPlan:
    """The plan for `cfg` against `url`; open loop also writes the schedule the seed gives."""
    closed = cfg.arrival.kind == "closed"
    schedule = ""
    if not closed:
        streams = make_streams(cfg.seed)
        s = make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users)
        schedule = str(out_dir / "schedule.npz")
        write_schedule(Path(schedule), s.times_s, s.user_ids, s.versions)
    lg = cfg.loadgen
    inputs = out_dir / "inputs.npz"  # labelled held-out digits: the replicas judge every answer
    write_inputs(inputs, *test_split(), cfg.seed)
    return LoadPlan(
        url=url, infer_path=path or infer_path(cfg), closed=closed, schedule=schedule, out_dir=str(out_dir),
        workers=lg.workers, duration_s=cfg.duration_s, timeout_s=cfg.timeout_s,
        users=cfg.arrival.users, think_s=cfg.arrival.think_s, seed=cfg.seed, dispatch=lg.dispatch,
        start_lead_s=lg.start_lead_s, max_connections=lg.max_connections, drain_s=lg.drain_s, inputs=str(inputs),
        spin_s=lg.spin_s, protocol=lg.protocol, model=cfg.model.name, entity=cfg.features.store != "none",
        pattern=cfg.pattern, poll_first_s=cfg.async_jobs.poll_first_s, poll_backoff=cfg.async_jobs.poll_backoff,
        poll_max_interval_s=cfg.async_jobs.poll_max_interval_s, callback=cfg.async_jobs.callback,
    )


def locust_commands(plan: LoadPlan, plan_path: Path, locustfile: Path, *, remote_workers: int = 0,
                    bind_host: str = "127.0.0.1") -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, extra env) per local process. One worker: a standalone Locust, no master."""
    base = [sys.executable, "-m", "locust", "-f", str(locustfile), "--only-summary", "--loglevel", "WARNING"]
    env = {PLAN_ENV: child_path(plan_path)}
    if plan.workers == 1:
        return [("locust", [*base, "--headless", "-u", "1", "-r", "1"], {**env, WORKER_ENV: "0"})]
    port = free_ports(bind_host, 1)[0]
    master = [*base, "--master", "--master-bind-host", bind_host, "--master-bind-port", str(port), "--headless",
              "--expect-workers", str(plan.workers), "-u", str(plan.workers), "-r", str(plan.workers)]
    procs = [("locust-master", master, env)]
    for i in range(plan.workers - remote_workers):
        procs.append((f"locust-worker-{i}", [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                      {**env, WORKER_ENV: str(i)}))
    return procs


def _child_setup(parent_pid: int, nice: int) -> Callable[[], None]:
    def setup() -> None:  # between fork and exec: die with the parent, even by SIGKILL
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _LIBC.prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS)
        if os.getppid() != parent_pid:
            os._exit(1)
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                pass

    return setup


def spawn(name: str, argv: list[str], env: dict[str, str], log: Path, *, nice: int = DEFAULT_NICE) -> _Proc:
    # libev's select backend sleeps with microsecond timeouts; epoll rounds every wait up to the
    # next millisecond, which alone puts ~0.5 ms of send lag on every request (measured)
    full_env = {"GEVENT_BACKEND": "select", **os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", **env}
    with open(log, "ab") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=full_env, start_new_session=True, preexec_fn=_child_setup(os.getpid(), nice))
    return _Proc(name, popen, log)


def _t0(out_dir: Path, workers: int) -> float | None:
    t0s = []
    for i in range(workers):
        try:
            t0s.append(float(json.loads(started_path(out_dir, i).read_text())["t0_wall"]))
        except (OSError, ValueError, KeyError):
            return None
    return min(t0s)


def run_load(
    cfg: ScenarioConfig,
    url: str,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    locustfile: Path = LOCUSTFILE,
    path: str | None = None,
) -> LoadResult:
    """Replay `cfg`'s load against `url`; the records land in `out_dir` (plan, schedule, logs).

    `out_dir` is made absolute first: the Locust processes run in ROOT and read the plan, the
    schedule and their records' folder from the paths written here."""
    check(cfg)
    out_dir = absolute(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("records-*.npz"), *out_dir.glob("started-*.json")]:
        stale.unlink()
    plan = make_plan(cfg, url, out_dir, path=path)
    plan_path = out_dir / "plan.json"
    plan.write(plan_path)
    workers = plan.workers
    lg = cfg.loadgen
    notes: list[str] = []
    procs: list[_Proc] = []
    t0_wall: float | None = None
    complete = False
    try:
        for name, argv, env in locust_commands(plan, plan_path, locustfile, remote_workers=lg.remote_workers,
                                               bind_host=lg.master_bind_host):
            procs.append(spawn(name, argv, env, out_dir / f"{name}.log", nice=lg.nice))
        start_timeout = lg.remote_start_timeout_s if lg.remote_workers else lg.start_timeout_s
        start_deadline = time.monotonic() + start_timeout
        drain = plan.drain_after_s
        end_deadline: float | None = None
        while True:
            if all(records_path(out_dir, i).exists() for i in range(workers)):
                complete = True
                break
            for p in procs:
                code = p.popen.poll()
                if code is not None:
                    raise LoadgenError(f"{p.name} exited with status {code} before the load was done; "
                                       f"log {p.log}:\n{log_tail(p.log)}")
            now = time.monotonic()
            if t0_wall is None:
                t0_wall = _t0(out_dir, workers)
                if t0_wall is not None:
                    end_deadline = now + (t0_wall - time.time()) + plan.duration_s + drain + FINISH_SLACK_S
                elif now > start_deadline:
                    notes.append(f"the load generator did not start within {start_timeout:g} s "
                                 f"(loadgen.{'remote_' if lg.remote_workers else ''}start_timeout_s)")
                    break
            if end_deadline is not None:
                if progress is not None and t0_wall is not None:
                    progress(max(time.time() - t0_wall, 0.0), plan.duration_s)
                if now > end_deadline:
                    notes.append("the load generator did not finish in time; it was stopped and what it "
                                 "had not recorded counts as error")
                    break
            time.sleep(POLL_S)
    finally:
        stop_all([p.popen for p in procs], lg.stop_grace_s)
    files = [records_path(out_dir, i) for i in range(workers) if records_path(out_dir, i).exists()]
    missing = sorted(set(range(workers)) - {int(f.stem.rsplit("-", 1)[1]) for f in files})
    if missing:
        notes.append(f"load generator worker(s) {missing} wrote no records")
        if not files:
            logs = "\n".join(f"--- {p.log}:\n{log_tail(p.log, 15)}" for p in procs)
            raise LoadgenError(f"no load generator worker wrote records; {'; '.join(notes)}\n{logs}")
    schedule = None
    if not plan.closed:
        with np.load(plan.schedule, allow_pickle=False) as z:
            schedule = (z["times_s"], z["user_ids"])
    merged = merge(files, schedule=schedule, timeout_s=plan.timeout_s)
    dropped = None
    if cfg.gateway.shadow_version and t0_wall is not None:  # the gateway's copies join the records (shadow=true)
        try:
            doc = fetch_shadow(url)
            merged.requests = with_shadow(merged.requests, doc, t0_wall, plan.timeout_s, closed=plan.closed)
            dropped = shadow_dropped(doc)
            if (doc.get("dropped") or {}).get("record_limit"):
                notes.append(f"{doc['dropped']['record_limit']} shadow copies were answered but not recorded (the gateway's record limit)")
        except (OSError, ValueError) as exc:
            notes.append(f"the gateway's shadow records ({url}/v2/gateway/shadow) could not be read: {exc}")
    if merged.duplicates:
        notes.append(f"{merged.duplicates} duplicate records were dropped (a load generator bug)")
    return LoadResult(merged, plan, t0_wall, complete, notes, dropped)
