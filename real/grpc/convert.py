"""gRPC messages <-> the REST path's objects, with no I/O.

The gRPC transport is an adapter: a `ModelInferRequest` becomes the very `InferRequest` the REST
path's `parse_infer` builds, refused for the same reasons with the same messages (a
`ProtocolError` with the HTTP status REST would answer), and the batcher's `InferResult` becomes
a `ModelInferResponse` with the same parameters the JSON answer carries. Statuses map to gRPC
codes in one table (`GRPC_CODE`), shared by the replica and the gateway.

Tensors travel as Triton's clients send them: `raw_input_contents` (little-endian bytes, what
`tritonclient.grpc` sends) or the typed `contents` (`fp32_contents`); outputs go back as
`raw_output_contents`, which `tritonclient`'s `as_numpy` reads.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import grpc
import numpy as np
import orjson

from real.grpc import grpc_service_pb2 as pb
from real.server.protocol import (
    ENTITY_PARAMETER,
    FEATURES,
    INPUT_NAME,
    InferRequest,
    InferResult,
    ProtocolError,
    TensorSpec,
    _label,
    entity_of,
    input_rows,
)

# The HTTP status the REST path answers -> the gRPC code for the same refusal (Triton's mapping
# where it has one: a bad request is INVALID_ARGUMENT, an unknown model NOT_FOUND).
GRPC_CODE: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# and back, for a client that records statuses as HTTP does (the load generator)
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_LE_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "FP64": np.dtype("<f8"), "INT32": np.dtype("<i4")}


def grpc_code(status: int) -> grpc.StatusCode:
    return GRPC_CODE.get(status, grpc.StatusCode.UNKNOWN if status < 500 else grpc.StatusCode.INTERNAL)


def param_value(p: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (None when none of its oneof is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _timeout_s(params: Mapping[str, pb.InferParameter]) -> float:
    if "timeout" not in params:
        return math.inf
    t = param_value(params["timeout"])
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ProtocolError(400, "'parameters.timeout' must be a non-negative integer (microseconds)")
    return t * 1e-6 if t > 0 else math.inf  # 0 = no timeout, as in Triton


def _label_param(params: Mapping[str, pb.InferParameter]) -> int | list[int] | None:
    """`label`: an int64 (one digit for every row), or a string holding a JSON list, one per
    row (a map of scalars cannot hold a list)."""
    if "label" not in params:
        return None
    value = param_value(params["label"])
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            value = None
    return _label(value)


def infer_request(msg: pb.ModelInferRequest, max_rows: int, output_names: frozenset[str], features: bool = False,
                  user: str | None = None) -> InferRequest:
    """The REST path's `InferRequest` for a gRPC infer, or ProtocolError naming the first problem
    (the checks and messages of `real.server.protocol.parse_infer`, in the same order). With
    `features`, an input-less infer names its entity (`parameters.entity_id`, else `user`, the
    x-user-id metadata), as over REST."""
    params = msg.parameters
    timeout_s = _timeout_s(params)
    label = _label_param(params)
    if features and not len(msg.inputs):
        entity = entity_of({ENTITY_PARAMETER: param_value(params[ENTITY_PARAMETER])} if ENTITY_PARAMETER in params else None, user)
        wanted = _wanted(msg, output_names)
        return InferRequest(rows=np.zeros((1, FEATURES), np.float32), id=msg.id or None, timeout_s=timeout_s, outputs=wanted,
                            entity_id=entity)
    if len(msg.inputs) != 1:
        raise ProtocolError(400, f"'inputs' must be a list with exactly one tensor ({INPUT_NAME!r})")
    tensor = msg.inputs[0]
    n = input_rows(tensor.name, tensor.datatype, list(tensor.shape), max_rows)
    rows = _input_rows(msg, tensor, n)
    if not np.isfinite(rows).all():
        raise ProtocolError(400, "input 'data' holds values that are not finite in FP32")
    wanted = _wanted(msg, output_names)
    if isinstance(label, list) and len(label) != n:
        raise ProtocolError(400, f"'parameters.label' has {len(label)} labels for {n} rows; give one per row, or one for all")
    return InferRequest(rows=rows, id=msg.id or None, timeout_s=timeout_s, outputs=wanted, label=label)


def _wanted(msg: pb.ModelInferRequest, output_names: frozenset[str]) -> tuple[str, ...] | None:
    """The outputs asked for (None = all), or ProtocolError for an unknown one."""
    if not len(msg.outputs):
        return None
    names = [o.name for o in msg.outputs]
    bad = [x for x in names if x not in output_names]
    if bad:
        raise ProtocolError(400, f"unknown output(s) {bad!r}; this model has {sorted(output_names)}")
    return tuple(names)


def _input_rows(msg: pb.ModelInferRequest, tensor: pb.ModelInferRequest.InferInputTensor, n: int) -> np.ndarray:
    """(n, FEATURES) float32 from raw_input_contents or contents.fp32_contents (exactly one)."""
    need = n * FEATURES
    typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    if len(msg.raw_input_contents):
        if typed:
            raise ProtocolError(400, "input 'data' given twice: raw_input_contents and contents")
        if len(msg.raw_input_contents) != 1:
            raise ProtocolError(400, f"raw_input_contents holds {len(msg.raw_input_contents)} tensors; expected 1")
        raw = msg.raw_input_contents[0]
        if len(raw) != need * 4:
            raise ProtocolError(400, f"input 'data' has {len(raw)} bytes, shape {[n, FEATURES]} needs {need * 4}")
        arr = np.frombuffer(raw, dtype="<f4")
    else:
        values = tensor.contents.fp32_contents
        if len(values) != need:
            raise ProtocolError(400, f"input 'data' has {len(values)} values, shape {[n, FEATURES]} needs {need}")
        arr = np.asarray(values, dtype=np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(n, FEATURES)


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Copy scalars into a message's `map<string, InferParameter>`: bool, int64, double, or
    else string. Each entry's field is set in place (a `parameter_choice` oneof, so it holds
    that value alone): no InferParameter is built and copied per value."""
    for key, value in values.items():
        entry = target[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.int64_param = value
        elif isinstance(value, float):
            entry.double_param = value
        else:
            entry.string_param = str(value)


def infer_response(
    model: str,
    version: str,
    req: InferRequest,
    result: InferResult,
    specs: Mapping[str, TensorSpec],
    replica: int,
    server_s: float,
    correct: bool | None = None,
) -> pb.ModelInferResponse:
    """The gRPC twin of `real.server.protocol.infer_response`: same outputs, same parameters.
    It runs once per answer on the event loop, so the message is filled in place: each
    parameter's typed field set directly (the types are known here), no dict or temporary
    InferParameter between the result and the message."""
    names = req.outputs if req.outputs is not None else tuple(specs)
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=req.id or "")
    outputs, contents = resp.outputs, resp.raw_output_contents
    for name in names:
        arr = result.outputs[name]
        spec = specs[name]
        outputs.add(name=name, datatype=spec.datatype, shape=arr.shape)
        contents.append(np.ascontiguousarray(arr, dtype=_LE_DTYPES[spec.datatype]).tobytes())
    params = resp.parameters
    params["queue_s"].double_param = float(result.queue_s)
    params["service_s"].double_param = float(result.service_s)
    params["batch_size"].int64_param = int(result.batch_size)
    params["batch_id"].int64_param = int(result.batch_id)
    params["replica"].int64_param = int(replica)
    params["version"].string_param = version
    params["server_s"].double_param = float(server_s)
    if correct is not None:
        params["correct"].bool_param = bool(correct)
    if result.extra:  # the feature lookup's figures, as the JSON answer's
        set_parameters(params, result.extra)
    return resp


