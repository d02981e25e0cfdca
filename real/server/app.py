"""The replica's ASGI app: Open Inference Protocol REST (KServe v2, Triton's extensions).

One process serves one model version (the one `Membership.from_config` gives its replica index);
asking for another version is a 404, as a Triton repository that does not hold it would answer.

Status codes, all with an OIP error body `{"error": "..."}`:
  400 bad request body      404 unknown model, version or route     405 wrong method
  413 body > server.max_body_bytes
  415 content type neither JSON nor application/octet-stream (Triton's binary tensor data extension:
      `Inference-Header-Content-Length` splits the body into JSON and raw tensor bytes; see
      real.server.protocol)
  401 control call without the bearer token
  503 queue full (shed, with Retry-After), model unloaded, or the replica is down (a fault drill)
  504 the request's `parameters.timeout` (microseconds) ran out while it was queued: it was
      dropped at dispatch and never ran (gRPC's DEADLINE_EXCEEDED maps to 504 as well)
  404 also: features.fallback=error and the request's entity has no row in the feature store
  503 also: features.fallback=error and the feature store did not answer within features.timeout_s
  500 the model failed: it raised, or the version's error rate (model.versions[...].error_rate,
      or a scheduled fault's) failed the request after its batch ran (real.server.quality; only
      once the replica knows the run's time 0: warm-up and calibration requests never fail)

With an online feature store (features.store != none, real.server.features) a request may carry
no input (`inputs` absent or `[]`) and name an entity instead, `parameters.entity_id` (an integer
>= 0) or else the x-user-id header (the gateway forwards it): the entity's 64 features are then
its input row, and its label (from the offline table) judges the answer. A request that carries
its input is served on it, with no lookup (features.store=none: always; `entity_id` is ignored).
The answer's parameters then say `feature_lookup_s` (its batch's lookup time), `feature_hit`
(its row came from the replica's cache) and `feature_fallback` (served on the default row).

A labelled request (`parameters.label`) is judged: the answer's parameters say `correct`
(true/false) and an `x-correct: 1|0` header tells the gateway, whose windows count accuracy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from real.asgi import BodyTooLarge, ClientGone, header_values, infer_target, receive_body

from real.server.backends import Backend, make_backend
from real.server.batcher import AsyncBatcher, BackendFailed, DeadlineExceeded, FeatureLookupFailed, QueueFull, clock
from real.server.features import FeatureStage
from real.server.metrics import CONTENT_TYPE, ServerMetrics
from real.server.protocol import (
    INFER_HEADER_LENGTH,
    INPUT_SPEC,
    USER_HEADER,
    InferRequest,
    InferResult,
    ProtocolError,
    error_body,
    infer_response,
    parse_header_length,
    parse_infer,
)
from real.server.quality import ReplicaQuality
from sim.config import ScenarioConfig
from sim.policy.batching import DynamicBatcher
from sim.policy.membership import Membership

SERVER_NAME = "servelab"
SERVER_VERSION = "0.1.0"
JSON = "application/json"
JSON_BYTES = JSON.encode()
OCTET_STREAM = "application/octet-stream"  # what Triton's clients send with binary tensors
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
TOKEN_ENV = "SERVELAB_TOKEN"
FEATURE_FAILURE_HEADER = "x-feature-failure"  # a refusal the feature lookup caused: missing | timeout


@dataclass
class FaultState:
    """A fault drill's effect on this replica (`POST /v2/fault`, a controller's `Fault`): while
    `down`, readiness fails and every infer answers 503; the emulated device time is
    multiplied by `slowdown`. The defaults are a healthy replica."""

    down: bool = False
    slowdown: float = 1.0


class FaultableBackend:
    """The replica's backend, with the device time it plans stretched by the fault's slowdown
    (the numpy backend plans none: its speed is the CPU's)."""

    def __init__(self, inner: Backend, fault: FaultState, quality: ReplicaQuality | None = None) -> None:
        self.inner = inner
        self.fault = fault
        self.quality = quality  # the version's scheduled slowdown (faults), on the run's clock
        self.platform = inner.platform
        self.outputs = inner.outputs
        self.inline = bool(getattr(inner, "inline", False))  # the batcher runs an inline backend on the loop

    def load(self) -> None:
        self.inner.load()

    def plan(self, batch_size: int) -> float:
        planned = self.inner.plan(batch_size) * self.fault.slowdown
        return planned * self.quality.slowdown() if self.quality is not None else planned

    def run(self, x: np.ndarray, planned: float) -> dict[str, np.ndarray]:
        return self.inner.run(x, planned)


@dataclass
class Replica:
    """Everything one replica process serves; kept on `app.state.replica`."""

    cfg: ScenarioConfig
    index: int
    version: str
    backend: Backend
    batcher: AsyncBatcher
    metrics: ServerMetrics
    token: str
    token_configured: bool
    loaded: bool = False
    output_names: frozenset[str] = field(default_factory=frozenset)
    fault: FaultState = field(default_factory=FaultState)
    quality: ReplicaQuality | None = None  # failures and right/wrong answers of its version (None: never)
    features: FeatureStage | None = None  # the feature lookup stage (features.store != none)

    @property
    def model(self) -> str:
        return self.cfg.model.name

    @property
    def serving(self) -> bool:
        """Ready for infers: the model is loaded and no fault holds the replica down."""
        return self.loaded and not self.fault.down


def resolve_token(cfg: ScenarioConfig) -> tuple[str, bool]:
    """Env SERVELAB_TOKEN, else server.token, else a random token nobody is told.

    A generated token is never logged: without a configured token, control endpoints are simply
    unusable, which is the safe default for a server anyone on the box can reach.
    """
    token = os.environ.get(TOKEN_ENV) or cfg.server.token
    if token:
        return token, True
    return secrets.token_urlsafe(32), False


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


def _rep(request: Request) -> Replica:
    return request.app.state.replica  # type: ignore[no-any-return]


def model_problem(rep: Replica, model: str, version: str | None) -> str | None:
    """Why this replica cannot serve (model, version), or None."""
    if model != rep.model:
        return f"unknown model {model!r}; this server has {rep.model!r}"
    if version is not None and version != rep.version:
        return f"unknown version {version!r} of model {model!r}; this replica serves version {rep.version!r}"
    return None


def _check_model(rep: Replica, request: Request) -> Response | None:
    """A 404 for a model or version this replica does not serve, else None."""
    problem = model_problem(rep, request.path_params["model"], request.path_params.get("version"))
    return None if problem is None else _error(404, problem)


def check_content_type(ctype: str | None) -> None:
    """JSON, application/octet-stream (a body with binary tensors) or no content type at all
    (tritonclient sends none); anything else is a 415. The body's layout is told by the
    Inference-Header-Content-Length header, not by the content type, as in Triton."""
    if ctype is None:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media != JSON and media != OCTET_STREAM:
        raise ProtocolError(415, f"content type {media!r} not supported; send {JSON} (or {OCTET_STREAM} with binary tensors)")


# -- health and metadata -------------------------------------------------------------------


async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    rep = _rep(request)
    return _json({"ready": rep.serving}, 200 if rep.serving else 503)


async def server_metadata(request: Request) -> Response:
    return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def model_metadata(request: Request) -> Response:
    rep = _rep(request)
    if (bad := _check_model(rep, request)) is not None:
        return bad
    return _json(
        {
            "name": rep.model,
            "versions": [rep.version],
            "platform": rep.backend.platform,
            "inputs": [INPUT_SPEC.metadata()],
            "outputs": [spec.metadata() for spec in rep.backend.outputs.values()],
            "parameters": {"replica": rep.index, "max_batch_size": rep.cfg.batching.max_batch_size},
        }
    )


async def model_ready(request: Request) -> Response:
    rep = _rep(request)
    if (bad := _check_model(rep, request)) is not None:
        return bad
    return _json({"name": rep.model, "ready": rep.serving}, 200 if rep.serving else 503)


async def model_stats(request: Request) -> Response:
    """Triton's statistics document; `/v2/models/stats` (no model named) is every model's."""
    rep = _rep(request)
    if "model" in request.path_params and (bad := _check_model(rep, request)) is not None:
        return bad
    return _json(stats_document(rep))


def stats_document(rep: Replica) -> dict[str, object]:
    """Triton's `/v2/models/{m}/stats` shape from the batcher's counters."""
    st = rep.batcher.stats
    return {
        "model_stats": [
            {
                "name": rep.model,
                "version": rep.version,
                "last_inference": st.last_inference_ms,
                "inference_count": st.inference_count,
                "execution_count": st.execution_count,
                "inference_stats": {
                    "success": {"count": st.success, "ns": st.success_ns},
                    "fail": {"count": st.fail, "ns": st.fail_ns},
                    "queue": {"count": st.queue_count, "ns": st.queue_ns},
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": {"count": c, "ns": ns}}
                    for size, (c, ns) in sorted(st.by_batch.items())
                ],
                **({"feature_store": rep.features.document()} if rep.features is not None else {}),
            }
        ]
    }


async def metrics(request: Request) -> Response:
    rep = _rep(request)
    rep.metrics.queue_len.set(rep.batcher.queue_len)
    return Response(rep.metrics.render(), media_type=CONTENT_TYPE)


# -- inference -----------------------------------------------------------------------------


@dataclass(slots=True)
class InferOutcome:
    """How one parsed infer ended, whatever the transport: `status` 200 with `result`, or the
    HTTP status of the refusal and its `message` (gRPC maps the status to its code)."""

    status: int
    message: str = ""
    result: InferResult | None = None
    correct: bool | None = None  # a labelled request's verdict (None: not judged)
    server_s: float = 0.0  # from `received` to the answer's being ready
    retry_after: bool = False  # a shed: the answer tells when to retry
    feature_failure: str = ""  # refused because the feature lookup failed: missing | timeout


def refuse(rep: Replica, status: int, message: str) -> InferOutcome:
    """A refused infer, counted as REST has always counted a ProtocolError."""
    rep.metrics.errors.labels(str(status)).inc()
    rep.metrics.requests.labels("error").inc()
    return InferOutcome(status, message)


async def infer_parsed(rep: Replica, req: InferRequest, received: float) -> InferOutcome:
    """A parsed request through this replica: the transport-neutral half of an infer, shared by
    REST and gRPC (one batcher, one set of counters). The caller has checked the model and
    version (`model_problem`) and parsed the body; `received` is when the request arrived
    (`real.server.batcher.clock`). Counts it in the metrics, in flight while it waits."""
    m = rep.metrics
    m.in_flight.inc()
    try:
        if rep.fault.down:
            return refuse(rep, 503, f"replica {rep.index} is down (a fault drill: POST /v2/fault)")
        if not rep.loaded:
            return refuse(rep, 503, f"model {rep.model!r} version {rep.version!r} is not loaded")
        result = await rep.batcher.submit(req, received)
    except QueueFull:
        m.shed.inc()
        m.requests.labels("shed").inc()
        return InferOutcome(503, "queue full (batching.max_queue_size); retry later", retry_after=True)
    except DeadlineExceeded:
        m.timeouts.inc()
        m.errors.labels("504").inc()
        m.requests.labels("timeout").inc()
        return InferOutcome(504, "request timeout (parameters.timeout) expired while queued")
    except BackendFailed as exc:
        return refuse(rep, 500, str(exc))
    except FeatureLookupFailed as exc:  # features.fallback=error: 404 missing entity, 503 store unavailable
        outcome = refuse(rep, exc.status, exc.message)
        outcome.retry_after = exc.status == 503
        outcome.feature_failure = exc.reason
        return outcome
    finally:
        m.in_flight.dec()
    judged = rep.quality.judge(result.outputs, req.label, req.id) if rep.quality is not None else None
    if judged is not None and judged.failed:  # the version's error rate: a model failure after the batch ran
        return refuse(rep, 500, f"model version {rep.version!r} failed on this request (its error rate)")
    server_s = clock() - received
    m.latency.observe(server_s)
    m.ok.inc()
    return InferOutcome(200, result=result, correct=judged.correct if judged is not None else None, server_s=server_s)


async def answer_infer(
    rep: Replica,
    model: str,
    version: str | None,
    content_type: str | None,
    read_body: Callable[[], Awaitable[bytes]],
    received: float,
    header_length: str | None = None,
    user: str | None = None,
) -> tuple[int, bytes, dict[str, str] | None]:
    """One REST infer, from the raw request parts to (status, body, extra headers): the one code
    path behind both the Starlette route and the bare-ASGI fast path. `header_length` is the
    request's Inference-Header-Content-Length (binary tensors); a binary answer's extra headers
    carry its own and its content type. `user` is the x-user-id header: an input-less request's
    entity when its body names none (features on)."""
    if (problem := model_problem(rep, model, version)) is not None:
        rep.metrics.errors.labels("404").inc()
        return 404, error_body(problem), None
    try:
        if rep.fault.down:
            raise ProtocolError(503, f"replica {rep.index} is down (a fault drill: POST /v2/fault)")
        check_content_type(content_type)
        split = parse_header_length(header_length)
        body = await read_body()
        req = parse_infer(body, rep.cfg.batching.max_batch_size, rep.output_names, split, rep.features is not None, user)
    except ProtocolError as exc:
        refuse(rep, exc.status, exc.message)
        return exc.status, error_body(exc.message), None
    outcome = await infer_parsed(rep, req, received)
    if outcome.result is None:
        headers = {"Retry-After": "1"} if outcome.retry_after else None
        if outcome.feature_failure:  # the client can tell it from a full queue's 503 (FEATURE_FAILURE_HEADER)
            headers = {**(headers or {}), FEATURE_FAILURE_HEADER: outcome.feature_failure}
        return outcome.status, error_body(outcome.message), headers
    correct = outcome.correct
    content, json_length = infer_response(rep.model, rep.version, req, outcome.result, rep.backend.outputs, rep.index,
                                          outcome.server_s, correct)
    extra = None if correct is None else {"x-correct": "1" if correct else "0"}
    if json_length is not None:
        extra = {**(extra or {}), "content-type": OCTET_STREAM, INFER_HEADER_LENGTH: str(json_length)}
    return 200, content, extra


async def infer(request: Request) -> Response:
    """Never reached: InferFastPath answers every POST to an infer URL before routing. The
    routes exist so that other methods on those URLs get their 405."""
    raise RuntimeError("infer reached the router; InferFastPath is missing from the middleware")


INFER_HEADER_BYTES = INFER_HEADER_LENGTH.lower().encode()
USER_HEADER_BYTES = USER_HEADER.encode()


class InferFastPath:
    """Infer straight from ASGI (see real.asgi); every other request goes to Starlette."""

    def __init__(self, app: ASGIApp, replica: Replica) -> None:
        self.app = app
        self.rep = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = infer_target(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        await self.answer(self.rep, scope, receive, send, *target)

    @staticmethod
    async def answer(rep: Replica, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        received = clock()
        headers = header_values(scope["headers"], b"content-type", b"content-length", INFER_HEADER_BYTES, USER_HEADER_BYTES)
        declared = headers.get(b"content-length", "0")
        if not declared.isdigit():
            status, content, extra = 400, error_body("invalid Content-Length"), None
        else:
            async def read_body() -> bytes:
                try:
                    return await receive_body(receive, int(declared), rep.cfg.server.max_body_bytes)
                except BodyTooLarge as exc:
                    raise ProtocolError(413, f"{exc} (server.max_body_bytes)") from None

            try:
                status, content, extra = await answer_infer(rep, model, version, headers.get(b"content-type"), read_body,
                                                            received, headers.get(INFER_HEADER_BYTES), headers.get(USER_HEADER_BYTES))
            except ClientGone:
                return
        raw = [(b"content-length", str(len(content)).encode())]
        if extra:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        if extra is None or "content-type" not in extra:
            raw.append((b"content-type", JSON_BYTES))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})


# -- model repository (Triton extension) ---------------------------------------------------


async def repository_index(request: Request) -> Response:
    """Triton's index: what this replica holds; `{"ready": true}` lists only what is ready."""
    rep = _rep(request)
    try:
        ready_only = parse_index_request(await request.body())
    except ProtocolError as exc:
        return _error(exc.status, exc.message)
    if ready_only and not rep.loaded:
        return _json([])
    state = "READY" if rep.loaded else "UNAVAILABLE"
    return _json([{"name": rep.model, "version": rep.version, "state": state}])


def parse_index_request(body: bytes) -> bool:
    """A repository index request's `ready` flag: an empty body (tritonclient's) or
    `{"ready": bool}`; anything else is a 400."""
    if len(body) > 65536:
        raise ProtocolError(413, "repository index body larger than 65536 bytes")
    if not body.strip():
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError(400, 'body must be empty or JSON like {"ready": true}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
        raise ProtocolError(400, 'body must be empty or JSON like {"ready": true}')
    return bool(doc.get("ready", False))


def _authorised(rep: Replica, request: Request) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), rep.token.encode())


