"""The server benchmark's request bodies are what Triton's own client sends, its load-tool output
is read right, and its verdict counts the targets and the requests nobody answered. No server runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenarios.bench_server import (
    LoadResult,
    Measurement,
    Target,
    binary_body,
    grpc_frame,
    grpc_infer_request,
    grpc_output_names,
    json_body,
    parse_h2load,
    parse_wrk,
    report,
)

ROWS = (np.arange(3 * 64, dtype=np.float32).reshape(3, 64) % 17)
OUTPUTS = ("probabilities", "label")

WRK_OUT = """Running 3s test @ http://127.0.0.1:40000/v2/models/digits/versions/1/infer
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  402.11us   9.87ms   91.20%
    Req/Sec     6.95k   210.33     7.20k    80.00%
  Latency Distribution
     50%    2.25ms
     75%    2.40ms
     90%    2.61ms
     99%    3.90ms
  20748 requests in 3.00s, 5.12MB read
  Non-2xx or 3xx responses: 4
Requests/sec:   6915.32
Transfer/sec:      1.71MB
"""

H2LOAD_OUT = """starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s warm-up time and 3s main duration for each client.

finished in 3.00s, 4120.33 req/s, 1.05MB/s
requests: 12361 total, 12377 started, 12361 done, 12359 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 12361 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 3.14MB (3292288) total, 128.06KB (131134) headers (space savings 94.20%), 2.83MB (2967360) data
                     min         max         mean         sd        +/- sd
time for request:      812us     12.01ms      3.85ms       1.02ms    70.12%
time for connect:      201us      1.20ms       640us       301us    62.50%
time to 1st byte:     2.10ms      5.01ms      3.33ms       1.10ms    56.25%
req/s           :     255.01      260.20      257.51        1.40    62.50%
"""


def test_binary_body_is_what_tritonclient_sends() -> None:
    http = pytest.importorskip("tritonclient.http")
    tensor = http.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=True)
    outputs = [http.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
    theirs, their_length = http.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    ours, our_length = binary_body(ROWS, OUTPUTS)
    assert our_length == their_length
    assert ours == theirs


def test_grpc_request_parses_as_tritons_model_infer_request() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    request = service_pb2.ModelInferRequest.FromString(grpc_infer_request(ROWS, OUTPUTS, "digits", "1"))
    assert (request.model_name, request.model_version) == ("digits", "1")
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("input", "FP32", [3, 64])
    assert [o.name for o in request.outputs] == list(OUTPUTS)
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(3, 64), ROWS)


def test_grpc_frame_prefixes_an_uncompressed_flag_and_the_length() -> None:
    message = grpc_infer_request(ROWS[:1], OUTPUTS)
    framed = grpc_frame(message)
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == len(message) and framed[5:] == message


def test_grpc_output_names_reads_a_model_infer_response() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    response = service_pb2.ModelInferResponse(model_name="digits", id="7")
    for name in ("predict_proba", "predict"):
        response.outputs.add(name=name, datatype="INT64", shape=[1])
    response.raw_output_contents.extend([b"\x01" * 8, b"\x02" * 8])
    assert grpc_output_names(response.SerializeToString()) == ["predict_proba", "predict"]


def test_json_body_carries_the_rows_and_asks_the_outputs() -> None:
    import orjson

    doc = orjson.loads(json_body(ROWS, OUTPUTS))
    assert doc["inputs"][0]["shape"] == [3, 64] and doc["inputs"][0]["data"] == ROWS.ravel().tolist()
    assert [o["name"] for o in doc["outputs"]] == list(OUTPUTS)


def test_parse_wrk_reads_rate_failures_and_percentiles() -> None:
    r = parse_wrk(WRK_OUT)
    assert (r.rps, r.failed, r.completed) == (6915.32, 4, 20748)
    assert (r.p50_ms, r.p99_ms, r.mean_ms) == (2.25, 3.90, 2.31)


def test_parse_h2load_counts_failed_requests_and_reads_the_mean() -> None:
    r = parse_h2load(H2LOAD_OUT)
    assert (r.rps, r.failed, r.completed) == (4120.33, 2, 12359)
    assert r.mean_ms == 3.85 and r.p50_ms is None


def _measured(server: str, rps: float, transport: str = "json", answered: int | None = None, completed: int = 100) -> tuple[Target, list[Measurement]]:
    target = Target(transport, 1, server, f"http://x/{server}", Path("/dev/null"))
    return target, [Measurement(target, LoadResult(rps, 0, completed, 1.0, 2.0, 1.5), answered)]


def test_report_flags_a_missed_mlserver_target_and_unanswered_requests() -> None:
    results = dict([_measured("echo", 10_000), _measured("servelab", 6_000, answered=90), _measured("mlserver", 2_500)])
    lines, problems = report(results, ["json"], [1])
    assert "2.40x" in lines[1]
    assert any("2.40x MLServer" in p for p in problems)
    assert any("answered 90 rows" in p for p in problems)


def test_report_passes_a_run_that_meets_every_target() -> None:
    results = dict([_measured("echo", 10_000), _measured("servelab", 6_000, answered=100), _measured("mlserver", 1_500)])
    _, problems = report(results, ["json"], [1])
    assert problems == []
