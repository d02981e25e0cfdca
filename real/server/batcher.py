"""The replica's dynamic batcher: the twin's `DynamicBatcher.decide` driven from asyncio.

The rule itself lives in `sim.policy.batching` and is never restated here; this module only
owns the queue, the model instances (`concurrency` threads taking batches from the one queue,
as Triton's instance group) and the clocks. Like the twin's `_try_dispatch`, `_pump` is a plain
function called whenever something changes (an arrival, an instance freed, the delay timer),
rather than a long-lived task, so a dispatch costs no extra event-loop wake-up.

Batch size counts rows, as in Triton: a request of n rows fills n slots of `max_batch_size`;
`max_queue_size` counts requests.

Every dispatched batch gets an id from a per-replica counter, handed back with each member's
result: the client's only reliable way to tell which requests shared a batch (two batches can
report the same device time, so the timings alone cannot say).

Timers: asyncio/uvloop round timers to ~1 ms, which is a 20% error on a 5 ms max_queue_delay.
The delay timer and the emulated device time therefore run on threads that sleep with the
kernel's ns-resolution clock and hand back with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from real.server.backends import Backend
from real.server.protocol import InferRequest, InferResult
from sim.policy.batching import Dispatch, DynamicBatcher

clock = time.perf_counter  # the one server clock: monotonic, ns resolution


class QueueFull(Exception):
    """The replica's queue holds max_queue_size requests: shed at once (HTTP 503)."""


class DeadlineExceeded(Exception):
    """A request's parameters.timeout ran out while it waited in the queue."""


class BackendFailed(Exception):
    """The model raised on a batch; every request of that batch fails."""


@dataclass(slots=True, eq=False)
class Pending:
    req: InferRequest
    enqueued_s: float
    deadline_s: float
    future: asyncio.Future[InferResult]


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

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
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
                delay = self._at - clock()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self._at = math.inf
                try:
                    self._loop.call_soon_threadsafe(self._callback)
                except RuntimeError:  # loop closed during shutdown
                    return


def run_batch(backend: Backend, x: np.ndarray, planned: float) -> tuple[dict[str, np.ndarray] | None, BaseException | None, float, float]:
    """(outputs, error, start, end) of one batch; a model failure fails its batch, never the replica."""
    start = clock()
    try:
        return backend.run(x, planned), None, start, clock()
    except Exception as exc:
        return None, exc, start, clock()


class _Instance:
    """One model instance: a thread that runs one batch at a time."""

    def __init__(self, index: int, backend: Backend, loop: asyncio.AbstractEventLoop, done: Callable[..., None]) -> None:
        self.index = index
        self._backend = backend
        self._loop = loop
        self._done = done
        self._jobs: queue.SimpleQueue[tuple[int, list[Pending], np.ndarray, float] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"instance-{index}", daemon=True)
        self._thread.start()

    def submit(self, batch_id: int, batch: list[Pending], x: np.ndarray, planned: float) -> None:
        self._jobs.put((batch_id, batch, x, planned))

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch_id, batch, x, planned = job
            try:
                self._loop.call_soon_threadsafe(self._done, self, batch_id, batch, *run_batch(self._backend, x, planned))
            except RuntimeError:  # loop closed during shutdown
                return


class _InlineInstance:
    """A model instance that computes on the event loop: for models that take microseconds (the
    digits classifiers), a thread hop and its cross-thread wake-up cost more than the model.
    The result is delivered on the next loop turn, as a thread's would be, so _pump never
    recurses into itself."""

    def __init__(self, index: int, backend: Backend, loop: asyncio.AbstractEventLoop, done: Callable[..., None]) -> None:
        self.index = index
        self._backend = backend
        self._loop = loop
        self._done = done

    def submit(self, batch_id: int, batch: list[Pending], x: np.ndarray, planned: float) -> None:
        self._loop.call_soon(self._done, self, batch_id, batch, *run_batch(self._backend, x, planned))

    def stop(self) -> None:
        pass

    def join(self, timeout: float) -> None:
        pass


