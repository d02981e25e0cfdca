"""The gateway as a complete OIP endpoint, against recording stub replicas (in this process).

It forwards an infer's bytes and the headers that say how to read them exactly as the client
sent them (no Content-Type of its own), passes back the replica's answer headers a client needs
(Inference-Header-Content-Length, Content-Type), and merges its replicas' repository indexes
and statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from real.gateway import create_app
from tests.real.test_gateway import DropServer, ServerThread, free_port, make_cfg

pytestmark = pytest.mark.real

BINARY_ANSWER = b'{"outputs":[]}' + b"\x01\x02\x03\x04"


@dataclass
class Recorder:
    version: str
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    rows: int = 0


def recording_replica(rec: Recorder) -> Starlette:
    """Records each infer's headers and body; answers binary; serves an index and statistics."""

    async def infer(request: Request) -> Response:
        rec.seen.append((dict(request.headers), await request.body()))
        return Response(BINARY_ANSWER, headers={"Inference-Header-Content-Length": "14"}, media_type="application/octet-stream")

    async def ready(request: Request) -> Response:
        return Response(b"")

    async def index(request: Request) -> Response:
        return Response(orjson.dumps([{"name": "digits", "version": rec.version, "state": "READY"}]), media_type="application/json")

    async def stats(request: Request) -> Response:
        entry = {"name": "digits", "version": rec.version, "last_inference": 5, "inference_count": rec.rows,
                 "execution_count": 1, "inference_stats": {"success": {"count": 1, "ns": 100}},
                 "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 50}}]}
        return Response(orjson.dumps({"model_stats": [entry]}), media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{m}/infer", infer, methods=["POST"]),
                             Route("/v2/health/ready", ready), Route("/v2/repository/index", index, methods=["POST"]),
                             Route("/v2/models/stats", stats)])


@dataclass
class Stack:
    url: str
    recorders: list[Recorder]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Three replicas: versions 1 and 2 recording, and a third (version 3) that never answers."""
    cfg = make_cfg(replicas=3, versions=("1", "2", "3"), version_weights=(1.0, 0.0, 0.0))
    recorders = [Recorder("1", rows=3), Recorder("2", rows=4)]
    replicas: list[Any] = [ServerThread(recording_replica(rec), free_port()) for rec in recorders]
    replicas.append(DropServer())
    gateway = ServerThread(create_app(cfg, [r.url for r in replicas]), free_port())
    try:
        yield Stack(gateway.url, recorders)
    finally:
        gateway.stop()
        for r in replicas:
            r.stop()


def test_an_infer_goes_upstream_as_the_client_sent_it(stack: Stack) -> None:
    body = b'{"inputs":[]}' + b"\x00\xff" * 8
    sent = {"Inference-Header-Content-Length": "13", "content-type": "application/octet-stream"}
    r = requests.post(stack.url + "/v2/models/digits/infer", data=body, headers=sent, timeout=5)
    headers, got = stack.recorders[0].seen[-1]
    assert got == body
    assert headers["inference-header-content-length"] == "13" and headers["content-type"] == "application/octet-stream"
    assert r.status_code == 200 and r.content == BINARY_ANSWER
    assert r.headers["Inference-Header-Content-Length"] == "14" and r.headers["content-type"] == "application/octet-stream"


def test_no_content_type_stays_none(stack: Stack) -> None:
    """tritonclient sends none: the gateway must not add one (aiohttp's default would be
    application/octet-stream)."""
    conn = requests.Request("POST", stack.url + "/v2/models/digits/infer", data=b'{"inputs":[]}').prepare()
    conn.headers.pop("Content-Type", None)
    with requests.Session() as http:
        assert http.send(conn, timeout=5).status_code == 200
    headers, _ = stack.recorders[0].seen[-1]
    assert "content-type" not in headers and "inference-header-content-length" not in headers


def test_repository_index_is_the_union_and_names_a_silent_version(stack: Stack) -> None:
    r = requests.post(stack.url + "/v2/repository/index", timeout=5)
    assert r.status_code == 200
    assert [(e["version"], e["state"]) for e in r.json()] == [("1", "READY"), ("2", "READY"), ("3", "UNAVAILABLE")]
    ready = requests.post(stack.url + "/v2/repository/index", json={"ready": True}, timeout=5).json()
    assert [e["version"] for e in ready] == ["1", "2"]
    bad = requests.post(stack.url + "/v2/repository/index", data=b"[1]", timeout=5)
    assert bad.status_code == 400 and "error" in bad.json()


def test_statistics_are_summed_per_version(stack: Stack) -> None:
    doc = requests.get(stack.url + "/v2/models/digits/stats", timeout=5).json()
    assert [(e["version"], e["inference_count"]) for e in doc["model_stats"]] == [("1", 3), ("2", 4), ("3", 0)]
    (v2,) = requests.get(stack.url + "/v2/models/digits/versions/2/stats", timeout=5).json()["model_stats"]
    assert v2["inference_count"] == 4 and v2["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 50}}]
    assert requests.get(stack.url + "/v2/models/stats", timeout=5).json() == doc
    for path in ("/v2/models/nope/stats", "/v2/models/digits/versions/9/stats"):
        missing = requests.get(stack.url + path, timeout=5)
        assert missing.status_code == 404 and "error" in missing.json()


def test_server_metadata_names_the_extensions(stack: Stack) -> None:
    extensions = requests.get(stack.url + "/v2", timeout=5).json()["extensions"]
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(extensions)