async def _control(request: Request, load: bool) -> Response:
    rep = _rep(request)
    if not _authorised(rep, request):
        return _error(401, "control endpoints need 'Authorization: Bearer <token>' (env SERVELAB_TOKEN)", {"WWW-Authenticate": "Bearer"})
    if (bad := _check_model(rep, request)) is not None:
        return bad
    if load and not rep.loaded:
        await asyncio.to_thread(rep.backend.load)
    rep.loaded = load
    return _json({"name": rep.model, "version": rep.version, "state": "READY" if load else "UNAVAILABLE"})


async def load_model(request: Request) -> Response:
    return await _control(request, True)


def parse_t0(doc: object) -> float | None:
    """The body's `t0_unix` (the wall time, time.time(), of the run's time 0), or None."""
    if not isinstance(doc, dict) or doc.get("t0_unix") is None:
        return None
    t0 = doc["t0_unix"]
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0 < t0 < float("inf"):
        raise ProtocolError(400, f"t0_unix must be a wall time in seconds (time.time()), got {t0!r}")
    return float(t0)


def parse_fault(doc: object) -> FaultState:
    """`{"down": bool, "slowdown": number > 0}`; a missing key takes the healthy default, so
    `{}` clears a fault (as the controller's `Fault(replica)` does). `t0_unix` may ride along
    (`parse_t0`)."""
    if not isinstance(doc, dict) or set(doc) - {"down", "slowdown", "t0_unix"}:
        raise ProtocolError(400, 'body must be JSON like {"down": false, "slowdown": 2.0} or {"t0_unix": 1700000000.0}')
    down = doc.get("down", False)
    slowdown = doc.get("slowdown", 1.0)
    if not isinstance(down, bool):
        raise ProtocolError(400, f"down must be true or false, got {down!r}")
    if isinstance(slowdown, bool) or not isinstance(slowdown, (int, float)) or not 0 < slowdown < float("inf"):
        raise ProtocolError(400, f"slowdown must be a finite number > 0, got {slowdown!r}")
    return FaultState(down, float(slowdown))


