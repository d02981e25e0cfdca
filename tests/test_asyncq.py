"""Async serving in the real stack (real.asyncq): the gateway's submit and result endpoints over a
real redis-server, and workers stepped by hand in this process, so each test decides when a
result is ready. One test runs workers as processes and SIGKILLs one mid-batch.

Each test starts its own private redis-server (Debian's package); without it these tests skip,
saying what to install."""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
import redis

from real.asyncq import api
from real.asyncq.queue import (
    GROUP,
    REDIS_PASSWORD_ENV,
    REDIS_URL_ENV,
    AsyncKeys,
    check_callback_url,
    decode_result,
    encode_result,
)
from real.asyncq.worker import Worker, build, connect
from real.features.redis_server import INSTALL_HINT, RedisServer, redis_server_binary, start_redis_server
from real.gateway import create_app
from real.server.asgi_client import AsgiClient, Reply
from real.server.protocol import ProtocolError
from sim.config import AsyncJobsConfig, ScenarioConfig, ServiceConfig, version_names
from sim.files import write_config

pytestmark = pytest.mark.real  # a redis-server, an in-process gateway, worker processes: all on loopback
needs_redis = pytest.mark.skipif(redis_server_binary() is None, reason=f"redis-server is not installed: {INSTALL_HINT}")

MODEL = "digits"
INFER = f"/v2/models/{MODEL}/infer"
UNREACHABLE = "http://127.0.0.1:9"  # the sync replica: never asked by an async submission


def body(async_: object = True, rows: int = 1, **params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "c-1", "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
                                                    "data": [1.0] * (64 * rows)}]}
    if async_ is not None:
        doc["parameters"] = {"async": async_, **params}
    return doc


def make_cfg(pattern: str = "async", **jobs: Any) -> ScenarioConfig:
    return ScenarioConfig(replicas=1, pattern=pattern, async_jobs=AsyncJobsConfig(**jobs),
                          service=ServiceConfig(kind="deterministic", base_s=0.001, per_item_s=0.0))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_redis_server() as running:
        yield running


@pytest.fixture
def stack(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[AsgiClient, Worker, redis.Redis]]]:
    """stack(cfg) -> (the gateway, in process; a worker to step by hand; a Redis client)."""
    monkeypatch.setenv(REDIS_URL_ENV, server.url)
    monkeypatch.setenv(REDIS_PASSWORD_ENV, server.password)
    opened: list[Any] = []

    def start(cfg: ScenarioConfig) -> tuple[AsgiClient, Worker, redis.Redis]:
        client = connect(server.url, server.password)  # the workers' own client: no retries
        gateway = AsgiClient(create_app(cfg, [UNREACHABLE])).__enter__()
        worker = build(cfg, 0, client)
        worker.join()
        opened.extend([gateway, worker, client])
        return gateway, worker, client

    yield start
    for thing in reversed(opened):
        if isinstance(thing, AsgiClient):
            thing.__exit__(None, None, None)
        elif isinstance(thing, Worker):
            thing.leave()
        else:
            thing.close()


def submit(gateway: AsgiClient, doc: dict[str, Any], path: str = INFER) -> Reply:
    return gateway.post_json(path, doc)


def drain(worker: Worker) -> int:
    """Step the worker until the queue is empty; the entries it ran."""
    total = 0
    while (n := worker.step(0.01)) > 0:
        total += n
    return total


# -- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123/done", "http://localhost/cb", "http://127.0.0.1/x?y=1"])
def test_loopback_callback_urls_are_accepted(url: str) -> None:
    assert check_callback_url(url) == url


@pytest.mark.parametrize("url", ["https://127.0.0.1/cb", "http://10.0.0.1/cb", "http://example.com/cb",
                                 "http://127.0.0.1.example.com/cb", "http://user:pw@127.0.0.1/cb", "http://127.0.0.1:99999/",
                                 "", 42, None])
def test_other_callback_urls_are_refused_naming_the_rule(url: object) -> None:
    with pytest.raises(ValueError, match="loopback http URL"):
        check_callback_url(url)


