"""The host the real stack runs on: its cores, and what each of its processes costs them.

On one machine the load generator, the gateway and the replicas share a few cores. Each is an
event loop: it does one request's work at a time, and it needs a core to do it. So as the rate
grows, a request waits for its process's loop (another request is being parsed) and for a core
(another process holds it), and past some rate the host, not the devices, is what saturates.
A replay of overhead measured at a few rates cannot say where that happens for another replica
count, batch setting or device time; a model of the mechanism can.

The model, as `mode=profile` measures it (scenarios/profile.py, from each process's CPU time at
known rates, `fit_host_costs`):
- each process costs a fixed CPU time per request (per role: load generator, gateway, replica)
  and the replicas a further one per batch; the load generator's and the gateway's are half on
  the way in, half on the way back (parse and forward; read and answer), a replica's mostly on
  the way in (`REPLICA_ANSWER_SHARE` of it answers);
- `background_cores` of the host are busy with what no request causes (timers, metrics);
- what is left of the measured per-request time, outside queue and model, is not CPU: loopback,
  wake-ups (`fixed_s`, samples replayed, half before and half after the queue).

The twin runs every CPU step as a job of its process on `SimHost`: a process runs one job at a
time, in order, on one of `cores` cores; a free core goes to the process whose next job has
waited longest, the stack's processes before the load generator's (Locust runs niced).
`stack_capacity` gives the same model's closed form: the most the host can carry.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from sim.config import ScenarioConfig

if TYPE_CHECKING:
    from sim.profile import Profile

LOADGEN, GATEWAY, REPLICA = "loadgen", "gateway", "replica"
ROLES = (LOADGEN, GATEWAY, REPLICA)

# The share of a replica's CPU per request spent writing its answer, after the batch; the rest is
# the way in (the HTTP layer, the JSON body decoded into a tensor). A busy instance's next batch
# takes the GIL only once its batch's answers are written (HostPath.relay), so the share sets the
# gap between back-to-back batches. Measured at overload (scenario=patterns, mode=real,
# batching.max_batch_size 1, 4, 8): 0.28, 0.37 and 0.58 ms, growing 0.04 ms per answer; the twin
# on the same runs' profile gives 0.27, 0.32 and 0.51 ms at a tenth, 0.27, 0.41 and 0.66 at 0.15,
# 0.27, 0.49 and 0.83 at 0.2. Half (as the gateway and the load generator are split) put 1.0 ms
# between batches of 4 and cut the twin's throughput at overload by 2%.
REPLICA_ANSWER_SHARE = 0.1


@dataclass(frozen=True)
class HostCosts:
    """What mode=profile measured of the host: see the module docstring."""

    cores: int
    cpu_per_request_s: dict[str, float]  # role -> CPU seconds per request (all of that role's processes)
    replica_cpu_per_batch_s: float = 0.0
    background_cores: float = 0.0
    fixed_s: list[float] = field(default_factory=lambda: [0.0])  # non-CPU time per request, samples
    # a process asleep (its loop waiting in epoll, a thread in a queue) takes this long to run
    # the job that wakes it: the kernel's wake-up, not CPU of note. A busy process pays none,
    # which is why a request costs less time outside queue and model at higher rates
    wake_s: float = 0.0
    # the emulated device's lateness: its sleep ends, its thread hands the batch back (not CPU
    # of note); added to a service model's draws when the twin models the emulated backend
    device_wake_s: float = 0.0
    # a batch handed to an idle instance's thread starts this much later (its wake-up); the
    # replica counts it as queue time, as the twin does
    handoff_s: float = 0.0

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"a host needs at least one core, got {self.cores}")
        if set(self.cpu_per_request_s) != set(ROLES) or any(not (c >= 0 and math.isfinite(c)) for c in self.cpu_per_request_s.values()):
            raise ValueError(f"cpu_per_request_s needs finite seconds >= 0 for {', '.join(ROLES)}")
        if not (0 <= self.background_cores < self.cores) or not (self.replica_cpu_per_batch_s >= 0):
            raise ValueError("background_cores must be in [0, cores), replica_cpu_per_batch_s >= 0")
        if not self.fixed_s:
            raise ValueError("fixed_s needs at least one sample")

    @property
    def slowdown(self) -> float:
        """Every job takes this much longer than its CPU time: the background's share of the
        cores, spread over all of them (it runs between requests, at its own times)."""
        return self.cores / (self.cores - self.background_cores)

    def per_request_s(self, batch_size: float = 1.0) -> float:
        """The host's CPU seconds for one request, at a mean batch size."""
        return sum(self.cpu_per_request_s.values()) + self.replica_cpu_per_batch_s / batch_size

    def to_json(self) -> dict[str, Any]:
        return {"cores": self.cores, "cpu_per_request_s": dict(self.cpu_per_request_s),
                "replica_cpu_per_batch_s": self.replica_cpu_per_batch_s, "background_cores": self.background_cores,
                "fixed_s": list(self.fixed_s), "device_wake_s": self.device_wake_s, "wake_s": self.wake_s,
                "handoff_s": self.handoff_s}

    @staticmethod
    def from_json(raw: dict[str, Any]) -> HostCosts:
        return HostCosts(cores=int(raw["cores"]), cpu_per_request_s={k: float(v) for k, v in raw["cpu_per_request_s"].items()},
                         replica_cpu_per_batch_s=float(raw.get("replica_cpu_per_batch_s", 0.0)),
                         background_cores=float(raw.get("background_cores", 0.0)),
                         fixed_s=[float(x) for x in raw.get("fixed_s", [0.0])],
                         device_wake_s=float(raw.get("device_wake_s", 0.0)), wake_s=float(raw.get("wake_s", 0.0)),
                         handoff_s=float(raw.get("handoff_s", 0.0)))


