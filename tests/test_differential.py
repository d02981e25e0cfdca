"""Differential: the real server's batcher and the twin make the same decisions on one trace.

The project's central claim ("one engine, two clocks"): the serving decisions live once, in
`sim.policy`, and the twin (SimPy) and the real server (asyncio) only move time around them. So
one fixed trace of arrivals at one replica, with the same deadlines and the same service times,
must give the same batches (members in order, size, start time), the same shed requests and the
same requests expired in the queue, in both worlds.

The server side is the real `AsyncBatcher`, in process on a real asyncio loop (its futures are
real), driven by `FakeWorld`: a tiny discrete-event loop that owns the clock, plays the batcher's
timer and model instances (a batch of B holds its instance for base_s + per_item_s * B), and
moves time to the next event. Ties are broken as the twin breaks them: an event due at or before
an arrival happens first, events due at the same time in the order they were scheduled.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.server.backends import Backend
from real.server.batcher import AsyncBatcher, Batch, Clock, DeadlineExceeded, Done, Pending, QueueFull
from real.server.protocol import FEATURES, InferRequest, TensorSpec
from sim.config import ArrivalConfig, BatchingConfig, ScenarioConfig, ServiceConfig, validate
from sim.policy.batching import DynamicBatcher
from sim.records import SHED, TIMEOUT
from sim.twin import Twin

START_TOLERANCE_S = 1e-9


@dataclass(frozen=True)
class Case:
    """One replica, one trace: what both worlds are given."""

    arrivals: tuple[float, ...]
    max_batch: int = 4
    delay_s: float = 0.0
    concurrency: int = 1
    max_queue: int = 0  # 0: unbounded
    timeout_s: float = 0.0  # every request's deadline is arrival + timeout_s; 0: none
    base_s: float = 0.004
    per_item_s: float = 0.001

    def service_s(self, rows: int) -> float:
        """A batch's time, computed exactly as the twin's deterministic ServiceTime does."""
        return (self.base_s + self.per_item_s * rows) * 1.0


@dataclass(frozen=True)
class BatchRecord:
    batch_id: int
    members: tuple[int, ...]  # request ids, in batch order
    size: int
    start_s: float


@dataclass
class Outcome:
    """What one world decided, per request id."""

    batches: list[BatchRecord] = field(default_factory=list)  # by batch id
    shed: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)  # dropped from the queue by their deadline


def assert_same(server: Outcome, twin: Outcome) -> None:
    assert server.shed == twin.shed, "shed"
    assert server.expired == twin.expired, "expired in the queue"
    assert [(b.batch_id, b.members, b.size) for b in server.batches] == [(b.batch_id, b.members, b.size) for b in twin.batches]
    for s, t in zip(server.batches, twin.batches):
        assert abs(s.start_s - t.start_s) <= START_TOLERANCE_S, f"batch {s.batch_id} starts at {s.start_s} vs {t.start_s}"


# -- the twin -----------------------------------------------------------------------------------


def twin_config(case: Case, trace: Path) -> ScenarioConfig:
    cfg = ScenarioConfig(
        seed=0,
        duration_s=max(case.arrivals) + 1.0,
        warmup_s=0.0,
        replicas=1,
        concurrency=case.concurrency,
        timeout_s=case.timeout_s,
        arrival=ArrivalConfig(kind="trace", path=str(trace)),
        service=ServiceConfig(kind="deterministic", base_s=case.base_s, per_item_s=case.per_item_s),
        batching=BatchingConfig(max_batch_size=case.max_batch, max_queue_delay_s=case.delay_s, max_queue_size=case.max_queue),
    )
    validate(cfg)
    assert cfg.gateway.hop_s == 0 and cfg.overhead.before_s == 0 and cfg.overhead.after_s == 0  # arrival = at the queue
    return cfg


def twin_outcome(case: Case, tmp_dir: Path) -> tuple[Outcome, list[float]]:
    """The twin's decisions, and the arrival times it read (the server is fed those very floats)."""
    trace = tmp_dir / "trace.csv"
    trace.write_text("arrival_s\n" + "".join(f"{t!r}\n" for t in case.arrivals))
    cols = Twin(twin_config(case, trace)).run().columns
    arrivals = [float(t) for t in cols["arrival_s"]]
    assert np.allclose(arrivals, case.arrivals, rtol=0, atol=1e-12)
    batch_id, status = cols["batch_id"].tolist(), cols["status"].tolist()
    out = Outcome()
    members: dict[int, list[int]] = {}
    for i in cols["request_id"].tolist():
        if batch_id[i] >= 0:
            members.setdefault(batch_id[i], []).append(i)
        elif status[i] == SHED:
            out.shed.append(i)
        elif status[i] == TIMEOUT:  # never batched: expired in the queue (a late finish keeps its batch_id)
            out.expired.append(i)
    for b, ids in sorted(members.items()):
        first = ids[0]  # a batch's members are FIFO, so in request-id order
        out.batches.append(BatchRecord(b, tuple(ids), int(cols["batch_size"][first]), float(cols["start_s"][first])))
    return out, arrivals