class AsyncBatcher:
    def __init__(
        self,
        policy: DynamicBatcher,
        backend: Backend,
        instances: int,
        max_queue_size: int = 0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.n_instances = instances
        self.max_queue_size = max_queue_size
        self.stats = BatchStats()
        self.batches = 0  # batches dispatched so far: the next batch's id
        self._on_batch = on_batch
        self._queue: deque[Pending] = deque()
        self._rows = 0
        self._with_deadline = 0  # queued requests carrying a timeout: skip the purge scan when 0
        self._free: list[_Instance] = []
        self._instances: list[_Instance] = []
        self._timer: PreciseTimer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the instance and timer threads; call from the event loop that will submit."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        kind = _InlineInstance if getattr(self.backend, "inline", False) else _Instance
        self._instances = [kind(i, self.backend, loop, self._on_done) for i in range(self.n_instances)]
        self._free = list(reversed(self._instances))
        self._timer = PreciseTimer(loop, self._pump)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        for inst in self._instances:
            inst.stop()
        for inst in self._instances:
            inst.join(timeout=2.0)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(BackendFailed("server shutting down"))
        self._rows = 0

    @property
    def queue_len(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self.n_instances - len(self._free)

    # -- requests ----------------------------------------------------------------------------

    async def submit(self, req: InferRequest, received_s: float) -> InferResult:
        """Queue one request and wait for its slice of a batch.

        Raises QueueFull (shed), DeadlineExceeded (timed out while queued) or BackendFailed.
        """
        if self.max_queue_size and len(self._queue) >= self.max_queue_size:
            raise QueueFull()
        assert self._loop is not None, "AsyncBatcher.submit before start"
        fut: asyncio.Future[InferResult] = self._loop.create_future()
        deadline = received_s + req.timeout_s
        self._queue.append(Pending(req, clock(), deadline, fut))
        self._rows += req.n
        if deadline != math.inf:
            self._with_deadline += 1
        self._pump()
        return await fut

    # -- dispatch ----------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        """Drop queued requests that expired or whose client went away (at dispatch, as Triton)."""
        keep: deque[Pending] = deque()
        for p in self._queue:
            if p.future.done():
                self._forget(p)
            elif p.deadline_s <= now:
                self._forget(p)
                p.future.set_exception(DeadlineExceeded())
            else:
                keep.append(p)
        self._queue = keep

    def _forget(self, p: Pending) -> None:
        self._rows -= p.req.n
        if p.deadline_s != math.inf:
            self._with_deadline -= 1

    def _pump(self) -> None:
        queue_ = self._queue
        while self._free and queue_:
            now = clock()
            if self._with_deadline or queue_[0].future.done():
                self._purge(now)
                queue_ = self._queue
                if not queue_:
                    return
            decision = self.policy.decide(self._rows, queue_[0].enqueued_s, now)
            if decision.__class__ is not Dispatch:
                assert self._timer is not None
                self._timer.arm(decision.until_s)  # type: ignore[union-attr]
                return
            room = decision.size  # type: ignore[union-attr]
            batch: list[Pending] = []
            rows = 0
            while queue_ and (not batch or rows + queue_[0].req.n <= room):
                p = queue_.popleft()
                self._forget(p)
                if p.future.done():
                    continue
                batch.append(p)
                rows += p.req.n
            if not batch:
                continue
            x = batch[0].req.rows if len(batch) == 1 else np.concatenate([p.req.rows for p in batch])
            inst = self._free.pop()
            batch_id = self.batches
            self.batches = batch_id + 1
            inst.submit(batch_id, batch, x, self.backend.plan(rows))

    def _on_done(
        self,
        inst: _Instance,
        batch_id: int,
        batch: list[Pending],
        out: dict[str, np.ndarray] | None,
        err: BaseException | None,
        start: float,
        end: float,
    ) -> None:
        self._free.append(inst)
        size = sum(p.req.n for p in batch)
        service_s = end - start
        ns = int(service_s * 1e9)
        st = self.stats
        st.execution_count += 1
        st.last_inference_ms = int(time.time() * 1000)
        if err is not None or out is None:
            st.fail += len(batch)
            st.fail_ns += ns * len(batch)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BackendFailed(f"model failed: {err!r}"))
        else:
            entry = st.by_batch.setdefault(size, [0, 0])
            entry[0] += 1
            entry[1] += ns
            st.inference_count += size
            offset = 0
            for p in batch:
                n = p.req.n
                queue_s = start - p.enqueued_s
                st.success += 1
                st.success_ns += ns
                st.queue_count += 1
                st.queue_ns += int(queue_s * 1e9)
                if not p.future.done():
                    sliced = {k: v[offset : offset + n] for k, v in out.items()}
                    p.future.set_result(InferResult(sliced, queue_s, service_s, size, batch_id))
                offset += n
            if self._on_batch is not None:
                self._on_batch(size, service_s)
        self._pump()