@dataclass(frozen=True)
class CpuPoint:
    """One measured rate: requests and batches per second, and the cores each role used."""

    requests_per_s: float
    batches_per_s: float
    cores_used: dict[str, float]


def _fit(y: np.ndarray, columns: list[np.ndarray]) -> np.ndarray | None:
    """Least squares y = b0 + b1 x1 + ..., or None when a coefficient comes out negative (the
    points cannot tell the terms apart)."""
    a = np.column_stack([np.ones_like(y), *columns])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    tolerance = 1e-9 * max(float(np.abs(y).max()), 1.0)  # an exact zero comes out as -1e-18
    return np.clip(coef, 0.0, None) if (coef >= -tolerance).all() else None


def fit_host_costs(points: Sequence[CpuPoint], cores: int, fixed_s: Sequence[float], mean_fixed_batch: float = 1.0) -> HostCosts:
    """Per-request (and per-batch) CPU and the background, by least squares over the points
    (cores used = background + cost x rate). The replicas' per-batch term is fitted only when the
    points' batches per request differ enough to tell it from the per-request term."""
    if not points:
        raise ValueError("fitting host costs needs at least one measured rate")
    rates = np.array([p.requests_per_s for p in points])
    batches = np.array([p.batches_per_s for p in points])
    per_request: dict[str, float] = {}
    background = 0.0
    per_batch = 0.0
    for role in ROLES:
        used = np.array([p.cores_used.get(role, 0.0) for p in points])
        coef = None
        if len(points) >= 2:
            if role == REPLICA and len(points) >= 3 and np.ptp(batches / rates) > 0.2 * np.mean(batches / rates):
                coef = _fit(used, [rates, batches])
                if coef is not None:
                    per_batch = float(coef[2])
            if coef is None:
                coef = _fit(used, [rates])
        if coef is None:  # one point, or no sensible line: all of it per request
            coef = np.array([0.0, float(np.sum(used) / np.sum(rates))])
        background += float(coef[0])
        per_request[role] = float(coef[1])
    background = min(background, cores * 0.5)  # a guard: a host half busy with nothing is a bad fit
    return HostCosts(cores=cores, cpu_per_request_s=per_request, replica_cpu_per_batch_s=per_batch,
                     background_cores=background, fixed_s=list(fixed_s))


