"""The twin: a SimPy model of clients, a gateway and replicas with dynamic batching.

Every decision is a `sim.policy` object (routing, batch formation); this module only moves time
and requests. Open-loop arrivals are exogenous, so they are fed in from the precomputed schedule
(the one the real load generator replays) rather than as one SimPy event each: the environment
is stepped up to each arrival time. Batch completions and batch-delay timers are SimPy events
with plain callbacks, and closed-loop users are SimPy processes. That keeps about two events per
batch, not several per request, which is what lets a million requests simulate in seconds.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import simpy

from sim.arrivals import ArrivalSchedule, make_schedule
from sim.config import ScenarioConfig
from sim.policy.batching import Dispatch, DynamicBatcher
from sim.policy.split import Router
from sim.profile import Profile
from sim.records import ERROR, OK, SHED, TIMEOUT
from sim.rng import Streams, make_streams
from sim.service import Overhead, ServiceTime

PENDING = -1
Progress = Callable[[int], None]


class StreamingEnvironment(simpy.Environment):
    """A SimPy environment that can be advanced to an externally scheduled instant."""

    def advance_to(self, t: float) -> None:
        queue = self._queue
        step = self.step
        while queue and queue[0][0] <= t:
            step()
        self._now = t


class _Replica:
    __slots__ = ("index", "version", "queue", "free", "timer_at", "busy_s")

    def __init__(self, index: int, version: str, instances: int) -> None:
        self.index = index
        self.version = version
        self.queue: deque[int] = deque()
        self.free = instances
        self.timer_at = math.inf
        self.busy_s = 0.0


@dataclass
class TwinResult:
    columns: dict[str, Any]  # the per-request record columns (sim.records.COLUMNS)
    busy_s: list[float]  # per replica, summed service time
    end_s: float  # simulated time when the last request was answered


class Twin:
    def __init__(
        self,
        cfg: ScenarioConfig,
        profile: Profile | None = None,
        schedule: ArrivalSchedule | None = None,
        progress: Progress | None = None,
        overhead_samples: dict[str, list[float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.streams: Streams = make_streams(cfg.seed)
        self.env = StreamingEnvironment()
        versions = list(cfg.model.versions)
        self.replicas = [_Replica(r, versions[r % len(versions)], cfg.concurrency) for r in range(cfg.replicas)]
        self.router = Router(
            cfg.replicas,
            len(versions),
            cfg.lb.policy,
            cfg.lb.weights,
            cfg.gateway.version_weights,
            cfg.gateway.sticky,
        )
        self.batcher = DynamicBatcher(cfg.batching.max_batch_size, cfg.batching.max_queue_delay_s)
        self.service = ServiceTime(cfg.service, self.streams.service, profile)
        self.outstanding = [0] * cfg.replicas
        self.hop_s = cfg.gateway.hop_s
        self.overhead = Overhead(cfg.overhead.before_s, cfg.overhead.after_s, self.streams.overhead, overhead_samples)
        # shared CPU cores (numpy replicas on one host): a dispatched batch waits for a core
        self.cores_free = cfg.service.shared_cores
        self.core_queue: deque[tuple[_Replica, list[int], float]] = deque()
        self.timeout_s = cfg.timeout_s if cfg.timeout_s > 0 else math.inf
        self.max_queue = cfg.batching.max_queue_size
        self._schedule = schedule
        self._progress = progress
        # per-request columns, indexed by request id
        self.user: list[int] = []
        self.arrival: list[float] = []
        self.enqueued: list[float] = []  # reached the replica's queue
        self.after_s: list[float] = []  # answer leaves the replica -> client has it
        self.start: list[float] = []
        self.finish: list[float] = []
        self.service_s: list[float] = []
        self.replica: list[int] = []
        self.batch_size: list[int] = []
        self.batch_id: list[int] = []
        self.batches = 0  # batches dispatched so far: the next batch's id
        self.status: list[int] = []
        self._waiters: dict[int, simpy.Event] = {}

    # -- requests entering ------------------------------------------------------------------

    def _new_request(self, user_id: int, now: float) -> int:
        i = len(self.arrival)
        self.user.append(user_id)
        self.arrival.append(now)
        self.enqueued.append(math.nan)
        self.after_s.append(self.hop_s)
        self.start.append(math.nan)
        self.finish.append(math.nan)
        self.service_s.append(math.nan)
        self.replica.append(-1)
        self.batch_size.append(0)
        self.batch_id.append(-1)
        self.status.append(PENDING)
        return i

    def _admit(self, i: int, now: float) -> None:
        r = self.router.route(self.user[i], self.outstanding, now, self.streams.routing)
        self.replica[i] = r
        self.outstanding[r] += 1
        delay = self.hop_s
        if self.overhead.active:
            before, after = self.overhead.draw()
            delay += before
            self.after_s[i] = self.hop_s + after
        if delay > 0:
            self.env.timeout(delay).callbacks.append(partial(self._on_hop, i, r))
        else:
            self._enqueue(i, self.replicas[r], now)

    def _on_hop(self, i: int, r: int, _event: simpy.Event) -> None:
        self._enqueue(i, self.replicas[r], self.env._now)

    def _enqueue(self, i: int, rep: _Replica, now: float) -> None:
        self.enqueued[i] = now
        if self.max_queue and len(rep.queue) >= self.max_queue:
            self.status[i] = SHED
            self.finish[i] = now + self.after_s[i]
            self._release(rep.index, 1)
            self._notify(i)
            return
        rep.queue.append(i)
        if rep.free:
            self._try_dispatch(rep, now)

    # -- batch formation and service ---------------------------------------------------------

    def _try_dispatch(self, rep: _Replica, now: float) -> None:
        queue = rep.queue
        arrival = self.arrival
        enqueued = self.enqueued
        timeout = self.timeout_s
        bounded = timeout < math.inf
        while rep.free and queue:
            while bounded and queue and arrival[queue[0]] + timeout <= now:  # deadline passed while queued
                j = queue.popleft()
                self.status[j] = TIMEOUT
                self.finish[j] = arrival[j] + timeout
                self._release(rep.index, 1)
                self._notify(j)
            if not queue:
                return
            decision = self.batcher.decide(len(queue), enqueued[queue[0]], now)
            if decision.__class__ is Dispatch:
                size = decision.size  # type: ignore[union-attr]
                if size == len(queue):
                    batch = list(queue)
                    queue.clear()
                else:
                    popleft = queue.popleft
                    batch = [popleft() for _ in range(size)]
                rep.free -= 1
                service_s = self.service.draw(size)
                start, bsz, bid = self.start, self.batch_size, self.batch_id
                batch_id = self.batches
                self.batches = batch_id + 1
                for j in batch:
                    start[j] = now
                    bsz[j] = size
                    bid[j] = batch_id
                if self.cores_free or not self.cfg.service.shared_cores:
                    self._serve(rep, batch, service_s, now)
                else:
                    self.core_queue.append((rep, batch, service_s))
            else:
                until = decision.until_s  # type: ignore[union-attr]
                if until < rep.timer_at:
                    rep.timer_at = until
                    self.env.timeout(until - now).callbacks.append(partial(self._on_timer, rep))
                return

    def _serve(self, rep: _Replica, batch: list[int], service_s: float, now: float) -> None:
        """Run a batch on its device (or a shared core). A replica measures service as the wall
        time from dispatch, so time spent waiting for a shared core counts as service."""
        if self.cfg.service.shared_cores:
            self.cores_free -= 1
        wall_s = now + service_s - self.start[batch[0]]
        svc = self.service_s
        for j in batch:
            svc[j] = wall_s
        self.env.timeout(service_s).callbacks.append(partial(self._on_complete, rep, batch, wall_s))

    def _on_timer(self, rep: _Replica, _event: simpy.Event) -> None:
        rep.timer_at = math.inf
        self._try_dispatch(rep, self.env._now)

    def _on_complete(self, rep: _Replica, batch: list[int], service_s: float, _event: simpy.Event) -> None:
        now = self.env._now
        if self.core_queue or self.cores_free < self.cfg.service.shared_cores:
            self.cores_free += 1
            if self.core_queue:
                waiting_rep, waiting_batch, waiting_s = self.core_queue.popleft()
                self._serve(waiting_rep, waiting_batch, waiting_s, now)
        arrival, finish, status, after = self.arrival, self.finish, self.status, self.after_s
        deadline = self.timeout_s
        if deadline == math.inf and not self.overhead.active:  # the common case, kept tight
            done = now + self.hop_s
            for j in batch:
                finish[j] = done
                status[j] = OK
        else:
            for j in batch:
                done = now + after[j]
                if done - arrival[j] <= deadline:
                    finish[j] = done
                    status[j] = OK
                else:
                    finish[j] = arrival[j] + deadline
                    status[j] = TIMEOUT
        self._release(rep.index, len(batch))
        if self._waiters:
            for j in batch:
                self._notify(j)
        rep.free += 1
        rep.busy_s += service_s
        self._try_dispatch(rep, now)

    def _release(self, r: int, n: int) -> None:
        """The gateway sees the answer one hop after the replica sends it."""
        if self.hop_s > 0:
            self.env.timeout(self.hop_s).callbacks.append(partial(self._on_release, r, n))
        else:
            self.outstanding[r] -= n

    def _on_release(self, r: int, n: int, _event: simpy.Event) -> None:
        self.outstanding[r] -= n

    def _notify(self, i: int) -> None:
        waiter = self._waiters.pop(i, None)
        if waiter is not None and not waiter.triggered:
            waiter.succeed()

    # -- driving -----------------------------------------------------------------------------

    def _run_open(self) -> None:
        schedule = self._schedule or make_schedule(
            self.cfg.arrival, self.cfg.duration_s, self.streams.arrivals, self.streams.users
        )
        times = schedule.times_s.tolist()
        users = schedule.user_ids.tolist()
        n = len(times)
        nan = math.nan
        # the columns are filled in bulk; _admit and friends index them by request id
        self.user = users
        self.arrival = times
        fast = self.router.split is None and self.hop_s == 0 and not self.max_queue and not self.overhead.active
        # on the fast path a request reaches its replica when it is sent: one list serves both
        self.enqueued = times if fast else [nan] * n
        self.after_s = [self.hop_s] * n
        self.start = [nan] * n
        self.finish = [nan] * n
        self.service_s = [nan] * n
        self.replica = [-1] * n
        self.batch_size = [0] * n
        self.batch_id = [-1] * n
        self.status = [PENDING] * n
        env = self.env
        queue = env._queue
        step = env.step
        progress = self._progress
        tick = 1 << 14
        # The common path (one version, no hop, no queue bound) inlined: at a million requests
        # each attribute lookup and call layer costs a visible share. Decisions still come from
        # the policy objects; everything else goes through _admit.
        choose = self.router.balancers[0].choose
        rng = self.streams.routing
        outstanding = self.outstanding
        replica = self.replica
        replicas = self.replicas
        try_dispatch = self._try_dispatch
        admit = self._admit
        for i in range(n):
            t = times[i]
            while queue and queue[0][0] <= t:
                step()
            env._now = t
            if fast:
                r = choose(outstanding, t, rng)
                replica[i] = r
                outstanding[r] += 1
                rep = replicas[r]
                rep.queue.append(i)
                if rep.free:
                    try_dispatch(rep, t)
            else:
                admit(i, t)
            if progress is not None and not (i + 1) & (tick - 1):
                progress(tick)
        if progress is not None:
            progress(n % tick)

    def _closed_user(self, user_id: int) -> Any:
        env = self.env
        think = self.cfg.arrival.think_s
        rng = self.streams.think
        end = self.cfg.duration_s
        while True:
            if think > 0:
                yield env.timeout(float(rng.exponential(think)))
            if env.now >= end:
                return
            i = self._new_request(user_id, env.now)
            answered = env.event()
            self._waiters[i] = answered
            self._admit(i, env.now)
            if math.isfinite(self.timeout_s):
                yield answered | env.timeout(self.timeout_s)
                self._waiters.pop(i, None)
            else:
                yield answered

    def run(self) -> TwinResult:
        if self.cfg.arrival.kind == "closed":
            for u in range(self.cfg.arrival.users):
                self.env.process(self._closed_user(u))
        else:
            self._run_open()
        self.env.run()  # drain: every admitted request is answered, shed or timed out
        status = self.status
        if PENDING in status:  # a bug, but never a lost request: account for it as an error
            status = [ERROR if s == PENDING else s for s in status]
        return TwinResult(columns=self.columns(status), busy_s=[r.busy_s for r in self.replicas], end_s=self.env.now)

    def columns(self, status: list[int]) -> dict[str, Any]:
        arrival = np.asarray(self.arrival, dtype=float)
        start = np.asarray(self.start, dtype=float)
        finish = np.asarray(self.finish, dtype=float)
        replica = np.asarray(self.replica, dtype=np.int64)
        versions = np.asarray([r.version for r in self.replicas] + [""], dtype=object)
        return {
            "request_id": np.arange(len(arrival), dtype=np.int64),
            "user_id": np.asarray(self.user, dtype=np.int64),
            "arrival_s": arrival,
            "start_s": start,
            "finish_s": finish,
            "latency_s": finish - arrival,
            "queue_s": start - np.asarray(self.enqueued, dtype=float),
            "service_s": np.asarray(self.service_s, dtype=float),
            "replica": replica,
            "version": versions[replica],  # -1 picks the trailing "" (never routed)
            "batch_id": np.asarray(self.batch_id, dtype=np.int64),
            "batch_size": np.asarray(self.batch_size, dtype=np.int64),
            "status": np.asarray(status, dtype=np.int64),
        }


def run_twin(cfg: ScenarioConfig, profile: Profile | None = None, progress: Progress | None = None) -> TwinResult:
    return Twin(cfg, profile=profile, progress=progress).run()


def default_progress(total: int | None) -> Progress | None:
    """A tqdm bar on a terminal, nothing in CI or when piped."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="req", unit_scale=True, desc="twin", leave=False, mininterval=0.5, delay=2.0)
    return bar.update
