"""The load generator's async client (pattern=async): what it sends and how it reads each answer
(real/loadgen/async_client.py), and the whole client against a tiny in-process fake of the
async endpoints (202 + id, 202 pending, 200 result, 404, 503) that decides each request's fate
by its number, so the statuses and poll counts it must record are known in advance.

Locust runs only in the subprocesses `real.loadgen.runner` starts, never in this process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httptools
import numpy as np
import orjson
import pytest

from real.loadgen.async_client import (
    POLLING,
    AsyncCall,
    Callback,
    CallbackReader,
    Done,
    Poll,
    ResultRequestEncoder,
    job_id,
    ready_on_run_clock,
    result_parameters,
    submit_mid,
)
from real.loadgen.merge import merge
from real.loadgen.plan import records_path, write_arrays
from real.loadgen.recordfile import CONNECTION_ERROR
from sim.config import AsyncJobsConfig, ConfigError, LoadgenConfig, validate
from sim.policy.async_jobs import PollSchedule
from tests.conftest import scenario

SCHEDULE = PollSchedule(0.01, 2.0, 0.04)


# -- the conversation, without I/O ---------------------------------------------------------------

def test_a_submission_is_the_sync_body_with_async_first_among_its_parameters() -> None:
    mid = b'","inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}],"parameters":{"label":3,"timeout":'
    body = b'{"id":"w0-1' + submit_mid(mid) + b"0}}"
    doc = orjson.loads(body)
    assert doc["parameters"] == {"async": True, "label": 3, "timeout": 0}
    assert doc["inputs"][0]["data"] == [1, 2]
    called = orjson.loads(b'{"id":"w0-1' + submit_mid(mid, "http://127.0.0.1:9/cb") + b"0}}")
    assert called["parameters"]["callback_url"] == "http://127.0.0.1:9/cb"


def test_a_poll_is_a_keep_alive_get_of_the_result() -> None:
    seen: dict[str, object] = {}

    class Sink:
        def on_url(self, url: bytes) -> None:
            seen["url"] = url

        def on_message_complete(self) -> None:
            seen["done"] = True

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(ResultRequestEncoder("127.0.0.1:8000", "digits").encode("abc123"))
    assert seen == {"url": b"/v2/models/digits/results/abc123", "done": True}
    assert parser.get_method() == b"GET" and parser.should_keep_alive()


def test_job_ids_are_read_from_a_202_and_refused_when_unusable() -> None:
    assert job_id(b'{"id":"f00d","status":"pending"}') == "f00d"
    assert job_id(b'{"status":"pending"}') is None
    assert job_id(b'{"id":"a/b"}') is None and job_id(b"not json") is None and job_id(b'{"id":7}') is None


def test_polls_follow_the_schedule_and_end_on_the_result() -> None:
    call = AsyncCall(SCHEDULE)
    assert call.submitted(202, b'{"id":"j1"}') == Poll(0.01)
    assert call.phase == POLLING and call.job == "j1"
    gaps = []
    for _ in range(4):
        call.polled()
        step = call.answered(202)
        assert isinstance(step, Poll)
        gaps.append(step.after_s)
    assert gaps == [0.02, 0.04, 0.04, 0.04]  # doubled, then capped
    call.polled()
    assert call.answered(200) == Done(200, result=True) and call.polls == 5


@pytest.mark.parametrize("status, result", [(404, False), (503, False), (500, True)])
def test_a_poll_that_is_not_pending_ends_the_conversation(status: int, result: bool) -> None:
    call = AsyncCall(SCHEDULE)
    call.submitted(202, b'{"id":"j"}')
    assert call.answered(status) == Done(status, result=result)  # 500: the worker's error, as a result


def test_a_refused_or_broken_submission_ends_at_once() -> None:
    assert AsyncCall(SCHEDULE).submitted(503, b"{}") == Done(503)
    assert AsyncCall(SCHEDULE).submitted(202, b"{}") == Done(CONNECTION_ERROR)
    assert AsyncCall(SCHEDULE).submitted(200, b"{}") == Done(200, result=True)  # a server that answered at once
    assert AsyncCall(None).submitted(202, b'{"id":"j"}') is None  # told by callback: nothing to send


def test_a_result_is_put_on_the_run_clock_and_its_worker_is_the_replica() -> None:
    assert ready_on_run_clock({"ready_unix_s": 1000.25}, 1000.0) == 0.25
    assert np.isnan(ready_on_run_clock({}, 1000.0)) and np.isnan(ready_on_run_clock(None, 1000.0))
    assert result_parameters({"worker": 3})["replica"] == 3  # type: ignore[index]
    assert result_parameters({"worker": 1, "replica": 0})["replica"] == 0  # type: ignore[index]


def test_callbacks_are_read_by_request_id_and_status_whatever_the_chunks() -> None:
    reader = CallbackReader()
    raw = (b"POST /callback/w0 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: j7\r\nX-Result-Status: 200\r\n"
           b"Content-Length: 4\r\n\r\n{\"a\"" + b"POST /cb HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    got = [c for k in range(0, len(raw), 7) for c in reader.feed(raw[k:k + 7])]
    assert got == [Callback("j7", 200, b'{"a"')]  # the second names no request: skipped


def test_async_serving_needs_the_rest_protocol() -> None:
    cfg = scenario(pattern="async", loadgen=dataclasses.replace(LoadgenConfig(), protocol="grpc"))
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "loadgen.protocol"


# -- the whole client against a fake server -----------------------------------------------------

class FakeAsync(BaseHTTPRequestHandler):
    """Request r (its OIP id w<worker>-r) is refused 503 when r % 5 == 1; its result is
    unknown (404) when r % 5 == 2; never ready when r % 5 == 3 (the client deadline ends it);
    else pending for r % 3 polls and then the result, whose ready time is the last poll's."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    jobs: dict[str, list[float]] = {}  # job id -> [r, polls answered, time the result was ready]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, doc: dict[str, object]) -> None:
        body = orjson.dumps(doc)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        doc = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        r = int(doc["id"].rsplit("-", 1)[1])
        assert doc["parameters"]["async"] is True
        if r % 5 == 1:
            self._answer(503, {"error": "async queue full"})
            return
        self.jobs[f"j{r}"] = [r, 0, time.time()]
        url = doc["parameters"].get("callback_url")
        if url is not None and r % 2 == 0:  # told before its 202 leaves
            call_back(url, f"j{r}", r)
        elif url is not None:
            threading.Timer(0.02, call_back, (url, f"j{r}", r)).start()
        self._answer(202, {"id": f"j{r}", "model_name": "digits", "status": "pending"})

    def do_GET(self) -> None:
        job = self.path.rsplit("/", 1)[1]
        r, polls, ready = self.jobs[job]
        self.jobs[job][1] = polls + 1
        if r % 5 == 2:
            self._answer(404, {"error": "unknown or expired"})
        elif r % 5 == 3 or polls < r % 3:
            self.jobs[job][2] = time.time()
            self._answer(202, {"id": job, "status": "pending"})
        else:
            self._answer(200, result_document(r, ready))


