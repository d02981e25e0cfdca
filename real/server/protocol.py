"""Open Inference Protocol request parsing and response bodies, with no I/O.

Every way a body can be wrong ends as a `ProtocolError` carrying a 4xx status, so the app has
exactly one place that turns bad input into `{"error": ...}` and a malformed request can never
reach the batcher (or become a 500).

Triton's binary tensor data extension is read and written here too: with the request header
`Inference-Header-Content-Length: L`, the body is L bytes of JSON, then the raw bytes of every
input whose `parameters.binary_data_size` says how many (in the order of `inputs`, little-endian,
row-major). Outputs asked for with `parameters.binary_data` (or the request's
`parameters.binary_data_output`) come back the same way: a JSON header whose length the response
header `Inference-Header-Content-Length` gives, then the outputs' raw bytes. One parser for both
layouts, so a binary request is checked exactly as a JSON one and refused with the same bodies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

FEATURES = 64  # the digits images: 8x8 pixels, one row per image
MAX_ROWS = 10_000  # absurd-shape guard, independent of max_batch_size
CLASSES = 10  # digits 0..9: what a label may be
INPUT_NAME = "input"
INPUT_DATATYPE = "FP32"
INPUT_ITEM_BYTES = 4  # FP32
INFER_HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
# the wire layout of each datatype a binary output may have (OIP tensors are little-endian)
WIRE_DTYPES: dict[str, str] = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}


class ProtocolError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class InferRequest:
    rows: np.ndarray  # (n, FEATURES) float32, C-contiguous
    id: str | None = None
    timeout_s: float = math.inf  # parameters.timeout (microseconds, as Triton) in seconds
    outputs: tuple[str, ...] | None = None  # requested output names; None = all
    label: int | list[int] | None = None  # parameters.label: the true digit (per row, or one for all)
    binary_outputs: frozenset[str] = frozenset()  # outputs to answer as raw bytes (binary extension)
    # the online feature store: the entity whose feature row is this request's input (one row,
    # joined by the replica's lookup stage before the model runs); None = the request's own input
    entity_id: int | None = None

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = variable (the batch dimension)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


INPUT_SPEC = TensorSpec(INPUT_NAME, INPUT_DATATYPE, (-1, FEATURES))


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header_length(value: str | None) -> int | None:
    """The request's Inference-Header-Content-Length: None when absent, else the length of the
    JSON part of the body; ProtocolError(400) if it is not a non-negative decimal integer."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ProtocolError(400, f"{INFER_HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


ENTITY_PARAMETER = "entity_id"
USER_HEADER = "x-user-id"
# an entity request's placeholder input: one row, replaced by the entity's features at lookup
_ENTITY_PLACEHOLDER = np.zeros((1, FEATURES), dtype=np.float32)
_ENTITY_PLACEHOLDER.setflags(write=False)


def entity_of(params: Any, header: str | None) -> int:
    """The entity an input-less request names: `parameters.entity_id` (an integer >= 0), else
    the x-user-id header (the gateway forwards it); ProtocolError(400) when neither names one."""
    if isinstance(params, dict) and params.get(ENTITY_PARAMETER) is not None:
        value = params[ENTITY_PARAMETER]
        if not _is_int(value) or value < 0:
            raise ProtocolError(400, f"'parameters.{ENTITY_PARAMETER}' must be an integer >= 0, got {value!r}")
        return int(value)
    if header is not None:
        text = header.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ProtocolError(400, f"{USER_HEADER} must be an integer >= 0, got {header[:40]!r}")
        return int(text)
    raise ProtocolError(400, f"a request without inputs must name an entity whose features are its input: "
                             f"'parameters.{ENTITY_PARAMETER}' (or the {USER_HEADER} header)")


def entity_request(doc: dict[str, Any], params: Any, header: str | None, timeout_s: float,
                   output_names: frozenset[str], binary_default: bool) -> InferRequest:
    """An input-less request served on its entity's feature row (features.store != none)."""
    entity = entity_of(params, header)
    wanted, binary_outputs = _outputs(doc.get("outputs"), output_names, binary_default)
    req_id = doc.get("id")
    return InferRequest(rows=_ENTITY_PLACEHOLDER, id=req_id, timeout_s=timeout_s, outputs=wanted,
                        binary_outputs=binary_outputs, entity_id=entity)


def parse_infer(body: bytes, max_rows: int, output_names: frozenset[str], header_length: int | None = None,
                features: bool = False, user_header: str | None = None) -> InferRequest:
    """A validated request, or ProtocolError(400) naming the first problem.

    `features`: the replica has an online feature store. A request then either carries its input
    as always (served on it, no lookup), or carries none (`inputs` absent or `[]`) and names an
    entity (`parameters.entity_id`, else `user_header`, the x-user-id header) whose feature row
    the replica fetches and runs the model on, judging the answer by the row's label. Without a
    store, `parameters.entity_id` is ignored like any unknown parameter, and `inputs` is required.

    `max_rows` is the replica's max_batch_size: a request bigger than one batch could never be
    dispatched (Triton refuses it the same way). `header_length` is the request's
    Inference-Header-Content-Length (`parse_header_length`): the body's first `header_length`
    bytes are the JSON, the rest the inputs' raw bytes; None = the whole body is JSON.
    """
    if header_length is None:
        header: bytes | memoryview = body
    elif header_length > len(body):
        raise ProtocolError(400, f"{INFER_HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes")
    else:
        header = memoryview(body)[:header_length]
    if not header:
        raise ProtocolError(400, "empty body; expected an Open Inference Protocol JSON request")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request must be a JSON object")

    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError(400, "'id' must be a string")

    timeout_s = math.inf
    label: int | list[int] | None = None
    binary_default = False
    params = doc.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ProtocolError(400, "'parameters' must be an object")
        t = params.get("timeout")
        if t is not None:
            if not _is_int(t) or t < 0:
                raise ProtocolError(400, "'parameters.timeout' must be a non-negative integer (microseconds)")
            if t > 0:  # 0 = no timeout, as in Triton
                timeout_s = t * 1e-6
        label = _label(params.get("label"))
        binary_default = _flag(params, "binary_data_output", "'parameters.binary_data_output'")

    inputs = doc.get("inputs")
    if features and (inputs is None or inputs == []):
        if header_length is not None and header_length < len(body):
            raise ProtocolError(400, f"{len(body) - header_length} bytes follow the JSON header but the request has no inputs")
        return entity_request(doc, params, user_header, timeout_s, output_names, binary_default)
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise ProtocolError(400, f"'inputs' must be a list with exactly one tensor ({INPUT_NAME!r})")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, "each input must be an object")
    shape = tensor.get("shape")
    n = input_rows(tensor.get("name"), tensor.get("datatype"), shape, max_rows)

    binary_size = _binary_size(tensor)
    if binary_size is None:
        if header_length is not None and header_length < len(body):
            raise ProtocolError(400, f"{len(body) - header_length} bytes follow the JSON header but no input has "
                                     "'parameters.binary_data_size'")
        rows = _json_rows(tensor.get("data"), n, shape)
    else:
        rows = _binary_rows(body, header_length, binary_size, tensor, n, shape)
    if not np.isfinite(rows).all():
        raise ProtocolError(400, "input 'data' holds values that are not finite in FP32")

    wanted, binary_outputs = _outputs(doc.get("outputs"), output_names, binary_default)
    if isinstance(label, list) and len(label) != n:
        raise ProtocolError(400, f"'parameters.label' has {len(label)} labels for {n} rows; give one per row, or one for all")
    return InferRequest(rows=rows, id=req_id, timeout_s=timeout_s, outputs=wanted, label=label, binary_outputs=binary_outputs)


