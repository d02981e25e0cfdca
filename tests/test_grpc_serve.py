"""How the GRPCInferenceService is put on a grpc.aio server, and how answers are filled in
(no sockets): every method through the one generic handler, none registered one by one (grpc.aio
waits on a pending call per registered method for every RPC); parameters set in place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import grpc
import numpy as np

from real.grpc import convert
from real.grpc import grpc_service_pb2 as pb
from real.grpc import grpc_service_pb2_grpc as pb_grpc
from real.grpc.serve import GenericHandlersOnly
from real.server.protocol import InferRequest, InferResult, TensorSpec

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class RecordingServer:
    """What a grpc.aio server is asked to add."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.generic += handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.append(service)


@dataclass(frozen=True)
class CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def test_every_method_is_served_by_the_generic_handler_and_none_is_registered() -> None:
    server = RecordingServer()
    servicer = pb_grpc.GRPCInferenceServiceServicer()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, GenericHandlersOnly(server))
    assert server.registered == []
    assert len(server.generic) == 1
    for method in SERVICE.methods:
        handler = server.generic[0].service(CallDetails(f"/{SERVICE.full_name}/{method.name}"))
        assert handler is not None, method.name
    infer = server.generic[0].service(CallDetails(f"/{SERVICE.full_name}/ModelInfer"))
    assert infer.unary_unary == servicer.ModelInfer


def test_a_parameter_set_again_holds_only_its_new_value() -> None:
    msg = pb.ModelInferResponse()
    convert.set_parameters(msg.parameters, {"a": "text", "b": True, "c": 3, "d": 0.5})
    convert.set_parameters(msg.parameters, {"a": 7, "b": 1.5})
    kinds = {k: (v.WhichOneof("parameter_choice"), convert.param_value(v)) for k, v in msg.parameters.items()}
    assert kinds == {"a": ("int64_param", 7), "b": ("double_param", 1.5), "c": ("int64_param", 3),
                     "d": ("double_param", 0.5)}


def test_the_response_parameters_have_the_types_rest_gives_them() -> None:
    """numpy scalars from the batcher go out as plain int64/double/bool parameters."""
    req = InferRequest(rows=np.zeros((1, 64), np.float32), id="x", timeout_s=float("inf"), outputs=None, label=None)
    result = InferResult({"label": np.array([4], np.int64)}, np.float64(0.25), np.float64(0.5), np.int64(2), np.int64(11))
    resp = convert.infer_response("digits", "1", req, result, {"label": TensorSpec("label", "INT64", (-1,))}, 3,
                                  np.float64(0.75), np.bool_(False))
    kinds = {k: (v.WhichOneof("parameter_choice"), convert.param_value(v)) for k, v in resp.parameters.items()}
    assert kinds == {"queue_s": ("double_param", 0.25), "service_s": ("double_param", 0.5),
                     "batch_size": ("int64_param", 2), "batch_id": ("int64_param", 11), "replica": ("int64_param", 3),
                     "version": ("string_param", "1"), "server_s": ("double_param", 0.75), "correct": ("bool_param", False)}
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("label", "INT64", [1])]
