"""Triton's own HTTP client (`tritonclient.http`) against a replica and against the gateway.

What a new user does first: point the most used Open Inference Protocol client at servelab and
call everything it offers that servelab serves. Both endpoints must answer alike: health,
metadata, the repository index, statistics, inference with JSON and with binary tensors (the
client's default for outputs), a batch of rows, an unknown model (a 404 the client raises, not a
crash), and the hostile inputs of the server's fuzz (tests/real/test_server_input.py) sent
through the binary layout, through the client where it can build them and as raw bytes where it
cannot. The stack is the real one (`real.launcher.launch`): two numpy replicas serving
versions 1 and 2 behind the gateway.

KServe's `InferenceRESTClient` is not run here: kserve does not install beside servelab's pins
(README, "Clients").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from real.launcher import RunningStack, launch
from sim.config import ScenarioConfig
from tests.real.test_server_input import BAD_BODIES

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.real

MODEL = "digits"
TARGETS = ("replica", "gateway")
MAX_BATCH = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    cfg = ScenarioConfig(replicas=2, seed=5)
    cfg.model.backend = "numpy"
    cfg.model.versions = ["1", "2"]
    cfg.batching.max_batch_size = MAX_BATCH
    cfg.batching.max_queue_delay_s = 0.0
    cfg.server.max_body_bytes = 65536
    with launch(cfg, run_dir=tmp_path_factory.mktemp("conformance")) as running:
        yield running


def base_url(stack: RunningStack, target: str) -> str:
    return stack.gateway_url if target == "gateway" else stack.replica_urls[0]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(stack: RunningStack, target: str) -> Iterator[Any]:
    """tritonclient.http takes host:port, no scheme."""
    with httpclient.InferenceServerClient(base_url(stack, target).removeprefix("http://")) as c:
        yield c


def digits(n: int, seed: int = 0) -> np.ndarray:
    """n rows shaped like the digits images (8x8 pixels, values 0..16)."""
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float32)


def infer(client: Any, rows: np.ndarray, binary_in: bool, binary_out: bool | None, version: str = "") -> Any:
    """One infer; `binary_out` None asks for no outputs by name (the client then asks for all, binary)."""
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary_in)
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput(name, binary_data=binary_out)
                                               for name in ("probabilities", "label")]
    return client.infer(MODEL, [tensor], model_version=version, outputs=outputs, request_id="conf")


# -- health, metadata, repository, statistics -----------------------------------------------------


def test_health_and_readiness(client: Any, target: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready(MODEL, "9")


def test_server_and_model_metadata(client: Any, target: str) -> None:
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(server["extensions"])
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and "1" in meta["versions"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probabilities": "FP32", "label": "INT64"}
    assert client.get_model_metadata(MODEL, "1")["name"] == MODEL
    if target == "gateway":  # the gateway serves every version of its replicas
        assert sorted(meta["versions"]) == ["1", "2"]


def test_repository_index_lists_what_is_served(client: Any, target: str) -> None:
    index = client.get_model_repository_index()
    expected = {("digits", "1")} if target == "replica" else {("digits", "1"), ("digits", "2")}
    assert {(e["name"], e["version"]) for e in index} == expected
    assert all(e["state"] == "READY" for e in index)


def rows_served(stats: dict[str, Any]) -> int:
    return sum(entry["inference_count"] for entry in stats["model_stats"])


def test_statistics_count_the_rows_inferred(client: Any, target: str) -> None:
    before = client.get_inference_statistics(MODEL)
    infer(client, digits(3), binary_in=True, binary_out=True, version="1")
    infer(client, digits(2), binary_in=False, binary_out=False, version="1")
    after = client.get_inference_statistics(MODEL)
    assert rows_served(after) - rows_served(before) == 5
    v1 = client.get_inference_statistics(MODEL, "1")["model_stats"]
    assert [e["version"] for e in v1] == ["1"]
    assert v1[0]["inference_stats"]["success"]["count"] >= 2 and v1[0]["batch_stats"]
    every = client.get_inference_statistics()  # no model named: every model's
    assert {e["name"] for e in every["model_stats"]} == {MODEL}
    if target == "gateway":
        assert sorted(e["version"] for e in after["model_stats"]) == ["1", "2"]


# -- inference ------------------------------------------------------------------------------------


def test_json_and_binary_tensors_give_the_same_answer(client: Any) -> None:
    rows = digits(1, seed=1)
    as_json = infer(client, rows, binary_in=False, binary_out=False, version="1")
    for binary_in, binary_out in ((True, True), (True, False), (False, True), (True, None)):
        other = infer(client, rows, binary_in, binary_out, version="1")
        for name in ("probabilities", "label"):
            assert np.array_equal(other.as_numpy(name), as_json.as_numpy(name)), (binary_in, binary_out, name)
    proba = as_json.as_numpy("probabilities")
    assert proba.shape == (1, 10) and proba.dtype == np.float32 and abs(float(proba.sum()) - 1.0) < 1e-4
    assert as_json.as_numpy("label").tolist() == [int(proba.argmax())]
    assert as_json.get_response()["id"] == "conf"


def test_binary_outputs_come_back_as_raw_bytes(client: Any) -> None:
    result = infer(client, digits(2), binary_in=True, binary_out=True, version="1")
    outputs = result.get_response()["outputs"]
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in outputs)
    assert result.as_numpy("label").dtype == np.int64


def test_a_batch_of_rows(client: Any) -> None:
    rows = digits(MAX_BATCH, seed=2)
    result = infer(client, rows, binary_in=True, binary_out=None, version="1")
    assert result.as_numpy("probabilities").shape == (MAX_BATCH, 10)
    one_by_one = [int(infer(client, rows[i:i + 1], True, True, "1").as_numpy("label")[0]) for i in range(MAX_BATCH)]
    assert result.as_numpy("label").tolist() == one_by_one


def test_unknown_model_and_version_are_404s_the_client_raises(client: Any) -> None:
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(digits(1), binary_data=True)
    for call in (lambda: client.infer("nope", [tensor]), lambda: client.infer(MODEL, [tensor], model_version="9"),
                 lambda: client.get_model_metadata("nope"), lambda: client.get_inference_statistics("nope")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "404" and info.value.message()
    assert client.is_server_live()  # still serving


# -- hostile input through the binary layout ----------------------------------------------------------


def client_built(rows: np.ndarray, name: str = "input", datatype: str = "FP32") -> Callable[[Any], Any]:
    def send(client: Any) -> Any:
        tensor = httpclient.InferInput(name, list(rows.shape), datatype)
        tensor.set_data_from_numpy(rows, binary_data=True)
        return client.infer(MODEL, [tensor])
    return send


HOSTILE_VIA_CLIENT: dict[str, Callable[[Any], Any]] = {
    "wrong_name": client_built(digits(1), name="x"),
    "wrong_datatype": client_built(digits(1).astype(np.int8), datatype="INT8"),
    "fp64": client_built(digits(1).astype(np.float64), datatype="FP64"),
    "wrong_width": client_built(digits(1)[:, :63]),
    "zero_rows": client_built(digits(0)),
    "over_max_batch": client_built(digits(MAX_BATCH + 1)),
    "three_dims": client_built(digits(2).reshape(2, 8, 8)),
    "not_finite": client_built(np.full((1, 64), np.inf, dtype=np.float32)),
    "nan": client_built(np.full((1, 64), np.nan, dtype=np.float32)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_VIA_CLIENT))
def test_hostile_binary_requests_from_the_client_are_400(client: Any, case: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        HOSTILE_VIA_CLIENT[case](client)
    assert info.value.status() == "400" and info.value.message()


def raw_binary(rows: np.ndarray, size: int | None = None, raw: bytes | None = None, **doc: Any) -> tuple[bytes, int]:
    data = rows.astype("<f4").tobytes() if raw is None else raw
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": len(data) if size is None else size}}
    header = orjson.dumps({"inputs": [tensor], **doc})
    return header + data, len(header)


def layout(rows: np.ndarray, **kw: Any) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length value) of a binary request."""
    body, header_length = raw_binary(rows, **kw)
    return body, str(header_length)


