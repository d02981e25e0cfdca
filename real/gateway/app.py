"""The gateway's ASGI app: OIP routes, the proxy hot path, health, metrics and control.

Bodies are forwarded as bytes, never parsed: validation is the replica's job (it answers 4xx,
which the gateway passes through unchanged). The gateway only checks what it must know to
route: the model and version in the path, the user id header, and the body size.
"""

from __future__ import annotations

import math
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import AsyncIterator, Sequence

import aiohttp
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from real.gateway.auth import BearerAuth
from real.gateway.errors import JSON, http_exception, json_response, oip_error, unexpected
from real.gateway.fastpath import InferFastPath
from real.gateway.pool import PoolOptions, ReplicaPool
from sim.config import ScenarioConfig
from sim.policy.split import NoReplica, Router

CONTROL_PREFIX = "/v2/gateway/weights"
RETRY_AFTER_S = "1"


class BodyTooLarge(Exception):
    pass


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


class Gateway:
    """The handlers, holding the pool and what they need from the config."""

    def __init__(self, cfg: ScenarioConfig, pool: ReplicaPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.model = cfg.model.name
        self.version_index = {v: i for i, v in enumerate(cfg.model.versions)}
        self.max_body = cfg.server.max_body_bytes
        self.weights: list[float] = list(cfg.gateway.version_weights) or [
            float(len(m)) for m in pool.router.replicas_of_version
        ]

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
                                   request.headers.get("x-user-id"), request.headers.get("content-type"), body, t0)
        return reply.response()

    async def metadata(self, request: Request) -> Response:
        """GET model metadata/readiness from a healthy replica (of the version, if named)."""
        params = request.path_params
        reply = await self.forward(
            "GET", request.url.path, params["model"], params.get("version"),
            request.headers.get("x-user-id"), None, b"", perf_counter(),
        )
        return reply.response()

    async def forward(self, method: str, path: str, model: str, version_name: str | None, raw_user: str | None,
                      ctype: str | None, body: bytes, t0: float) -> Reply:
        """Route, send, retry once on a connection failure, and map upstream failures to 502/503/504."""
        if model != self.model:
            return self._done(t0, error_reply(404, f"unknown model {model!r}; this gateway serves {self.model!r}"))
        version: int | None = None
        if version_name is not None:
            version = self.version_index.get(version_name)
            if version is None:
                known = ", ".join(self.version_index)
                return self._done(t0, error_reply(404, f"unknown version {version_name!r} of {self.model!r}; known: {known}"))
        user_id: int | None = None  # anonymous: the version split is by weight, never sticky
        if raw_user is not None:
            try:
                user_id = int(raw_user)
            except ValueError:
                return self._done(t0, error_reply(400, f"x-user-id must be an integer, got {raw_user[:40]!r}"))
            if user_id < 0:
                return self._done(t0, error_reply(400, "x-user-id must be >= 0"))
        headers = {"Content-Type": ctype} if ctype is not None else {}

        pool = self.pool
        session = pool.session
        assert session is not None
        upstream_s = 0.0
        failed = -1
        refused = False
        for attempt in (0, 1):
            try:
                r = pool.pick(user_id, version, t0, exclude=failed)
            except NoReplica:
                if failed >= 0 and not refused:
                    r = failed  # a dropped keep-alive connection, and no one else: try it again
                else:
                    what = self.model if version is None else f"{self.model} version {version_name}"
                    return self._done(t0, error_reply(503, f"no healthy replica for {what}", {"Retry-After": RETRY_AFTER_S}), upstream_s)
            pool.outstanding[r] += 1
            t_up = perf_counter()
            try:
                async with session.request(method, pool.url(r, path), data=body if method == "POST" else None,
                                           headers=headers, timeout=pool.timeout) as resp:
                    payload = await resp.read()
                    status = resp.status
                    up_headers = resp.headers
            except TimeoutError:
                upstream_s += perf_counter() - t_up
                return self._done(t0, error_reply(504, f"replica {r} did not answer within {pool.options.upstream_timeout_s:g} s"), upstream_s)
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # nothing came back: infer is idempotent, so one more try elsewhere is safe
                upstream_s += perf_counter() - t_up
                refused = isinstance(exc, aiohttp.ClientConnectorError)
                if refused:
                    pool.mark_down(r, f"connection failed: {exc}")
                if attempt == 0:
                    pool.metrics.retries.inc()
                    failed = r
                    continue
                return self._done(t0, error_reply(502, f"replica {r} unreachable: {exc.__class__.__name__}"), upstream_s)
            except aiohttp.ClientError as exc:
                upstream_s += perf_counter() - t_up
                return self._done(t0, error_reply(502, f"bad answer from replica {r}: {exc.__class__.__name__}"), upstream_s)
            finally:
                pool.outstanding[r] -= 1
            elapsed = perf_counter() - t_up
            upstream_s += elapsed
            pool.metrics.upstream_seconds[r].observe(elapsed)
            out_headers = {"x-replica": str(r)}
            for name in ("Content-Type", "Retry-After"):
                value = up_headers.get(name)
                if value is not None:
                    out_headers[name] = value
            return self._done(t0, Reply(status, payload, out_headers), upstream_s)
        raise AssertionError("unreachable")

    def _done(self, t0: float, reply: Reply, upstream_s: float = 0.0) -> Reply:
        total = perf_counter() - t0
        own = max(total - upstream_s, 0.0)
        reply.headers["x-gateway-s"] = f"{own:.6f}"
        m = self.pool.metrics
        m.request_seconds.observe(total)
        m.gateway_seconds.observe(own)
        m.count(reply.status)
        return reply

    # -- the gateway's own endpoints -------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return Response(b"", status_code=200)

    async def ready(self, request: Request) -> Response:
        """Ready while at least one replica is in rotation: then it can answer infers."""
        return Response(b"", status_code=200 if self.pool.any_healthy() else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.pool.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def replicas(self, request: Request) -> Response:
        pool = self.pool
        return json_response({
            "replicas": [
                {"replica": r, "url": u, "version": self.cfg.model.versions[r % len(self.cfg.model.versions)],
                 "healthy": pool.healthy[r], "in_flight": pool.outstanding[r]}
                for r, u in enumerate(pool.urls)
            ]
        })

    async def get_weights(self, request: Request) -> Response:
        return json_response({"versions": self.cfg.model.versions, "weights": self.weights, "sticky": self.cfg.gateway.sticky})

    async def set_weights(self, request: Request) -> Response:
        """`{"weights": [w0, w1, ...]}`, one per model version, >= 0 with a positive sum."""
        try:
            body = orjson.loads(await read_body(request, 65536))
        except (orjson.JSONDecodeError, BodyTooLarge):
            return oip_error(400, 'body must be JSON like {"weights": [0.9, 0.1]}')
        weights = body.get("weights") if isinstance(body, dict) else None
        n = len(self.cfg.model.versions)
        if (
            not isinstance(weights, list) or len(weights) != n
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0
        ):
            return oip_error(400, f"weights must be a list of {n} numbers >= 0 with a positive sum")
        self.pool.router.set_version_weights([float(w) for w in weights])
        self.weights = [float(w) for w in weights]
        return await self.get_weights(request)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "servelab-gateway", "version": "0.1.0", "extensions": []})