def test_async_parameters_decide_which_bodies_are_async() -> None:
    raw = lambda doc: orjson.dumps(doc)  # noqa: E731
    assert api.async_parameters(raw(body(True)), None) == {"async": True}
    assert api.async_parameters(raw(body(False)), None) is None
    assert api.async_parameters(raw(body(None)), None) is None
    assert api.async_parameters(b'{"id": "async"}', None) is None  # the mark, but no parameter
    assert api.async_parameters(b'{"parameters": {"async": true', None) is None  # broken JSON: the sync path refuses it
    with pytest.raises(ProtocolError, match="true or false"):
        api.async_parameters(raw(body("yes")), None)


def test_a_stored_result_keeps_its_status_and_document() -> None:
    assert decode_result(encode_result(200, b'{"a": 1}')) == (200, b'{"a": 1}')
    assert decode_result(b"pending") is None


# -- the gateway and a worker -----------------------------------------------------------------


@needs_redis
def test_submit_answers_202_with_a_location_then_the_poll_202_then_200(stack: Callable[..., Any]) -> None:
    gateway, worker, _ = stack(make_cfg())
    reply = submit(gateway, body())
    assert reply.status == 202
    doc = reply.json()
    assert doc["status"] == "pending" and doc["model_name"] == MODEL
    assert reply.headers["location"] == f"/v2/models/{MODEL}/results/{doc['id']}"
    assert gateway.get(reply.headers["location"]).status == 202
    assert drain(worker) == 1
    result = gateway.get(reply.headers["location"])
    assert result.status == 200
    answer = result.json()
    assert answer["id"] == "c-1" and answer["model_name"] == MODEL
    assert [o["name"] for o in answer["outputs"]] == ["label"] and answer["outputs"][0]["shape"] == [1]
    p = answer["parameters"]
    assert p["submitted_unix_s"] <= p["ready_unix_s"]
    assert p["batch_size"] == 1 and p["worker"] == 0 and p["version"] == version_names(make_cfg().model)[0]
    assert p["queue_s"] >= 0 and p["service_s"] > 0


@needs_redis
def test_a_worker_runs_what_is_queued_as_one_batch(stack: Callable[..., Any]) -> None:
    gateway, worker, _ = stack(make_cfg(batch_size=8))
    locations = [submit(gateway, body(rows=2)).headers["location"] for _ in range(5)]
    assert worker.step(0.01) == 5  # all of them at once: it takes what is there
    params = [gateway.get(loc).json()["parameters"] for loc in locations]
    assert {p["batch_id"] for p in params} == {0}
    assert {p["batch_size"] for p in params} == {10}  # rows, as a replica counts them


@needs_redis
def test_a_worker_joins_again_when_the_stream_and_group_vanish(stack: Callable[..., Any]) -> None:
    gateway, worker, client = stack(make_cfg())
    client.delete(AsyncKeys(MODEL).stream)  # a flushed Redis: no stream, no group
    location = submit(gateway, body()).headers["location"]  # XADD makes a stream without the group
    assert worker.step(0.01) == 0  # NOGROUP: it creates the group again, from the stream's start
    assert drain(worker) == 1
    assert gateway.get(location).status == 200


@needs_redis
def test_unknown_id_is_404(stack: Callable[..., Any]) -> None:
    gateway, _, _ = stack(make_cfg())
    reply = gateway.get(f"/v2/models/{MODEL}/results/no-such-id")
    assert reply.status == 404 and "unknown or expired" in reply.json()["error"]


@needs_redis
def test_a_result_expires_after_its_ttl(stack: Callable[..., Any]) -> None:
    gateway, worker, client = stack(make_cfg(result_ttl_s=2.0))
    location = submit(gateway, body()).headers["location"]
    drain(worker)
    assert gateway.get(location).status == 200
    key = AsyncKeys(MODEL).result(location.rsplit("/", 1)[1])
    assert 0 < client.pttl(key) <= 2000
    deadline = time.monotonic() + 10
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.get(location).status == 404


