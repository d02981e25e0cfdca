"""The twin: a SimPy model of clients, a gateway and replicas with dynamic batching.

Every decision is a `sim.policy` object: routing over a run-time membership (`Router`), the
replica's queue (`ReplicaQueue`: shed, expire, batch), health (`HealthPolicy`) and controllers.
This module plays the clients and the gateway and only moves time; `sim.replica` plays the
replicas and `sim.control` the probes and controller ticks. (The gateway's `RetryPolicy` retries
only transport failures, which the twin's modelled network never has; a replica that is down
answers 503, which is not retried, in both worlds.)

Open-loop arrivals are exogenous, so they are fed in from the precomputed schedule (the one the
real load generator replays) rather than as one SimPy event each: the environment is stepped up
to each arrival time. Batch completions and batch-delay timers are SimPy events with plain
callbacks, and closed-loop users are SimPy processes. That keeps about two events per batch,
not several per request, which is what lets a million requests simulate in seconds. Changes made
while traffic flows (weights, drains, ejections, faults) apply at the instant they are made: the
router reads the membership at every request.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import simpy

from sim.arrivals import ArrivalSchedule, make_schedule
from sim.config import ScenarioConfig, version_specs
from sim.control import Event, controller_ticks, probe_rounds
from sim.policy.batching import DynamicBatcher
from sim.policy.controller import Controller
from sim.policy.health import HealthPolicy
from sim.policy.split import NoReplica, Router
from sim.policy.users import ThinkTime
from sim.policy.windows import VersionWindows
from sim.profile import Profile
from sim.records import ERROR, OK, SHED, TIMEOUT
from sim.replica import CpuCores, SimReplica
from sim.requests import PENDING, RequestLog
from sim.rng import Streams, make_streams
from sim.service import Overhead, ServiceTime

Progress = Callable[[int], None]


class StreamingEnvironment(simpy.Environment):
    """A SimPy environment that can be advanced to an externally scheduled instant."""

    def advance_to(self, t: float) -> None:
        queue = self._queue
        step = self.step
        while queue and queue[0][0] <= t:
            step()
        self._now = t


@dataclass
class TwinResult:
    columns: dict[str, Any]  # the per-request record columns (sim.records.COLUMNS)
    busy_s: list[float]  # per replica, summed service time
    end_s: float  # simulated time when the last request was answered
    events: list[Event] = field(default_factory=list)  # controller actions and health changes


class Twin:
    def __init__(
        self,
        cfg: ScenarioConfig,
        profile: Profile | None = None,
        schedule: ArrivalSchedule | None = None,
        progress: Progress | None = None,
        overhead_samples: dict[str, list[float]] | None = None,
        controller: Controller | None = None,
        stop_when_done: bool = False,
    ) -> None:
        self.cfg = cfg
        self.streams: Streams = make_streams(cfg.seed)
        self.env = StreamingEnvironment()
        self.log = RequestLog()
        self.versions = version_specs(cfg.model)
        self.router = Router.from_config(cfg)
        self.membership = self.router.membership
        self.outstanding = [0] * cfg.replicas
        self.hop_s = cfg.gateway.hop_s
        self.overhead = Overhead(cfg.overhead.before_s, cfg.overhead.after_s, self.streams.overhead, overhead_samples)
        self.timeout_s = cfg.timeout_s if cfg.timeout_s > 0 else math.inf
        self.health = HealthPolicy(cfg.replicas, cfg.health.failure_threshold, cfg.health.success_threshold)
        self.controller = controller
        # a rehearsal needs a rollout's decision, not the traffic after it: stop sending then
        self.stop_when_done = stop_when_done
        self.cut_s = math.inf  # no request is sent at or after this
        self.sent = -1  # requests sent, when a cut stopped the schedule early
        self.events: list[Event] = []
        self.windows = VersionWindows(len(self.versions), cfg.window_s)
        self._waiters: dict[int, simpy.Event] = {}
        self._schedule = schedule
        self._think = ThinkTime(cfg.arrival.think_s, self.streams.think)  # the load generator's users draw the same
        self._progress = progress
        factors = [v.service_factor for v in self.versions]
        version_of = self.membership.version_of
        batcher = DynamicBatcher(cfg.batching.max_batch_size, cfg.batching.max_queue_delay_s)
        service = ServiceTime(cfg.service, self.streams.service, profile)
        cores = CpuCores(cfg.service.shared_cores)
        batches = [0]
        uniform_speed = all(f == 1.0 for f in factors)
        version_factor = None if uniform_speed else (lambda rep: factors[version_of[rep]])
        if self.hop_s > 0:
            on_release: Callable[[int, list[int]], None] = self._on_release
        elif controller is None and cfg.arrival.kind != "closed":  # nobody else waits on answers
            on_release = self._release_count
        else:
            on_release = self._on_answer
        constant_after = None if self.overhead.active else self.hop_s
        self.replicas = [
            SimReplica(r, self.env, self.log, batcher, cfg.concurrency, cfg.batching.max_queue_size, service, cores,
                       version_factor, on_release, self.timeout_s, batches, constant_after)
            for r in range(cfg.replicas)
        ]

    # -- the gateway -------------------------------------------------------------------------

    def _admit(self, i: int, now: float) -> None:
        log = self.log
        try:
            r = self.router.route(log.user[i], self.outstanding, now, self.streams.routing)
        except NoReplica:  # nothing routable: the gateway answers 503 itself
            log.status[i] = SHED
            log.finish[i] = now
            self._notify(i, now)
            return
        log.replica[i] = r
        log.version[i] = self.membership.version_of[r]
        self.outstanding[r] += 1
        delay = self.hop_s
        if self.overhead.active:
            before, after = self.overhead.draw()
            delay += before
            log.after_s[i] = self.hop_s + after
        rep = self.replicas[r]
        if delay > 0:
            self.env.timeout(delay).callbacks.append(partial(self._on_hop, i, rep))
        else:
            rep.enqueue(i, now)

    def _on_hop(self, i: int, rep: SimReplica, _event: simpy.Event) -> None:
        rep.enqueue(i, self.env._now)

    def _on_release(self, r: int, requests: list[int]) -> None:
        """Answers that left replica r: the gateway sees them one hop later."""
        self.env.timeout(self.hop_s).callbacks.append(partial(self._on_answer, r, requests))

    def _release_count(self, r: int, requests: list[int]) -> None:
        """`_on_answer` when no controller reads windows and no closed-loop user waits."""
        self.outstanding[r] -= len(requests)

    def _on_answer(self, r: int, requests: list[int], _event: simpy.Event | None = None) -> None:
        self.outstanding[r] -= len(requests)
        if self.controller is not None:
            log = self.log
            now = self.env._now
            for j in requests:
                self._window_answer(j, now)
        if self._waiters:
            for j in requests:
                self._notify(j, self.log.finish[j])

    def _window_answer(self, j: int, now: float) -> None:
        """An answer as the gateway's window counts it: served (2xx, even if too late for its
        client), or an error (5xx: shed, expired in the queue, failed)."""
        log = self.log
        status, served = log.status[j], log.batch_id[j] >= 0
        if status == OK:
            self.windows.add(log.version[j], now, log.finish[j] - log.arrival[j], ok=True, error=False)
        elif served and status == TIMEOUT:
            self.windows.add(log.version[j], now, now - log.arrival[j], ok=True, error=False)
        else:
            self.windows.add(log.version[j], now, math.nan, ok=False, error=True)

    def _notify(self, i: int, finish_s: float) -> None:
        waiter = self._waiters.get(i)
        if waiter is None or self.log.status[i] == PENDING:
            return
        del self._waiters[i]
        delay = finish_s - self.env._now
        if delay > 0:  # the client has its answer after the way back
            self.env.timeout(delay).callbacks.append(lambda _e: waiter.triggered or waiter.succeed())
        elif not waiter.triggered:
            waiter.succeed()

    # -- driving -----------------------------------------------------------------------------

    def _run_open(self) -> None:
        cfg = self.cfg
        schedule = self._schedule or make_schedule(cfg.arrival, cfg.duration_s, self.streams.arrivals, self.streams.users)
        times = schedule.times_s.tolist()
        self.log.fill(schedule.user_ids.tolist(), times, self.hop_s)
        n = len(times)
        env = self.env
        queue = env._queue
        step = env.step
        progress = self._progress
        tick = 1 << 14
        # The common path inlined: at a million requests each attribute lookup and call layer
        # costs a visible share. Decisions still come from the policy objects. It applies when a
        # request reaches its replica the instant it is sent, with no deadline to carry, and no
        # controller can change routing, membership or faults during the run (without one,
        # nothing does); otherwise every request goes through the gateway's full path.
        inline = self.hop_s == 0 and not self.overhead.active and self.timeout_s == math.inf and self.controller is None \
            and self.membership.uniform
        if inline:
            self.log.enqueued = times  # enqueued == sent for every request: one list serves both
            self.log.version = [0] * n  # one version, and every request is routed
        choose = self.router.balancers[0].choose
        rng = self.streams.routing
        outstanding = self.outstanding
        replica = self.log.replica
        offers = [rep.queue.push for rep in self.replicas]
        queues = [rep.queue for rep in self.replicas]
        dispatchers = [rep.dispatch for rep in self.replicas]
        refusers = [rep.refuse for rep in self.replicas]
        admit = self._admit
        for i in range(n):
            t = times[i]
            while queue and queue[0][0] <= t:
                step()
            env._now = t
            if inline:
                r = choose(outstanding, t, rng)
                replica[i] = r
                outstanding[r] += 1
                if not offers[r](i, t):
                    refusers[r](i, t)
                elif queues[r].free:
                    dispatchers[r](t)
            else:
                if t >= self.cut_s:
                    self.sent = i
                    break
                admit(i, t)
            if progress is not None and not (i + 1) & (tick - 1):
                progress(tick)
        if progress is not None:
            progress(n % tick)

    def _closed_user(self, user_id: int) -> Any:
        env = self.env
        think = self._think
        end = self.cfg.duration_s
        while True:
            if think.mean_s > 0:
                yield env.timeout(think.draw(user_id))
            if env.now >= end:
                return
            i = self.log.append(user_id, env.now, self.hop_s)
            answered = env.event()
            self._waiters[i] = answered
            self._admit(i, env.now)
            if math.isfinite(self.timeout_s):
                yield answered | env.timeout(self.timeout_s)
                self._waiters.pop(i, None)
            else:
                yield answered

    def _start_control(self) -> None:
        if self.controller is None:
            return
        end = self.cfg.duration_s
        self.env.process(probe_rounds(self.env, self.cfg.health.probe_interval_s, end, self.health, self.router,
                                      self.replicas, self.events))
        on_done = self._cut if self.stop_when_done else None
        self.env.process(controller_ticks(self.env, self.controller, end, self.router, self.health, self.replicas,
                                          self.windows, self.events, on_done))

    def _cut(self, now: float) -> None:
        self.cut_s = now

    def run(self) -> TwinResult:
        self._start_control()
        if self.cfg.arrival.kind == "closed":
            for u in range(self.cfg.arrival.users):
                self.env.process(self._closed_user(u))
        else:
            self._run_open()
        self.env.run()  # drain: every admitted request is answered, shed or timed out
        if self.sent >= 0:
            self.log.truncate(self.sent)  # the requests never sent are not part of this run
        status = self.log.status
        if PENDING in status:  # a bug, but never a lost request: account for it as an error
            status = [ERROR if s == PENDING else s for s in status]
        return TwinResult(
            columns=self.log.columns(status, [v.name for v in self.versions]),
            busy_s=[r.busy_s for r in self.replicas],
            end_s=self.env.now,
            events=self.events,
        )


def run_twin(cfg: ScenarioConfig, profile: Profile | None = None, progress: Progress | None = None) -> TwinResult:
    return Twin(cfg, profile=profile, progress=progress).run()


def default_progress(total: int | None) -> Progress | None:
    """A tqdm bar on a terminal, nothing in CI or when piped."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="req", unit_scale=True, desc="twin", leave=False, mininterval=0.5, delay=2.0)
    return bar.update
