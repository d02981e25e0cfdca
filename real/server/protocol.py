"""Open Inference Protocol request parsing and response bodies, with no I/O.

Every way a body can be wrong ends as a `ProtocolError` carrying a 4xx status, so the app has
exactly one place that turns bad input into `{"error": ...}` and a malformed request can never
reach the batcher (or become a 500).
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


def parse_infer(body: bytes, max_rows: int, output_names: frozenset[str]) -> InferRequest:
    """A validated request, or ProtocolError(400) naming the first problem.

    `max_rows` is the replica's max_batch_size: a request bigger than one batch could never be
    dispatched (Triton refuses it the same way).
    """
    if not body:
        raise ProtocolError(400, "empty body; expected an Open Inference Protocol JSON request")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request must be a JSON object")

    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError(400, "'id' must be a string")

    timeout_s = math.inf
    label: int | list[int] | None = None
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

    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise ProtocolError(400, f"'inputs' must be a list with exactly one tensor ({INPUT_NAME!r})")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, "each input must be an object")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise ProtocolError(400, f"unknown input {name!r}; expected {INPUT_NAME!r}")
    if tensor.get("datatype") != INPUT_DATATYPE:
        raise ProtocolError(400, f"input datatype must be {INPUT_DATATYPE!r}, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(d) for d in shape):
        raise ProtocolError(400, f"input shape must be [n, {FEATURES}] with integer dims")
    n, width = shape
    if width != FEATURES:
        raise ProtocolError(400, f"input shape must be [n, {FEATURES}], got {shape}")
    if n < 1 or n > MAX_ROWS:
        raise ProtocolError(400, f"input rows must be in [1, {MAX_ROWS}], got {n}")
    if n > max_rows:
        raise ProtocolError(400, f"{n} rows exceed the model's max_batch_size ({max_rows})")

    data = tensor.get("data")
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
        rows = np.ascontiguousarray(arr, dtype=np.float32).reshape(n, FEATURES)
    if not np.isfinite(rows).all():
        raise ProtocolError(400, "input 'data' holds values that are not finite in FP32")

    wanted: tuple[str, ...] | None = None
    outs = doc.get("outputs")
    if outs is not None:
        if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
            raise ProtocolError(400, "'outputs' must be a list of objects")
        names = [o.get("name") for o in outs]
        bad = [x for x in names if x not in output_names]
        if bad:
            raise ProtocolError(400, f"unknown output(s) {bad!r}; this model has {sorted(output_names)}")
        wanted = tuple(names)  # type: ignore[arg-type]
    if isinstance(label, list) and len(label) != n:
        raise ProtocolError(400, f"'parameters.label' has {len(label)} labels for {n} rows; give one per row, or one for all")
    return InferRequest(rows=rows, id=req_id, timeout_s=timeout_s, outputs=wanted, label=label)


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
) -> bytes:
    """The OIP response; `correct` (a labelled request's answer was right) joins its
    parameters when the answer was judged."""
    names = req.outputs if req.outputs is not None else tuple(specs)
    outputs = []
    for name in names:
        arr = result.outputs[name]
        outputs.append(
            {"name": name, "datatype": specs[name].datatype, "shape": list(arr.shape), "data": arr.reshape(-1)}
        )
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
    if req.id is not None:
        doc["id"] = req.id
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