# -- REST <-> protobuf, for the gateway (its upstream path speaks REST) ----------------------


def rest_request(msg: pb.ModelInferRequest) -> tuple[bytes, int]:
    """A gRPC infer as a REST body in Triton's binary tensor data layout, and the length of its
    JSON header (the request's Inference-Header-Content-Length): raw input bytes pass through
    untouched (`parameters.binary_data_size`), typed contents go as JSON numbers, and every
    output is asked for as raw bytes. The replica validates it as any REST infer; what REST
    cannot say (raw tensors that match no input) is refused here with a 400."""
    doc: dict[str, Any] = {}
    if msg.id:
        doc["id"] = msg.id
    params: dict[str, Any] = {}
    for key, p in msg.parameters.items():
        value = param_value(p)
        if key == "label" and isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
        params[key] = value
    params["binary_data_output"] = True
    doc["parameters"] = params
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise ProtocolError(400, f"raw_input_contents holds {len(raw)} tensors for {len(msg.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
            if tensor.HasField("contents") and tensor.contents.ByteSize() > 0:
                entry["data"] = list(tensor.contents.fp32_contents)  # both: the replica refuses it
        else:
            data = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if not np.isfinite(data).all():  # JSON has no NaN: refuse it here, as the replica would
                raise ProtocolError(400, "input 'data' holds values that are not finite in FP32")
            entry["data"] = data
        inputs.append(entry)
    doc["inputs"] = inputs
    if len(msg.outputs):
        doc["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in msg.outputs]
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join((header, *raw)), len(header)


def response_from_rest(body: bytes, header_length: int | None, extra: Mapping[str, Any]) -> pb.ModelInferResponse:
    """A replica's REST answer (JSON, or the binary layout with its header length) as a
    ModelInferResponse with raw outputs, `extra` joining its parameters (the gateway's own:
    which replica answered, its overhead)."""
    header = body if header_length is None else body[:header_length]
    offset = len(header)
    doc = orjson.loads(header)
    resp = pb.ModelInferResponse(model_name=doc.get("model_name", ""), model_version=doc.get("model_version", ""),
                                 id=doc.get("id", ""))
    for out in doc.get("outputs", []):
        resp.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            resp.raw_output_contents.append(body[offset:offset + size])
            offset += size
        else:
            resp.raw_output_contents.append(np.asarray(out["data"], dtype=_LE_DTYPES[out["datatype"]]).tobytes())
    set_parameters(resp.parameters, {**doc.get("parameters", {}), **extra})
    return resp


def error_message(body: bytes) -> str:
    """The `error` of an OIP error body (or the body itself when it is not one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")[:500]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