GOOD, GOOD_HEADER = raw_binary(digits(1))
# what the client cannot build: a layout whose lengths lie
HOSTILE_LAYOUTS: dict[str, tuple[bytes, str]] = {
    "header_past_body": (GOOD, str(len(GOOD) + 1)),
    "header_zero": (GOOD, "0"),
    "header_cuts_json": (GOOD, str(GOOD_HEADER - 3)),
    "header_not_a_number": (GOOD, "ten"),
    "header_negative": (GOOD, "-5"),
    "size_past_body": layout(digits(1), raw=b"\0" * 100, size=256),
    "size_not_shape": layout(digits(1), raw=b"\0" * 8),
    "bytes_left_over": layout(digits(1), raw=digits(1).tobytes() + b"junk", size=256),
    "negative_size": layout(digits(1), size=-4),
    "bad_binary_flag": layout(digits(1), outputs=[{"name": "label", "parameters": {"binary_data": 3}}]),
}


def post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(url + f"/v2/models/{MODEL}/infer", data=body, headers=headers, timeout=10)


def assert_4xx_error(r: requests.Response, status: int = 400) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYOUTS))
def test_hostile_binary_layouts_are_400(stack: RunningStack, target: str, case: str) -> None:
    body, header_length = HOSTILE_LAYOUTS[case]
    r = post(base_url(stack, target), body, {"content-type": "application/octet-stream",
                                             "Inference-Header-Content-Length": header_length})
    assert_4xx_error(r)


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_the_fuzz_bad_bodies_as_binary_requests_are_400(stack: RunningStack, target: str, case: str) -> None:
    """Each of the server's known-bad JSON bodies as the JSON header of a binary request."""
    body = BAD_BODIES[case]
    r = post(base_url(stack, target), body + b"\0" * 16, {"content-type": "application/octet-stream",
                                                          "Inference-Header-Content-Length": str(len(body))})
    assert_4xx_error(r)


def test_gateway_and_replica_refuse_alike(stack: RunningStack) -> None:
    """The same bytes, the same status and error message at both (the gateway forwards as is)."""
    for body, header_length in list(HOSTILE_LAYOUTS.values())[:6]:
        headers = {"content-type": "application/octet-stream", "Inference-Header-Content-Length": header_length}
        direct, through = post(stack.replica_urls[0], body, headers), post(stack.gateway_url, body, headers)
        assert (direct.status_code, direct.json()) == (through.status_code, through.json())
    text = post(stack.gateway_url, GOOD, {"content-type": "text/plain", "Inference-Header-Content-Length": str(GOOD_HEADER)})
    assert_4xx_error(text, 415)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=400), cut=st.integers(0, 500), prefix=st.sampled_from([b"", GOOD[:GOOD_HEADER]]))
def test_fuzz_binary_bodies_never_5xx(stack: RunningStack, target: str, junk: bytes, cut: int, prefix: bytes) -> None:
    body = prefix + junk
    r = post(base_url(stack, target), body, {"content-type": "application/octet-stream",
                                             "Inference-Header-Content-Length": str(min(cut, len(body) + 2))})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)
