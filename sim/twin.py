"""The twin: a SimPy model of clients, a gateway and replicas with dynamic batching.

Every decision is a `sim.policy` object: routing over a run-time membership (`Router`), the
replica's queue (`ReplicaQueue`: shed, expire, batch), health (`HealthPolicy`) and controllers.
This module plays the clients and the gateway and only moves time; `sim.replica` plays the
replicas (with a feature store, each batch's lookup first: `sim.features`) and `sim.control` the
probes and controller ticks. (The gateway's `RetryPolicy` retries
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

from sim.arrivals import ArrivalSchedule, make_schedule, unknown_trace_versions
from sim.config import ScenarioConfig, version_specs
from sim.control import ControlPlane, Event, ReplicaCount
from sim.features import LookupTimes, make_feature_stages
from sim.host import HostCosts
from sim.host_path import HostPath
from sim.policy.batching import DynamicBatcher
from sim.policy.controller import Controller
from sim.policy.health import HealthPolicy
from sim.policy.shadow import NO_REPLICA, Mirror
from sim.policy.split import NoReplica, Router, pinned_version
from sim.policy.users import ThinkTime
from sim.policy.versions import VersionBehaviour
from sim.policy.windows import VersionWindows
from sim.profile import Profile
from sim.records import ERROR, OK, SHED, TIMEOUT
from sim.replica import BatchJudge, CpuCores, SimReplica
from sim.requests import PENDING, RequestLog
from sim.rng import Streams, make_streams
from sim.service import Overhead, ServiceTime, VersionService

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
    # ready and live replicas per version after each change (none without a controller)
    replica_counts: list[ReplicaCount] = field(default_factory=list)
    shadow_dropped: int | None = None  # with a shadow version: Twin.shadow_dropped


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
        host: HostCosts | None = None,
        lookups: LookupTimes | None = None,
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
        # with the host modelled, a request's time outside queue and model is its path through
        # the stack's processes on the host's cores (sim.host_path), not a replayed overhead
        self.path: HostPath | None = None
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
        # shadow traffic and version pins (sim.policy.shadow, a trace's version column)
        self.mirror = Mirror.from_config(cfg, self.router, self.streams.shadow)
        self.shadow_dropped = 0  # copies due but not sent: over gateway.shadow_max_in_flight, or no replica
        self._shadow_pending: list[int] = []  # copies sent, some maybe answered since (see _shadow_in_flight)
        self._pins: list[int] | None = None  # per scheduled request: pinned version index, -1 = the split
        self._scheduled = 0  # open loop: the schedule's requests; shadow copies are appended after them
        # each version's speed, failures and accuracy at run time (model.versions, with their faults)
        self.behaviour = behaviour = VersionBehaviour.from_config(cfg)
        version_of = self.membership.version_of
        batcher = DynamicBatcher(cfg.batching.max_batch_size, cfg.batching.max_queue_delay_s)
        # the emulated device sleeps its service model; a modelled host adds its measured lateness
        wake_s = host.device_wake_s if host is not None and cfg.model.backend == "emulated" and cfg.service.kind != "empirical" else 0.0
        service = ServiceTime(cfg.service, self.streams.service, profile, extra_s=wake_s)
        # a profile that measured each version's own compute (the numpy backend): each draws its own
        by_version = ([ServiceTime(cfg.service, self.streams.service, profile.for_version(v.name), extra_s=wake_s) for v in self.versions]
                      if profile is not None and profile.version_times_s and cfg.service.kind == "empirical" else None)
        cores = CpuCores(0 if host is not None else cfg.service.shared_cores)  # a modelled host holds the cores
        batches = [0]
        version_factor: Callable[[int], float] | None = None  # None: every version at speed 1, always
        if not behaviour.uniform_speed:
            if behaviour.static:
                factors = [behaviour.device_factor(v, 0.0) for v in range(len(self.versions))]
                version_factor = lambda rep: factors[version_of[rep]]  # noqa: E731
            else:  # a fault changes a speed at some time: look the time up per batch
                env = self.env
                version_factor = lambda rep: behaviour.device_factor(version_of[rep], env._now)  # noqa: E731
        # None keeps the batch completion path as it was: nothing fails, nothing is judged
        self.judge = BatchJudge(behaviour, version_of, self.log, cfg.seed) if behaviour.judges else None
        if host is not None:
            self.path = HostPath(self.env, self.log, host, cfg.loadgen.workers, self.streams.overhead, self.timeout_s,
                                 self._gateway_saw, self._client_has)
            on_release: Callable[[int, list[int]], None] = self.path.relay
        elif self.hop_s > 0:
            on_release = self._on_release
        elif controller is None and cfg.arrival.kind != "closed":  # nobody else waits on answers
            on_release = self._release_count
        else:
            on_release = self._on_answer
        # on the host path the answer's way back is the path's, after the batch: 0 here
        constant_after = 0.0 if self.path is not None else None if self.overhead.active else self.hop_s
        # a model that computes on the replica's own loop (numpy) runs as that process's job
        on_cpu = self.path is not None and cfg.model.backend == "numpy"
        # with a feature store, each replica's lookup stage: its own cache, the run's lookup
        # times (`lookups`, measured by mode=profile; else features.round_trip_s/per_miss_s)
        feature_stage = make_feature_stages(cfg, lookups)

        def make_replica(r: int) -> SimReplica:  # those of the start, and those a rollout starts
            own = VersionService(by_version, version_of, r) if by_version is not None else service
            return SimReplica(r, self.env, self.log, batcher, cfg.concurrency, cfg.batching.max_queue_size, own, cores,
                              version_factor, on_release, self.timeout_s, batches, constant_after, self.judge,
                              **self._host_lanes(r, on_cpu), features=feature_stage() if feature_stage is not None else None)

        self._make_replica = make_replica
        self.replicas = [make_replica(r) for r in range(cfg.replicas)]
        self.control = ControlPlane(self.env, self.router, self.health, self.replicas, self._start_replica, self.events,
                                    outstanding=self.outstanding)

    def _host_lanes(self, replica: int, on_cpu: bool) -> dict[str, Any]:
        """A replica's process on the modelled host: its batches' hand-back, and with a CPU
        model its compute (SimReplica's `lane` and `cpu`); nothing without a host model."""
        if self.path is None:
            return {}
        lane = self.path.lane(replica)
        return {"lane": lane, "cpu": lane.run if on_cpu else None}

    # -- the gateway -------------------------------------------------------------------------

    def _admit(self, i: int, now: float) -> None:
        log = self.log
        pin = self._pins[i] if self._pins is not None else -1
        try:
            r = self.router.route(log.user[i], self.outstanding, now, self.streams.routing, version=pin if pin >= 0 else None)
        except NoReplica:  # nothing routable: the gateway answers 503 itself
            log.status[i] = SHED
            log.finish[i] = now
            self._notify(i, now)
            if self.mirror is not None:
                self.mirror.target(-1, self.outstanding, now)  # its draw, as the gateway makes it
            return
        log.replica[i] = r
        log.version[i] = self.membership.version_of[r]
        self.outstanding[r] += 1
        if self.path is not None:
            self.path.send(i, self.replicas[r])
            if self.mirror is not None:
                self._mirror(i, log.version[i], now, 0.0)
            return
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
        if self.mirror is not None:
            self._mirror(i, log.version[i], now, delay)

    def _mirror(self, i: int, primary_version: int, now: float, delay: float) -> None:
        """A copy of request i to the shadow version, if the mirror says so: its own row
        (shadow=True), the same send time and user, the shadow replica's capacity. It leaves the
        gateway with the primary (the same delay, no overhead draw of its own, so the primaries'
        draws are unchanged) and its answer stops at the gateway (after_s = one hop)."""
        mirror = self.mirror
        assert mirror is not None
        r = mirror.target(primary_version, self.outstanding, now)
        if r < 0:
            self.shadow_dropped += r == NO_REPLICA
            return
        if not mirror.admits(self._shadow_in_flight(mirror.max_in_flight)):
            self.shadow_dropped += 1
            return
        log = self.log
        j = log.append(log.user[i], log.arrival[i], self.hop_s, shadow=True)
        if self.judge is not None:  # the copy carries its primary's request id
            self.judge.origin[j] = i
        log.replica[j] = r
        log.version[j] = self.membership.version_of[r]
        self.outstanding[r] += 1
        self._shadow_pending.append(j)
        rep = self.replicas[r]
        if delay > 0:
            self.env.timeout(delay).callbacks.append(partial(self._on_hop, j, rep))
        else:
            rep.enqueue(j, now)

    def _shadow_in_flight(self, bound: int) -> int:
        """Copies not yet answered, counted exactly only near the bound (a scan of the pending
        list then, O(bound), instead of a hook on every answer of every request)."""
        pending = self._shadow_pending
        if len(pending) >= bound:
            status = self.log.status
            pending[:] = [j for j in pending if status[j] == PENDING]
        return len(pending)

    def _on_hop(self, i: int, rep: SimReplica, _event: simpy.Event) -> None:
        rep.enqueue(i, self.env._now)

    def _on_release(self, r: int, requests: list[int]) -> None:
        """Answers that left replica r: the gateway sees them one hop later."""
        self.env.timeout(self.hop_s).callbacks.append(partial(self._on_answer, r, requests))

    def _release_count(self, r: int, requests: list[int]) -> None:
        """`_on_answer` when no controller reads windows and no closed-loop user waits."""
        self.outstanding[r] -= len(requests)

    def _gateway_saw(self, r: int, j: int) -> None:
        """On the host path: the gateway relays request j's answer (its count and windows)."""
        self.outstanding[r] -= 1
        if self.controller is not None:
            now = self.env._now
            self._window_answer(j, now)
            if not self.outstanding[r] and self.membership.removed[r]:
                self.control.emptied(r, now)

    def _client_has(self, j: int) -> None:
        """On the host path: the client has request j's answer."""
        if self._waiters:
            self._notify(j, self.log.finish[j])

    def _on_answer(self, r: int, requests: list[int], _event: simpy.Event | None = None) -> None:
        self.outstanding[r] -= len(requests)
        if self.controller is not None:
            now = self.env._now
            for j in requests:
                self._window_answer(j, now)
            if not self.outstanding[r] and self.membership.removed[r]:
                self.control.emptied(r, now)
        if self._waiters:
            for j in requests:
                self._notify(j, self.log.finish[j])

    def _window_answer(self, j: int, now: float) -> None:
        """An answer as the gateway's window counts it: served (2xx, even if too late for its
        client, with whether it was right, as the replica's x-correct header tells the
        gateway), or an error (5xx: shed, expired in the queue, failed)."""
        log = self.log
        status, served = log.status[j], log.batch_id[j] >= 0
        if status == OK:
            self.windows.add(log.version[j], now, log.finish[j] - log.arrival[j], ok=True, error=False, correct=log.correct[j])
        elif served and status == TIMEOUT:
            self.windows.add(log.version[j], now, now - log.arrival[j], ok=True, error=False, correct=log.correct[j])
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
        self._scheduled = n
        if self.judge is not None:
            self.judge.schedule(n)
        if schedule.versions is not None:
            self._pins = self._pin_indices(schedule.versions)
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
        inline = self.hop_s == 0 and not self.overhead.active and self.path is None and self.timeout_s == math.inf \
            and self.controller is None \
            and self.membership.uniform and self.mirror is None and self._pins is None
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
        self.control.count(0.0)
        self.env.process(self.control.probe_rounds(self.cfg.health.probe_interval_s, end))
        on_done = self._cut if self.stop_when_done else None
        self.env.process(self.control.controller_ticks(self.controller, end, self.windows, on_done))

    def _cut(self, now: float) -> None:
        self.cut_s = now

    # -- replicas started at run time (a controller's AddReplica) -----------------------------

    def _start_replica(self, index: int) -> None:
        """The replica a controller just added to the membership (not ready): its process starts
        now and answers ready `rollout.replica_start_s` later; the next probe round after that
        brings it into rotation (`sim.control`). A removed replica needs nothing here: the
        membership sends it no new request, and it serves what it holds until it is empty."""
        assert index == len(self.replicas), f"replica {index} added out of order ({len(self.replicas)} exist)"
        rep = self._make_replica(index)
        rep.down = True  # starting: fails its readiness probes, as a process not listening yet
        self.replicas.append(rep)
        self.outstanding.append(0)
        self.env.timeout(self.cfg.rollout.replica_start_s).callbacks.append(partial(self._replica_started, rep))

    def _replica_started(self, rep: SimReplica, _event: simpy.Event) -> None:
        rep.down = False
        if not self.membership.removed[rep.index]:  # removed while starting: it stopped, never started (as real)
            self.events.append(Event(self.env.now, "started", {"replica": rep.index}))

    def _pin_indices(self, names: np.ndarray) -> list[int]:
        """A trace's version column as version indices (-1: unpinned), as the gateway reads the
        x-model-version the load generator sends for the same rows."""
        versions = self.membership.versions
        unknown_trace_versions(names, versions, self.cfg.arrival.path)
        index = {name: pinned_version(versions, None, name) for name in set(names.tolist())}
        return [-1 if v is None else v for v in map(index.__getitem__, names.tolist())]

    def _drop_unsent(self) -> None:
        """Cut the schedule at `sent`: rows [sent, scheduled) were never sent; the shadow copies
        appended after the schedule are copies of sent requests, and stay."""
        log = self.log
        sent, scheduled = self.sent, self._scheduled
        if len(log) == scheduled:
            log.truncate(sent)
            return
        for name in log.__slots__:
            column = getattr(log, name)
            setattr(log, name, column[:sent] + column[scheduled:])

    def run(self) -> TwinResult:
        self._start_control()
        if self.cfg.arrival.kind == "closed":
            for u in range(self.cfg.arrival.users):
                self.env.process(self._closed_user(u))
        else:
            self._run_open()
        self.env.run()  # drain: every admitted request is answered, shed or timed out
        if self.sent >= 0:
            self._drop_unsent()  # the requests never sent are not part of this run
        status = self.log.status
        if PENDING in status:  # a bug, but never a lost request: account for it as an error
            status = [ERROR if s == PENDING else s for s in status]
        return TwinResult(
            columns=self.log.columns(status, [v.name for v in self.versions], features=self.cfg.features.store != "none"),
            busy_s=[r.busy_s for r in self.replicas],
            end_s=self.env.now,
            events=self.events,
            replica_counts=self.control.replica_counts,
            shadow_dropped=self.shadow_dropped if self.mirror is not None else None,
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
