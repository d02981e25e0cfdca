"""Asynchronous serving's bookkeeping: submitted requests, their results, and how clients poll.

Submit/poll (issue 14): `POST .../infer` with `parameters.async=true` answers 202 with a
request id at once; the result endpoint answers 200 with the result, 202 while it is pending,
404 for an id it does not know or whose result expired (`ttl_s` after it was ready); a full
queue refuses the submission (503 with Retry-After). These are decisions, not I/O: the twin
keeps one `AsyncJobs` beside its model of the queue; the real stack decides the same rules in
Redis (real/asyncq/queue.py: the gateway admits while worker processes complete, so the count
lives there). No clock: `now` is an argument. `async_version` is which version serves.

`PollSchedule` is the client's side: the first poll after `first_s`, each next one `backoff`
times later, capped at `max_interval_s`. What a polling client observes is not when the result
was ready but the first poll at or after it (`observed`): the poll interval's effect on
latency, and its cost in polls, which the twin predicts and the load generator measures.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from sim.config import ScenarioConfig, version_names

def async_version(cfg: ScenarioConfig) -> str:
    """The version async serving runs, in the twin and on the workers: the first (the config
    allows no rollout or experiment with pattern=async)."""
    return version_names(cfg.model)[0]


PENDING = "pending"  # 202: submitted, no result yet
DONE = "done"  # 200: the result
UNKNOWN = "unknown"  # 404: never submitted, or expired


@dataclass(frozen=True)
class Submitted:
    request_id: str


@dataclass(frozen=True)
class Refused:
    """The queue is full: answer 503 with Retry-After (seconds, rounded up)."""

    retry_after_s: float


@dataclass(frozen=True)
class Poll:
    state: str  # pending | done | unknown
    result: object | None = None


@dataclass
class AsyncJobs:
    """Submissions waiting or running (at most `max_pending`), and results kept `ttl_s`."""

    max_pending: int
    ttl_s: float
    retry_after_s: float = 1.0
    _pending: set[str] = field(default_factory=set)
    # id -> (ready at, result), oldest first: results become ready in time order, so expiry pops from the front
    _results: OrderedDict[str, tuple[float, object]] = field(default_factory=OrderedDict)
    _next: int = 0
    submitted: int = 0
    refused: int = 0
    expired: int = 0

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {self.ttl_s}")
        if not self.retry_after_s > 0:
            raise ValueError(f"retry_after_s must be > 0, got {self.retry_after_s}")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, now: float, request_id: str | None = None) -> Submitted | Refused:
        """Accept a submission (an id of its own unless the caller gives one), or refuse it when
        `max_pending` are already waiting or running."""
        self._expire(now)
        if len(self._pending) >= self.max_pending:
            self.refused += 1
            return Refused(self.retry_after_s)
        if request_id is None:
            request_id = f"a{self._next}"
            self._next += 1
        if request_id in self._pending or request_id in self._results:
            raise ValueError(f"request id {request_id!r} is already in use")
        self._pending.add(request_id)
        self.submitted += 1
        return Submitted(request_id)

    def complete(self, request_id: str, now: float, result: object) -> None:
        """A worker finished `request_id` (successfully or not: `result` says which)."""
        if request_id not in self._pending:
            raise KeyError(f"{request_id!r} is not pending")
        self._pending.remove(request_id)
        self._results[request_id] = (now, result)

    def poll(self, request_id: str, now: float) -> Poll:
        self._expire(now)
        if request_id in self._pending:
            return Poll(PENDING)
        if request_id in self._results:
            return Poll(DONE, self._results[request_id][1])
        return Poll(UNKNOWN)

    def _expire(self, now: float) -> None:
        while self._results:
            request_id, (ready, _) = next(iter(self._results.items()))
            if now - ready < self.ttl_s:
                break
            del self._results[request_id]
            self.expired += 1


@dataclass(frozen=True)
class PollSchedule:
    """A client's polls after a submission at time 0: `first_s`, then each gap `backoff` times
    the last, capped at `max_interval_s`."""

    first_s: float = 0.01
    backoff: float = 2.0
    max_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.backoff >= 1 and self.max_interval_s > 0):
            raise ValueError("need first_s > 0, backoff >= 1 and max_interval_s > 0")

    def next_gap(self, gap_s: float) -> float:
        """The interval after a poll that came `gap_s` after the one before (or, for the first
        poll, after the submission): the one backoff rule, for the twin's `observed` and the
        load generator's client alike."""
        return min(gap_s * self.backoff, self.max_interval_s)

    def observed(self, ready_after_s: float) -> tuple[float, int]:
        """(when the client learns of a result ready `ready_after_s` after its submission, the
        polls it sent by then, that one included)."""
        if ready_after_s < 0 or math.isnan(ready_after_s):
            raise ValueError(f"ready_after_s must be >= 0, got {ready_after_s}")
        t, gap, polls = self.first_s, self.first_s, 1
        while t < ready_after_s:
            gap = self.next_gap(gap)
            t += gap
            polls += 1
        return t, polls
