"""gRPC messages <-> the REST path's objects (no sockets): one validation for both transports,
and the load generator's gRPC wire."""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
import orjson
import pytest

from real.grpc import convert
from real.grpc import grpc_service_pb2 as pb
from real.loadgen.grpc_wire import GrpcRequestEncoder, read_answer, read_failure
from real.loadgen.recordfile import CLIENT_TIMEOUT, CONNECTION_ERROR
from real.server.protocol import InferResult, ProtocolError, TensorSpec, parse_infer

OUTPUTS = frozenset({"label", "probabilities"})
MAX_ROWS = 8


def grpc_request(shape: list[int], values: np.ndarray, *, datatype: str = "FP32", name: str = "input",
                 params: dict[str, Any] | None = None, outputs: list[str] | None = None) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="digits", id="r-1")
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(np.asarray(values, dtype="<f4").tobytes())
    convert.set_parameters(msg.parameters, params or {})
    for o in outputs or ():
        msg.outputs.add(name=o)
    return msg


def json_request(shape: list[int], values: np.ndarray, *, datatype: str = "FP32", name: str = "input",
                 params: dict[str, Any] | None = None, outputs: list[str] | None = None) -> bytes:
    doc: dict[str, Any] = {"id": "r-1", "inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                                    "data": np.asarray(values, dtype=np.float32).tolist()}]}
    if params:
        doc["parameters"] = params
    if outputs:
        doc["outputs"] = [{"name": o} for o in outputs]
    return orjson.dumps(doc)


def test_a_valid_request_becomes_the_rest_paths_request() -> None:
    values = np.arange(3 * 64, dtype=np.float32) / 7
    kw: dict[str, Any] = {"params": {"timeout": 2500, "label": 4}, "outputs": ["label"]}
    got = convert.infer_request(grpc_request([3, 64], values, **kw), MAX_ROWS, OUTPUTS)
    want = parse_infer(json_request([3, 64], values, **kw), MAX_ROWS, OUTPUTS)
    assert np.array_equal(got.rows, want.rows) and got.rows.dtype == np.float32
    assert (got.id, got.timeout_s, got.outputs, got.label) == (want.id, want.timeout_s, want.outputs, want.label)
    assert math.isclose(got.timeout_s, 0.0025)


BAD: dict[str, dict[str, Any]] = {
    "wrong_name": {"shape": [1, 64], "values": np.zeros(64), "name": "x"},
    "wrong_datatype": {"shape": [1, 64], "values": np.zeros(64), "datatype": "INT8"},
    "wrong_width": {"shape": [1, 63], "values": np.zeros(63)},
    "zero_rows": {"shape": [0, 64], "values": np.zeros(0)},
    "too_many_rows": {"shape": [MAX_ROWS + 1, 64], "values": np.zeros((MAX_ROWS + 1) * 64)},
    "unknown_output": {"shape": [1, 64], "values": np.zeros(64), "outputs": ["nope"]},
    "bad_label": {"shape": [1, 64], "values": np.zeros(64), "params": {"label": 12}},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_refusal_has_the_rest_paths_status_and_message(case: str) -> None:
    kw = dict(BAD[case])
    shape, values = kw.pop("shape"), kw.pop("values")
    with pytest.raises(ProtocolError) as rest:
        parse_infer(json_request(shape, values, **kw), MAX_ROWS, OUTPUTS)
    with pytest.raises(ProtocolError) as grpc_err:
        convert.infer_request(grpc_request(shape, values, **kw), MAX_ROWS, OUTPUTS)
    assert (grpc_err.value.status, grpc_err.value.message) == (rest.value.status, rest.value.message)
    assert convert.grpc_code(grpc_err.value.status) == grpc.StatusCode.INVALID_ARGUMENT


def test_raw_bytes_of_the_wrong_length_are_refused() -> None:
    msg = grpc_request([1, 64], np.zeros(64))
    msg.raw_input_contents[0] = b"\0" * 255
    with pytest.raises(ProtocolError) as err:
        convert.infer_request(msg, MAX_ROWS, OUTPUTS)
    assert err.value.status == 400 and "255 bytes" in err.value.message


def test_the_response_carries_raw_outputs_and_the_rest_parameters() -> None:
    req = convert.infer_request(grpc_request([2, 64], np.zeros(128)), MAX_ROWS, OUTPUTS)
    result = InferResult(outputs={"label": np.array([3, 7], dtype=np.int64)}, queue_s=0.001, service_s=0.002,
                         batch_size=4, batch_id=9)
    resp = convert.infer_response("digits", "1", req, result, {"label": TensorSpec("label", "INT64", (-1,))}, 1, 0.004, True)
    assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == [3, 7]
    params, label = read_answer(resp.SerializeToString())
    assert params == {"queue_s": 0.001, "service_s": 0.002, "batch_size": 4, "batch_id": 9, "replica": 1,
                      "version": "1", "server_s": 0.004, "correct": True}
    assert label == 3 and resp.id == "r-1"


def test_the_gateways_rest_body_is_what_a_rest_replica_parses_alike() -> None:
    values = np.arange(64, dtype=np.float32) / 3
    msg = grpc_request([1, 64], values, params={"timeout": 10, "label": 2})
    body, header_length = convert.rest_request(msg)
    rest = parse_infer(body, MAX_ROWS, OUTPUTS, header_length)
    assert np.array_equal(rest.rows, convert.infer_request(msg, MAX_ROWS, OUTPUTS).rows)
    assert (rest.label, rest.id, rest.binary_outputs) == (2, "r-1", OUTPUTS)  # raw bytes both ways


def test_a_rest_binary_answer_becomes_raw_outputs() -> None:
    from real.server.protocol import infer_response as rest_response

    body, header_length = convert.rest_request(grpc_request([2, 64], np.zeros(128)))
    req = parse_infer(body, MAX_ROWS, OUTPUTS, header_length)
    result = InferResult(outputs={"label": np.array([3, 7], dtype=np.int64),
                                  "probabilities": np.full((2, 10), 0.1, dtype=np.float32)},
                         queue_s=0.0, service_s=0.0, batch_size=2, batch_id=0)
    specs = {"label": TensorSpec("label", "INT64", (-1,)), "probabilities": TensorSpec("probabilities", "FP32", (-1, 10))}
    answer, answer_length = rest_response("digits", "1", req, result, specs, 0, 0.0)
    resp = convert.response_from_rest(answer, answer_length, {"gateway_s": 0.5})
    by_name = {o.name: raw for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    assert np.frombuffer(by_name["label"], "<i8").tolist() == [3, 7]
    assert np.allclose(np.frombuffer(by_name["probabilities"], "<f4"), 0.1)
    assert resp.parameters["gateway_s"].double_param == 0.5 and resp.parameters["batch_size"].int64_param == 2


def test_the_load_generators_request_merges_its_parts() -> None:
    images = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    encoder = GrpcRequestEncoder("digits", images, [5, None])
    msg = pb.ModelInferRequest.FromString(encoder.encode("w0-17", 1, 1234))
    assert msg.id == "w0-17" and msg.model_name == "digits"
    assert msg.parameters["timeout"].int64_param == 1234 and "label" not in msg.parameters
    assert np.array_equal(np.frombuffer(msg.raw_input_contents[0], "<f4"), images[1])
    labelled = pb.ModelInferRequest.FromString(encoder.encode("w0-18", 0, 0))
    assert labelled.parameters["label"].int64_param == 5
    assert convert.infer_request(labelled, MAX_ROWS, OUTPUTS).label == 5


def test_failures_are_recorded_as_their_http_status_or_the_clients_own() -> None:
    assert read_failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ()) == (CLIENT_TIMEOUT, -1, "")
    assert read_failure(grpc.StatusCode.DEADLINE_EXCEEDED, "request timeout expired while queued",
                        (("x-replica", "1"), ("x-model-version", "2")))[0] == 504
    assert read_failure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ()) == (CONNECTION_ERROR, -1, "")
    assert read_failure(grpc.StatusCode.UNAVAILABLE, "queue full", (("x-replica", "0"), ("x-model-version", "1"))) == (503, 0, "1")
    assert read_failure(grpc.StatusCode.INVALID_ARGUMENT, "bad", ())[0] == 400
