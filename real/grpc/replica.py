"""The replica's `GRPCInferenceService` (KServe v2 / Triton), beside its REST routes.

An adapter over the same `Replica` the REST app serves: one batcher, one set of metrics, one
fault state, one model. A gRPC infer is converted into the REST path's `InferRequest`
(`real.grpc.convert.infer_request`, the checks and messages of `parse_infer`), queued on the same
`AsyncBatcher`, judged by the same `ReplicaQuality`, and counted in the same Prometheus series;
each refusal carries the message REST puts in `{"error": ...}`, under the gRPC code of REST's
status (`convert.GRPC_CODE`).

The server is a `grpc.aio` server on the process's own event loop (`real.grpc.serve`), started
before the REST port listens; until the model has loaded, readiness is false and infers are
UNAVAILABLE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf import json_format

from real.grpc import convert
from real.grpc import grpc_service_pb2 as pb
from real.grpc import grpc_service_pb2_grpc as pb_grpc
from real.server.batcher import BackendFailed, DeadlineExceeded, FeatureLookupFailed, QueueFull, clock
from real.server.protocol import INPUT_SPEC, ProtocolError, TensorSpec

if TYPE_CHECKING:
    from real.server.app import Replica

SERVER_NAME = "servelab"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_repository", "statistics")


async def abort(context: grpc.aio.ServicerContext, status: int, message: str,
                trailing: tuple[tuple[str, str], ...] = ()) -> NoReturn:
    """End the call with the gRPC code of REST's `status` and REST's message."""
    await context.abort(convert.grpc_code(status), message, trailing)
    raise AssertionError("unreachable: abort raises")


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def statistics(rep: Replica) -> pb.ModelStatisticsResponse:
    """Triton's statistics: the REST route's document (`real.server.app.stats_document`, Triton's
    field names) as the protobuf message, so both transports report one set of counters alike."""
    from real.server.app import stats_document

    return json_format.ParseDict(stats_document(rep), pb.ModelStatisticsResponse(), ignore_unknown_fields=True)


class ReplicaService(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over one replica; unimplemented calls (shared memory, tracing,
    streaming) answer UNIMPLEMENTED, as the generated base class does."""

    def __init__(self, replica: Replica) -> None:
        self.rep = replica
        # on every refused infer, as the gateway's x-replica header: a client knows a server answered
        self.who = (("x-replica", str(replica.index)), ("x-model-version", replica.version))

    def _problem(self, model: str, version: str) -> str | None:
        from real.server.app import model_problem

        return model_problem(self.rep, model, version or None)

    # -- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.rep.serving)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """Not ready for a model or version this replica does not hold (Triton answers so too;
        REST answers 404, which tritonclient's HTTP `is_model_ready` also reads as False)."""
        return pb.ModelReadyResponse(ready=self._problem(request.name, request.version) is None and self.rep.serving)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        rep = self.rep
        if (problem := self._problem(request.name, request.version)) is not None:
            await abort(context, 404, problem)
        return pb.ModelMetadataResponse(
            name=rep.model,
            versions=[rep.version],
            platform=rep.backend.platform,
            inputs=[tensor_metadata(INPUT_SPEC)],
            outputs=[tensor_metadata(spec) for spec in rep.backend.outputs.values()],
        )

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        """All models for an empty name (Triton's convention), else the one named."""
        if request.name and (problem := self._problem(request.name, request.version)) is not None:
            await abort(context, 404, problem)
        return statistics(self.rep)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        rep = self.rep
        if request.ready and not rep.loaded:
            return pb.RepositoryIndexResponse()
        state = "READY" if rep.loaded else "UNAVAILABLE"
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(name=rep.model, version=rep.version, state=state)])

    # -- inference -------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """The REST `answer_infer`, step for step: same checks, same batcher, same counters."""
        received = clock()
        rep = self.rep
        m = rep.metrics
        if (problem := self._problem(request.model_name, request.model_version)) is not None:
            m.errors.labels("404").inc()
            await abort(context, 404, problem, self.who)
        status, message, who = 0, "", self.who
        m.in_flight.inc()
        try:
            if rep.fault.down:
                raise ProtocolError(503, f"replica {rep.index} is down (a fault drill: POST /v2/fault)")
            req = convert.infer_request(request, rep.cfg.batching.max_batch_size, rep.output_names, rep.features is not None,
                                        _user(context) if rep.features is not None and not request.inputs else None)
            if not rep.loaded:
                raise ProtocolError(503, f"model {rep.model!r} version {rep.version!r} is not loaded")
            result = await rep.batcher.submit(req, received)
        except ProtocolError as exc:
            m.errors.labels(str(exc.status)).inc()
            m.requests.labels("error").inc()
            status, message = exc.status, exc.message
        except QueueFull:
            m.shed.inc()
            m.requests.labels("shed").inc()
            status, message = 503, "queue full (batching.max_queue_size); retry later"
        except DeadlineExceeded:
            m.timeouts.inc()
            m.errors.labels("504").inc()
            m.requests.labels("timeout").inc()
            status, message = 504, "request timeout (parameters.timeout) expired while queued"
        except BackendFailed as exc:
            m.errors.labels("500").inc()
            m.requests.labels("error").inc()
            status, message = 500, str(exc)
        except FeatureLookupFailed as exc:  # features.fallback=error: NOT_FOUND missing entity, UNAVAILABLE store down
            m.errors.labels(str(exc.status)).inc()
            m.requests.labels("error").inc()
            status, message = exc.status, exc.message
            who = self.who + (("x-feature-failure", exc.reason),)  # told apart from a full queue's UNAVAILABLE
        finally:
            m.in_flight.dec()
        if status:
            await abort(context, status, message, who)
        judged = rep.quality.judge(result.outputs, req.label, req.id) if rep.quality is not None else None
        if judged is not None and judged.failed:
            m.errors.labels("500").inc()
            m.requests.labels("error").inc()
            await abort(context, 500, f"model version {rep.version!r} failed on this request (its error rate)", self.who)
        correct = judged.correct if judged is not None else None
        server_s = clock() - received
        response = convert.infer_response(rep.model, rep.version, req, result, rep.backend.outputs, rep.index,
                                          server_s, correct)
        m.latency.observe(server_s)
        m.ok.inc()
        return response


def _user(context: Any) -> str | None:
    """The call's x-user-id metadata (an input-less request's entity when its parameters name none)."""
    return next((v for k, v in (context.invocation_metadata() or ()) if k == "x-user-id" and isinstance(v, str)), None)
