"""The replica's dynamic batcher: the twin's `ReplicaQueue` driven from asyncio.

Every serving decision between a request reaching the replica and its batch starting on a model
instance (shed at max_queue_size, drop requests whose deadline passed, which requests form a
batch and when, how many batches run at once) is `sim.policy.replica_queue.ReplicaQueue`'s, the
very object the twin drives from SimPy. This module only moves time and bytes around it: it
reads the clock, arms a timer for the batching delay, hands batches to model instances and
answers each request's future. Like the twin, `_pump` is a plain function called whenever
something changes (an arrival, an instance freed, the delay timer), rather than a long-lived
task, so a dispatch costs no extra event-loop wake-up.

Batch size counts rows, as in Triton: a request of n rows fills n slots of `max_batch_size`;
`max_queue_size` counts requests.

With a feature store (features.store != none), a batch holding entity requests first looks their
rows up on the instance it was given (real.server.features: the cache, then one round trip for
the misses, the instance held meanwhile; an all-hit batch does it inline, with no task), then
runs the model on them; its start is the lookup's, `service_s` the model's time after it.

Every dispatched batch gets an id from a per-replica counter, handed back with each member's
result: the client's only reliable way to tell which requests shared a batch (two batches can
report the same device time, so the timings alone cannot say).

Time, the timer and the instances are injected (`clock`, `timer`, `instances`), so a test can
run the batcher on a fake clock with a fake device, in process and deterministically
(tests/test_differential.py). The defaults are the production ones: asyncio/uvloop round timers
to ~1 ms, a 20% error on a 5 ms max_queue_delay, so the delay timer and the emulated device time
run on threads that sleep with the kernel's ns-resolution clock and hand back with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from real.server.backends import Backend
from real.server.features import BatchLookup, FeatureStage
from real.server.protocol import InferRequest, InferResult
from sim.policy.batching import DynamicBatcher
from sim.policy.features import FeatureRow, LookupPlan
from sim.policy.replica_queue import ReplicaQueue

Clock = Callable[[], float]
clock: Clock = time.perf_counter  # the one server clock: monotonic, ns resolution


class QueueFull(Exception):
    """The replica's queue holds max_queue_size requests: shed at once (HTTP 503)."""


class DeadlineExceeded(Exception):
    """A request's parameters.timeout ran out while it waited in the queue."""


class BackendFailed(Exception):
    """The model raised on a batch; every request of that batch fails."""


class FeatureLookupFailed(Exception):
    """The request's entity has no row (404) or the store did not answer in time (503), and
    features.fallback=error: the request fails with that status, never a 500."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # missing | timeout


@dataclass(slots=True, eq=False)
class Pending:
    """A queued request: the `ReplicaQueue`'s item (compared by identity)."""

    req: InferRequest
    enqueued_s: float
    future: asyncio.Future[InferResult]
    # the feature lookup of its batch (features on, an entity request): when the batch's lookup
    # began (its start on the instance), how long it took, and what this request got
    lookup_start_s: float = math.nan
    feature: dict[str, float | bool] | None = None


Batch = list[Pending]
# (batch_id, batch, outputs or None, error or None, start_s, end_s): a batch finished on an instance
Done = Callable[[int, Batch, dict[str, np.ndarray] | None, BaseException | None, float, float], None]


class Timer(Protocol):
    """A one-shot alarm: after `arm(at_s)` the callback runs on the loop once the clock reaches
    the earliest armed time (a later arm never postpones an earlier one)."""

    def arm(self, at_s: float) -> None: ...

    def stop(self) -> None: ...


class Instances(Protocol):
    """Where dispatched batches run. The queue never has more batches out than instances, so
    `submit` always finds one idle; each finished batch is reported to `done` on the loop."""

    def submit(self, batch_id: int, batch: Batch, x: np.ndarray, planned: float) -> None: ...

    def stop(self) -> None: ...


TimerFactory = Callable[[asyncio.AbstractEventLoop, Callable[[], None], Clock], Timer]
InstancesFactory = Callable[[Backend, int, asyncio.AbstractEventLoop, Done, Clock], Instances]


