"""The gateway's asynchronous routes: submit (202 + Location) and the result endpoint.

The HTTP "202 Accepted + Location" asynchronous request-reply convention, on the OIP infer URL:
- `POST /v2/models/{m}[/versions/{v}]/infer` whose body has `parameters.async: true` is validated
  as a sync infer would be (400/415 before anything is queued), queued, and answered at once:
  202 `{"id", "model_name", "status": "pending"}` with `Location: /v2/models/{m}/results/{id}`.
  A full queue (`async_jobs.max_pending` queued or running) is 503 with Retry-After; a Redis that
  does not answer within REDIS_TIMEOUT_S is 503 saying so, never a 500 or a hang. An optional
  `parameters.callback_url` (loopback http only) is POSTed the result when it is ready.
- `GET /v2/models/{m}/results/{id}`: 200 with the result (an OIP infer response; its
  parameters say when it was submitted and ready), 202 while pending, 404 unknown or expired.
With pattern=sync an async submission is a 400: nothing would ever take it off a queue.

The sync path pays one substring search: a body without the bytes `"async"` never gets here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from real.asyncq.queue import (
    DUPLICATE,
    GROUP,
    REDIS_TIMEOUT_S,
    REFUSED,
    SUBMIT_LUA,
    AsyncKeys,
    Submission,
    check_callback_url,
    decode_result,
    redact,
)
from real.gateway.errors import JSON
from real.server.app import check_content_type  # the replica's own rules: accepted alike
from real.server.protocol import ProtocolError, parse_header_length, parse_infer
from sim.config import ScenarioConfig
from sim.policy.async_jobs import DONE, PENDING, UNKNOWN

if TYPE_CHECKING:
    from real.gateway.app import Gateway

log = logging.getLogger("servelab.gateway.async")

ASYNC_MARK = b'"async"'  # a body without it is not an async submission: the sync path's only cost
RESULT_PATH = "/v2/models/{model}/results/{id}"
SYNC_ONLY = "this stack serves synchronously (pattern=sync); parameters.async needs pattern=async"
REDIS_ERRORS = (redis.RedisError, OSError, TimeoutError)

Answer = tuple[int, bytes, dict[str, str]]  # status, body, headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return status, orjson.dumps({"error": message}), {"Content-Type": JSON, **(headers or {})}


def result_location(model: str, request_id: str) -> str:
    return RESULT_PATH.format(model=model, id=request_id)


def async_parameters(body: bytes, header_length: int | None) -> dict[str, Any] | None:
    """The request's `parameters` if it asks for async serving (`parameters.async` true), None
    when it does not (no such key, false, or a body the sync path will refuse itself);
    ProtocolError(400) for an `async` that is not a boolean."""
    header = body if header_length is None else body[:header_length]
    if ASYNC_MARK not in header:
        return None
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        return None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or "async" not in params:
        return None
    flag = params["async"]
    if not isinstance(flag, bool):
        raise ProtocolError(400, f"'parameters.async' must be true or false, got {flag!r}")
    return params if flag else None


class AsyncMetrics:
    """The async series on the gateway's registry; the gauges are read from Redis at scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.submitted = Counter("servelab_gateway_async_submitted", "Async submissions accepted (202)", registry=registry)
        refused = Counter("servelab_gateway_async_refused", "Async submissions refused: full (503, queue at async_jobs.max_pending) "
                          "or unavailable (503, Redis did not answer)", ["reason"], registry=registry)
        self.refused_full, self.refused_unavailable = refused.labels("full"), refused.labels("unavailable")
        self._polls = Counter("servelab_gateway_async_polls", "Result requests by answer: 200 result served (500: the "
                              "model failed on it), 202 pending, 404 unknown or expired, 503 Redis unavailable", ["code"],
                              registry=registry)
        self._by_code = {code: self._polls.labels(str(code)) for code in (200, 202, 404, 503)}
        self.queue_length = Gauge("servelab_gateway_async_queue_length", "Async submissions queued or running (the stream's length)",
                                  registry=registry)
        self.running = Gauge("servelab_gateway_async_running", "Async submissions a worker has taken and not yet finished",
                             registry=registry)
        self.workers = Gauge("servelab_gateway_async_workers", "Async workers that said they are ready", registry=registry)

    def poll(self, code: int) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._polls.labels(str(code))
        child.inc()