# -- the real server's batcher on a fake clock ----------------------------------------------------


class FakeBackend:
    """The model is irrelevant here: `plan` is the batch's device time, which FakeWorld keeps
    the instance busy for."""

    platform = "differential"
    outputs = {"label": TensorSpec("label", "INT64", (-1,))}

    def __init__(self, service_s: Callable[[int], float]) -> None:
        self.service_s = service_s

    def load(self) -> None:
        pass

    def plan(self, batch_size: int) -> float:
        return self.service_s(batch_size)

    def run(self, x: np.ndarray, planned: float) -> dict[str, np.ndarray]:
        return {"label": np.zeros(x.shape[0], dtype=np.int64)}


class FakeWorld:
    """A discrete-event loop: the batcher's clock, its timer and its model instances."""

    def __init__(self) -> None:
        self.now = 0.0
        self.batches: list[BatchRecord] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, self._seq, action))
        self._seq += 1

    def run_until(self, t: float) -> None:
        """Every event due at or before t, in time then scheduling order; the clock ends at t."""
        while self._events and self._events[0][0] <= t:
            self.now, _, action = heapq.heappop(self._events)
            action()
        if t != math.inf:
            self.now = t

    # the batcher's factories

    def timer(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], clock: Clock) -> FakeTimer:
        return FakeTimer(self, callback)

    def instances(self, backend: Backend, count: int, loop: asyncio.AbstractEventLoop, done: Done, clock: Clock) -> FakeInstances:
        return FakeInstances(self, backend, done)


class FakeTimer:
    """PreciseTimer's contract on the fake clock: one alarm, at the earliest armed time."""

    def __init__(self, world: FakeWorld, callback: Callable[[], None]) -> None:
        self._world = world
        self._callback = callback
        self._at = math.inf

    def arm(self, at_s: float) -> None:
        if at_s < self._at:
            self._at = at_s
            self._world.at(at_s, self._ring)

    def _ring(self) -> None:
        if self._world.now >= self._at:  # else superseded by an earlier alarm that already rang
            self._at = math.inf
            self._callback()

    def stop(self) -> None:
        self._at = math.inf


class FakeInstances:
    """Model instances on the fake clock: a batch ends `plan(rows)` after it starts."""

    def __init__(self, world: FakeWorld, backend: Backend, done: Done) -> None:
        self._world = world
        self._backend = backend
        self._done = done

    def submit(self, batch_id: int, batch: Batch, x: np.ndarray, planned: float) -> None:
        world = self._world
        start = world.now
        end = start + planned
        members = tuple(int(p.req.id or -1) for p in batch)
        world.batches.append(BatchRecord(batch_id, members, sum(p.req.n for p in batch), start))
        out = self._backend.run(x, planned)
        world.at(end, lambda: self._done(batch_id, batch, out, None, start, end))

    def stop(self) -> None:
        pass


def request(i: int, timeout_s: float) -> InferRequest:
    return InferRequest(np.zeros((1, FEATURES), dtype=np.float32), id=str(i), timeout_s=timeout_s if timeout_s > 0 else math.inf)


async def drive(case: Case, arrivals: list[float]) -> Outcome:
    world = FakeWorld()
    batcher = AsyncBatcher(
        DynamicBatcher(case.max_batch, case.delay_s),
        FakeBackend(case.service_s),
        instances=case.concurrency,
        max_queue_size=case.max_queue,
        clock=world.clock,
        timer=world.timer,
        run_on=world.instances,
    )
    batcher.start()
    out = Outcome()
    pending: dict[int, Pending] = {}
    for i, t in enumerate(arrivals):
        world.run_until(t)
        try:
            pending[i] = batcher.enqueue(request(i, case.timeout_s), received_s=t)
        except QueueFull:
            out.shed.append(i)
    world.run_until(math.inf)
    batcher.stop()
    for i, p in pending.items():
        assert p.future.done(), f"request {i} never answered"
        if isinstance(p.future.exception(), DeadlineExceeded):
            out.expired.append(i)
            continue
        result = p.future.result()
        record = world.batches[result.batch_id]
        assert i in record.members and result.batch_size == record.size  # each answer names its batch
    out.batches = world.batches
    return out


def server_outcome(case: Case, arrivals: list[float]) -> Outcome:
    return asyncio.run(drive(case, arrivals))


def check(case: Case, tmp_dir: Path) -> tuple[Outcome, Outcome]:
    twin, arrivals = twin_outcome(case, tmp_dir)
    server = server_outcome(case, arrivals)
    assert_same(server, twin)
    return server, twin


# -- fixed traces ---------------------------------------------------------------------------------


def spaced(n: int, gap_s: float, start_s: float = 0.0) -> tuple[float, ...]:
    return tuple(round(start_s + k * gap_s, 9) for k in range(n))


def bursts(n_bursts: int, size: int, every_s: float, spread_s: float = 0.0001) -> tuple[float, ...]:
    return tuple(sorted(round(b * every_s + k * spread_s, 9) for b in range(n_bursts) for k in range(size)))