@dataclass
class BatchStats:
    """Triton-style statistics: per batch size, how many batches and their compute time."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    last_inference_ms: int = 0
    by_batch: dict[int, list[int]] = field(default_factory=dict)  # size -> [count, compute ns]


class PreciseTimer:
    """A one-shot alarm thread: `arm(at_s)` calls `callback` on the loop at ~`at_s`.

    Condition.wait sleeps on the monotonic clock with ns resolution, so it fires ~0.1 ms late at
    worst instead of the event loop's ~1 ms rounding.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], clock: Clock = clock) -> None:
        self._loop = loop
        self._callback = callback
        self._clock = clock
        self._cond = threading.Condition()
        self._at = math.inf
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="batch-timer", daemon=True)
        self._thread.start()

    def arm(self, at_s: float) -> None:
        with self._cond:
            if at_s < self._at:
                self._at = at_s
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._at == math.inf:
                    self._cond.wait()
                    continue
                delay = self._at - self._clock()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self._at = math.inf
                try:
                    self._loop.call_soon_threadsafe(self._callback)
                except RuntimeError:  # loop closed during shutdown
                    return


def run_batch(backend: Backend, x: np.ndarray, planned: float, clock: Clock = clock) -> tuple[dict[str, np.ndarray] | None, BaseException | None, float, float]:
    """(outputs, error, start, end) of one batch; a model failure fails its batch, never the replica."""
    start = clock()
    try:
        return backend.run(x, planned), None, start, clock()
    except Exception as exc:
        return None, exc, start, clock()


class InstanceThreads:
    """`count` model instances as threads taking batches from one job queue (Triton's instance
    group): any idle thread takes the next batch, so no per-instance bookkeeping is needed."""

    def __init__(self, backend: Backend, count: int, loop: asyncio.AbstractEventLoop, done: Done, clock: Clock = clock) -> None:
        self._backend = backend
        self._loop = loop
        self._done = done
        self._clock = clock
        self._jobs: queue.SimpleQueue[tuple[int, Batch, np.ndarray, float] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"instance-{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, batch_id: int, batch: Batch, x: np.ndarray, planned: float) -> None:
        self._jobs.put((batch_id, batch, x, planned))

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=2.0)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch_id, batch, x, planned = job
            try:
                self._loop.call_soon_threadsafe(self._done, batch_id, batch, *run_batch(self._backend, x, planned, self._clock))
            except RuntimeError:  # loop closed during shutdown
                return


class InlineInstances:
    """Model instances that compute on the event loop: for models that take microseconds (the
    digits classifiers), a thread hop and its cross-thread wake-up cost more than the model.
    The result is delivered on the next loop turn, as a thread's would be, so _pump never
    recurses into itself."""

    def __init__(self, backend: Backend, count: int, loop: asyncio.AbstractEventLoop, done: Done, clock: Clock = clock) -> None:
        self._backend = backend
        self._loop = loop
        self._done = done
        self._clock = clock

    def submit(self, batch_id: int, batch: Batch, x: np.ndarray, planned: float) -> None:
        self._loop.call_soon(self._done, batch_id, batch, *run_batch(self._backend, x, planned, self._clock))

    def stop(self) -> None:
        pass


def start_instances(backend: Backend, count: int, loop: asyncio.AbstractEventLoop, done: Done, clock: Clock = clock) -> Instances:
    """Inline for backends that say so (`inline = True`), else one thread per instance."""
    kind = InlineInstances if getattr(backend, "inline", False) else InstanceThreads
    return kind(backend, count, loop, done, clock)