async def set_fault(request: Request) -> Response:
    """Token-guarded fault drill: a replica that is down, or slow, from now on.

    `{"t0_unix": T}` tells the replica the wall time (time.time()) of the run's time 0, from
    which its version's scheduled faults (model.versions[...].faults) count; until it is told, none
    applies and its version fails no request (its error rate is the run's, not the warm-up's).
    The run's driver sends it at load start, and to a replica started mid-run before it takes
    traffic. A body holding only `t0_unix` leaves a fault drill as it is; with
    `down`/`slowdown` too, both apply. The answer names `t0_unix` once it is known."""
    rep = _rep(request)
    if not _authorised(rep, request):
        return _error(401, "control endpoints need 'Authorization: Bearer <token>' (env SERVELAB_TOKEN)", {"WWW-Authenticate": "Bearer"})
    try:
        body = await request.body()
        if len(body) > 65536:
            raise ProtocolError(413, "fault body larger than 65536 bytes")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProtocolError(400, "body must be JSON") from None
        fault = parse_fault(doc)
        t0_unix = parse_t0(doc)
    except ProtocolError as exc:
        return _error(exc.status, exc.message)
    if set(doc) != {"t0_unix"}:  # time 0 alone leaves a drill as it is
        rep.fault.down, rep.fault.slowdown = fault.down, fault.slowdown
    answer: dict[str, object] = {"replica": rep.index, "down": rep.fault.down, "slowdown": rep.fault.slowdown}
    if t0_unix is not None and rep.quality is not None:
        rep.quality.set_t0_unix(t0_unix)
    if rep.quality is not None and rep.quality.t0_unix is not None:
        answer["t0_unix"] = rep.quality.t0_unix
    return _json(answer)


