"""Shadow traffic at the gateway: copies fired beside the primary, measured, never returned.

The decision (which request, which replica) is `sim.policy.shadow.Mirror`'s, the twin's own,
drawn from the seed's shadow stream. This module is the transport: the copy is an asyncio task
the primary never awaits, so a slow or failing shadow replica cannot delay or change a primary
answer; at most `gateway.shadow_max_in_flight` copies run at once and a copy beyond that is
dropped and counted (a shadow must never take the gateway down). Each copy's outcome is
 - a record in memory, served by `GET /v2/gateway/shadow` (read-only, like the state document:
   request ids, user ids, timings and statuses, never bodies or predictions), which
   `real.loadgen.merge.with_shadow` turns into rows of the record schema with shadow=true;
 - an answer in its version's window (`GET /v2/gateway/state`), so a controller can analyse a
   version that serves no user yet;
 - Prometheus counters (sent, answers by code, dropped by reason, in flight).
A copy never passes through the primary's accounting (`Gateway._done`): it is no offered load.

The primary's request id is the OIP body's `id` (what the load generator sends, `w<worker>-<id>`),
read from the copy's answer, which echoes it, or from the body when the answer has none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Mapping

import aiohttp
import orjson
from prometheus_client import Counter, Gauge

from real.gateway.pool import request_outcome
from sim.policy.health import Outcome
from sim.policy.shadow import NO_REPLICA, NOT_MIRRORED, Mirror

if TYPE_CHECKING:
    from real.gateway.app import Gateway

log = logging.getLogger("servelab.gateway")

SHADOW_PATH = "/v2/gateway/shadow"
MAX_RECORDS = 2_000_000  # ~10 min at 3k copies/s; past it a copy is still sent, its record dropped and counted
# the record columns, in order (GET /v2/gateway/shadow answers them as lists)
RECORD_COLUMNS = ("request_id", "user_id", "received_s", "sent_s", "latency_s", "status", "replica", "version",
                  "correct", "batch_id", "batch_size", "queue_s", "service_s", "server_s")
NAN = float("nan")
UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)  # as the primary's: no usable answer came


def correct_code(header: str | None, parameters: Mapping[str, Any]) -> int:
    """1 right, 0 wrong, -1 unknown: the replica's `x-correct: 1|0`, else `parameters.correct`."""
    if header is not None:
        return 1 if header.strip() in ("1", "true") else 0 if header.strip() in ("0", "false") else -1
    value = parameters.get("correct")
    return -1 if not isinstance(value, bool) else int(value)


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