@dataclass(frozen=True)
class StackCapacity:
    """The predicted capacity of the stack as deployed: the lesser of what its devices and its
    host can carry, and which of the two binds."""

    rps: float
    device_rps: float
    host_rps: float  # inf: no host costs known
    binds: str  # "device" | "host"
    host_limit: str = ""  # what limits the host: "cores", "gateway", "loadgen", "replicas"

    def to_json(self) -> dict[str, Any]:
        return {"rps": self.rps, "device_rps": self.device_rps,
                "host_rps": self.host_rps if math.isfinite(self.host_rps) else None,
                "binds": self.binds, "host_limit": self.host_limit}

    def describe(self) -> str:
        if not math.isfinite(self.host_rps):
            return f"{self.rps:,.0f} req/s (device limit; no host costs measured)"
        return (f"{self.rps:,.0f} req/s ({self.binds} binds; device limit {self.device_rps:,.0f} req/s, "
                f"host limit {self.host_rps:,.0f} req/s by its {self.host_limit})")


def host_capacity(cfg: ScenarioConfig, host: HostCosts, compute_s: float = 0.0) -> tuple[float, str]:
    """The most requests per second the host carries, and what limits it: all cores busy, or one
    process's loop busy all the time (the gateway; a load-generator worker; a replica).
    `compute_s`: a CPU model's own time per request, spent on its replica's loop (numpy)."""
    slow = host.slowdown
    c = host.cpu_per_request_s
    # at the host's limit the devices are not busy: batches form only by the delay; take 1
    batch = 1.0
    replica_s = slow * (c[REPLICA] + host.replica_cpu_per_batch_s / batch) + compute_s
    limits = {
        "cores": host.cores / (slow * host.per_request_s(batch) + compute_s),
        "gateway": 1.0 / (slow * c[GATEWAY]) if c[GATEWAY] > 0 else math.inf,
        "loadgen": cfg.loadgen.workers / (slow * c[LOADGEN]) if c[LOADGEN] > 0 else math.inf,
        "replicas": cfg.replicas / replica_s if replica_s > 0 else math.inf,
    }
    name = min(limits, key=limits.__getitem__)
    return limits[name], name


def stack_capacity(cfg: ScenarioConfig, profile: Profile | None = None) -> StackCapacity:
    """The stack's capacity as deployed here: its devices' (sim.service.capacity_rps), and its
    host's when the profile measured the host."""
    from sim.service import capacity_rps  # sim.service reads profiles, which hold HostCosts

    host = profile.host if profile is not None else None
    if host is None:
        device = capacity_rps(cfg, profile)
        return StackCapacity(device, device, math.inf, "device")
    if cfg.model.backend == "emulated" and cfg.service.kind != "empirical":
        # the twin's emulated device: the scenario's own service model, as late as the profile
        # measured it (sim.host_path); the profile's device times are another scenario's
        b = cfg.batching.max_batch_size
        model_s = cfg.service.base_s + cfg.service.per_item_s * b
        device = capacity_rps(cfg) * model_s / (model_s + host.device_wake_s)
    else:
        device = capacity_rps(cfg, profile)
    # a numpy model computes on its replica's loop: its time is the host's too (sim.host_path)
    compute = profile.mean_s(1) if cfg.model.backend == "numpy" and profile is not None else 0.0
    host_rps, limit = host_capacity(cfg, host, compute)
    binds = "host" if host_rps < device else "device"
    return StackCapacity(min(device, host_rps), device, host_rps, binds, limit)


class _Process:
    __slots__ = ("jobs", "running", "waking", "idle_since", "priority", "busy_s")

    def __init__(self, priority: int) -> None:
        # (submitted, cost, then, chained: runs in the same batch of ready callbacks as the job before it)
        self.jobs: deque[tuple[float, float, Callable[[], None], bool]] = deque()
        self.running = False
        self.waking = False
        self.idle_since = -math.inf  # when it last ran out of work: asleep from the next instant
        self.priority = priority
        self.busy_s = 0.0