class AsyncApi:
    """The gateway's side of the queue: admission (SUBMIT_LUA), result lookups and metrics."""

    def __init__(self, cfg: ScenarioConfig, registry: CollectorRegistry, url: str, password: str | None,
                 output_names: frozenset[str], timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.model = cfg.model.name
        self.keys = AsyncKeys(self.model)
        self.max_pending = cfg.async_jobs.max_pending
        self.retry_after = str(math.ceil(cfg.async_jobs.retry_after_s))
        self.max_rows = cfg.batching.max_batch_size
        self.output_names = output_names
        self.url, self.password, self.timeout_s = url, password, timeout_s
        self.metrics = AsyncMetrics(registry)
        self._client: aioredis.Redis | None = None
        self._submit: Any = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:  # on the serving loop (redis.asyncio binds its pool to a loop)
            self._client = aioredis.Redis.from_url(
                self.url, password=self.password, socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s, retry=AsyncRetry(NoBackoff(), 0))
            self._submit = self._client.register_script(SUBMIT_LUA)
        return self._client

    async def start(self) -> None:
        """Create the consumer group (from the stream's start: nothing submitted before a worker
        exists is missed). A Redis down now is logged, not fatal: submissions answer 503."""
        try:
            await ensure_group(self.client, self.keys.stream, self.timeout_s)
        except REDIS_ERRORS as exc:
            log.warning("async queue: Redis at %s unavailable at start: %s", redact(self.url), exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def unavailable(self, exc: BaseException) -> str:
        return f"async queue unavailable: Redis at {redact(self.url)} did not answer ({type(exc).__name__})"

    async def submit(self, submission: Submission) -> Answer:
        """Queue `submission` (SUBMIT_LUA: admission, pending mark and XADD at once): 202 +
        Location, or 503 (full: Retry-After; or Redis unavailable)."""
        client = self.client
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._submit(keys=[self.keys.pending, self.keys.result(submission.request_id), self.keys.stream],
                                            args=[self.max_pending, *submission.lua_args()], client=client)
        except REDIS_ERRORS as exc:
            self.metrics.refused_unavailable.inc()
            return _error(503, self.unavailable(exc), {"Retry-After": self.retry_after})
        if answer == REFUSED:
            self.metrics.refused_full.inc()
            return _error(503, f"async queue full ({self.max_pending} submissions queued or running, "
                               f"async_jobs.max_pending); retry after {self.retry_after} s",
                          {"Retry-After": self.retry_after})
        if answer == DUPLICATE:  # uuid4 ids: not expected; never overwrite another request's result
            return _error(409, f"request id {submission.request_id!r} is already in use")
        self.metrics.submitted.inc()
        location = result_location(self.model, submission.request_id)
        doc = {"id": submission.request_id, "model_name": self.model, "status": PENDING}
        return 202, orjson.dumps(doc), {"Content-Type": JSON, "Location": location}

    async def result(self, model: str, request_id: str) -> Answer:
        """The poll: 200 with the result (or the worker's error status), 202 pending, 404."""
        poll = self.metrics.poll
        if model != self.model:
            poll(404)
            return _error(404, f"unknown model {model!r}; this gateway serves {self.model!r}")
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await self.client.get(self.keys.result(request_id))
        except REDIS_ERRORS as exc:
            poll(503)
            return _error(503, self.unavailable(exc), {"Retry-After": self.retry_after})
        decoded = None if value is None else decode_result(value)
        state = UNKNOWN if value is None else (PENDING if decoded is None else DONE)
        if state == UNKNOWN:
            poll(404)
            return _error(404, f"unknown or expired request id {request_id[:80]!r} (results are kept "
                               "async_jobs.result_ttl_s after they are ready)")
        if state == PENDING:
            poll(202)
            return 202, orjson.dumps({"id": request_id, "status": PENDING}), {
                "Content-Type": JSON, "Location": result_location(self.model, request_id), "Retry-After": "1"}
        status, document = decoded  # type: ignore[misc]
        poll(status)
        return status, document, {"Content-Type": JSON}

    async def refresh_metrics(self) -> None:
        """Read the gauges from Redis (before a scrape); left as they were if it does not answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                pipe = self.client.pipeline(transaction=False)
                pipe.xlen(self.keys.stream)
                pipe.xpending(self.keys.stream, GROUP)
                pipe.hlen(self.keys.workers)
                length, pending, workers = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS:
            return
        if isinstance(length, int):
            self.metrics.queue_length.set(length)
        if isinstance(pending, dict):
            self.metrics.running.set(int(pending.get("pending", 0)))
        if isinstance(workers, int):
            self.metrics.workers.set(workers)


async def ensure_group(client: aioredis.Redis, stream: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    """The stream and its consumer group, reading from the stream's start; idempotent."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def submit(gw: Gateway, model: str, version_name: str | None, raw_user: str | None, pin: str | None,
                 ctype: str | None, body: bytes, header_length: str | None) -> Answer | None:
    """An infer body that asks for async serving, answered (202, or the 4xx/503 refusing it);
    None when it does not ask for it (the sync path serves it, unchanged)."""
    try:
        split = parse_header_length(header_length)
        params = async_parameters(body, split)
        if params is None:
            return None
        api = gw.async_api
        if api is None:
            return _error(400, SYNC_ONLY)
        target = gw._target(model, version_name, raw_user, pin)
        if not isinstance(target, tuple):  # the gateway's own 404/400 for the model, version, user
            return target.status, target.body, target.headers
        check_content_type(ctype)
        req = parse_infer(body, api.max_rows, api.output_names, split)
        if req.binary_outputs:
            raise ProtocolError(400, "async results are JSON: ask for the outputs without binary_data")
        callback = ""
        if "callback_url" in params:
            try:
                callback = check_callback_url(params["callback_url"])
            except ValueError as exc:
                raise ProtocolError(400, str(exc)) from None
    except ProtocolError as exc:
        return _error(exc.status, exc.message)
    return await api.submit(Submission(uuid.uuid4().hex, body, split, time.time(), callback))


def routes(gw: Gateway) -> list[Route]:
    """The result endpoint (with pattern=sync, gw.async_api is None: a 404 saying why)."""

    async def result(request: Request) -> Response:
        api = gw.async_api
        if api is None:
            status, body, headers = _error(404, SYNC_ONLY)
        else:
            status, body, headers = await api.result(request.path_params["model"], request.path_params["id"])
        return Response(body, status_code=status, headers=headers)

    return [Route(RESULT_PATH, result, methods=["GET"])]