def _outputs(outs: Any, output_names: frozenset[str], binary_default: bool) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The requested output names (None = all) and those to answer as raw bytes."""
    wanted: tuple[str, ...] | None = None
    binary_outputs = output_names if binary_default else frozenset()
    if outs is not None:
        if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
            raise ProtocolError(400, "'outputs' must be a list of objects")
        names = [o.get("name") for o in outs]
        bad = [x for x in names if x not in output_names]
        if bad:
            raise ProtocolError(400, f"unknown output(s) {bad!r}; this model has {sorted(output_names)}")
        wanted = tuple(names)  # type: ignore[arg-type]
        binary_outputs = frozenset(o["name"] for o in outs if _output_binary(o, binary_default))
    return wanted, binary_outputs


def _flag(params: dict[str, Any], key: str, what: str) -> bool:
    """A boolean parameter (absent = false)."""
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(400, f"{what} must be true or false, got {value!r}")
    return value


def _tensor_parameters(tensor: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    """An input's or output's `parameters` object, or None without one; the shared memory
    extension is refused here for both."""
    params = tensor.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ProtocolError(400, f"{kind} 'parameters' must be an object")
    if "shared_memory_region" in params:
        raise ProtocolError(400, f"{kind} {name!r}: the shared memory extension is not supported; send the data in the body")
    return params



def input_rows(name: Any, datatype: Any, shape: Any, max_rows: int) -> int:
    """The input tensor's row count, once its name, datatype and [n, FEATURES] shape pass: the
    one set of checks and messages every transport's parser (REST here, gRPC in
    real/grpc/convert.py) applies, so a bad tensor is refused alike whichever way it came."""
    if name != INPUT_NAME:
        raise ProtocolError(400, f"unknown input {name!r}; expected {INPUT_NAME!r}")
    if datatype != INPUT_DATATYPE:
        raise ProtocolError(400, f"input datatype must be {INPUT_DATATYPE!r}, got {datatype!r}")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(d) for d in shape):
        raise ProtocolError(400, f"input shape must be [n, {FEATURES}] with integer dims")
    n, width = shape
    if width != FEATURES:
        raise ProtocolError(400, f"input shape must be [n, {FEATURES}], got {shape}")
    if n < 1 or n > MAX_ROWS:
        raise ProtocolError(400, f"input rows must be in [1, {MAX_ROWS}], got {n}")
    if n > max_rows:
        raise ProtocolError(400, f"{n} rows exceed the model's max_batch_size ({max_rows})")
    return int(n)


def _binary_size(tensor: dict[str, Any]) -> int | None:
    """The input's `parameters.binary_data_size` (bytes of it after the JSON header), or None."""
    params = _tensor_parameters(tensor, "input", INPUT_NAME)
    if params is None:
        return None
    size = params.get("binary_data_size")
    if size is not None and (not _is_int(size) or size < 0):
        raise ProtocolError(400, f"input 'parameters.binary_data_size' must be a non-negative integer, got {size!r}")
    return size