class ShadowTraffic:
    """One per gateway: holds the mirror, the copies in flight, their records and counters."""

    def __init__(self, gateway: Gateway, mirror: Mirror) -> None:
        self.gateway = gateway
        self.mirror = mirror
        self.path = f"/v2/models/{gateway.model}/infer"  # the shadow replica's own version: no version in the path
        # the gateway's clock (perf_counter) on the wall clock, once: merge puts records on the load's clock with it
        self.started = gateway.started
        self.started_unix = time.time() - (perf_counter() - gateway.started)
        self.tasks: set[asyncio.Task[None]] = set()
        self.columns: dict[str, list[Any]] = {name: [] for name in RECORD_COLUMNS}
        self.dropped = {"in_flight_limit": 0, "no_replica": 0, "record_limit": 0}
        registry = gateway.pool.metrics.registry
        self._sent = Counter("servelab_gateway_shadow_sent", "Shadow copies sent to the shadow version", registry=registry)
        self._answers = Counter("servelab_gateway_shadow_responses", "Shadow copies' answers by HTTP status code (502/504: none came)",
                                ["code"], registry=registry)
        dropped = Counter("servelab_gateway_shadow_dropped", "Shadow copies due but not sent, or not recorded, by reason",
                          ["reason"], registry=registry)
        self._dropped = {reason: dropped.labels(reason) for reason in self.dropped}
        in_flight = Gauge("servelab_gateway_shadow_in_flight", "Shadow copies sent and not yet answered", registry=registry)
        in_flight.set_function(lambda: len(self.tasks))

    # -- sending ---------------------------------------------------------------------------

    def offer(self, primary_version: int, body: bytes, headers: Mapping[str, str], raw_user: str | None, t0: float,
              warmup: bool = False) -> None:
        """Once per primary infer, right after its first replica pick (-1: none could take it).
        Returns at once: the copy, if any, runs as its own task. `warmup`: the primary is no part
        of the run, and its decision draws from the pool's throwaway stream."""
        mirror = self.mirror
        pool = self.gateway.pool
        r = mirror.target(primary_version, pool.outstanding, t0, pool.warmup_rng if warmup else None)
        if r == NOT_MIRRORED:
            return
        if r == NO_REPLICA:
            self._drop("no_replica")
            return
        if not mirror.admits(len(self.tasks)):
            self._drop("in_flight_limit")
            return
        task = asyncio.get_running_loop().create_task(self._send(r, body, dict(headers), raw_user, t0))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self._dropped[reason].inc()

    async def _send(self, r: int, body: bytes, headers: dict[str, str], raw_user: str | None, t0: float) -> None:
        """One copy, from send to record; never raises (a cancelled task at shutdown excepted)."""
        gw = self.gateway
        pool = gw.pool
        version = pool.membership.version_of[r]
        self._sent.inc()
        sent = perf_counter()
        status, payload, up_headers = 502, b"", {}
        try:
            status, payload, up_headers = await gw._call("POST", r, self.path, body, headers)
            pool.on_request(r, Outcome.OK)
        except UPSTREAM_ERRORS as exc:  # no usable answer: what the primary's client would have seen
            outcome = request_outcome(exc)
            pool.on_request(r, outcome)
            status = 504 if outcome is Outcome.TIMEOUT else 502
        except Exception:  # a bug: logged, recorded as 502, never raised into the loop
            log.exception("shadow copy to replica %d failed", r)
        now = perf_counter()
        try:
            self._record(r, version, body, raw_user, t0, sent, now, status, payload, up_headers)
        except Exception:  # a record we cannot make must not surface as an unhandled task error
            log.exception("shadow record for replica %d failed", r)

    def _record(self, r: int, version: int, body: bytes, raw_user: str | None, t0: float, sent: float, now: float,
                status: int, payload: bytes, up_headers: Mapping[str, str]) -> None:
        self._answers.labels(str(status)).inc()
        answer: Any = None
        if payload:
            try:
                answer = orjson.loads(payload)
            except orjson.JSONDecodeError:
                answer = None
        answer = answer if isinstance(answer, dict) else {}
        params = answer.get("parameters")
        params = params if isinstance(params, dict) else {}
        ok = 200 <= status < 300
        correct = correct_code(up_headers.get("x-correct"), params) if ok else -1
        self.gateway.windows.add(version, now, now - t0, ok=ok, error=status >= 500, correct=correct)
        if len(self.columns["request_id"]) >= MAX_RECORDS:
            self._drop("record_limit")
            return
        request_id = answer.get("id")
        if not isinstance(request_id, str):
            request_id = _body_id(body)
        try:
            user = int(raw_user) if raw_user is not None else -1
        except ValueError:
            user = -1
        row = (request_id, user, t0 - self.started, sent - self.started, now - sent, status, r,
               self.gateway.membership.versions[version], correct, int(_number(params.get("batch_id"), -1)),
               int(_number(params.get("batch_size"), 0)), _number(params.get("queue_s"), NAN),
               _number(params.get("service_s"), NAN), _number(params.get("server_s"), NAN))
        for name, value in zip(RECORD_COLUMNS, row):
            self.columns[name].append(value)

    async def stop(self) -> None:
        """At shutdown: copies still in flight are cancelled (their records are lost, not wrong)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading ---------------------------------------------------------------------------

    def document(self, since: int = 0) -> dict[str, Any]:
        """The records from index `since` on, as columns; `next` is where a later read resumes."""
        n = len(self.columns["request_id"])
        since = min(max(since, 0), n)
        return {
            "version": self.mirror.version_name,
            "percent": self.mirror.share * 100.0,
            "started_unix": self.started_unix,
            "in_flight": len(self.tasks),
            "dropped": dict(self.dropped),
            "since": since,
            "next": n,
            "records": {name: values[since:] for name, values in self.columns.items()},
        }


def _body_id(body: bytes) -> str:
    """The OIP request's `id` (only read when the answer did not echo it: an error answer)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def empty_document() -> dict[str, Any]:
    """GET /v2/gateway/shadow on a gateway with no shadow version."""
    return {"version": "", "percent": 0.0, "started_unix": None, "in_flight": 0, "dropped": {}, "since": 0, "next": 0,
            "records": {name: [] for name in RECORD_COLUMNS}}
