"""The twin of asynchronous serving (pattern=async): submit, a queue, workers pulling batches, polls.

What the real stack does (real/asyncq, real/gateway): the gateway answers a submission 202 at
once and appends it to one Redis stream; `async_jobs.workers` worker processes in a consumer
group each read up to `async_jobs.batch_size` entries at once (XREADGROUP BLOCK: a worker takes
what is there when it asks, never waits for a fuller batch), run them as one batch on the model,
write the results and acknowledge. The client polls the result endpoint on a schedule
(`PollSchedule`), or is called back.

The model here, per request of the open-loop schedule (the one the load generator replays):
- submit: the entry is in the stream `before` after the intended send (the stack's way in,
  `overhead.before_s` or the profile's samples), and the client has its 202 a way back later;
- admission: the shared `AsyncJobs` (sim/policy/async_jobs.py) refuses it when
  `async_jobs.max_pending` are waiting or running (status `shed`, as the real 503);
- the stream is FIFO; a free worker takes min(waiting, batch_size) at once, or, when nothing
  waits, sleeps until the next entry and takes what is there then (one entry: an arrival is an
  instant). Idle workers wake in the order they went to sleep (Redis serves blocked readers
  first come, first served);
- a batch costs the worker Redis round trips of `async_jobs.batch_overhead_s` beside the
  model: after it, the results' write and ack (one pipelined round trip); before it, when the
  worker was idle, its blocked read waking up with the entry (the real worker's queue_s runs
  to when it has read its entries, so this is queue time in both worlds). A busy worker's next
  read finds entries waiting and answers at once: it pays no wake-up (one worker, batches of
  one, offered 300 req/s: 171 req/s measured, 173 predicted so; 151 with a round trip before
  every batch). Between them, the service model's time for that batch size (the same draw a
  replica makes: `sim.service.ServiceTime`). The result is ready at the end of the model
  (`ready_s`, start_s = ready_s - service_s: the real worker stamps its ready_unix_s then), and
  a poll can see it only once it is written, a round trip later;
- the client learns of it at its first poll that reaches the server at or after it was
  written (the schedule counts from the 202), plus that poll's way back; with
  `async_jobs.callback`, when the worker's call reaches it, with no poll: a way out after the
  result is written (one hop from the worker's process to the client's, no gateway: 2.6 ms
  after ready measured against 2.2 predicted at 300 req/s, where a request's both ways gave 3.4);
- a result polled `async_jobs.result_ttl_s` or more after ready is gone (404: `error`); no
  result by the client deadline (`timeout_s` from the intended send) is a `timeout`, and
  the client stopped polling then.

No host model: the workers' CPU and the stack's processes sharing the box are not modelled
(the overheads stand in for them); a fidelity gap at high load is that.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.arrivals import ArrivalSchedule, make_schedule
from sim.config import ScenarioConfig
from sim.policy.async_jobs import AsyncJobs, PollSchedule, Refused, async_version
from sim.profile import Profile
from sim.records import ERROR, OK, SHED, TIMEOUT
from sim.rng import make_streams
from sim.service import Overhead, ServiceTime
from sim.twin import TwinResult


@dataclass(frozen=True)
class Observation:
    """When a client learns of its result and what it cost it, relative to its intended send."""

    learned_s: float  # the client has the result (or gave up, or heard 404)
    polls: int  # result requests sent by then
    status: int  # OK, TIMEOUT or ERROR (expired)


def observe(schedule: PollSchedule | None, stored_s: float, answered_s: float, way_in_s: float, way_out_s: float,
            timeout_s: float, ttl_s: float) -> Observation:
    """A client's view of one accepted submission, all times from its intended send: its 202
    came at `answered_s`, its result could be read (written to the store) from `stored_s`; a
    poll (or the callback) takes `way_in_s` to reach the server and `way_out_s` back.
    `schedule` None: told by callback."""
    if schedule is None:  # the worker's call, once the result is written: one hop to the client, no gateway
        learned, polls, status = stored_s + way_out_s, 0, OK
    else:
        learned_after, polls = schedule.observed(max(stored_s - answered_s - way_in_s, 0.0))
        sent = answered_s + learned_after
        learned = sent + way_in_s + way_out_s
        status = ERROR if sent + way_in_s - stored_s >= ttl_s else OK
    if learned > timeout_s:
        return Observation(timeout_s, polls_before(schedule, timeout_s - answered_s), TIMEOUT)
    return Observation(learned, polls, status)


def polls_before(schedule: PollSchedule | None, after_s: float) -> int:
    """Polls a client sent in the first `after_s` after its 202 (the ones strictly before: the
    poll due at the deadline is never sent); none when told by callback."""
    if schedule is None or after_s <= 0:
        return 0
    return schedule.observed(after_s)[1] - 1


@dataclass(frozen=True)
class AsyncWayScale:
    """How long a submit's and a poll's ways through the stack are against a sync request's,
    which the overhead replays (measured at the run's rate): a submit and a poll stop at the
    gateway and Redis, a sync request goes on to a replica. mode=profile measures both paths
    on one idle stack with one client (scenarios.profile.measure_async_ways); 1 without."""

    submit: float = 1.0
    poll: float = 1.0

    @classmethod
    def from_overheads(cls, overheads_s: dict[str, list[float]]) -> AsyncWayScale:
        sync = overheads_s.get("async_sync_s")
        if not sync or not float(np.median(sync)) > 0:
            return cls()
        ratio = lambda key: float(np.median(overheads_s[key])) / float(np.median(sync)) if overheads_s.get(key) else 1.0  # noqa: E731
        return cls(submit=ratio("async_submit_s"), poll=ratio("async_poll_s"))


class AsyncTwin:
    """One async run of the twin: the schedule in, `TwinResult` out (the record columns)."""

    def __init__(self, cfg: ScenarioConfig, profile: Profile | None = None, schedule: ArrivalSchedule | None = None,
                 overhead_samples: dict[str, list[float]] | None = None, device_wake_s: float = 0.0,
                 way_scale: AsyncWayScale | None = None) -> None:
        self.cfg = cfg
        self.way_scale = way_scale or AsyncWayScale()
        self.streams = make_streams(cfg.seed)
        self._schedule = schedule
        a = cfg.async_jobs
        self.jobs = AsyncJobs(a.max_pending, a.result_ttl_s, a.retry_after_s if a.retry_after_s > 0 else 1.0)
        self.polling = None if a.callback else PollSchedule(a.poll_first_s, a.poll_backoff, a.poll_max_interval_s)
        self.service = ServiceTime(cfg.service, self.streams.service, profile, extra_s=device_wake_s)
        self.overhead = Overhead(cfg.overhead.before_s, cfg.overhead.after_s, self.streams.overhead, overhead_samples)
        self.timeout_s = cfg.timeout_s if cfg.timeout_s > 0 else math.inf
        self.busy_s = [0.0] * a.workers

    def run(self) -> TwinResult:
        cfg, a = self.cfg, self.cfg.async_jobs
        schedule = self._schedule or make_schedule(cfg.arrival, cfg.duration_s, self.streams.arrivals, self.streams.users)
        arrival = schedule.times_s.astype(float).tolist()
        n = len(arrival)
        draw = self.overhead.draw
        submit = self.way_scale.submit
        ways = [(w_in * submit, w_out * submit) for w_in, w_out in (draw() for _ in range(n))]  # the submit's (in, out), in order
        nan = math.nan
        enqueued = [arrival[i] + ways[i][0] for i in range(n)]
        # entries reach the stream in their own order (the way in varies), so take them in it
        order = sorted(range(n), key=enqueued.__getitem__)
        status = [ERROR] * n
        ready, start, service, finish = [nan] * n, [nan] * n, [nan] * n, [nan] * n
        worker_of, batch_of, size_of, polls = [-1] * n, [-1] * n, [0] * n, [0] * n
        jobs, batch_size, overhead_s = self.jobs, a.batch_size, a.batch_overhead_s
        stream: deque[int] = deque()
        idle: deque[int] = deque(range(a.workers))
        running: list[tuple[float, int, list[int]]] = []  # (written, worker, batch)
        written = [nan] * n  # the result is in Redis: a poll sees it
        batches = 0

        def take(worker: int, now: float, woken: bool) -> None:
            nonlocal batches
            batch = [stream.popleft() for _ in range(min(len(stream), batch_size))]
            took = now + overhead_s if woken else now
            service_s = self.service.draw(len(batch))
            done = took + service_s
            stored = done + overhead_s
            for j in batch:
                start[j] = took
                service[j] = service_s
                worker_of[j] = worker
                batch_of[j] = batches
                size_of[j] = len(batch)
                ready[j] = done
            batches += 1
            self.busy_s[worker] += took - now + service_s + overhead_s
            heapq.heappush(running, (stored, worker, batch))

        k = 0
        while k < n or running:
            t_arrive = enqueued[order[k]] if k < n else math.inf
            if running and running[0][0] <= t_arrive:
                stored, worker, batch = heapq.heappop(running)
                for j in batch:
                    written[j] = stored
                    jobs.complete(str(j), stored, None)
                if stream:
                    take(worker, stored, woken=False)
                else:
                    idle.append(worker)
                continue
            i = order[k]
            k += 1
            if isinstance(jobs.submit(t_arrive, str(i)), Refused):
                status[i] = SHED
                finish[i] = t_arrive + ways[i][1]
                continue
            stream.append(i)
            if idle:
                take(idle.popleft(), t_arrive, woken=True)
        self._observe(arrival, ways, written, status, finish, polls)
        version = async_version(cfg)
        # what a client knows of its request's batch comes with its result: none without one
        # (as the load generator records it; so a run's batches and utilisation are the results')
        got = np.asarray(status) == OK
        served = got.tolist()
        columns = {
            "request_id": np.arange(n, dtype=np.int64),
            "user_id": schedule.user_ids.astype(np.int64),
            "arrival_s": np.asarray(arrival, dtype=float),
            "start_s": np.where(got, np.asarray(start, dtype=float), nan),
            "finish_s": np.asarray(finish, dtype=float),
            "latency_s": np.asarray(finish, dtype=float) - np.asarray(arrival, dtype=float),
            # the real worker's queue_s runs to when it has read its entries: the batch's start here
            "queue_s": np.where(got, np.asarray(start, dtype=float) - np.asarray(enqueued, dtype=float), nan),
            "service_s": np.where(got, np.asarray(service, dtype=float), nan),
            "replica": np.where(got, np.asarray(worker_of, dtype=np.int64), -1),
            "version": np.asarray([version if s else "" for s in served], dtype=object),
            "batch_id": np.where(got, np.asarray(batch_of, dtype=np.int64), -1),
            "batch_size": np.where(got, np.asarray(size_of, dtype=np.int64), 0),
            "status": np.asarray(status, dtype=np.int64),
            "ready_s": np.where(got, np.asarray(ready, dtype=float), nan),
            "polls": np.asarray(polls, dtype=np.int64),
        }
        end = float(np.nanmax(columns["finish_s"])) if n else 0.0
        return TwinResult(columns=columns, busy_s=list(self.busy_s), end_s=max(end, 0.0))

    def _observe(self, arrival: list[float], ways: list[tuple[float, float]], written: list[float], status: list[int],
                 finish: list[float], polls: list[int]) -> None:
        """Each accepted submission as its client sees it (`observe`): the observing poll's (or
        the callback's) ways in and out drawn as a request's are."""
        draw = self.overhead.draw
        ttl, timeout, schedule = self.cfg.async_jobs.result_ttl_s, self.timeout_s, self.polling
        poll = self.way_scale.poll if schedule is not None else 1.0  # a callback is the worker's call, not a gateway poll
        for i in range(len(arrival)):
            if status[i] == SHED:
                continue
            a = arrival[i]
            way_in, way_out = draw()
            way_in, way_out = way_in * poll, way_out * poll
            seen = observe(schedule, written[i] - a, sum(ways[i]), way_in, way_out, timeout, ttl)
            status[i], finish[i], polls[i] = seen.status, a + seen.learned_s, seen.polls


def async_capacity_rps(cfg: ScenarioConfig, profile: Profile | None = None) -> float:
    """Most submissions per second the workers can finish: each busy with full batches (a
    busy worker's next read pays no wake-up: one round trip a batch, the results' write)."""
    a = cfg.async_jobs
    b = a.batch_size
    service = cfg.service
    mean_s = profile.mean_s(b) if profile is not None else service.base_s + service.per_item_s * b
    return a.workers * b / (mean_s + a.batch_overhead_s)