def create_app(
    cfg: ScenarioConfig,
    upstreams: Sequence[str],
    *,
    token: str | None = None,
    options: PoolOptions | None = None,
) -> Starlette:
    """The gateway for `cfg` in front of `upstreams` (index = replica index).

    `token` guards the control endpoints (default: $SERVELAB_TOKEN, then cfg.server.token;
    none = control closed). The upstream timeout defaults to the scenario's client deadline.
    """
    if len(upstreams) != cfg.replicas:
        raise ValueError(f"{len(upstreams)} upstreams for replicas={cfg.replicas}: give one URL per replica")
    if options is None:
        options = PoolOptions(upstream_timeout_s=cfg.timeout_s if cfg.timeout_s > 0 else 60.0)
    if token is None:
        token = os.environ.get("SERVELAB_TOKEN") or cfg.server.token
    router = Router(
        cfg.replicas, len(cfg.model.versions), cfg.lb.policy, cfg.lb.weights,
        cfg.gateway.version_weights, cfg.gateway.sticky,
    )
    pool = ReplicaPool(upstreams, router, cfg.seed, options)
    gw = Gateway(cfg, pool)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()

    routes = [
        # POST is answered by InferFastPath before Starlette; these give other methods a 405
        Route("/v2/models/{model}/infer", gw.infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", gw.infer, methods=["POST"]),
        Route("/v2/health/live", gw.live, methods=["GET"]),
        Route("/v2/health/ready", gw.ready, methods=["GET"]),
        Route("/v2", gw.server_metadata, methods=["GET"]),
        Route("/v2/models/{model}", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", gw.metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", gw.metadata, methods=["GET"]),
        Route("/v2/gateway/replicas", gw.replicas, methods=["GET"]),
        Route(CONTROL_PREFIX, gw.get_weights, methods=["GET"]),
        Route(CONTROL_PREFIX, gw.set_weights, methods=["POST"]),
        Route("/metrics", gw.metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(BearerAuth, token=token, prefixes=[CONTROL_PREFIX]),
        ],
        exception_handlers={HTTPException: http_exception, Exception: unexpected},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    # the fast path sits outside Starlette's own error middleware: built here, Starlette keeps it
    app.middleware_stack = InferFastPath(app.build_middleware_stack(), gateway=gw)
    return app
