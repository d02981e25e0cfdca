"""GRPCInferenceService conformance with Triton's own client (`tritonclient.grpc`), against a
replica and against the gateway of a launched stack: health, metadata, repository index,
statistics, a batch of several rows, an unknown model (NOT_FOUND, not a crash) and hostile
inputs (INVALID_ARGUMENT with the REST path's own message)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from real.grpc import grpc_service_pb2 as pb  # noqa: E402
from real.grpc import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from real.launcher import RunningStack, launch  # noqa: E402
from tests.real.conftest import real_cfg  # noqa: E402

pytestmark = pytest.mark.real
MODEL = "digits"
MAX_BATCH = 8


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    cfg = real_cfg(replicas=2, batching=dict(max_batch_size=MAX_BATCH, max_queue_delay_s=0.001),
                   service=dict(kind="deterministic", base_s=0.0005, per_item_s=0.0))
    with launch(cfg) as running:
        yield running


@pytest.fixture(params=["replica", "gateway"])
def target(request: pytest.FixtureRequest, stack: RunningStack) -> str:
    """A gRPC target (host:port): replica 0's, or the gateway's."""
    return stack.replica_grpc_urls[0] if request.param == "replica" else stack.grpc_gateway_url


@pytest.fixture
def client(target: str) -> Iterator[Any]:
    c = tritonclient_grpc.InferenceServerClient(target)
    yield c
    c.close()


def rows(n: int, fill: float = 0.5) -> Any:
    x = np.full((n, 64), fill, dtype=np.float32)
    inp = tritonclient_grpc.InferInput("input", [n, 64], "FP32")
    inp.set_data_from_numpy(x)
    return inp


def params(response: Any) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.get_response().parameters.items()}


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata(MODEL)
    assert meta.name == MODEL and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 64])]
    assert "label" in {t.name for t in meta.outputs}
    assert client.get_server_metadata().name.startswith("servelab")


def test_repository_index_lists_the_served_version(client: Any) -> None:
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [(MODEL, "1", "READY")]


def test_infer_a_batch_of_several_rows(client: Any, target: str, stack: RunningStack) -> None:
    result = client.infer(MODEL, [rows(3)], request_id="g-1", outputs=[tritonclient_grpc.InferRequestedOutput("label")])
    labels = result.as_numpy("label")
    assert labels.shape == (3,) and labels.dtype == np.int64
    p = params(result)
    assert result.get_response().id == "g-1"
    assert p["batch_size"] >= 3 and p["version"] == "1" and p["replica"] in (0, 1)
    assert 0 <= p["queue_s"] <= p["server_s"] and p["service_s"] >= 0
    if target == stack.grpc_gateway_url:  # which replica answered, and the gateway's own time
        assert p["gateway_replica"] == p["replica"] and p["gateway_s"] >= 0


def test_statistics_count_the_rows_served(client: Any, target: str, stack: RunningStack) -> None:
    def served() -> int:
        stats = client.get_inference_statistics(MODEL).model_stats
        assert [(s.name, s.version) for s in stats] == [(MODEL, "1")]
        return int(stats[0].inference_count)

    before = served()
    client.infer(MODEL, [rows(2)], model_version="1")
    # the gateway's figures are summed over replicas: the two rows land on one of them
    assert served() == before + 2


def test_unknown_model_and_version_are_not_found(client: Any) -> None:
    for call in (lambda: client.infer("nope", [rows(1)]), lambda: client.infer(MODEL, [rows(1)], model_version="9"),
                 lambda: client.get_model_metadata("nope")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value
    assert client.is_server_live()


def test_a_shape_that_does_not_fit_is_invalid_argument(client: Any) -> None:
    inp = rows(1)
    inp.set_shape([1, 63])  # the data stays 64 values: the server must refuse, not reshape
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [inp])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "[n, 64]" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [rows(MAX_BATCH + 1)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "max_batch_size" in err.value.message()


# -- hostile inputs, as raw protobuf messages (what tritonclient would refuse to build) ---------


def message(**tensor: Any) -> pb.ModelInferRequest:
    shape = tensor.pop("shape", [1, 64])
    raw = tensor.pop("raw", np.full(64, 0.5, dtype="<f4").tobytes())
    extra = tensor.pop("request", {})
    t = pb.ModelInferRequest.InferInputTensor(name=tensor.pop("name", "input"), datatype=tensor.pop("datatype", "FP32"),
                                             shape=shape, **tensor)
    msg = pb.ModelInferRequest(model_name=MODEL, inputs=[t], **extra)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    return msg


def _timeout(value: str) -> pb.ModelInferRequest:
    msg = message()
    msg.parameters["timeout"].string_param = value
    return msg


HOSTILE: dict[str, Callable[[], pb.ModelInferRequest]] = {
    "no_inputs": lambda: pb.ModelInferRequest(model_name=MODEL),
    "two_inputs": lambda: pb.ModelInferRequest(model_name=MODEL, inputs=[message().inputs[0]] * 2),
    "wrong_name": lambda: message(name="x"),
    "wrong_datatype": lambda: message(datatype="INT8"),
    "wrong_width": lambda: message(shape=[1, 63], raw=np.zeros(63, "<f4").tobytes()),
    "negative_dim": lambda: message(shape=[-1, 64]),
    "zero_rows": lambda: message(shape=[0, 64], raw=b""),
    "absurd_rows": lambda: message(shape=[10**12, 64]),
    "short_data": lambda: message(raw=np.zeros(63, "<f4").tobytes()),
    "odd_bytes": lambda: message(raw=b"\x00" * 255),
    "not_finite": lambda: message(raw=np.full(64, np.inf, "<f4").tobytes()),
    "nan": lambda: message(raw=np.full(64, np.nan, "<f4").tobytes()),
    "typed_short": lambda: message(raw=None, contents=pb.InferTensorContents(fp32_contents=[1.0] * 63)),
    "typed_and_raw": lambda: message(contents=pb.InferTensorContents(fp32_contents=[1.0] * 64)),
    "bad_timeout": lambda: _timeout("soon"),
    "bad_outputs": lambda: message(request={"outputs": [pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")]}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_are_invalid_argument_and_the_server_stays_up(target: str, name: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(HOSTILE[name](), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
        assert err.value.details()
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_typed_contents_are_accepted_like_raw_bytes(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        typed = stub.ModelInfer(message(raw=None, contents=pb.InferTensorContents(fp32_contents=[0.5] * 64)), timeout=10)
        raw = stub.ModelInfer(message(), timeout=10)
    assert typed.raw_output_contents[0] == raw.raw_output_contents[0]


def test_a_refusal_says_what_rest_says(stack: RunningStack) -> None:
    """The same bad tensor over REST and over gRPC: the same message (one validation)."""
    doc = {"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]}
    req = urllib.request.Request(stack.replica_urls[0] + f"/v2/models/{MODEL}/infer", json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req, timeout=10)
    rest_message = json.loads(http_err.value.read())["error"]
    for target in (stack.replica_grpc_urls[0], stack.grpc_gateway_url):
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    message(shape=[1, 63], raw=np.zeros(63, "<f4").tobytes()), timeout=10)
        assert err.value.details() == rest_message


# -- loadgen.protocol=grpc ----------------------------------------------------------------------


def grpc_load_cfg(rate: float) -> Any:
    from sim.config import ArrivalConfig, LoadgenConfig, ScenarioConfig

    return ScenarioConfig(seed=7, duration_s=2.0, warmup_s=0.5, timeout_s=2.0, replicas=2,
                          arrival=ArrivalConfig(kind="poisson", rate=rate, users=20),
                          loadgen=LoadgenConfig(workers=1, max_lag_p99_s=0.05, protocol="grpc"))


@pytest.mark.slow
def test_the_load_generator_over_grpc_records_every_request_once_with_the_servers_fields(
        tmp_path: Any, stack: RunningStack) -> None:
    from real.loadgen.runner import run_load
    from sim.arrivals import make_schedule
    from sim.rng import make_streams

    cfg = grpc_load_cfg(100.0)
    streams = make_streams(cfg.seed)
    times = make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users).times_s
    result = run_load(cfg, stack.load_target("grpc"), tmp_path / "loadgen", path=f"/v2/models/{MODEL}/infer")
    frame = result.merged.requests
    assert result.complete and result.merged.never_sent == 0 and result.merged.duplicates == 0
    np.testing.assert_array_equal(frame["arrival_s"].to_numpy(), times)  # open loop: the schedule, once each
    assert (frame["status"] == "ok").all(), frame["status"].value_counts()
    assert set(frame["replica"]) <= {0, 1} and set(frame["version"]) == {"1"}
    assert (frame["batch_size"] >= 1).all() and frame["queue_s"].notna().all() and frame["service_s"].notna().all()
    assert (frame["start_s"] >= frame["arrival_s"]).all() and (frame["finish_s"] >= frame["start_s"]).all()


@pytest.mark.slow
def test_the_load_generator_over_grpc_against_the_null_server(tmp_path: Any) -> None:
    from real.loadgen.null_server import null_server
    from real.loadgen.runner import run_load

    cfg = grpc_load_cfg(200.0)
    with null_server(protocol="grpc") as target:
        result = run_load(cfg, target, tmp_path / "loadgen", path=f"/v2/models/{MODEL}/infer")
    frame = result.merged.requests
    assert result.complete and result.merged.duplicates == 0 and (frame["status"] == "ok").all()
    assert frame["batch_id"].nunique() == len(frame)
