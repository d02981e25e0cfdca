"""Bad input never reaches the model and never becomes a 5xx; the server keeps serving."""

from __future__ import annotations

import json
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from real.server.app import create_app
from real.server.asgi_client import AsgiClient
from tests.real.conftest import real_cfg

INFER = "/v2/models/digits/infer"
JSON = {"content-type": "application/json"}


def tensor(**over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
    t.update(over)
    return {"inputs": [t]}


@pytest.fixture(scope="module")
def client() -> Iterator[AsgiClient]:
    cfg = real_cfg(server=dict(max_body_bytes=4096), service=dict(kind="deterministic", base_s=0.0001, per_item_s=0.0))
    with AsgiClient(create_app(cfg, 0)) as c:
        yield c


def assert_refused(r: Any, status: int | None = None) -> None:
    assert 400 <= r.status < 500, (r.status, r.body)
    assert isinstance(r.json().get("error"), str)
    if status is not None:
        assert r.status == status, r.body


BAD_BODIES: dict[str, bytes] = {
    "empty": b"",
    "malformed": b'{"inputs": [',
    "not_object": b"[1, 2, 3]",
    "no_inputs": b"{}",
    "two_inputs": orjson.dumps({"inputs": [tensor()["inputs"][0]] * 2}),
    "wrong_name": orjson.dumps(tensor(name="x")),
    "wrong_datatype": orjson.dumps(tensor(datatype="INT8")),
    "wrong_width": orjson.dumps(tensor(shape=[1, 63], data=[1.0] * 63)),
    "negative_dim": orjson.dumps(tensor(shape=[-1, 64])),
    "zero_rows": orjson.dumps(tensor(shape=[0, 64], data=[])),
    "absurd_rows": orjson.dumps(tensor(shape=[10**12, 64])),
    "float_dims": orjson.dumps(tensor(shape=[1.0, 64])),
    "short_data": orjson.dumps(tensor(data=[1.0] * 63)),
    "strings": orjson.dumps(tensor(data=["1.0"] * 64)),
    "nulls": orjson.dumps(tensor(data=[None] * 64)),
    "ragged": orjson.dumps(tensor(data=[[1.0] * 32, [1.0] * 31])),
    "objects": orjson.dumps(tensor(data=[{}] * 64)),
    "overflow_fp32": orjson.dumps(tensor(data=[1e300] * 64)),
    "huge_int": b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[' + b",".join([b"1" * 40] * 64) + b"]}]}",
    "bad_timeout": orjson.dumps({**tensor(), "parameters": {"timeout": "soon"}}),
    "bad_id": orjson.dumps({**tensor(), "id": 7}),
    "bad_outputs": orjson.dumps({**tensor(), "outputs": [{"name": "nope"}]}),
    "deep_nesting": b"[" * 1500 + b"]" * 1500,
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_bodies_are_400(client: AsgiClient, name: str) -> None:
    assert_refused(client.request("POST", INFER, BAD_BODIES[name], JSON), 400)


def test_oversized_body_is_413(client: AsgiClient) -> None:
    assert_refused(client.request("POST", INFER, b" " * 5000, JSON), 413)


def test_wrong_content_type_is_415(client: AsgiClient) -> None:
    assert_refused(client.request("POST", INFER, orjson.dumps(tensor()), {"content-type": "text/plain"}), 415)


def test_wrong_method_is_405_with_error(client: AsgiClient) -> None:
    assert_refused(client.request("GET", INFER), 405)


def test_still_serving_after_the_junk(client: AsgiClient) -> None:
    for junk in BAD_BODIES.values():
        client.request("POST", INFER, junk, JSON)
    assert client.request("POST", INFER, orjson.dumps(tensor()), JSON).status == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=8), kids, max_size=6),
    max_leaves=40,
)
# Bodies near the valid shape find deeper paths than arbitrary JSON alone.
near_valid = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["input", "x", ""]) | json_values,
        "shape": st.lists(st.integers(-3, 70) | json_values, max_size=3) | json_values,
        "datatype": st.sampled_from(["FP32", "FP64", "BYTES"]) | json_values,
        "data": st.lists(st.floats(allow_nan=False) | st.integers() | json_values, max_size=130) | json_values,
    }), max_size=2)},
    optional={"id": json_values, "parameters": json_values, "outputs": json_values},
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values | near_valid)
def test_fuzz_json_bodies_never_5xx(client: AsgiClient, doc: Any) -> None:
    r = client.request("POST", INFER, json.dumps(doc).encode(), JSON)  # stdlib: big ints too
    assert r.status < 500, r.body
    if r.status >= 400:
        assert isinstance(r.json()["error"], str)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300), path=st.sampled_from([INFER, "/v2/models/digits/versions/1/infer", "/v2/models/x/infer"]),
       ctype=st.sampled_from(["application/json", "application/octet-stream", "", "application/json; charset=utf-8"]))
def test_fuzz_junk_bytes_never_5xx(client: AsgiClient, junk: bytes, path: str, ctype: str) -> None:
    r = client.request("POST", path, junk, {"content-type": ctype} if ctype else {})
    assert r.status < 500, r.body
    if r.status >= 400:
        assert isinstance(r.json()["error"], str)
