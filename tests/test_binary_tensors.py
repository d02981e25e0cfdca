"""Triton's binary tensor data extension in the replica's parser and encoder (no I/O).

A binary request is the JSON header (Inference-Header-Content-Length bytes) then raw tensors;
it must give the very rows a JSON request gives, and every malformed layout must be a 400
`ProtocolError` naming the problem, never another exception (the app turns only those into
`{"error": ...}`; anything else would be a 500).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.server.protocol import (
    FEATURES,
    InferRequest,
    InferResult,
    ProtocolError,
    TensorSpec,
    infer_response,
    parse_header_length,
    parse_infer,
)

OUTPUTS = frozenset({"label", "probabilities"})
SPECS = {"probabilities": TensorSpec("probabilities", "FP32", (-1, 10)), "label": TensorSpec("label", "INT64", (-1,))}
ROWS = np.arange(3 * FEATURES, dtype=np.float32).reshape(3, FEATURES) / 7


def binary_body(rows: np.ndarray = ROWS, raw: bytes | None = None, size: int | None = None, **doc: Any) -> tuple[bytes, int]:
    """(body, header length) as tritonclient builds them: JSON header, then the raw rows."""
    data = rows.astype("<f4").tobytes() if raw is None else raw
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": len(data) if size is None else size}}
    header = orjson.dumps({"inputs": [tensor], **doc})
    return header + data, len(header)


def parse(body: bytes, header_length: int | None) -> InferRequest:
    return parse_infer(body, 64, OUTPUTS, header_length)


def refused(body: bytes, header_length: int | None) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(body, header_length)
    assert info.value.status == 400
    return info.value.message


def test_binary_input_gives_the_rows_a_json_input_gives() -> None:
    as_json = orjson.dumps({"inputs": [{"name": "input", "shape": [3, FEATURES], "datatype": "FP32",
                                        "data": ROWS.reshape(-1).tolist()}]})
    from_json = parse(as_json, None)
    from_binary = parse(*binary_body())
    assert np.array_equal(from_binary.rows, from_json.rows) and from_binary.rows.dtype == np.float32
    assert from_binary.rows.flags.c_contiguous and from_binary.rows.flags.writeable


def test_json_body_with_a_header_length_of_its_own_size_is_plain_json() -> None:
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * FEATURES}]})
    assert parse(body, len(body)).n == 1


def test_binary_outputs_follow_the_request_flag_and_each_outputs_own() -> None:
    assert parse(*binary_body()).binary_outputs == frozenset()
    assert parse(*binary_body(parameters={"binary_data_output": True})).binary_outputs == OUTPUTS
    mixed = binary_body(parameters={"binary_data_output": True},
                        outputs=[{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}])
    assert parse(*mixed).binary_outputs == {"probabilities"}
    one = binary_body(outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    assert parse(*one).binary_outputs == {"label"}


def result_for(n: int) -> InferResult:
    proba = np.linspace(0, 1, n * 10).reshape(n, 10)  # float64, as a model may give: sent as FP32
    return InferResult({"probabilities": proba, "label": proba.argmax(axis=1)}, 0.0, 0.0, n, 0)


def test_binary_response_is_a_json_header_then_the_raw_outputs() -> None:
    req = parse(*binary_body(parameters={"binary_data_output": True}))
    result = result_for(3)
    body, header_length = infer_response("digits", "1", req, result, SPECS, 0, 0.001)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    offset = header_length
    for out in header["outputs"]:
        assert "data" not in out
        size = out["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]
        got = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(out["shape"])
        assert np.array_equal(got, result.outputs[out["name"]].astype(dtype))
        offset += size
    assert offset == len(body)


def test_json_response_has_no_header_length() -> None:
    body, header_length = infer_response("digits", "1", parse(*binary_body()), result_for(3), SPECS, 0, 0.001)
    assert header_length is None
    assert {o["name"] for o in orjson.loads(body)["outputs"]} == OUTPUTS


def test_header_length_must_be_a_non_negative_integer() -> None:
    assert parse_header_length(None) is None and parse_header_length("12") == 12
    for bad in ("", "-1", "1.5", "ten", "0x10", "9" * 40):
        with pytest.raises(ProtocolError) as info:
            parse_header_length(bad)
        assert info.value.status == 400


BODY, HEADER = binary_body()
MALFORMED: dict[str, tuple[bytes, int | None]] = {
    "header_past_body": (BODY, len(BODY) + 1),
    "empty_header": (BODY, 0),
    "header_cuts_json": (BODY, HEADER - 1),
    "no_header_length": (BODY, None),
    "size_too_small": binary_body(size=4),
    "size_not_shape": binary_body(raw=b"\0" * 8, size=8),
    "runs_past_body": binary_body(raw=ROWS.astype("<f4").tobytes()[:-4], size=ROWS.nbytes),
    "bytes_left_over": binary_body(raw=ROWS.astype("<f4").tobytes() + b"\0" * 4, size=ROWS.nbytes),
    "negative_size": binary_body(size=-1),
    "float_size": binary_body(size=1.5),  # type: ignore[arg-type]
    "bool_size": binary_body(size=True),  # type: ignore[arg-type]
    "not_finite": binary_body(raw=np.full((3, FEATURES), np.inf, dtype="<f4").tobytes()),
    "bad_binary_flag": binary_body(outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
    "bad_output_flag": binary_body(parameters={"binary_data_output": 1}),
    "classification": binary_body(outputs=[{"name": "label", "parameters": {"classification": 3}}]),
    "shared_memory": binary_body(outputs=[{"name": "label", "parameters": {"shared_memory_region": "r"}}]),
    "output_params_not_object": binary_body(outputs=[{"name": "label", "parameters": [1]}]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_binary_requests_are_400(case: str) -> None:
    assert refused(*MALFORMED[case])


def test_both_data_and_binary_size_is_refused() -> None:
    tensor = {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * FEATURES,
              "parameters": {"binary_data_size": 4 * FEATURES}}
    header = orjson.dumps({"inputs": [tensor]})
    assert "both" in refused(header + b"\0" * 4 * FEATURES, len(header))


def test_raw_bytes_without_a_binary_input_are_refused() -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * FEATURES}]})
    assert "binary_data_size" in refused(header + b"junk", len(header))


@settings(max_examples=300, deadline=None, database=None)
@given(header=st.binary(max_size=200) | st.builds(lambda b: b[0], st.builds(binary_body)),
       tail=st.binary(max_size=600), cut=st.integers(0, 900) | st.none())
def test_any_bytes_and_any_header_length_are_a_request_or_a_400(header: bytes, tail: bytes, cut: int | None) -> None:
    body = header + tail
    try:
        req = parse(body, cut)
    except ProtocolError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert req.rows.shape[1] == FEATURES and np.isfinite(req.rows).all()