class SimHost:
    """The host's cores and processes on the twin's clock (a SimPy environment): `run(process,
    cost, then)` queues a job on a process; it runs when the process is free and a core is, and
    `then()` is called when it ends. Non-preemptive: the jobs are a request's share of a loop's
    work, far shorter than a scheduler's time slice. A job for a process with nothing to do
    waits `wake_s` first (HostCosts.wake_s)."""

    def __init__(self, env: Any, cores: int, slowdown: float = 1.0, wake_s: float = 0.0) -> None:
        self.env = env
        self.free = cores
        self.slowdown = slowdown
        self.wake_s = wake_s  # a job for an idle process is ready this much later
        self.processes: list[_Process] = []
        self._ready: list[tuple[int, float, int, int]] = []  # (priority, head submitted, seq, process)
        self._seq = 0

    def add_process(self, priority: int = 0) -> int:
        """A process; lower priority numbers get a free core first."""
        self.processes.append(_Process(priority))
        return len(self.processes) - 1

    def run(self, process: int, cost_s: float, then: Callable[[], None], wakes: bool = True) -> None:
        """`wakes=False`: the job's thread is awake already: a thread taking its process's GIL.
        It runs at once on an idle process, and on a busy one right after the batch of ready
        callbacks under way (the job running and the jobs chained to it, `run_series`), ahead
        of the jobs queued behind: uvloop holds the GIL while it runs one batch of ready
        callbacks and lets go of it in between, and the waiting thread takes it then."""
        p = self.processes[process]
        now = self.env._now
        if not wakes and p.running:  # a thread awake takes the GIL once the callbacks under way are done
            at = 1
            while at < len(p.jobs) and p.jobs[at][3]:
                at += 1
            p.jobs.insert(at, (now, cost_s * self.slowdown, then, False))
            return
        p.jobs.append((now, cost_s * self.slowdown, then, False))
        if not p.running and not p.waking and len(p.jobs) == 1:
            if wakes and self.wake_s > 0 and now > p.idle_since:  # asleep: it runs the job once the kernel has woken it
                p.waking = True
                self.env.timeout(self.wake_s).callbacks.append(lambda _e, i=process: self._woken(i))
            else:
                self._push(process, p, now)
                self._dispatch()

    def run_series(self, process: int, cost_s: float, thens: Sequence[Callable[[], None]]) -> None:
        """One job of `cost_s` per callable, back to back as one batch of the loop's ready
        callbacks: each `then` is called when its own job ends, and a thread waiting for the
        GIL runs only after the last."""
        if not thens:
            return
        self.run(process, cost_s, thens[0])
        p = self.processes[process]
        now = self.env._now
        for then in thens[1:]:
            p.jobs.append((now, cost_s * self.slowdown, then, True))

    def _woken(self, index: int) -> None:
        p = self.processes[index]
        p.waking = False
        self._push(index, p, p.jobs[0][0])
        self._dispatch()

    def _push(self, index: int, p: _Process, submitted: float) -> None:
        self._seq += 1
        heapq.heappush(self._ready, (p.priority, submitted, self._seq, index))

    def _dispatch(self) -> None:
        ready = self._ready
        while self.free and ready:
            index = heapq.heappop(ready)[3]
            p = self.processes[index]
            _, cost, then, _chained = p.jobs[0]
            p.running = True
            self.free -= 1
            self.env.timeout(cost).callbacks.append(lambda _e, i=index, c=cost, f=then: self._done(i, c, f))

    def _done(self, index: int, cost: float, then: Callable[[], None]) -> None:
        p = self.processes[index]
        p.jobs.popleft()
        p.running = False
        p.busy_s += cost
        self.free += 1
        if p.jobs:
            self._push(index, p, p.jobs[0][0])
        else:
            p.idle_since = self.env._now
        self._dispatch()
        then()