CASES = {
    # requests far apart: each waits out the delay alone
    "light_delay": Case(spaced(20, 0.0173), max_batch=4, delay_s=0.0023),
    "light_no_delay": Case(spaced(20, 0.0173), max_batch=4, delay_s=0.0),
    # bursts of 10 within 1 ms: full batches of 4 at once, the rest behind them
    "bursts_fill_batches": Case(bursts(5, 10, 0.05), max_batch=4, delay_s=0.0051),
    "bursts_no_delay": Case(bursts(5, 10, 0.05), max_batch=4, delay_s=0.0),
    # arrivals every 0.7 ms against ~3 ms per batch of 2: a bounded queue sheds
    "overload_sheds": Case(spaced(60, 0.0007), max_batch=2, delay_s=0.0, max_queue=3, base_s=0.002, per_item_s=0.0005),
    "overload_sheds_delay": Case(spaced(60, 0.0007), max_batch=3, delay_s=0.0013, max_queue=5, base_s=0.002, per_item_s=0.0005),
    # a short deadline under overload: requests expire while they wait
    "deadlines_expire": Case(spaced(40, 0.0011), max_batch=2, delay_s=0.0, timeout_s=0.0062),
    "deadlines_expire_delay": Case(bursts(4, 9, 0.03), max_batch=3, delay_s=0.0021, timeout_s=0.0093),
    # two instances share the queue
    "two_instances": Case(spaced(50, 0.0009), max_batch=3, delay_s=0.0017, concurrency=2),
    "two_instances_no_delay": Case(bursts(6, 7, 0.02), max_batch=2, delay_s=0.0, concurrency=2),
    # requests expire while the one instance is busy: the slots they held in the bounded queue
    # are free again for the arrival at 7 ms (whenever the queue notices they expired)
    "expired_free_their_slots": Case((0.0, 0.0001, 0.0002, 0.0065, 0.007, 0.0071), max_batch=1, delay_s=0.0, max_queue=3,
                                     timeout_s=0.006, base_s=0.01, per_item_s=0.0),
    # everything at once: bounded queue, deadlines, two instances, batching delay
    "overload_deadlines_bounded": Case(spaced(80, 0.0004), max_batch=3, delay_s=0.0011, concurrency=2, max_queue=6,
                                       timeout_s=0.0041, base_s=0.003, per_item_s=0.0008),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_server_and_twin_decide_the_same(name: str, tmp_path: Path) -> None:
    server, _ = check(CASES[name], tmp_path)
    assert server.batches, "every trace runs some batches"


def test_the_traces_exercise_what_they_are_named_for(tmp_path: Path) -> None:
    """A differential test that never sheds, expires or fills a batch proves little about those."""
    outcome = {name: server_outcome(case, list(case.arrivals)) for name, case in CASES.items()}
    assert all(b.size == 1 for b in outcome["light_delay"].batches)
    assert max(b.size for b in outcome["bursts_fill_batches"].batches) == 4
    assert outcome["overload_sheds"].shed and outcome["overload_sheds_delay"].shed
    assert outcome["deadlines_expire"].expired and outcome["deadlines_expire_delay"].expired
    assert outcome["overload_deadlines_bounded"].shed and outcome["overload_deadlines_bounded"].expired
    assert outcome["expired_free_their_slots"].expired == [1, 2, 4, 5] and not outcome["expired_free_their_slots"].shed
    two = outcome["two_instances"].batches
    assert any(b.start_s < a.start_s + CASES["two_instances"].service_s(a.size) for a, b in zip(two, two[1:])), "overlap"


# -- random traces --------------------------------------------------------------------------------

# gaps in whole microseconds: 0 (simultaneous), short (overload: the queue fills, deadlines pass) or long (idle)
gaps = st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 12]).flatmap(lambda ms: st.integers(ms * 500, ms * 1000)).map(lambda us: us / 1e6),
                min_size=1, max_size=40)


@settings(max_examples=200, database=None, derandomize=True, deadline=None)
@given(
    gaps=gaps,
    max_batch=st.integers(1, 5),
    delay_s=st.sampled_from([0.0, 0.0013, 0.0041]),
    concurrency=st.integers(1, 3),
    max_queue=st.sampled_from([0, 1, 2, 4, 7]),
    deadline_in_batches=st.sampled_from([0.0, 0.45, 0.9, 1.7, 4.0]),  # timeout_s / base_s; 0: no deadline
    base_s=st.sampled_from([0.0021, 0.0047, 0.0103]),
    per_item_s=st.sampled_from([0.0, 0.00073]),
)
def test_random_traces(gaps: list[float], max_batch: int, delay_s: float, concurrency: int, max_queue: int,
                       deadline_in_batches: float, base_s: float, per_item_s: float, tmp_path_factory: pytest.TempPathFactory) -> None:
    arrivals = tuple(float(t) for t in np.round(np.cumsum(gaps), 6))
    case = Case(arrivals, max_batch, delay_s, concurrency, max_queue, deadline_in_batches * base_s, base_s, per_item_s)
    check(case, tmp_path_factory.mktemp("trace"))