async def unload_model(request: Request) -> Response:
    return await _control(request, False)


# -- errors --------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail or "error", exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    print(f"servelab.server: internal error on {request.url.path}: {exc!r}", file=sys.stderr, flush=True)
    return _error(500, "internal server error")


# -- the app -------------------------------------------------------------------------------


def served_version(cfg: ScenarioConfig, replica: int) -> str:
    return Membership.from_config(cfg).version_name(replica)


def feature_stage(cfg: ScenarioConfig, metrics: ServerMetrics | None = None) -> FeatureStage | None:
    """The replica's feature lookup stage for `features.*`, or None (features.store=none): its
    cache, the store (embedded: this replica's own copy of the offline table, materialised here;
    redis: the run's, in $SERVELAB_REDIS_URL, materialised by the launcher), fallback and timeout."""
    f = cfg.features
    if f.store == "none":
        return None
    from real.features import make_store
    from real.launcher import REDIS_PASSWORD_ENV, REDIS_URL_ENV
    from real.server.protocol import FEATURES
    from sim.policy.features import FallbackPolicy, FeatureCache

    store = make_store(f, redis_url=os.environ.get(REDIS_URL_ENV) or cfg.server.redis_url,
                       redis_password=os.environ.get(REDIS_PASSWORD_ENV) or None)
    fallback = FallbackPolicy.zeros(FEATURES) if f.fallback == "default" else FallbackPolicy("error")
    return FeatureStage(store, FeatureCache(f.cache_size, f.cache_ttl_s), fallback, f.timeout_s, clock, f.store,
                        metrics.on_lookup if metrics is not None else None)


