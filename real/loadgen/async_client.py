"""The load generator's async client (pattern=async), without I/O: what to send, what an answer means.

An async request is a conversation, not one exchange: submit (`POST .../infer` with
`parameters.async: true`, answered 202 and an id at once), then poll the result endpoint
(`GET /v2/models/{model}/results/{id}`: 202 while pending, 200 with the result, 404 unknown or
expired) on `PollSchedule`'s times counted from the 202 (sim/policy/async_jobs.py: the twin
predicts with the same schedule), until the result or the client deadline. `AsyncCall` is one
conversation's state and decisions: each answer in, the next step out (`Poll` after a delay,
or `Done` with the outcome). The Locust side (`locustfile.AsyncDriver`) moves the bytes on the
same keep-alive connections, dispatcher and deadline heap as sync requests, so an async
request's submission is sent on time exactly as a sync request is, and its polls cost one
small GET each on a pooled connection.

What a record says (one per submission, exactly once):
  http_status  the answer that ended it: the result's (200, or the worker's error status), the
               submission's refusal (503: shed), a poll's failure (404 expired or unknown, 503
               Redis down: both errors, told from a refusal by `polls` > 0), or the client deadline
  latency      intended send -> the client has the result (the poll's answer read)
  ready_s      when the server had the result (its `ready_unix_s`, on the run's clock)
  polls        result requests the client sent (0: refused at once, or told by callback)

With `async_jobs.callback` the client polls not at all: the worker POSTs the result to a
loopback listener of the client's (`CallbackReader` parses what it is sent).

Shared by both sides: the standard library, httptools, orjson and sim.policy only (no gevent,
no Locust).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httptools
import orjson

from sim.policy.async_jobs import PollSchedule

ASYNC_KEY = b'"async":true,'  # goes first in the request's parameters
CALLBACK_KEY = b'"callback_url":"'
RESULTS_PATH = "/v2/models/{model}/results/"


def submit_mid(mid: bytes, callback_url: str | None = None) -> bytes:
    """A sync request's body part (`...,"parameters":{...`) as an async submission's: the same
    input and parameters, with `async: true` (and the callback URL) first among them."""
    head, sep, tail = mid.rpartition(b'"parameters":{')
    if not sep:
        raise ValueError("a request body part without parameters")
    extra = ASYNC_KEY + (CALLBACK_KEY + callback_url.encode() + b'",' if callback_url else b"")
    return head + sep + extra + tail


class ResultRequestEncoder:
    """The bytes of one poll: a keep-alive GET of the result, built from parts made once."""

    def __init__(self, host: str, model: str) -> None:
        self._head = f"GET {RESULTS_PATH.format(model=model)}".encode("latin-1")
        self._tail = f" HTTP/1.1\r\nhost: {host}\r\n\r\n".encode("latin-1")

    def encode(self, job_id: str) -> bytes:
        return b"".join((self._head, job_id.encode("latin-1"), self._tail))


def job_id(body: bytes) -> str | None:
    """The request id a 202 names (its JSON `id`), None if it names none."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value or any(c in value for c in " /?#\r\n"):
        return None
    return value


def ready_on_run_clock(params: dict[str, Any] | None, t0_wall: float) -> float:
    """The result's `ready_unix_s` as seconds since the run's time 0 (whose wall time the
    worker knows), NaN when the result does not say."""
    if not params:
        return math.nan
    try:
        ready = float(params["ready_unix_s"])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return ready - t0_wall if math.isfinite(ready) else math.nan


def result_parameters(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result's parameters as a record reads a replica's: the worker that ran it is the
    `replica` (an integer: a worker named `w3` or `3` is 3; else -1)."""
    if params is None or "replica" in params or "worker" not in params:
        return params
    raw = str(params["worker"])
    digits = raw.lstrip("w").rsplit("-", 1)[-1]
    return {**params, "replica": int(digits) if digits.isdigit() else -1}


@dataclass(frozen=True)
class Poll:
    """Send the next poll `after_s` from now."""

    after_s: float


@dataclass(frozen=True)
class Done:
    """The conversation is over: record `http_status` (and the answer, when it is a result)."""

    http_status: int
    result: bool = False  # the answer is the result document (200, or the worker's error)


SUBMITTING, POLLING = 0, 1

# async_jobs.callback: the worker POSTs the result document to the client's loopback listener,
# naming the request in x-request-id and its status in x-result-status (real/asyncq/worker.py)
CALLBACK_REQUEST_ID, CALLBACK_STATUS = b"x-request-id", b"x-result-status"
CALLBACK_REPLY = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class Callback:
    job: str
    status: int
    body: bytes


class CallbackReader:
    """One callback connection's requests, parsed: feed it bytes, get the callbacks it
    completed. Raises `httptools.HttpParserError` on bytes that are not HTTP; a callback that
    names no request id or status is skipped (nothing to match it to)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._done: list[Callback] = []

    def feed(self, data: bytes) -> list[Callback]:
        self._parser.feed_data(data)
        done, self._done = self._done, []
        return done

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (CALLBACK_REQUEST_ID, CALLBACK_STATUS):
            self._headers[name] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        job, status = self._headers.get(CALLBACK_REQUEST_ID), self._headers.get(CALLBACK_STATUS)
        body = b"".join(self._body)
        self._headers, self._body = {}, []
        if job and status and status.isdigit():
            self._done.append(Callback(job.decode("latin-1"), int(status), body))


class AsyncCall:
    """One async request's conversation: feed it each answer's status (and a 202's body);
    it says what comes next. `polls` counts the result requests sent (`polled` per send)."""

    __slots__ = ("schedule", "phase", "job", "polls", "gap_s")

    def __init__(self, schedule: PollSchedule | None) -> None:
        self.schedule = schedule  # None: told by callback, never polls
        self.phase = SUBMITTING
        self.job: str | None = None
        self.polls = 0
        self.gap_s = 0.0  # the last interval between polls

    def submitted(self, status: int, body: bytes) -> Poll | Done | None:
        """The submission's answer: 202 -> the first poll (None with a callback: wait for it);
        200 -> a server that answered at once (the result); anything else ends it."""
        if status == 202:
            self.job = job_id(body)
            if self.job is None:
                return Done(-1)  # a 202 naming no id cannot be polled: a broken answer
            self.phase = POLLING
            if self.schedule is None:
                return None
            self.gap_s = self.schedule.first_s
            return Poll(self.gap_s)
        return Done(status, result=status == 200)

    def polled(self) -> None:
        self.polls += 1

    def answered(self, status: int) -> Poll | Done:
        """A poll's answer: 202 -> the next poll (the gap grown by the backoff, capped); 200
        or a worker's error status -> the result; 404, 503 or anything else ends it."""
        if status == 202 and self.schedule is not None:
            self.gap_s = self.schedule.next_gap(self.gap_s)
            return Poll(self.gap_s)
        return Done(status, result=status not in (404, 503) and status != 202)