@needs_redis
def test_a_full_queue_is_503_with_retry_after_until_a_worker_frees_a_place(stack: Callable[..., Any]) -> None:
    gateway, worker, _ = stack(make_cfg(max_pending=2, retry_after_s=1.5))
    assert [submit(gateway, body()).status for _ in range(2)] == [202, 202]
    refused = submit(gateway, body())
    assert refused.status == 503 and refused.headers["retry-after"] == "2"
    assert "async_jobs.max_pending" in refused.json()["error"]
    worker.step(0.01)
    assert submit(gateway, body()).status == 202


@needs_redis
def test_bad_bodies_are_refused_before_anything_is_queued(stack: Callable[..., Any]) -> None:
    gateway, _, client = stack(make_cfg())
    bad_shape = body()
    bad_shape["inputs"][0]["shape"] = [1, 63]
    assert submit(gateway, bad_shape).status == 400
    assert submit(gateway, body("yes")).status == 400
    assert submit(gateway, body(), "/v2/models/other/infer").status == 404
    binary_out = {**body(), "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
    assert "JSON" in submit(gateway, binary_out).json()["error"]
    assert client.xlen(AsyncKeys(MODEL).stream) == 0


@needs_redis
def test_pattern_sync_refuses_an_async_submission(stack: Callable[..., Any]) -> None:
    gateway, _, _ = stack(make_cfg(pattern="sync"))
    reply = submit(gateway, body())
    assert reply.status == 400 and "pattern=sync" in reply.json()["error"]


@needs_redis
def test_redis_down_is_503_naming_it_never_a_500_or_a_hang(stack: Callable[..., Any], server: RedisServer) -> None:
    gateway, _, _ = stack(make_cfg())
    location = submit(gateway, body()).headers["location"]
    server.stop()
    reply = submit(gateway, body())
    assert reply.status == 503 and f"{server.host}:{server.port}" in reply.json()["error"]
    assert gateway.get(location).status == 503


@needs_redis
def test_a_frozen_redis_is_503_within_the_timeout(stack: Callable[..., Any], server: RedisServer) -> None:
    gateway, _, _ = stack(make_cfg())
    server.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        reply = submit(gateway, body())
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert reply.status == 503 and "did not answer" in reply.json()["error"]
    assert submit(gateway, body()).status == 202  # and the gateway recovers with Redis


@needs_redis
def test_a_non_loopback_callback_is_400_naming_the_rule(stack: Callable[..., Any]) -> None:
    gateway, _, _ = stack(make_cfg())
    reply = submit(gateway, body(callback_url="http://192.0.2.1:8080/done"))
    assert reply.status == 400 and "loopback http URL" in reply.json()["error"]


@needs_redis
def test_the_result_is_posted_to_a_loopback_callback_and_stays_pollable(stack: Callable[..., Any]) -> None:
    received: list[tuple[str, bytes, str | None]] = []
    arrived = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            data = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, data, self.headers.get("x-request-id")))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args: object) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        gateway, worker, _ = stack(make_cfg())
        url = f"http://127.0.0.1:{listener.server_address[1]}/done"
        reply = submit(gateway, body(callback_url=url))
        request_id = reply.json()["id"]
        drain(worker)
        assert arrived.wait(10)
        path, data, header_id = received[0]
        assert path == "/done" and header_id == request_id
        assert orjson.loads(data)["parameters"]["worker"] == 0
        assert gateway.get(reply.headers["location"]).body == data
    finally:
        listener.shutdown()
        listener.server_close()


@needs_redis
def test_the_metrics_count_submissions_refusals_polls_and_the_queue(stack: Callable[..., Any]) -> None:
    gateway, worker, _ = stack(make_cfg(max_pending=1))
    location = submit(gateway, body()).headers["location"]
    submit(gateway, body())  # refused: full
    gateway.get(location)  # 202
    text = gateway.get("/metrics").body.decode()
    assert "servelab_gateway_async_queue_length 1.0" in text
    assert "servelab_gateway_async_workers 1.0" in text
    drain(worker)
    gateway.get(location)  # 200
    gateway.get(f"/v2/models/{MODEL}/results/nope")  # 404
    text = gateway.get("/metrics").body.decode()
    assert "servelab_gateway_async_submitted_total 1.0" in text
    assert 'servelab_gateway_async_refused_total{reason="full"} 1.0' in text
    for code in (200, 202, 404):
        assert f'servelab_gateway_async_polls_total{{code="{code}"}} 1.0' in text
    assert "servelab_gateway_async_queue_length 0.0" in text


