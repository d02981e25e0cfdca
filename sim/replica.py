"""A model-server replica in the twin: the shared `ReplicaQueue` driven on SimPy's clock.

Every decision (shed, expire, which requests form a batch, when) is the queue's; this module
only moves time: it arms a SimPy timer for the batching delay, holds a batch on its device (or a
shared CPU core) for its service time, and writes what happened into the run's request log.
The real server drives the very same queue from asyncio (real/server/batcher.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Callable

import simpy

from sim.policy.batching import DynamicBatcher
from sim.policy.replica_queue import ReplicaQueue
from sim.policy.versions import CORRECT_DRAW, ERROR_DRAW, VersionBehaviour, common_key, common_units, unit_of
from sim.records import ERROR, OK, SHED, TIMEOUT
from sim.service import ServiceTime, VersionService

if TYPE_CHECKING:
    from sim.features import BatchLookup, FeatureStage
    from sim.host_path import ReplicaLane
    from sim.requests import RequestLog


@dataclass
class CpuCores:
    """N CPU cores shared by the batches of every replica on one host (numpy replicas): a
    dispatched batch waits for a free core. 0 cores: every instance has its own device."""

    count: int
    free: int = 0
    waiting: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.free = self.count


class BatchJudge:
    """What became of each answer of a finished batch, by the version the replica serves at
    that instant (sim.policy.versions): a model failure (status `error`, as the real replica's
    HTTP 500 after its batch ran) with the version's error rate, else right or wrong with its
    accuracy (`correct` 1 or 0; left unknown when the version is not judged).

    The numbers are the common ones (`common_unit`): request i's, for the version that served
    it, are what a real replica draws for the request the load generator sent as id i, so both
    worlds fail and judge the same requests. A shadow copy is drawn as its primary's request
    (the gateway copies the primary's id) on the shadow version. No stream is read: the other
    streams' draws do not move. The open-loop schedule's numbers are computed at once per
    version and purpose (`schedule`), the rest (closed-loop users) one at a time."""

    __slots__ = ("behaviour", "version_of", "log", "seed", "scheduled", "origin", "_units", "_keys")

    def __init__(self, behaviour: VersionBehaviour, version_of: list[int], log: RequestLog, seed: int) -> None:
        self.behaviour = behaviour
        self.version_of = version_of  # the membership's own list: a SetVersion shows at once
        self.log = log
        self.seed = seed
        self.scheduled = 0  # requests 0..scheduled-1 are the open-loop schedule's
        self.origin: dict[int, int] = {}  # a shadow copy's row -> its primary's request id
        self._units: dict[tuple[int, int], memoryview] = {}  # (version, purpose) -> the schedule's numbers
        self._keys: dict[tuple[int, int], int] = {}

    def schedule(self, n: int) -> None:
        """Requests 0..n-1 are the open-loop schedule: their numbers are computed in bulk."""
        self.scheduled = n
        self._units.clear()

    def _numbers(self, version: int, purpose: int) -> memoryview:
        units = self._units.get((version, purpose))
        if units is None:
            units = self._units[version, purpose] = memoryview(common_units(self.seed, version, purpose, self.scheduled))
        return units

    def _unit(self, version: int, purpose: int, request: int) -> float:
        key = self._keys.get((version, purpose))
        if key is None:
            key = self._keys[version, purpose] = common_key(self.seed, version, purpose)
        return unit_of(key, request)

    def __call__(self, replica: int, batch: list[int], now: float) -> None:
        version = self.version_of[replica]
        state = self.behaviour.at(version, now)
        error_rate, accuracy = state.error_rate, state.accuracy
        if error_rate <= 0 and accuracy is None:
            return
        n = self.scheduled
        fails = self._numbers(version, ERROR_DRAW) if error_rate > 0 else None
        rights = self._numbers(version, CORRECT_DRAW) if accuracy is not None else None
        status, correct = self.log.status, self.log.correct  # read here: the log's lists are replaced by fill()
        origin = self.origin
        for j in batch:
            k = j if j < n else origin.get(j, j)
            if fails is not None and (fails[k] if k < n else self._unit(version, ERROR_DRAW, k)) < error_rate:
                if status[j] == OK:  # an answer already too late for its client stays a timeout
                    status[j] = ERROR
                continue
            if rights is not None:
                correct[j] = 1 if (rights[k] if k < n else self._unit(version, CORRECT_DRAW, k)) < accuracy else 0


class SimReplica:
    __slots__ = ("index", "queue", "env", "log", "service", "cores", "version_factor", "down", "slowdown", "busy_s",
                 "timer_at", "on_release", "timeout_s", "constant_after_s", "_batches", "judge", "cpu", "lane",
                 "features")

    def __init__(
        self,
        index: int,
        env: simpy.Environment,
        log: RequestLog,
        batcher: DynamicBatcher,
        instances: int,
        max_queue_size: int,
        service: ServiceTime | VersionService,
        cores: CpuCores,
        version_factor: Callable[[int], float] | None,
        on_release: Callable[[int, list[int]], None],
        timeout_s: float,
        batch_counter: list[int],
        constant_after_s: float | None,
        judge: BatchJudge | None = None,
        cpu: Callable[[float, Callable[[], None]], None] | None = None,
        lane: ReplicaLane | None = None,
        features: FeatureStage | None = None,
    ) -> None:
        self.index = index
        self.queue: ReplicaQueue[int] = ReplicaQueue(batcher, instances, max_queue_size)
        self.env = env
        self.log = log
        self.service = service
        self.cores = cores
        # replica -> device-time factor of the version it serves now (None: every version 1.0)
        self.version_factor = version_factor
        # a fault drill's doing: `down` answers everything 503 at once (and fails readiness
        # probes), `slowdown` multiplies the device time
        self.down = False
        self.slowdown = 1.0
        self.busy_s = 0.0
        self.timer_at = math.inf
        self.on_release = on_release  # (replica, requests) whose answers left it: the gateway's bookkeeping
        self.timeout_s = timeout_s
        self.constant_after_s = constant_after_s  # replica -> client, when the same for every request
        self._batches = batch_counter  # one counter shared by all replicas: batch ids unique in the run
        # failures and right/wrong answers per finished batch; None: no version fails or is judged
        self.judge = judge
        # with the host modelled, a model that computes on this replica's own loop (numpy):
        # `cpu(cost, then)` runs a batch as the replica process's job on the host's cores
        self.cpu = cpu
        # with the host modelled: a finished batch is handed back to the server's loop, which
        # answers it and only then frees the instance (real/server/batcher.py), as a job of
        # the replica's process: a busy loop or host keeps a done instance from its next batch
        self.lane = lane
        # with a feature store: the batch's lookup on the instance before the model (sim.features)
        self.features = features

    # -- arrivals --------------------------------------------------------------------------

    def enqueue(self, i: int, now: float) -> None:
        log = self.log
        log.enqueued[i] = now
        queue = self.queue
        # a replica that is down answers 503 at once, as does a full queue
        if self.down or not queue.offer(i, now, 1, log.arrival[i] + self.timeout_s):
            self.refuse(i, now)
        elif queue.free:
            self.dispatch(now)

    def refuse(self, i: int, now: float) -> None:
        """503 at once: the queue is full or the replica is down."""
        log = self.log
        log.status[i] = SHED
        log.finish[i] = now + log.after_s[i]
        self.on_release(self.index, [i])

    # -- batches ---------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        queue = self.queue
        if not queue.waiting and not queue.expired:  # nothing to batch or answer; an armed timer stays armed
            return
        batches = queue.dispatch(now)
        if queue.expired:
            self._expire(queue.take_expired())
        for batch in batches:
            self._start(batch, now)
        until = queue.wake_s
        if until < self.timer_at:
            self.timer_at = until
            self.env.timeout(until - now).callbacks.append(self._on_timer)

    def _on_timer(self, _event: simpy.Event) -> None:
        self.timer_at = math.inf
        self.dispatch(self.env._now)

    def _expire(self, expired: list[int]) -> None:
        """Requests whose client deadline passed while they waited: the client saw a timeout at
        its deadline; the replica drops them when it next looks at its queue."""
        log = self.log
        for j in expired:
            log.status[j] = TIMEOUT
            log.finish[j] = log.arrival[j] + self.timeout_s
        self.on_release(self.index, expired)

    def _start(self, batch: list[int], now: float) -> None:
        batch_id = self._batches[0]
        self._batches[0] = batch_id + 1
        if self.features is not None:
            self._look_up(batch, batch_id, now)
            return
        self._serve(batch, batch_id, len(batch), now)

    def _look_up(self, batch: list[int], batch_id: int, now: float) -> None:
        """The instance looks the batch's features up before its model runs, as the real
        server does (sim.features): the batch's start is the lookup's, every request of it
        carries the lookup's time, and the instance stays held until the round trip is back."""
        log = self.log
        user, start, bsz, bid = log.user, log.start, log.batch_size, log.batch_id
        lookup = self.features.begin([user[j] for j in batch], now)  # type: ignore[union-attr]
        size, took = len(batch), lookup.duration_s
        lookup_s, hit = log.lookup_s, log.hit
        for j, from_cache in zip(batch, lookup.hit):
            start[j] = now
            bsz[j] = size
            bid[j] = batch_id
            lookup_s[j] = took
            hit[j] = 1 if from_cache else 0
        if lookup.fallback is not None:
            fallback = log.fallback
            for j, default in zip(batch, lookup.fallback):
                fallback[j] = default
        if lookup.duration_s > 0:
            self.env.timeout(lookup.duration_s).callbacks.append(partial(self._looked_up, batch, batch_id, lookup))
        else:
            self._looked_up(batch, batch_id, lookup, None)

    def _looked_up(self, batch: list[int], batch_id: int, lookup: BatchLookup, _event: simpy.Event | None) -> None:
        """The round trip is back: its rows enter the cache; a request whose lookup failed
        (fallback=error) is answered with its error now, and the model runs the rest."""
        now = self.env._now
        self.features.done(lookup, now)  # type: ignore[union-attr]
        if lookup.failed is None or not any(lookup.failed):
            self._serve(batch, batch_id, len(batch), now, looked_up=True)
            return
        failed = [j for j, bad in zip(batch, lookup.failed) if bad]
        run = [j for j, bad in zip(batch, lookup.failed) if not bad]
        log = self.log
        for j in failed:
            done = now + log.after_s[j]
            if done - log.arrival[j] <= self.timeout_s:
                log.finish[j] = done
                log.status[j] = ERROR
            else:
                log.finish[j] = log.arrival[j] + self.timeout_s
                log.status[j] = TIMEOUT
        self.on_release(self.index, failed)
        if run:
            self._serve(run, batch_id, len(batch), now, looked_up=True)
            return
        queue = self.queue  # nothing for the model: the instance is free again
        queue.free += 1
        if queue.waiting or queue.expired:
            self.dispatch(now)

    def _serve(self, batch: list[int], batch_id: int, size: int, now: float, looked_up: bool = False) -> None:
        """Hold a batch on its device (or a shared core) for its service time. A replica
        measures service as the wall time from dispatch, so time spent waiting for a shared
        core counts as service. `size` is the batch as formed (the model runs `batch`, which
        a failed feature lookup may have made smaller); after a lookup, the batch's start is
        the lookup's, already written."""
        service_s = self.service.draw(len(batch))
        if self.version_factor is not None:
            service_s *= self.version_factor(self.index)
        if self.slowdown != 1.0:
            service_s *= self.slowdown
        log = self.log
        start, bsz, bid, svc = log.start, log.batch_size, log.batch_id, log.service_s
        cores = self.cores
        if cores.count:
            if not looked_up:
                for j in batch:
                    start[j] = now
                    bsz[j] = size
                    bid[j] = batch_id
            if not cores.free:
                cores.waiting.append((self, batch, service_s, now))
                return
            cores.free -= 1
            self._run(batch, service_s, now, now)
            return
        if looked_up:
            for j in batch:
                svc[j] = service_s
        else:
            for j in batch:
                start[j] = now
                bsz[j] = size
                bid[j] = batch_id
                svc[j] = service_s
        if self.cpu is not None:
            self.cpu(service_s, partial(self._on_complete, batch, service_s, None))
            return
        if self.lane is not None:  # the instance's thread wakes up, and takes its process's GIL
            self.env.timeout(self.lane.handoff_s).callbacks.append(
                lambda _e: self.lane.host.run(self.lane.process, 0.0, partial(self._on_device, batch, service_s), wakes=False))
            return
        self.env.timeout(service_s).callbacks.append(partial(self._on_complete, batch, service_s))

    def _on_device(self, batch: list[int], service_s: float) -> None:
        """On the modelled host: the instance's thread has the batch: the device starts now,
        and the replica's queue time runs to here, as the real replica measures it (with a
        feature store, the batch started with its lookup, before the hand-off)."""
        start = self.log.start
        now = self.env._now
        if self.features is None:
            for j in batch:
                start[j] = now
        self.env.timeout(service_s).callbacks.append(partial(self._on_complete, batch, service_s))

    def _run(self, batch: list[int], service_s: float, dispatched: float, now: float) -> None:
        """A batch that waited for a shared core starts on it."""
        wall_s = now + service_s - dispatched
        svc = self.log.service_s
        for j in batch:
            svc[j] = wall_s
        self.env.timeout(service_s).callbacks.append(partial(self._on_complete, batch, wall_s))

    def _on_complete(self, batch: list[int], service_s: float, _event: simpy.Event | None) -> None:
        now = self.env._now
        cores = self.cores
        if cores.count:
            if cores.waiting:
                waiting_rep, waiting_batch, waiting_s, dispatched = cores.waiting.popleft()
                waiting_rep._run(waiting_batch, waiting_s, dispatched, now)
            else:
                cores.free += 1
        if self.lane is not None:
            self.lane.run(self.lane.answer_s(len(batch)), partial(self._answered, batch, service_s))
            return
        self._answered(batch, service_s)

    def _answered(self, batch: list[int], service_s: float) -> None:
        """The server has the batch's answers: they leave, and its instance takes the next."""
        now = self.env._now
        log = self.log
        arrival, finish, status, after = log.arrival, log.finish, log.status, log.after_s
        deadline = self.timeout_s
        if deadline == math.inf and self.constant_after_s is not None:  # the common case, kept tight
            done = now + self.constant_after_s
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
        if self.judge is not None:
            self.judge(self.index, batch, now)
            if self.features is not None:  # a default row's answer is never judged
                correct, fallback = log.correct, log.fallback
                for j in batch:
                    if fallback[j]:
                        correct[j] = -1
        self.on_release(self.index, batch)
        queue = self.queue
        queue.free += 1  # what queue.finish() does, without its check: this batch was running
        self.busy_s += service_s
        if queue.waiting or queue.expired:
            self.dispatch(now)
