"""The model server over the Open Inference Protocol, in process (no sockets)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from real.server.asgi_client import Call
from tests.real.conftest import real_cfg

INFER = "/v2/models/digits/infer"
JSON = {"content-type": "application/json"}


def body(rows: int = 1, fill: float = 0.5, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [fill] * (rows * 64)}], **extra}


def test_health_metadata_and_repository(serve) -> None:
    c = serve(real_cfg(model=dict(versions=["1", "2"])), replica=1)
    assert c.get("/v2/health/live").status == 200
    assert c.get("/v2/health/ready").json() == {"ready": True}
    assert c.get("/v2").json()["name"] == "servelab"
    meta = c.get("/v2/models/digits").json()
    assert meta["versions"] == ["2"] and meta["inputs"][0]["shape"] == [-1, 64]
    assert c.get("/v2/models/digits/versions/2").status == 200
    assert c.get("/v2/models/digits/versions/2/ready").status == 200
    assert c.get("/v2/models/digits/versions/1").status == 404
    assert c.request("POST", "/v2/repository/index").json() == [{"name": "digits", "version": "2", "state": "READY"}]


def test_infer_reports_timings_and_echoes_id(serve) -> None:
    c = serve(real_cfg())
    r = c.post_json("/v2/models/digits/versions/1/infer", body(3, id="req-7", parameters={"timeout": 0}))
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_version"] == "1"
    p = doc["parameters"]
    assert p["batch_size"] == 3 and p["replica"] == 0 and p["version"] == "1"
    # the deterministic emulated device sleeps 2 ms: never less; how much more is the machine's
    # load (scheduling), bounded by the request's own time in the server, not by a guess
    assert 0.0019 <= p["service_s"] <= p["server_s"]
    assert 0 <= p["queue_s"] <= p["server_s"]
    assert doc["outputs"][0]["shape"] == [3]


@pytest.mark.parametrize(
    "path",
    ["/v2/models/nope/infer", "/v2/models/digits/versions/9/infer", "/v2/models/digits/versions/9", "/v2/nothing"],
)
def test_unknown_model_version_or_route_is_404_with_error(serve, path: str) -> None:
    c = serve(real_cfg())
    r = c.request("POST" if path.endswith("infer") else "GET", path, orjson.dumps(body()), JSON)
    assert r.status == 404 and "error" in r.json()


def test_batching_batches_concurrent_requests(serve) -> None:
    cfg = real_cfg(batching=dict(max_batch_size=8, max_queue_delay_s=0.01))
    c = serve(cfg)
    replies = c.many(Call("POST", INFER, orjson.dumps(body()), JSON) for _ in range(20))
    sizes = [r.json()["parameters"]["batch_size"] for r in replies]
    assert all(r.status == 200 for r in replies)
    assert max(sizes) > 1 and max(sizes) <= 8
    stats = c.get("/v2/models/digits/stats").json()["model_stats"][0]
    assert stats["inference_count"] == 20
    # each answer names its batch: ids count up from 0, members agree on size and device time
    batches: dict[int, list[dict[str, Any]]] = {}
    for r in replies:
        p = r.json()["parameters"]
        batches.setdefault(p["batch_id"], []).append(p)
    assert sorted(batches) == list(range(stats["execution_count"]))
    for members in batches.values():
        assert {m["batch_size"] for m in members} == {len(members)}
        assert len({m["service_s"] for m in members}) == 1
    assert sum(b["compute_infer"]["count"] * b["batch_size"] for b in stats["batch_stats"]) == 20


def test_multi_row_requests_never_exceed_max_batch_size(serve) -> None:
    c = serve(real_cfg(concurrency=2, batching=dict(max_batch_size=5, max_queue_delay_s=0.005)))
    replies = c.many(Call("POST", INFER, orjson.dumps(body(n)), JSON) for n in [1, 2, 3, 4, 5] * 4)
    assert all(r.status == 200 for r in replies)
    assert all(1 <= r.json()["parameters"]["batch_size"] <= 5 for r in replies)
    assert c.post_json(INFER, body(6)).status == 400  # one request bigger than any batch


def test_full_queue_sheds_with_503_and_retry_after(serve) -> None:
    cfg = real_cfg(
        service=dict(kind="deterministic", base_s=0.05, per_item_s=0.0),
        batching=dict(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2),
    )
    c = serve(cfg)
    replies = c.many(Call("POST", INFER, orjson.dumps(body()), JSON) for _ in range(8))
    shed = [r for r in replies if r.status == 503]
    assert len([r for r in replies if r.status == 200]) >= 3  # one in service + two queued
    assert shed and all(r.headers.get("retry-after") == "1" and "error" in r.json() for r in shed)
    assert "servelab_shed_total" in c.get("/metrics").body.decode()


def test_timeout_expired_in_queue_is_504_and_never_runs(serve) -> None:
    cfg = real_cfg(
        service=dict(kind="deterministic", base_s=0.05, per_item_s=0.0),
        batching=dict(max_batch_size=1, max_queue_delay_s=0.0),
    )
    c = serve(cfg)
    calls = [Call("POST", INFER, orjson.dumps(body()), JSON)]
    calls += [Call("POST", INFER, orjson.dumps(body(parameters={"timeout": 10_000})), JSON) for _ in range(3)]
    first, *late = c.many(calls)
    assert first.status == 200
    assert all(r.status == 504 and "timeout" in r.json()["error"] for r in late)
    assert c.get("/v2/models/digits/stats").json()["model_stats"][0]["inference_count"] == 1


def test_control_endpoints_need_the_token(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVELAB_TOKEN", "s3cret")
    c = serve(real_cfg())
    unload = "/v2/repository/models/digits/unload"
    assert c.request("POST", unload).status == 401
    assert c.request("POST", unload, headers={"authorization": "Bearer wrong"}).status == 401
    assert c.request("POST", unload, headers={"authorization": "Bearer s3cret"}).status == 200
    assert c.get("/v2/health/ready").status == 503
    assert c.post_json(INFER, body()).status == 503
    assert c.request("POST", "/v2/repository/models/digits/load", headers={"authorization": "Bearer s3cret"}).status == 200
    assert c.post_json(INFER, body()).status == 200


def test_generated_token_is_never_accepted_blindly(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVELAB_TOKEN", raising=False)
    c = serve(real_cfg())
    assert c.request("POST", "/v2/repository/models/digits/unload", headers={"authorization": "Bearer "}).status == 401


def test_metrics_are_prometheus_text(serve) -> None:
    c = serve(real_cfg())
    assert c.post_json(INFER, body()).status == 200
    text = c.get("/metrics").body.decode()
    for name in ("servelab_request_latency_seconds_bucket", "servelab_queue_length", "servelab_batch_size_bucket",
                 "servelab_in_flight", "servelab_shed_total", "servelab_errors_total"):
        assert name in text


def test_numpy_backend_predicts_the_labels(serve) -> None:
    from real.models import test_split

    x, y = test_split()
    c = serve(real_cfg(model=dict(backend="numpy"), batching=dict(max_batch_size=64)))
    n = 64
    doc = {"inputs": [{"name": "input", "shape": [n, 64], "datatype": "FP32", "data": x[:n].tolist()}]}
    r = c.post_json(INFER, doc)
    assert r.status == 200, r.body
    out = {o["name"]: o for o in r.json()["outputs"]}
    labels = np.asarray(out["label"]["data"])
    assert out["probabilities"]["shape"] == [n, 10]
    assert np.allclose(np.asarray(out["probabilities"]["data"]).reshape(n, 10).sum(axis=1), 1, atol=1e-4)
    assert (labels == y[:n]).mean() >= 0.9
    only = c.post_json(INFER, {**doc, "outputs": [{"name": "label"}]}).json()["outputs"]
    assert [o["name"] for o in only] == ["label"]


def test_models_accuracy_on_held_out_labels() -> None:
    from real.models import load_model, test_split

    x, y = test_split()
    acc = {v: float((load_model(v).predict(x) == y).mean()) for v in ("1", "2")}
    assert acc["1"] >= 0.9 and acc["2"] >= acc["1"], acc
    assert math.isfinite(sum(acc.values()))


def test_openapi_describes_every_route() -> None:
    from pathlib import Path

    import yaml

    from real.server.app import create_app

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "real" / "openapi.yaml").read_text())
    routes = {r.path for r in create_app(real_cfg(), 0).routes}  # type: ignore[attr-defined]
    assert set(spec["paths"]) == routes