async def ready_store(stage: FeatureStage) -> None:
    """Connect a networked store from the serving loop before the replica says ready: a Redis
    that is down or refuses the password stops the replica with one line naming the URL."""
    connect = getattr(stage.store, "connect", None)
    if connect is not None:
        await connect()


def create_app(cfg: ScenarioConfig, replica: int, version: str | None = None) -> Starlette:
    """The replica's app; the model loads (and the batcher starts) in the lifespan startup.
    `version`: the one it serves (a replica added at run time), else its index's initial one."""
    version = version if version is not None else served_version(cfg, replica)
    fault = FaultState()
    quality = ReplicaQuality.from_config(cfg, version, replica)
    backend = FaultableBackend(make_backend(cfg, replica, version), fault, quality)
    server_metrics = ServerMetrics()
    features = feature_stage(cfg, server_metrics)
    batcher = AsyncBatcher(
        DynamicBatcher(cfg.batching.max_batch_size, cfg.batching.max_queue_delay_s),
        backend,
        instances=cfg.concurrency,
        max_queue_size=cfg.batching.max_queue_size,
        on_batch=server_metrics.on_batch,
        features=features,
    )
    token, configured = resolve_token(cfg)
    rep = Replica(
        cfg=cfg,
        index=replica,
        version=version,
        backend=backend,
        batcher=batcher,
        metrics=server_metrics,
        token=token,
        token_configured=configured,
        output_names=frozenset(backend.outputs),
        fault=fault,
        quality=quality,
        features=features,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(backend.load)
        if features is not None:
            await ready_store(features)
        batcher.start()
        rep.loaded = True
        try:
            yield
        finally:
            rep.loaded = False
            batcher.stop()
            if features is not None:
                await features.close()

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [  # infer normally never gets here: InferFastPath answers it first
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", model_stats, methods=["GET"]),  # before {model}: every model's
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/stats", model_stats, methods=["GET"]),
        Route(versioned + "/stats", model_stats, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load_model, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload_model, methods=["POST"]),
        Route("/v2/fault", set_fault, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        middleware=[Middleware(InferFastPath, replica=rep)],
    )
    app.state.replica = rep
    return app