class AsyncBatcher:
    def __init__(
        self,
        policy: DynamicBatcher,
        backend: Backend,
        instances: int,
        max_queue_size: int = 0,
        on_batch: Callable[[int, float], None] | None = None,
        *,
        clock: Clock = clock,
        timer: TimerFactory = PreciseTimer,
        run_on: InstancesFactory = start_instances,
        features: FeatureStage | None = None,
    ) -> None:
        self.queue: ReplicaQueue[Pending] = ReplicaQueue(policy, instances, max_queue_size)
        self.features = features  # the lookup stage (features.store != none), run per batch on the instance
        self._lookups: set[asyncio.Task[None]] = set()  # batches looking their rows up (kept referenced)
        self._formed: dict[int, int] = {}  # batch id -> rows as formed, of a batch a failed lookup made smaller
        self.backend = backend
        self.clock = clock
        self.stats = BatchStats()
        self.batches = 0  # batches dispatched so far: the next batch's id
        self._on_batch = on_batch
        self._make_timer = timer
        self._make_instances = run_on
        self._timer: Timer | None = None
        self._instances: Instances | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the instances and the timer; call from the event loop that will submit."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._instances = self._make_instances(self.backend, self.queue.instances, loop, self._on_done, self.clock)
        self._timer = self._make_timer(loop, self._pump, self.clock)

    def stop(self) -> None:
        """Stop timer and instances; requests still waiting fail (the server is going away)."""
        for task in list(self._lookups):
            task.cancel()
        if self._timer is not None:
            self._timer.stop()
        if self._instances is not None:
            self._instances.stop()
        self._answer_expired()
        for p in self.queue.drain():
            if not p.future.done():
                p.future.set_exception(BackendFailed("server shutting down"))

    @property
    def queue_len(self) -> int:
        return len(self.queue)

    @property
    def busy(self) -> int:
        return self.queue.busy

    # -- requests ----------------------------------------------------------------------------

    def enqueue(self, req: InferRequest, received_s: float) -> Pending:
        """Queue one request now; its future gets its slice of a batch.

        Raises QueueFull (shed); the future may fail with DeadlineExceeded (the deadline,
        received_s + req.timeout_s, passed while it waited) or BackendFailed.
        """
        assert self._loop is not None, "AsyncBatcher.enqueue before start"
        now = self.clock()
        pending = Pending(req, now, self._loop.create_future())
        if not self.queue.offer(pending, now, req.n, received_s + req.timeout_s):
            self._answer_expired()
            raise QueueFull()
        self._pump()
        return pending

    async def submit(self, req: InferRequest, received_s: float) -> InferResult:
        """Queue one request and wait for its slice of a batch (see `enqueue`).

        A client that goes away (this coroutine cancelled) takes its request out of the queue
        at once, rather than leaving it to be skipped when its batch forms: the queue then never
        counts a request nobody waits for, not against max_queue_size, not in the rows that
        decide a batch, and a batch is never formed around a hole (so the ReplicaQueue stays the
        only place a batch is decided, with the sizes it decided). `cancel` scans the queue,
        which is fine for an event that only comes with a cancelled handler (shutdown, a client
        that cancels); a request already in a batch runs, and its answer is dropped.
        """
        pending = self.enqueue(req, received_s)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self.queue.cancel(pending)
            raise

    # -- dispatch ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Ask the queue what to do now: start its batches, answer its expired requests, arm
        the timer for its batching delay."""
        q = self.queue
        for batch in q.dispatch(self.clock()):
            self._start_batch(batch)
        if q.expired:
            self._answer_expired()
        if q.wake_s != math.inf:
            assert self._timer is not None
            self._timer.arm(q.wake_s)

    def _answer_expired(self) -> None:
        for p in self.queue.take_expired():
            if not p.future.done():
                p.future.set_exception(DeadlineExceeded())

    def _start_batch(self, batch: Batch) -> None:
        batch_id = self.batches
        self.batches = batch_id + 1
        stage = self.features
        if stage is not None and any(p.req.entity_id is not None for p in batch):
            plan, start = stage.begin([p.req.entity_id for p in batch if p.req.entity_id is not None])  # type: ignore[misc]
            if not plan.fetch:  # all hits: no round trip, no task, the model runs at once
                self._looked_up(batch_id, batch, stage.finish(plan, [], start), start)
                return
            assert self._loop is not None
            task = self._loop.create_task(self._fetch_then_run(batch_id, batch, plan, start))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
            return
        self._run_batch(batch_id, batch)

    def _run_batch(self, batch_id: int, batch: Batch) -> None:
        rows = sum(p.req.n for p in batch)
        x = batch[0].req.rows if len(batch) == 1 else np.concatenate([p.req.rows for p in batch])
        assert self._instances is not None
        self._instances.submit(batch_id, batch, x, self.backend.plan(rows))

    async def _fetch_then_run(self, batch_id: int, batch: Batch, plan: LookupPlan[FeatureRow], start: float) -> None:
        """The batch's one round trip for its misses, on the instance the queue gave it (held
        meanwhile), then `_looked_up`."""
        stage = self.features
        assert stage is not None
        try:
            result = stage.finish(plan, await stage.fetch(plan), start)
        except BaseException as exc:  # a bug in the stage, or shutdown: fail the batch, free the instance
            self._on_done(batch_id, batch, None, exc, start, self.clock())
            if not isinstance(exc, Exception):
                raise
            return
        self._looked_up(batch_id, batch, result, start)

    def _looked_up(self, batch_id: int, batch: Batch, result: BatchLookup, start: float) -> None:
        """The batch's lookup is done (it began at `start`, the batch's start on the instance):
        the model runs on the rows it got. A request whose lookup failed (fallback=error) is
        answered with its failure and leaves the batch; if none is left, the instance is freed
        without running the model. Requests that carry their own input had no lookup."""
        looked = [p for p in batch if p.req.entity_id is not None]
        running: Batch = [p for p in batch if p.req.entity_id is None]
        for p, outcome, hit, reason in zip(looked, result.outcomes, result.hits, result.reasons):
            if outcome.row is None:
                failure = outcome.failure
                assert failure is not None
                if not p.future.done():
                    p.future.set_exception(FeatureLookupFailed(failure.status_code, failure.message, failure.reason))
                continue
            p.req.rows = outcome.row.features.reshape(1, -1)
            p.req.label = outcome.row.label  # judged by the table's label; a fallback row has none
            p.feature = {"feature_lookup_s": result.lookup_s, "feature_hit": hit, "feature_fallback": reason is not None}
            running.append(p)
        for p in batch:  # the batch started with its lookup, own-input requests of a mixed batch too
            p.lookup_start_s = start
        if not running:
            self.queue.finish()
            self._pump()
            return
        if len(running) < len(batch):  # its members still report the batch as formed, as the twin's do
            self._formed[batch_id] = sum(p.req.n for p in batch)
        self._run_batch(batch_id, running)

    def _on_done(
        self,
        batch_id: int,
        batch: Batch,
        out: dict[str, np.ndarray] | None,
        err: BaseException | None,
        start: float,
        end: float,
    ) -> None:
        self.queue.finish()
        service_s = end - start
        st = self.stats
        st.execution_count += 1
        st.last_inference_ms = int(time.time() * 1000)
        if err is not None or out is None:
            self._formed.pop(batch_id, None)
            self._fail_batch(batch, err, service_s)
        else:
            self._answer_batch(batch_id, batch, out, start, service_s)
        self._pump()

    def _fail_batch(self, batch: Batch, err: BaseException | None, service_s: float) -> None:
        st = self.stats
        ns = int(service_s * 1e9)
        st.fail += len(batch)
        st.fail_ns += ns * len(batch)
        for p in batch:
            if not p.future.done():
                p.future.set_exception(BackendFailed(f"model failed: {err!r}"))

    def _answer_batch(self, batch_id: int, batch: Batch, out: dict[str, np.ndarray], start: float, service_s: float) -> None:
        """Each member's slice of the outputs, and the Triton statistics of the batch. A batch
        that looked its rows up started when its lookup began: its members' queue time ends
        there, and `service_s` is the model's time after the lookup."""
        size = sum(p.req.n for p in batch)
        formed = self._formed.pop(batch_id, size) if self._formed else size
        ns = int(service_s * 1e9)
        st = self.stats
        entry = st.by_batch.setdefault(size, [0, 0])
        entry[0] += 1
        entry[1] += ns
        st.inference_count += size
        offset = 0
        for p in batch:
            n = p.req.n
            began = start if p.lookup_start_s != p.lookup_start_s else p.lookup_start_s  # NaN: no lookup
            queue_s = began - p.enqueued_s
            st.success += 1
            st.success_ns += ns
            st.queue_count += 1
            st.queue_ns += int(queue_s * 1e9)
            if not p.future.done():
                sliced = {k: v[offset : offset + n] for k, v in out.items()}
                result = InferResult(sliced, queue_s, service_s, formed, batch_id)
                if p.feature is not None:
                    result.extra = p.feature
                p.future.set_result(result)
            offset += n
        if self._on_batch is not None:
            self._on_batch(size, service_s)