def _json_rows(data: Any, n: int, shape: list[int]) -> np.ndarray:
    """The input's rows from its JSON `data` (flat or nested row-major)."""
    if not isinstance(data, list):
        raise ProtocolError(400, "input 'data' must be a list of numbers (flat or nested row-major)")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError(400, "input 'data' is ragged or not numeric") from None
    if arr.dtype.kind not in "iuf":
        raise ProtocolError(400, f"input 'data' must be numeric, got {arr.dtype.kind!r} values")
    if arr.size != n * FEATURES:
        raise ProtocolError(400, f"input 'data' has {arr.size} values, shape {shape} needs {n * FEATURES}")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32).reshape(n, FEATURES)


def _binary_rows(body: bytes, header_length: int | None, size: int, tensor: dict[str, Any], n: int,
                 shape: list[int]) -> np.ndarray:
    """The input's rows from the raw bytes after the JSON header (binary tensor data extension)."""
    if header_length is None:
        raise ProtocolError(400, f"input 'parameters.binary_data_size' needs the {INFER_HEADER_LENGTH} request header")
    if "data" in tensor:
        raise ProtocolError(400, "input has both 'data' and 'parameters.binary_data_size'; send one")
    needed = n * FEATURES * INPUT_ITEM_BYTES
    if size != needed:
        raise ProtocolError(400, f"input 'parameters.binary_data_size' is {size} bytes, shape {shape} {INPUT_DATATYPE} needs {needed}")
    after = len(body) - header_length
    if size > after:
        raise ProtocolError(400, f"input binary data runs past the body: {size} bytes declared, {after} after the JSON header")
    if size < after:
        raise ProtocolError(400, f"{after - size} bytes after the input's binary data belong to no input")
    flat = np.frombuffer(body, dtype="<f4", count=n * FEATURES, offset=header_length)
    return flat.astype(np.float32).reshape(n, FEATURES)  # a copy: aligned, writable, owned


