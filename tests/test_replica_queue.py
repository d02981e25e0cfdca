"""The replica queue shared by the twin and the server: admission, expiry, batching, instances."""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policy.batching import DynamicBatcher
from sim.policy.replica_queue import ReplicaQueue


def queue(max_batch: int = 4, delay_s: float = 0.01, instances: int = 1, max_queue: int = 0) -> ReplicaQueue[Any]:
    return ReplicaQueue(DynamicBatcher(max_batch, delay_s), instances, max_queue)


def test_a_full_queue_sheds_and_counts_requests_not_rows() -> None:
    q = queue(max_queue=2)
    assert q.offer("a", 0.0, rows=3) and q.offer("b", 0.0)
    assert not q.offer("c", 0.0)
    assert len(q) == 2 and q.rows == 4


def test_waits_for_the_delay_then_dispatches_what_waits() -> None:
    q = queue(max_batch=4, delay_s=0.01)
    q.offer("a", 1.0)
    q.offer("b", 1.004)
    assert q.dispatch(1.004) == [] and q.wake_s == 1.01
    assert q.dispatch(1.01) == [["a", "b"]]
    assert q.free == 0 and len(q) == 0


def test_a_full_batch_goes_at_once_and_never_splits_a_request() -> None:
    q = queue(max_batch=4, delay_s=1.0)
    q.offer("a", 0.0, rows=3)
    q.offer("b", 0.0, rows=2)
    assert q.dispatch(0.0) == [["a"]]  # 5 rows wait; "b" would overflow the batch of 4
    q.finish()
    assert q.dispatch(0.0) == [] and q.wake_s == 1.0


def test_an_expired_request_leaves_from_the_middle_of_the_queue() -> None:
    q = queue(max_batch=8, delay_s=0.01)
    q.offer("long", 0.0, deadline_s=10.0)
    q.offer("short", 0.0, deadline_s=0.005)
    q.offer("none", 0.0)
    assert q.dispatch(0.006) == [] and q.take_expired() == ["short"]
    assert q.dispatch(0.01) == [["long", "none"]]
    assert q.dispatch(20.0) == [] and q.take_expired() == []  # dispatched requests never expire


def test_instances_bound_concurrent_batches() -> None:
    q = queue(max_batch=1, delay_s=0.0, instances=2)
    for name in "abc":
        q.offer(name, 0.0)
    assert q.dispatch(0.0) == [["a"], ["b"]] and q.busy == 2
    q.finish()
    assert q.dispatch(0.1) == [["c"]]


def test_cancel_takes_a_waiting_request_out() -> None:
    q = queue(max_batch=2, delay_s=0.0)
    q.offer("a", 0.0)
    q.offer("b", 0.0)
    assert q.cancel("a") and not q.cancel("a")
    assert q.dispatch(0.0) == [["b"]]