# -- a crashed worker ----------------------------------------------------------------------------


@needs_redis
def test_a_slow_workers_late_results_never_overwrite_the_claimants(stack: Callable[..., Any]) -> None:
    cfg = make_cfg(claim_idle_s=0.05)
    gateway, slow, client = stack(cfg)
    other = build(cfg, 1, client)
    other.join()
    try:
        ids = [submit(gateway, body()).json()["id"] for _ in range(3)]
        keys = AsyncKeys(MODEL)
        taken = client.xreadgroup(GROUP, slow.name, {keys.stream: ">"}, count=10)[0][1]  # slow has them, and stalls
        time.sleep(0.1)  # past claim_idle_s
        claimed = other.claim()
        assert len(claimed) == 3
        assert other.run_batch(claimed) == 3
        assert slow.run_batch(taken) == 0  # the same entries, finished late: nothing written
        results = [gateway.get(f"/v2/models/{MODEL}/results/{i}").json()["parameters"]["worker"] for i in ids]
        assert results == [1, 1, 1]
        assert int(client.get(keys.pending)) == 0  # uncounted once each
    finally:
        other.leave()



def _worker_process(config: Path, index: int, server: RedisServer, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, REDIS_URL_ENV: server.url, REDIS_PASSWORD_ENV: server.password, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "real.asyncq.worker", "--config", str(config), "--index", str(index)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@needs_redis
def test_a_killed_workers_entries_are_claimed_by_another_and_each_id_answered_once(
        stack: Callable[..., Any], server: RedisServer, tmp_path: Path) -> None:
    # a slow model (0.5 s a batch) so the first worker is surely mid-batch when it is killed
    cfg = dataclasses.replace(make_cfg(batch_size=4, claim_idle_s=0.5),
                              service=ServiceConfig(kind="deterministic", base_s=0.5, per_item_s=0.0))
    gateway, _, client = stack(cfg)
    config = tmp_path / "config.yaml"
    write_config(config, cfg)
    ids = [submit(gateway, body()).json()["id"] for _ in range(8)]
    keys = AsyncKeys(MODEL)
    procs = [_worker_process(config, 1, server, tmp_path / "worker-1.log")]
    try:
        # worker-1 has taken a batch and not acknowledged it: it is running it
        _wait(lambda: any(c["name"] == b"worker-1" and c["pending"] > 0 for c in client.xinfo_consumers(keys.stream, GROUP)),
              "worker-1 to take a batch")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        procs.append(_worker_process(config, 2, server, tmp_path / "worker-2.log"))
        _wait(lambda: all(decode_result(client.get(keys.result(i)) or b"pending") is not None for i in ids), "every result")
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    results = [gateway.get(f"/v2/models/{MODEL}/results/{i}") for i in ids]
    assert [r.status for r in results] == [200] * len(ids)
    assert {r.json()["parameters"]["worker"] for r in results} == {2}  # all by the survivor
    log2 = (tmp_path / "worker-2.log").read_text()
    assert sum(int(n) for n in re.findall(r"(\d+) results written", log2)) == len(ids)  # each written once
    assert "claimed 4 idle entries" in log2
    assert client.xlen(keys.stream) == 0 and int(client.get(keys.pending)) == 0
    assert client.xpending(keys.stream, GROUP)["pending"] == 0


def test_openapi_describes_the_async_endpoints() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "real" / "openapi.yaml").read_text())
    app = create_app(make_cfg(pattern="sync"), [UNREACHABLE])
    routes = {r.path for r in app.routes}  # type: ignore[attr-defined]
    assert set(spec["x-gateway-async-paths"]) == {api.RESULT_PATH} <= routes
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]
    assert "202" in infer["responses"]
    assert {"async", "callback_url"} <= set(spec["components"]["schemas"]["InferRequest"]["properties"]["parameters"]["properties"])
