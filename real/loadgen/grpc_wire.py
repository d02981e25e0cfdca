"""The load generator's gRPC messages, without I/O (`loadgen.protocol=grpc`).

The gRPC twin of `wire.py`: a request's bytes from parts serialised once per input
(`GrpcRequestEncoder`: protobuf concatenation merges messages, so the fixed part (input
tensor, raw row, label) is serialised once and only the id and the deadline per request), and an
answer read into the fields a record keeps (`read_answer`, `read_failure`). The Locust side
(`locustfile.GrpcDriver`) moves them with grpc's gevent integration; tests feed it messages.

Shared by both sides: protobuf, grpc's status codes, numpy and the standard library only (no
gevent, no Locust).
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc
import numpy as np

from real.grpc import grpc_service_pb2 as pb
from real.grpc.convert import HTTP_STATUS, param_value
from real.loadgen.recordfile import CLIENT_TIMEOUT, CONNECTION_ERROR

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# a client-side deadline's details (grpc's own); a server's DEADLINE_EXCEEDED carries its message
CLIENT_DEADLINE_DETAILS = "Deadline Exceeded"
# trailing metadata a servelab server attaches to every refusal: an answer came from it
SERVER_KEYS = frozenset(("x-replica", "x-gateway-s"))


class GrpcRequestEncoder:
    """The serialised ModelInferRequest of one infer: `parts[k]` (model, input k's tensor and
    raw row, its label) once, then per request its id and its deadline (`parameters.timeout`, µs)."""

    def __init__(self, model: str, images: np.ndarray, labels: Sequence[int | None]) -> None:
        self.parts: list[bytes] = []
        for image, label in zip(images, labels):
            msg = pb.ModelInferRequest(model_name=model)
            msg.inputs.add(name="input", datatype="FP32", shape=[1, 64])
            msg.raw_input_contents.append(np.ascontiguousarray(image, dtype="<f4").reshape(-1).tobytes())
            if label is not None:
                msg.parameters["label"].int64_param = int(label)
            self.parts.append(msg.SerializeToString())

    def encode(self, request_key: str, k: int, micros: int) -> bytes:
        tail = pb.ModelInferRequest(id=request_key)
        tail.parameters["timeout"].int64_param = micros
        return self.parts[k] + tail.SerializeToString()


def read_answer(data: bytes) -> tuple[dict[str, Any], int | None]:
    """(the answer's parameters, the first row's label output or None) of a serialised
    ModelInferResponse."""
    resp = pb.ModelInferResponse.FromString(data)
    params = {key: param_value(p) for key, p in resp.parameters.items()}
    label = None
    for i, out in enumerate(resp.outputs):
        if out.name == "label" and i < len(resp.raw_output_contents) and len(resp.raw_output_contents[i]) >= 8:
            label = int(np.frombuffer(resp.raw_output_contents[i][:8], dtype="<i8")[0])
    return params, label


def read_failure(code: grpc.StatusCode, details: str | None, trailing: Sequence[tuple[str, Any]] | None) -> tuple[int, int, str]:
    """(the record's status, replica, version) of a failed call: the HTTP status of the server's
    refusal, CLIENT_TIMEOUT for the client's own deadline, CONNECTION_ERROR when no servelab
    server answered (refused, reset: grpc says UNAVAILABLE with no server metadata)."""
    meta = {k: v for k, v in (trailing or ()) if isinstance(v, str)}
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == CLIENT_DEADLINE_DETAILS:
        return CLIENT_TIMEOUT, -1, ""
    if code == grpc.StatusCode.UNAVAILABLE and not SERVER_KEYS & meta.keys():
        return CONNECTION_ERROR, -1, ""
    replica = -1
    try:
        replica = int(meta.get("x-replica", -1))
    except ValueError:
        pass
    return HTTP_STATUS.get(code, 500), replica, meta.get("x-model-version", "")
