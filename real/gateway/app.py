"""The gateway's ASGI app: OIP routes, the proxy hot path, health, metrics and control.

A complete Open Inference Protocol endpoint (KServe v2 with Triton's extensions): server and
model metadata and readiness, the repository index (the union of its replicas', see
`real.gateway.aggregate`), model statistics (summed over its replicas, Triton's shape) and infer.
Bodies are forwarded as bytes, never parsed or re-encoded, with the headers that say how to
read them (Content-Type, as the client sent it or none; Inference-Header-Content-Length, Triton's
binary tensor data extension), and the replica's answer comes back with its own: so the gateway
accepts exactly what the replicas accept. Validation is the replica's job (it answers 4xx, which
the gateway passes through unchanged). The gateway only checks what it must know to
route: the model and version in the path (or the `x-model-version` header, which pins a version
as the path does), the user id header, and the body size. With `gateway.shadow_version`, a
share of infers is also copied to that version, never awaited (`real.gateway.shadow`;
`GET /v2/gateway/shadow` lists the copies' outcomes). A request carrying `x-servelab-warmup`
(the run's warm-up) is routed with a throwaway stream, so the run's first request takes the
routing stream's first draw, as the twin's does.

The control API (token-guarded) changes the deployment while traffic flows, through the same
`sim.policy.controller.apply` the twin's controllers use: version weights
(`POST /v2/gateway/weights`) and a replica's membership (`POST /v2/gateway/replicas/{r}` with
`{"action": "drain" | "activate" | "eject" | "restore" | "set_version", "version": ...}`).
`GET /v2/gateway/state` is what a controller reads: the `View` of the deployment and each
version's figures over the last `window_s`.

Runtime membership (token-guarded): `POST /v2/gateway/replicas` `{"url": ..., "version": NAME}`
adds a replica, not ready until its probes pass; `{"action": "remove"}` on a replica takes it out
for good (no new requests; in-flight ones finish: `GET /v2/gateway/replicas` shows `in_flight`,
so whoever stops the process knows when it may). `POST /v2/gateway/rollout`
`{"command": "promote" | "abort"}` queues a manual rollout command for the controller driver,
which reads it, numbered, in the state document.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import AsyncIterator, Mapping, Sequence

import aiohttp
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response

from real.asyncq import api as asyncq
from real.gateway import aggregate, control
from real.gateway.auth import BearerAuth
from real.gateway.errors import JSON, http_exception, json_response, oip_error, unexpected
from real.gateway.fastpath import InferFastPath
from real.gateway.pool import ReplicaPool, request_outcome
from real.gateway.shadow import SHADOW_PATH, ShadowTraffic, empty_document
from sim.config import ScenarioConfig
from sim.policy.controller import Action, AddReplica, apply, view_of
from sim.policy.health import Outcome
from sim.policy.shadow import Mirror
from sim.policy.windows import VersionWindows
from sim.policy.split import VERSION_HEADER, WARMUP_HEADER, BadPin, NoReplica, Router, pinned_version
from sim.rng import make_streams

WEIGHTS_PATH = "/v2/gateway/weights"
REPLICAS_PATH = "/v2/gateway/replicas"
STATE_PATH = "/v2/gateway/state"
ROLLOUT_PATH = "/v2/gateway/rollout"
# token-guarded: everything that changes the deployment (the replica list and state are read-only;
# POST to the replica list, which adds one, is guarded on its route)
CONTROL_PREFIXES = (WEIGHTS_PATH, REPLICAS_PATH + "/", ROLLOUT_PATH)
COMMANDS_KEPT = 100  # manual rollout commands the state document lists, the latest
CONTROL_BODY_BYTES = 65536
RETRY_AFTER_S = "1"
CORRECT_HEADER = "x-correct"  # a replica's verdict on a labelled request: 1 right, 0 wrong
INFER_HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary tensors: JSON part's length
# the replica's answer headers a client needs to read it, passed back as they came
PASSED_BACK = ("Content-Type", "Retry-After", CORRECT_HEADER, INFER_HEADER_LENGTH, "x-feature-failure")
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class BodyTooLarge(Exception):
    pass


async def read_control_body(request: Request) -> object:
    """A control request's JSON body; BadControl (a 4xx) if it is too large or not JSON."""
    try:
        return orjson.loads(await read_body(request, CONTROL_BODY_BYTES))
    except BodyTooLarge:
        raise control.BadControl(f"control body larger than {CONTROL_BODY_BYTES} bytes", 413) from None
    except orjson.JSONDecodeError:
        raise control.BadControl("body must be JSON") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing early on a declared or actual size over the limit (no unbounded buffer)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps({"error": message}), {"Content-Type": JSON, **(headers or {})})