events = st.lists(st.tuples(st.floats(0, 0.02), st.integers(1, 3), st.sampled_from([math.inf, 0.005, 0.03]),
                            st.booleans()), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(events=events, max_batch=st.integers(3, 6), delay_s=st.sampled_from([0.0, 0.004]),
       instances=st.integers(1, 3), max_queue=st.sampled_from([0, 5]))
def test_every_request_leaves_once_and_batches_respect_the_limits(events: list[tuple[float, int, float, bool]], max_batch: int,
                                                                  delay_s: float, instances: int, max_queue: int) -> None:
    q: ReplicaQueue[int] = queue(max_batch, delay_s, instances, max_queue)
    now, outcome, rows = 0.0, dict[int, str](), dict[int, int]()
    for i, (gap, n, timeout, complete) in enumerate(events):
        now += gap
        rows[i] = n
        if not q.offer(i, now, rows=n, deadline_s=now + timeout):
            outcome[i] = "shed"
        if complete and q.busy:
            q.finish()
        for batch in q.dispatch(now):
            assert sum(rows[j] for j in batch) <= max_batch or len(batch) == 1
            assert batch == sorted(batch)  # FIFO
            for j in batch:
                assert j not in outcome
                outcome[j] = "batch"
        for j in q.take_expired():
            assert j not in outcome
            outcome[j] = "expired"
        assert q.busy <= instances and (not max_queue or len(q) <= max_queue)
    assert len(outcome) + len(q) == len(events)


def test_a_full_queue_first_drops_its_expired_requests() -> None:
    q = queue(max_batch=1, delay_s=0.0, max_queue=2)
    q.offer("run", 0.0)
    assert q.dispatch(0.0) == [["run"]]  # the one instance is busy from here on
    q.offer("short", 0.0, deadline_s=0.005)
    q.offer("long", 0.0, deadline_s=1.0)
    assert not q.offer("early", 0.004)  # full, and nothing has expired yet
    assert q.offer("late", 0.006)  # "short" expired: it holds no place
    assert q.take_expired() == ["short"] and len(q) == 2


def test_drain_takes_every_waiting_request_in_order() -> None:
    q = queue(max_batch=1, delay_s=0.0)
    for name in "abcd":
        q.offer(name, 0.0, deadline_s=1.0)
    assert q.dispatch(0.0) == [["a"]]
    q.cancel("c")
    assert q.drain() == ["b", "d"]
    assert len(q) == 0 and q.rows == 0 and q.dispatch(2.0) == [] and q.take_expired() == []


Outcome = dict[str, list[Any]]


def drive(q: ReplicaQueue[int], arrivals: list[tuple[float, int, float]], service_s: float, eager: bool) -> Outcome:
    """A minimal driver (a twin without SimPy): batches take service_s, the delay timer rings at
    wake_s. `eager` calls dispatch after every arrival, as the server does; otherwise only when
    an instance is free, as the twin does."""
    events: list[tuple[float, int, str]] = []
    seq = itertools.count()
    timer_at = [math.inf]
    out: Outcome = {"shed": [], "expired": [], "batches": []}

    def dispatch(now: float) -> None:
        for batch in q.dispatch(now):
            out["batches"].append((now, batch))
            heapq.heappush(events, (now + service_s, next(seq), "done"))
        out["expired"] += q.take_expired()
        if q.wake_s < timer_at[0]:
            timer_at[0] = q.wake_s
            heapq.heappush(events, (q.wake_s, next(seq), "wake"))

    def run_until(t: float) -> None:
        while events and events[0][0] <= t:
            now, _, kind = heapq.heappop(events)
            if kind == "done":
                q.finish()
            elif now < timer_at[0]:  # an alarm superseded by an earlier one that already rang
                continue
            else:
                timer_at[0] = math.inf
            dispatch(now)

    for i, (t, rows, deadline) in enumerate(arrivals):
        run_until(t)
        if not q.offer(i, t, rows, deadline):
            out["shed"].append(i)
        if eager or q.free:
            dispatch(t)
    run_until(math.inf)
    out["expired"] = sorted(out["expired"] + q.take_expired())
    return out


arrivals = st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.0023, 0.006]), st.integers(1, 3),
                              st.sampled_from([math.inf, 0.002, 0.0051, 0.013])), min_size=1, max_size=50)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(arrivals=arrivals, max_batch=st.integers(3, 6), delay_s=st.sampled_from([0.0, 0.003]),
       instances=st.integers(1, 2), max_queue=st.sampled_from([0, 1, 2, 4]), service_s=st.sampled_from([0.004, 0.011]))
def test_decisions_do_not_depend_on_how_often_dispatch_is_called(arrivals: list[tuple[float, int, float]], max_batch: int, delay_s: float,
                                                                 instances: int, max_queue: int, service_s: float) -> None:
    """The twin and the server drive the queue at different moments; what it decides must not
    depend on that (per-request deadlines, so expiry is not FIFO)."""
    trace: list[tuple[float, int, float]] = []
    now = 0.0
    for gap, rows, timeout in arrivals:
        now += gap
        trace.append((now, rows, now + timeout))
    eager = drive(queue(max_batch, delay_s, instances, max_queue), trace, service_s, eager=True)
    lazy = drive(queue(max_batch, delay_s, instances, max_queue), trace, service_s, eager=False)
    assert eager == lazy


class Request:
    """An item that can be watched for being freed (the server's items carry their answers)."""


def test_a_dispatched_request_is_not_kept_alive_by_its_deadline() -> None:
    q: ReplicaQueue[Request] = ReplicaQueue(DynamicBatcher(1, 0.0), 1)
    first = Request()
    watch = weakref.ref(first)
    q.offer(first, 0.0, deadline_s=60.0)
    assert q.dispatch(0.0) == [[first]]
    del first
    for k in range(1, 200):  # traffic whose deadlines are all far off
        q.finish()
        q.offer(Request(), k * 0.001, deadline_s=60.0)
        q.dispatch(k * 0.001)
    assert watch() is None


def test_push_is_offer_for_one_row_without_deadline() -> None:
    pushed, offered = queue(max_batch=3, delay_s=0.01, max_queue=2), queue(max_batch=3, delay_s=0.01, max_queue=2)
    results = [(pushed.push(name, t), offered.offer(name, t)) for name, t in (("a", 0.0), ("b", 0.001), ("c", 0.002))]
    assert results == [(True, True), (True, True), (False, False)]
    assert pushed.dispatch(0.01) == offered.dispatch(0.01) == [["a", "b"]]