def result_document(r: int, ready_unix_s: float) -> dict[str, object]:
    params = {"ready_unix_s": ready_unix_s, "queue_s": 0.001, "service_s": 0.002, "batch_size": 1, "batch_id": r,
              "worker": r % 2, "version": "1"}
    return {"model_name": "digits", "outputs": [], "parameters": params}


def call_back(url: str, job: str, r: int) -> None:
    """As the real worker calls back: the result document, its id and status in headers."""
    request = urllib.request.Request(url, data=orjson.dumps(result_document(r, time.time())), method="POST",
                                     headers={"x-request-id": job, "x-result-status": "200"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 204


@pytest.fixture
def fake_async() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAsync)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def expected_status(r: int) -> str:
    return {1: "shed", 2: "error", 3: "timeout"}.get(r % 5, "ok")


@pytest.mark.real
def test_the_client_records_each_submission_once_with_its_outcome_and_polls(fake_async: str, tmp_path: Path) -> None:
    from real.loadgen.runner import run_load

    jobs = AsyncJobsConfig(poll_first_s=SCHEDULE.first_s, poll_backoff=SCHEDULE.backoff, poll_max_interval_s=SCHEDULE.max_interval_s)
    cfg = scenario(pattern="async", async_jobs=jobs, duration_s=1.0, warmup_s=0.0, timeout_s=0.6,
                   arrival=dict(kind="constant", rate=40.0))
    validate(cfg)
    result = run_load(cfg, fake_async, tmp_path)
    frame = result.merged.requests
    n = len(frame)
    assert n == 40 and frame["request_id"].tolist() == list(range(n)) and result.merged.duplicates == 0
    assert frame["status"].tolist() == [expected_status(r) for r in range(n)]
    polls = frame["polls"].to_numpy()
    for r in range(n):
        if r % 5 == 1:
            assert polls[r] == 0  # refused at submit: never polled
        elif r % 5 == 2:
            assert polls[r] == 1  # the first poll's 404 ends it
        elif r % 5 == 3:
            assert polls[r] >= 3  # polled until the deadline (how often depends on how late it is)
        else:
            assert polls[r] == r % 3 + 1
    ok = frame[frame["status"] == "ok"]
    # the client waited at least the schedule's first gaps before each poll that told it
    waited = [sum(min(SCHEDULE.first_s * SCHEDULE.backoff ** k, SCHEDULE.max_interval_s) for k in range(p)) for p in ok["polls"]]
    assert (ok["latency_s"].to_numpy() >= np.asarray(waited) - 1e-3).all()
    assert ((ok["arrival_s"] <= ok["ready_s"] + 1e-3) & (ok["ready_s"] <= ok["finish_s"] + 1e-3)).all()
    assert (ok["replica"] == ok["request_id"] % 2).all() and (ok["batch_size"] == 1).all()
    assert ok["start_s"].notna().all()
    assert frame[frame["status"] != "ok"]["ready_s"].isna().all()


def test_a_record_file_without_the_async_fields_merges_as_sync_rows(tmp_path: Path) -> None:
    row = {"request_id": 0, "user_id": 0, "intended_s": 0.0, "send_s": 0.0, "finish_s": 0.01, "http_status": 200,
           "queue_s": 0.0, "service_s": 0.001, "server_s": 0.002, "gateway_s": 0.0, "batch_size": 1, "batch_id": 0,
           "replica": 0, "version": "1", "correct": -1}
    write_arrays(records_path(tmp_path, 0), {k: np.asarray([v]) for k, v in row.items()})
    frame = merge([records_path(tmp_path, 0)], schedule=(np.zeros(1), np.zeros(1, dtype=np.int64)), timeout_s=1.0).requests
    assert frame["polls"].tolist() == [0] and frame["ready_s"].isna().all() and frame["status"].tolist() == ["ok"]


def test_a_poll_answered_503_is_an_error_and_a_submit_answered_503_is_shed(tmp_path: Path) -> None:
    rows = {"request_id": [0, 1], "user_id": [0, 0], "intended_s": [0.0, 0.1], "send_s": [0.0, 0.1],
            "finish_s": [0.01, 0.3], "http_status": [503, 503], "polls": [0, 2]}
    write_arrays(records_path(tmp_path, 0), {k: np.asarray(v) for k, v in rows.items()} | {
        "queue_s": np.full(2, np.nan), "service_s": np.full(2, np.nan), "server_s": np.full(2, np.nan),
        "gateway_s": np.full(2, np.nan), "batch_size": np.zeros(2, np.int64), "batch_id": np.full(2, -1),
        "replica": np.full(2, -1), "version": np.asarray(["", ""]), "correct": np.full(2, -1)})
    frame = merge([records_path(tmp_path, 0)], schedule=(np.asarray([0.0, 0.1]), np.zeros(2, dtype=np.int64)), timeout_s=1.0).requests
    assert frame["status"].tolist() == ["shed", "error"]


@pytest.mark.real
def test_with_callbacks_the_client_never_polls_and_hears_each_result_once(fake_async: str, tmp_path: Path) -> None:
    """Half the callbacks come before their 202 (the client keeps them until it knows the id),
    half after; refused submissions are still shed."""
    from real.loadgen.runner import run_load

    cfg = scenario(pattern="async", async_jobs=AsyncJobsConfig(callback=True), duration_s=1.0, warmup_s=0.0, timeout_s=2.0,
                   arrival=dict(kind="constant", rate=30.0))
    frame = run_load(cfg, fake_async, tmp_path).merged.requests
    assert len(frame) == 30
    assert frame["status"].tolist() == ["shed" if r % 5 == 1 else "ok" for r in range(30)]
    assert (frame["polls"] == 0).all()
    ok = frame[frame["status"] == "ok"]
    assert ((ok["ready_s"] <= ok["finish_s"] + 1e-3) & (ok["arrival_s"] <= ok["ready_s"] + 1e-3)).all()
