"""The gateway's `GRPCInferenceService`: the front door over gRPC, beside REST.

An adapter over the one `Gateway` the REST app runs: an infer goes through `Gateway.forward`,
so it is routed by the same `Router` (same routing stream), retried by the same `RetryPolicy`,
copied to the shadow version by the same `Mirror`, and counted in the same metrics and
per-version windows a controller reads. The replicas behind it speak REST, so the request's
envelope is re-encoded once, in Triton's binary tensor data layout (`convert.rest_request`: a
JSON header, then the raw input bytes as they came), and the replica's binary answer is
converted back (`convert.response_from_rest`: raw output bytes as they came); the replica
validates it as any REST infer, so the gateway accepts exactly what its replicas accept.

gRPC metadata carries what REST headers carry: `x-user-id` (sticky split), `x-model-version`
(a version pin) and `x-servelab-warmup` (a request that is no part of the run). The answer's
parameters add `gateway_replica` and `gateway_s` (the gateway's own time), as the REST answer's
`x-replica` and `x-gateway-s` headers do.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson
from google.protobuf import json_format

from real.grpc import convert
from real.grpc import grpc_service_pb2 as pb
from real.grpc import grpc_service_pb2_grpc as pb_grpc
from real.grpc.replica import EXTENSIONS, SERVER_VERSION, abort, tensor_metadata
from real.server.protocol import INFER_HEADER_LENGTH, ProtocolError, TensorSpec
from sim.policy.split import VERSION_HEADER, WARMUP_HEADER

if TYPE_CHECKING:
    from real.gateway.app import Gateway

GATEWAY_NAME = "servelab-gateway"
OCTET_STREAM = "application/octet-stream"  # Triton's binary tensor data layout (JSON header, raw tensors)


def model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GatewayService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    # -- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Ready while a replica is in rotation, as REST's /v2/health/ready."""
        return pb.ServerReadyResponse(ready=self.gw.pool.any_routable())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=GATEWAY_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def _get(self, path: str, model: str, version: str, context: Any) -> tuple[int, bytes]:
        meta = _metadata(context)
        reply = await self.gw.forward("GET", path, model, version or None, meta.get("x-user-id"), None, b"",
                                      perf_counter(), meta.get(VERSION_HEADER))
        return reply.status, reply.body

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        status, _ = await self._get(model_path(request.name, request.version) + "/ready", request.name, request.version, context)
        return pb.ModelReadyResponse(ready=status == 200)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        """From a healthy replica of the version (if named), as REST's metadata route (`Gateway.metadata`)."""
        status, body = await self._get(model_path(request.name, request.version), request.name, request.version, context)
        if status != 200:
            await abort(context, status, convert.error_message(body))
        doc = orjson.loads(body)

        def spec(t: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
            return tensor_metadata(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])))

        # unversioned: every version the gateway serves, as REST's metadata route lists them
        versions = doc.get("versions", []) if request.version else list(self.gw.membership.versions)
        return pb.ModelMetadataResponse(name=doc["name"], versions=versions, platform=doc.get("platform", ""),
                                        inputs=[spec(t) for t in doc.get("inputs", [])],
                                        outputs=[spec(t) for t in doc.get("outputs", [])])

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        """The union of what the replicas hold (the REST route's document, `Gateway.repository_index_doc`)."""
        entries = await self.gw.repository_index_doc(request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=str(e["name"]), version=str(e.get("version", "")),
                                                  state=str(e.get("state", "")), reason=str(e.get("reason", "")))
            for e in entries])

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        """Triton's statistics summed over the replicas (`Gateway.stats_doc`, the REST route's
        document, which has Triton's field names); an empty name is every model."""
        status, doc = await self.gw.stats_doc(request.name or None, request.version or None)
        if status != 200:
            await abort(context, status, str(doc.get("error", "")))
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # -- inference -------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        t0 = perf_counter()
        gw = self.gw
        meta = _metadata(context)
        if gw.pool.session is None:  # serving gRPC before the pool has started (real.grpc.serve)
            await abort(context, 503, "gateway starting: no replica pool yet")
        try:
            body, header_length = convert.rest_request(request)
        except ProtocolError as exc:
            from real.gateway.app import error_reply

            reply = gw._done(t0, error_reply(exc.status, exc.message))
            await abort(context, reply.status, exc.message)
        model, version = request.model_name, request.model_version
        path = model_path(model, version) + "/infer"
        reply = await gw.forward("POST", path, model, version or None, meta.get("x-user-id"), OCTET_STREAM, body, t0,
                                 meta.get(VERSION_HEADER), WARMUP_HEADER in meta, str(header_length))
        if reply.status != 200:
            await abort(context, reply.status, convert.error_message(reply.body), _reply_metadata(reply.headers))
        extra: dict[str, Any] = {"gateway_s": float(reply.headers.get("x-gateway-s", 0.0))}
        if "x-replica" in reply.headers:
            extra["gateway_replica"] = int(reply.headers["x-replica"])
        length = reply.headers.get(INFER_HEADER_LENGTH)
        return convert.response_from_rest(reply.body, int(length) if length is not None else None, extra)


def _reply_metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Which replica and version answered a failed infer (a client records a failure's version
    from these, as it does from REST's headers)."""
    keys = ("x-replica", VERSION_HEADER, "x-gateway-s", "x-feature-failure")
    return tuple((k, headers[k]) for k in keys if k in headers)