def upstream_failure(r: int, outcome: Outcome, exc: BaseException, timeout_s: float) -> Reply:
    """The answer when nothing usable came back from replica r (and no retry is left)."""
    if outcome is Outcome.TIMEOUT:
        return error_reply(504, f"replica {r} did not answer within {timeout_s:g} s")
    if outcome is Outcome.FAILED:
        return error_reply(502, f"bad answer from replica {r}: {exc.__class__.__name__}")
    return error_reply(502, f"replica {r} unreachable: {exc.__class__.__name__}")


class Gateway:
    """The handlers, holding the pool and what they need from the config."""

    def __init__(self, cfg: ScenarioConfig, pool: ReplicaPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.router = pool.router
        self.membership = pool.membership
        self.model = cfg.model.name
        self.version_index = {v: i for i, v in enumerate(self.membership.versions)}
        self.max_body = cfg.server.max_body_bytes
        self.windows = VersionWindows(len(self.membership.versions), cfg.window_s)
        self.started = perf_counter()
        self.commands: deque[control.Command] = deque(maxlen=COMMANDS_KEPT)
        self.commands_received = 0
        # shadow traffic: the twin's Mirror, on the seed's shadow stream (never routing's)
        mirror = Mirror.from_config(cfg, self.router, make_streams(cfg.seed).shadow)
        self.shadow = ShadowTraffic(self, mirror) if mirror is not None else None
        self.async_api: asyncq.AsyncApi | None = None  # pattern=async: the queue (real.asyncq.api)

    # -- proxy -----------------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        """Infer through Starlette: only reached if the fast path is bypassed; same semantics."""
        t0 = perf_counter()
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            return self._done(t0, error_reply(413, f"body larger than {self.max_body} bytes")).response()
        params = request.path_params
        reply = await self.forward("POST", request.url.path, params["model"], params.get("version"),
                                   request.headers.get("x-user-id"), request.headers.get("content-type"), body, t0,
                                   request.headers.get(VERSION_HEADER), WARMUP_HEADER in request.headers,
                                   request.headers.get(INFER_HEADER_LENGTH))
        return reply.response()

    async def metadata(self, request: Request) -> Response:
        """GET model metadata/readiness from a healthy replica (of the version, if named). The
        unversioned metadata lists every version the gateway serves, not only that replica's."""
        params = request.path_params
        reply = await self.forward(
            "GET", request.url.path, params["model"], params.get("version"),
            request.headers.get("x-user-id"), None, b"", perf_counter(), request.headers.get(VERSION_HEADER),
        )
        if reply.status == 200 and "version" not in params and not request.url.path.endswith("/ready"):
            try:
                doc = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                doc["versions"] = self._deployed_versions()
                reply.body = orjson.dumps(doc)
        return reply.response()

    async def forward(self, method: str, path: str, model: str, version_name: str | None, raw_user: str | None,
                      ctype: str | None, body: bytes, t0: float, pin: str | None = None, warmup: bool = False,
                      header_length: str | None = None) -> Reply:
        """Route, send, retry as the RetryPolicy says, and map upstream failures to 502/503/504.

        `pin` is the x-model-version header; `warmup` the WARMUP_HEADER's presence (a request that
        is no part of the run: routed, and its copy decided, with a throwaway stream). An infer may also be copied to the shadow version
        (`real.gateway.shadow`): decided at the first pick, sent as a task this never awaits.
        `ctype` and `header_length` (Inference-Header-Content-Length) go upstream as the client
        sent them, absent when it sent none. A body asking for async serving (`parameters.async`)
        is queued instead (real.asyncq.api): 202, or what refuses it."""
        if method == "POST" and asyncq.ASYNC_MARK in body:
            submitted = await asyncq.submit(self, model, version_name, raw_user, pin, ctype, body, header_length)
            if submitted is not None:
                return self._done(t0, Reply(*submitted))
        target = self._target(model, version_name, raw_user, pin)
        if isinstance(target, Reply):
            return self._done(t0, target)
        version, user_id = target
        headers = {"Content-Type": ctype} if ctype is not None else {}
        if header_length is not None:
            headers[INFER_HEADER_LENGTH] = header_length
        if raw_user is not None:  # the replica's feature store takes an input-less request's entity from it
            headers["x-user-id"] = raw_user
        pool = self.pool
        record = method == "POST"  # infers count in the versions' windows; metadata reads do not
        mirror = self.shadow if record else None
        upstream_s = 0.0
        failed, outcome, attempt = -1, Outcome.OK, 0
        while True:
            r = self._pick(user_id, version, t0, failed, outcome, warmup)
            if mirror is not None:  # once per request, whatever the pick: the decision stream stays aligned
                mirror.offer(self.membership.version_of[r] if r >= 0 else -1, body, headers, raw_user, t0, warmup)
                mirror = None
            if r < 0:
                what = self.model if version is None else f"{self.model} version {self.membership.versions[version]}"
                reply = error_reply(503, f"no healthy replica for {what}", {"Retry-After": RETRY_AFTER_S})
                return self._done(t0, reply, upstream_s, version if record and version is not None else -1)
            served = self.membership.version_of[r] if record else -1
            t_up = perf_counter()
            try:
                status, payload, up_headers = await self._call(method, r, path, body, headers)
            except UPSTREAM_ERRORS as exc:
                upstream_s += perf_counter() - t_up
                outcome = request_outcome(exc)
                pool.on_request(r, outcome)
                if pool.retry.should_retry(attempt, outcome):
                    pool.metrics.retries.inc()
                    attempt, failed = attempt + 1, r
                    continue
                return self._done(t0, upstream_failure(r, outcome, exc, pool.upstream_timeout_s), upstream_s, served)
            elapsed = perf_counter() - t_up
            upstream_s += elapsed
            pool.on_request(r, Outcome.OK)
            pool.metrics.upstream_seconds[r].observe(elapsed)
            # which replica and version answered, whatever the status: a client (the load
            # generator) records a failure's version from these, as the twin does
            out_headers = {"x-replica": str(r), VERSION_HEADER: self.membership.version_name(r)}
            for name in PASSED_BACK:
                value = up_headers.get(name)
                if value is not None:
                    out_headers[name] = value
            return self._done(t0, Reply(status, payload, out_headers), upstream_s, served)

    def _target(self, model: str, version_name: str | None, raw_user: str | None,
                pin: str | None = None) -> tuple[int | None, int | None] | Reply:
        """(version index or None, user id or None) from the request, or the 4xx that refuses it.
        The URL's version and the x-model-version header (`pin`) pin alike (`pinned_version`)."""
        if model != self.model:
            return error_reply(404, f"unknown model {model!r}; this gateway serves {self.model!r}")
        try:
            version = pinned_version(self.membership.versions, version_name, pin, self.model)
        except BadPin as exc:
            return error_reply(exc.status, str(exc))
        if raw_user is None:
            return version, None  # anonymous: the version split is by weight, never sticky
        try:
            user_id = int(raw_user)
        except ValueError:
            return error_reply(400, f"x-user-id must be an integer, got {raw_user[:40]!r}")
        if user_id < 0:
            return error_reply(400, "x-user-id must be >= 0")
        return version, user_id

    def _pick(self, user_id: int | None, version: int | None, now: float, failed: int, outcome: Outcome,
              warmup: bool = False) -> int:
        """The replica for this attempt (a retry avoids the one that failed), or -1: none left."""
        try:
            return self.pool.pick(user_id, version, now, exclude=failed, warmup=warmup)
        except NoReplica:
            if failed >= 0 and self.pool.retry.may_reuse(outcome):
                return failed  # a dropped keep-alive connection, and no one else: try it again
            return -1

    async def _call(self, method: str, r: int, path: str, body: bytes,
                    headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        """One upstream request, counted in replica r's outstanding while it runs."""
        pool = self.pool
        session = pool.session
        assert session is not None
        pool.outstanding[r] += 1
        try:
            async with session.request(method, pool.url(r, path), data=body if method == "POST" else None,
                                       headers=headers, timeout=pool.timeout) as resp:
                return resp.status, await resp.read(), resp.headers
        finally:
            pool.outstanding[r] -= 1

    def _done(self, t0: float, reply: Reply, upstream_s: float = 0.0, version: int = -1) -> Reply:
        """Account for an answer: metrics, the x-gateway-s header, and `version`'s window."""
        now = perf_counter()
        total = now - t0
        own = max(total - upstream_s, 0.0)
        reply.headers["x-gateway-s"] = f"{own:.6f}"
        m = self.pool.metrics
        m.request_seconds.observe(total)
        m.gateway_seconds.observe(own)
        m.count(reply.status)
        if version >= 0:
            # x-correct (the replica judged a labelled request): the window's per-version accuracy
            correct = reply.headers.get(CORRECT_HEADER)
            self.windows.add(version, now, total, ok=200 <= reply.status < 300, error=reply.status >= 500,
                             correct=-1 if correct is None else int(correct == "1"))
        return reply

    # -- the gateway's own endpoints -------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return Response(b"", status_code=200)

    async def ready(self, request: Request) -> Response:
        """Ready while at least one replica is in rotation: then it can answer infers."""
        return Response(b"", status_code=200 if self.pool.any_routable() else 503)

    async def metrics(self, request: Request) -> Response:
        if self.async_api is not None:
            await self.async_api.refresh_metrics()
        return Response(generate_latest(self.pool.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _replica_doc(self, r: int) -> dict[str, object]:
        m = self.membership
        return {"replica": r, "url": self.pool.urls[r], "version": m.version_name(r), "healthy": m.healthy[r],
                "active": m.active[r], "routable": m.routable(r), "removed": m.removed[r],
                "in_flight": self.pool.outstanding[r]}

    async def replicas(self, request: Request) -> Response:
        return json_response({"replicas": [self._replica_doc(r) for r in range(len(self.membership))]})

    async def state(self, request: Request) -> Response:
        """What a controller reads at each tick: the View, over the last window_s."""
        now = perf_counter()
        view = view_of(self.router, now - self.started, self.windows.windows(now))
        return json_response(control.state_doc(view, self.membership, self.windows.window_s, self.commands))

    def _apply(self, action: Action) -> None:
        """Through the policy's `apply`, the twin's own; Eject/Restore reach the health policy
        too. A change the deployment refuses is the caller's error (409), never a 500."""
        try:
            apply(action, self.router, self.pool.health)
        except ValueError as exc:
            raise control.BadControl(str(exc), 409) from None

    async def get_weights(self, request: Request) -> Response:
        return json_response({"versions": self.membership.versions, "weights": self.router.version_weights,
                              "sticky": self.router.sticky})

    async def set_weights(self, request: Request) -> Response:
        """`{"weights": [w0, w1, ...]}`, one per model version, >= 0 with a positive sum."""
        try:
            self._apply(control.set_weights(await read_control_body(request), len(self.membership.versions)))
        except control.BadControl as exc:
            return oip_error(exc.status, str(exc))
        return await self.get_weights(request)

    async def replica_action(self, request: Request) -> Response:
        """`{"action": "drain"}` etc. on replica {replica}: its state after the change."""
        r = int(request.path_params["replica"])
        try:
            action = control.replica_action(r, await read_control_body(request), self.membership)
            self._apply(action)
        except control.BadControl as exc:
            return oip_error(exc.status, str(exc))
        return json_response(self._replica_doc(r))

    async def add_replica(self, request: Request) -> Response:
        """`{"url": ..., "version": NAME}`: a replica joins, not ready until its probes pass
        (`"active": false`: not before an activate either). 201 with its index and state."""
        try:
            new = control.new_replica(await read_control_body(request), self.membership, self.pool.urls)
            self._apply(AddReplica(new.version))
        except control.BadControl as exc:
            return oip_error(exc.status, str(exc))
        if not new.active:
            self.membership.drain(len(self.membership) - 1)
        r = self.pool.add(new.url)
        return json_response(self._replica_doc(r), status=201)

    async def rollout_command(self, request: Request) -> Response:
        """`{"command": "promote" | "abort"}`: queued, numbered, for the controller driver,
        which carries it out before its next tick. 202 with its number."""
        try:
            command = control.rollout_command(await read_control_body(request))
        except control.BadControl as exc:
            return oip_error(exc.status, str(exc))
        self.commands_received += 1
        queued = control.Command(self.commands_received, command, perf_counter() - self.started)
        self.commands.append(queued)
        return json_response(asdict(queued), status=202)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "servelab-gateway", "version": "0.1.0", "extensions": EXTENSIONS})

    # -- repository index and statistics: the replicas' documents merged --------------------

    def _members(self, version: int | None = None) -> list[int]:
        """The replicas in the deployment (of `version`, if given), removed ones left out."""
        m = self.membership
        return [r for r in range(len(m)) if not m.removed[r] and (version is None or m.version_of[r] == version)]

    def _deployed_versions(self) -> list[str]:
        m = self.membership
        return sorted({m.version_name(r) for r in self._members()})

    async def repository_index_doc(self, ready_only: bool = False) -> list[dict[str, object]]:
        """Triton's index over every replica (`aggregate.merge_index`); the gRPC gateway's too."""
        answers = await self.pool.ask_each(self._members(), "POST", "/v2/repository/index")
        docs = [_loads(body) for _, status, body in answers if status == 200]
        return aggregate.merge_index(self.model, self._deployed_versions(), docs, ready_only)

    async def stats_doc(self, model: str | None, version_name: str | None) -> tuple[int, dict[str, object]]:
        """(status, Triton's statistics document) summed over the replicas (of the version, if
        named); `model` None = every model. A 404 body for an unknown model or version."""
        if model is not None and model != self.model:
            return 404, {"error": f"unknown model {model!r}; this gateway serves {self.model!r}"}
        versions = self._deployed_versions()
        version: int | None = None
        if version_name is not None:
            if version_name not in self.version_index or version_name not in versions:
                return 404, {"error": f"unknown version {version_name!r} of model {self.model!r}; it serves {versions}"}
            version, versions = self.version_index[version_name], [version_name]
        answers = await self.pool.ask_each(self._members(version), "GET", "/v2/models/stats")
        docs = [_loads(body) for _, status, body in answers if status == 200]
        merged = aggregate.merge_stats(self.model, versions, docs)
        if version_name is not None:
            merged["model_stats"] = [e for e in merged["model_stats"] if e["version"] == version_name]
        return 200, merged

    async def repository_index(self, request: Request) -> Response:
        """`POST /v2/repository/index` (`{"ready": true}` lists only what is ready)."""
        try:
            body = await read_body(request, CONTROL_BODY_BYTES)
        except BodyTooLarge:
            return oip_error(413, f"body larger than {CONTROL_BODY_BYTES} bytes")
        ready_only = False
        if body.strip():
            doc = _loads(body)
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                return oip_error(400, 'body must be empty or JSON like {"ready": true}')
            ready_only = bool(doc.get("ready", False))
        return json_response(await self.repository_index_doc(ready_only))

    async def model_stats(self, request: Request) -> Response:
        """`GET /v2/models[/{m}[/versions/{v}]]/stats`, summed over the replicas."""
        status, doc = await self.stats_doc(request.path_params.get("model"), request.path_params.get("version"))
        return json_response(doc, status)

    async def shadow_records(self, request: Request) -> Response:
        """`GET /v2/gateway/shadow[?since=N]`: the shadow copies' records as columns, from
        record N on (read-only, like the state document; see real.gateway.shadow)."""
        since = request.query_params.get("since", "0")
        if not (since.isascii() and since.isdigit()):
            return oip_error(400, f"since must be an integer >= 0, got {since[:40]!r}")
        return json_response(self.shadow.document(int(since)) if self.shadow is not None else empty_document())


def _loads(body: bytes) -> object:
    """JSON, or None for what is not."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def create_app(cfg: ScenarioConfig, upstreams: Sequence[str], *, token: str | None = None) -> Starlette:
    """The gateway for `cfg` in front of `upstreams` (index = replica index).

    `token` guards the control endpoints (default: $SERVELAB_TOKEN, then cfg.server.token;
    none = control closed). Pool and health settings come from cfg.gateway and cfg.health.
    """
    if len(upstreams) != cfg.replicas:
        raise ValueError(f"{len(upstreams)} upstreams for replicas={cfg.replicas}: give one URL per replica")
    if token is None:
        token = os.environ.get("SERVELAB_TOKEN") or cfg.server.token
    pool = ReplicaPool(cfg, upstreams, Router.from_config(cfg))
    gw = Gateway(cfg, pool)
    if cfg.pattern == "async":
        from real.asyncq.queue import redis_from_env
        from real.asyncq.worker import output_specs

        gw.async_api = asyncq.AsyncApi(cfg, pool.metrics.registry, *redis_from_env(), frozenset(output_specs(cfg)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.start()
        if gw.async_api is not None:
            await gw.async_api.start()
        try:
            yield
        finally:
            if gw.async_api is not None:
                await gw.async_api.close()
            if gw.shadow is not None:
                await gw.shadow.stop()
            await pool.stop()

    routes = [
        # POST is answered by InferFastPath before Starlette; these give other methods a 405
        Route("/v2/models/{model}/infer", gw.infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", gw.infer, methods=["POST"]),
        Route("/v2/health/live", gw.live, methods=["GET"]),
        Route("/v2/health/ready", gw.ready, methods=["GET"]),
        Route("/v2", gw.server_metadata, methods=["GET"]),
        Route("/v2/repository/index", gw.repository_index, methods=["POST"]),
        Route("/v2/models/stats", gw.model_stats, methods=["GET"]),  # before {model}: every model's
        Route("/v2/models/{model}/stats", gw.model_stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", gw.model_stats, methods=["GET"]),
        Route("/v2/models/{model}", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", gw.metadata, methods=["GET"]),
        Route(REPLICAS_PATH, gw.replicas, methods=["GET"]),
        Route(REPLICAS_PATH, BearerAuth(request_response(gw.add_replica), token=token, prefixes=(REPLICAS_PATH,)),
              methods=["POST"]),
        Route(REPLICAS_PATH + "/{replica:int}", gw.replica_action, methods=["POST"]),
        Route(ROLLOUT_PATH, gw.rollout_command, methods=["POST"]),
        Route(STATE_PATH, gw.state, methods=["GET"]),
        Route(SHADOW_PATH, gw.shadow_records, methods=["GET"]),
        Route(WEIGHTS_PATH, gw.get_weights, methods=["GET"]),
        Route(WEIGHTS_PATH, gw.set_weights, methods=["POST"]),
        Route("/metrics", gw.metrics, methods=["GET"]),
        *asyncq.routes(gw),  # GET /v2/models/{model}/results/{id}
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(BearerAuth, token=token, prefixes=CONTROL_PREFIXES),
        ],
        exception_handlers={HTTPException: http_exception, Exception: unexpected},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    # the fast path sits outside Starlette's own error middleware: built here, Starlette keeps it
    app.middleware_stack = InferFastPath(app.build_middleware_stack(), gateway=gw)
    return app