def _output_binary(out: dict[str, Any], default: bool) -> bool:
    """Whether a requested output comes back as raw bytes: its `parameters.binary_data`, else
    the request's `parameters.binary_data_output`."""
    params = _tensor_parameters(out, "output", out["name"])
    if params is None:
        return default
    if params.get("classification") not in (None, 0):
        raise ProtocolError(400, "the classification extension is not supported; ask for the outputs themselves")
    return _flag(params, "binary_data", f"output {out['name']!r} 'parameters.binary_data'") if "binary_data" in params else default


def _label(value: Any) -> int | list[int] | None:
    """`parameters.label`: the true digit of a labelled request (the server then answers
    whether it was right), one integer for every row or a list with one per row."""
    if value is None:
        return None
    labels = value if isinstance(value, list) else [value]
    if not labels or not all(_is_int(x) and 0 <= x < CLASSES for x in labels):
        raise ProtocolError(400, f"'parameters.label' must be a digit 0..{CLASSES - 1} or a list of them, one per row")
    return list(labels) if isinstance(value, list) else int(value)


@dataclass(slots=True)
class InferResult:
    """What the batcher hands back for one request (its slice of a batch)."""

    outputs: dict[str, np.ndarray]
    queue_s: float
    service_s: float
    batch_size: int
    batch_id: int  # the replica's id of the batch this request ran in (ids count up from 0)
    extra: dict[str, Any] = field(default_factory=dict)


def infer_response(
    model: str,
    version: str,
    req: InferRequest,
    result: InferResult,
    specs: dict[str, TensorSpec],
    replica: int,
    server_s: float,
    correct: bool | None = None,
) -> tuple[bytes, int | None]:
    """The OIP response body and, when some output goes as raw bytes (`req.binary_outputs`),
    the length of its JSON header (the response's Inference-Header-Content-Length; None = all
    JSON). `correct` (a labelled request's answer was right) joins its parameters when the
    answer was judged."""
    names = req.outputs if req.outputs is not None else tuple(specs)
    binary = req.binary_outputs
    outputs = []
    raw: list[bytes] = []
    for name in names:
        arr = result.outputs[name]
        datatype = specs[name].datatype
        if name in binary:
            data = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[datatype]).tobytes()
            raw.append(data)
            outputs.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                            "parameters": {"binary_data_size": len(data)}})
        else:
            outputs.append({"name": name, "datatype": datatype, "shape": list(arr.shape), "data": arr.reshape(-1)})
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "parameters": {
            "queue_s": result.queue_s,
            "service_s": result.service_s,
            "batch_size": result.batch_size,
            "batch_id": result.batch_id,
            "replica": replica,
            "version": version,
            "server_s": server_s,
        },
        "outputs": outputs,
    }
    if correct is not None:
        doc["parameters"]["correct"] = correct
    if result.extra:  # the feature lookup's figures (feature_lookup_s, feature_hit, feature_fallback)
        doc["parameters"].update(result.extra)
    if req.id is not None:
        doc["id"] = req.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)
