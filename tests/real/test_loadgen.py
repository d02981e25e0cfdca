"""The load generator against a stub OIP server: schedule fidelity, no coordinated omission,
every request exactly once, closed loop, distributed workers, client deadlines and refused
connections, the null server it is measured against, and the merge's bookkeeping.

The stub (Starlette on uvicorn, in a subprocess) answers after a fixed delay; Locust only ever
runs in subprocesses started by `real.loadgen.runner`, never in this process.

The machine is 2 shared cores: time bounds here are loose enough to hold while other tests run
(they tell a generator that sends on time from one that waits for answers); how fast the
generator is belongs to `python -m scenarios.bench_loadgen`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from real.launcher import free_ports
from real.loadgen.merge import merge, outcome, send_lag_summary
from real.loadgen.null_server import null_server
from real.loadgen.plan import records_path, worker_share, write_arrays
from real.loadgen.recordfile import CLIENT_TIMEOUT, CONNECTION_ERROR, CUT_SHORT, RECORD_FIELDS
from real.loadgen.runner import TIMER_SLACK_NS, LoadResult, run_load, spawn
from real.server.quality import schedule_index
from sim.arrivals import make_schedule
from sim.config import ArrivalConfig, LoadgenConfig, ScenarioConfig
from sim.policy.users import ThinkTime
from sim.records import COLUMNS
from sim.rng import make_streams

ROOT = Path(__file__).resolve().parents[2]

STUB_SOURCE = r'''
import asyncio, json, sys, time
import orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

port, delay_s, stall_after, stall_s, shed_every = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
received = []

async def infer(request):
    t = time.perf_counter()
    doc = orjson.loads(await request.body())
    received.append([doc.get("id"), request.headers.get("x-user-id")])
    n = len(received)
    if stall_after and n == stall_after:
        time.sleep(stall_s)  # blocks the event loop: nothing is read or answered meanwhile
    if shed_every and n % shed_every == 0:
        return Response(b'{"error": "queue full"}', status_code=503, media_type="application/json")
    await asyncio.sleep(delay_s)
    server_s = time.perf_counter() - t
    params = {"queue_s": 0.0, "service_s": delay_s, "batch_size": 1, "replica": 0, "version": "1", "server_s": server_s}
    return Response(orjson.dumps({"model_name": "digits", "parameters": params, "outputs": []}), media_type="application/json")

async def got(request):
    return Response(orjson.dumps(received), media_type="application/json")

async def ready(request):
    return Response(b"")

app = Starlette(routes=[Route("/v2/models/digits/infer", infer, methods=["POST"]), Route("/received", got),
                        Route("/v2/health/ready", ready)])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
'''


@dataclass
class Stub:
    url: str
    process: subprocess.Popen[bytes]

    def received(self) -> list[tuple[str, str]]:
        import json

        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(self.url + "/received", timeout=5) as r:
            return [tuple(x) for x in json.loads(r.read())]


@contextlib.contextmanager
def stub_server(tmp: Path, *, delay_s: float = 0.005, stall_after: int = 0, stall_s: float = 0.0,
                shed_every: int = 0) -> Iterator[Stub]:
    from real.launcher import free_ports, is_ready

    port = free_ports("127.0.0.1", 1)[0]
    script = tmp / "stub_server.py"
    script.write_text(STUB_SOURCE)
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(delay_s), str(stall_after), str(stall_s),
                             str(shed_every)], stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not is_ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.05)
        yield Stub(url, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load_cfg(**kw: object) -> ScenarioConfig:
    arrival = kw.pop("arrival", ArrivalConfig(kind="poisson", rate=100.0, users=20))
    loadgen = kw.pop("loadgen", LoadgenConfig(workers=1, max_lag_p99_s=0.05))
    base = ScenarioConfig(seed=7, duration_s=2.0, warmup_s=0.5, timeout_s=2.0, arrival=arrival, loadgen=loadgen)  # type: ignore[arg-type]
    return replace(base, **kw)  # type: ignore[arg-type]


def schedule_of(cfg: ScenarioConfig) -> tuple[np.ndarray, np.ndarray]:
    streams = make_streams(cfg.seed)
    s = make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users)
    return s.times_s, s.user_ids


def drive(cfg: ScenarioConfig, tmp_path: Path, **stub: float) -> tuple[LoadResult, list[tuple[str, str]]]:
    with stub_server(tmp_path, **stub) as s:  # type: ignore[arg-type]
        result = run_load(cfg, s.url, tmp_path / "loadgen", path="/v2/models/digits/infer")
        return result, s.received()


# -- with Locust (subprocesses) -------------------------------------------------------------


@pytest.mark.real
def test_open_loop_sends_the_twins_schedule_once_each_and_measures_from_intended_time(tmp_path: Path) -> None:
    cfg = load_cfg()
    times, users = schedule_of(cfg)
    result, received = drive(cfg, tmp_path, delay_s=0.005)
    frame = result.merged.requests
    assert list(frame.columns) == list(COLUMNS)
    assert result.complete and result.merged.never_sent == 0 and result.merged.duplicates == 0
    assert frame["request_id"].tolist() == list(range(len(times)))
    np.testing.assert_array_equal(frame["arrival_s"].to_numpy(), times)
    np.testing.assert_array_equal(frame["user_id"].to_numpy(), users)
    assert (frame["status"] == "ok").all()
    # what reached the server: every request once, with the schedule's user in x-user-id
    assert sorted(received) == sorted((f"w0-{i}", str(u)) for i, u in enumerate(users))
    # what a replica reads from the id is the schedule's (the twin's) request index: the common numbers' key
    assert sorted(schedule_index(rid) for rid, _ in received) == list(range(len(times)))
    lat = frame["latency_s"].to_numpy()
    assert (lat >= 0.004).all() and np.median(lat) < 0.25  # uvloop's ms timers may end a 5 ms sleep early
    sends = result.merged.sends
    assert np.isfinite(sends["send_s"]).all()
    np.testing.assert_allclose(frame["finish_s"] - frame["arrival_s"], lat)
    # the derived service start lies between send and finish
    ok = frame[frame["status"] == "ok"]
    assert ((ok["start_s"] >= sends.loc[ok.index, "send_s"] - 1e-9) & (ok["start_s"] <= ok["finish_s"])).all()
    lag = send_lag_summary(sends, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s)
    assert 0 <= lag["send_lag_s"]["p50"] < 0.1  # on a busy box: tens of ms at worst, never a wait for answers
    assert lag["achieved_send_rate"] == pytest.approx(len(times[(times >= 0.5)]) / 1.5, rel=0.2)


@pytest.mark.real
def test_a_stalled_server_shows_its_stall_in_latency(tmp_path: Path) -> None:
    """No coordinated omission: requests due while the server is stuck keep leaving on time and
    their latency, from the intended send, includes the stall."""
    cfg = load_cfg(arrival=ArrivalConfig(kind="constant", rate=200.0, users=10))
    result, _ = drive(cfg, tmp_path, delay_s=0.002, stall_after=150, stall_s=0.4)
    frame, sends = result.merged.requests, result.merged.sends
    lat = frame["latency_s"].to_numpy()
    assert (frame["status"] == "ok").all()
    assert lat.max() >= 0.35
    # ~0.4 s x 200 req/s were due during the stall: a generator that waited would show one slow request
    assert (lat > 0.1).sum() >= 40
    slow = sends[frame["latency_s"] > 0.1]
    # they left on time, then waited for the server: a generator that waited for answers would
    # send them late by the stall (0.4 s); half of it holds on a busy machine
    assert slow["send_lag_s"].quantile(0.9) < 0.2


@pytest.mark.real
def test_closed_loop_users_wait_for_answers_and_think(tmp_path: Path) -> None:
    """User u thinks the twin's think times (sim.policy.users.ThinkTime on the seed's think
    stream): its first request is due at its first think time exactly, each next one at least
    its next think time after the previous answer. Asserted on the schedule, not on the speed."""
    cfg = load_cfg(arrival=ArrivalConfig(kind="closed", users=4, think_s=0.05))
    result, received = drive(cfg, tmp_path, delay_s=0.01)
    frame = result.merged.requests
    assert len(received) == len(frame)
    assert frame["request_id"].tolist() == list(range(len(frame)))
    assert set(frame["user_id"]) == {0, 1, 2, 3}
    assert (frame["status"] == "ok").all()
    think = ThinkTime(cfg.arrival.think_s, make_streams(cfg.seed).think)
    for user_id, user in frame.groupby("user_id"):
        u = user.sort_values("arrival_s")
        arrival, finish = u["arrival_s"].to_numpy(), u["finish_s"].to_numpy()
        draws = np.array([think.draw(int(user_id)) for _ in range(len(u) + 1)])
        assert len(u) >= 2 and arrival[0] == draws[0]
        # a user never has two requests out at once, and thinks between an answer and its next
        assert (arrival[1:] >= finish[:-1] + draws[1:-1] - 1e-9).all()
        # it stops once its next think would end past duration_s: no more requests than its
        # think times alone allow (a slow server only means fewer)
        assert len(u) <= int(np.searchsorted(np.cumsum(draws), cfg.duration_s))
    assert frame["arrival_s"].max() < cfg.duration_s


@pytest.mark.real
@pytest.mark.slow
def test_two_workers_cover_the_schedule_exactly_once(tmp_path: Path) -> None:
    cfg = load_cfg(arrival=ArrivalConfig(kind="poisson", rate=150.0, users=20), loadgen=LoadgenConfig(workers=2, max_lag_p99_s=0.05))
    times, users = schedule_of(cfg)
    result, received = drive(cfg, tmp_path, delay_s=0.005)
    frame, sends = result.merged.requests, result.merged.sends
    assert result.complete and result.merged.never_sent == 0
    assert len(frame) == len(times) and (frame["status"] == "ok").all()
    np.testing.assert_array_equal(frame["arrival_s"].to_numpy(), times)
    assert (sends["worker"] == sends["request_id"] % 2).all()
    expected = sorted((f"w{i % 2}-{i}", str(u)) for i, u in enumerate(users))
    assert sorted(received) == expected


@pytest.mark.real
def test_a_request_unanswered_by_its_deadline_is_a_client_timeout_and_later_ones_go_on(tmp_path: Path) -> None:
    """The server stalls 0.6 s with a 0.2 s client deadline: what was due early in the stall
    is recorded as a timeout, never before its deadline (from the intended send), and once
    the server is back, requests are answered again (the timed-out connections were closed,
    so no late answer reaches a later request). Every request is recorded once."""
    cfg = load_cfg(arrival=ArrivalConfig(kind="constant", rate=100.0, users=10), timeout_s=0.2)
    times, _ = schedule_of(cfg)
    result, _ = drive(cfg, tmp_path, delay_s=0.002, stall_after=50, stall_s=0.6)
    frame = result.merged.requests
    assert len(frame) == len(times) and result.merged.never_sent == 0 and result.merged.duplicates == 0
    assert set(frame["status"]) <= {"ok", "timeout"}
    timed_out = frame[frame["status"] == "timeout"]
    assert len(timed_out) >= 10  # ~40 were due more than 0.2 s before the stall ended
    assert (timed_out["latency_s"] >= cfg.timeout_s - 1e-9).all()
    assert (frame.tail(20)["status"] == "ok").all()  # due 0.7 s after the stall


@pytest.mark.real
def test_a_refused_connection_is_an_error_for_each_request_and_none_is_lost(tmp_path: Path) -> None:
    port = free_ports("127.0.0.1", 1)[0]  # nothing listens there
    cfg = load_cfg(duration_s=1.0)
    times, _ = schedule_of(cfg)
    result = run_load(cfg, f"http://127.0.0.1:{port}", tmp_path / "loadgen", path="/v2/models/digits/infer")
    frame = result.merged.requests
    assert result.complete and len(frame) == len(times) and result.merged.never_sent == 0
    assert (frame["status"] == "error").all()


# -- the null server: what the generator costs by itself --------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes) -> dict[str, object]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5) as r:
        assert r.status == 200 and r.headers["content-type"] == "application/json"
        return json.loads(r.read())


@pytest.mark.real
def test_the_null_server_answers_a_valid_oip_infer_and_counts_it() -> None:
    body = b'{"id":"w0-1","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[0]}]}'
    with null_server("digits") as url:
        first = _post(url + "/v2/models/digits/infer", body)
        second = _post(url + "/v2/models/digits/versions/1/infer", body)
        assert _get(url + "/v2/health/ready")[0] == 200
        assert json.loads(_get(url + "/v2/null/stats")[1]) == {"infers": 2}
        status, error = _get(url + "/v2/models/digits")
    assert status == 404 and "error" in json.loads(error)
    # the OIP response shape (real/openapi.yaml's InferResponse), and every field a record reads
    assert first["model_name"] == "digits" and isinstance(first["outputs"], list)
    for output in first["outputs"]:  # type: ignore[union-attr]
        assert {"name", "datatype", "shape", "data"} <= set(output)
        assert len(output["data"]) == int(np.prod(output["shape"]))
    params = first["parameters"]
    assert params["queue_s"] == params["service_s"] == params["server_s"] == 0.0  # type: ignore[index]
    assert params["batch_size"] == 1 and params["replica"] == 0 and params["version"] == "1"  # type: ignore[index]
    assert params["batch_id"] != second["parameters"]["batch_id"]  # type: ignore[index]  # each a batch of its own


def test_the_null_server_binds_loopback_only() -> None:
    done = subprocess.run([sys.executable, "-m", "real.loadgen.null_server", "--host", "0.0.0.0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "loopback only" in done.stderr


@pytest.mark.real
@pytest.mark.parametrize("dispatch, spin_s", [("dispatcher", 0.0), ("dispatcher", 1e-4), ("timers", 0.0)])
def test_against_the_null_server_every_request_is_recorded_once_and_none_leaves_early(
        tmp_path: Path, dispatch: str, spin_s: float) -> None:
    cfg = load_cfg(arrival=ArrivalConfig(kind="poisson", rate=400.0, users=50),
                   loadgen=LoadgenConfig(workers=1, max_lag_p99_s=0.05, dispatch=dispatch, spin_s=spin_s))
    times, users = schedule_of(cfg)
    with null_server() as url:
        result = run_load(cfg, url, tmp_path / "loadgen", path="/v2/models/digits/infer")
        infers = json.loads(_get(url + "/v2/null/stats")[1])["infers"]
    frame, sends = result.merged.requests, result.merged.sends
    assert result.complete and result.merged.never_sent == 0 and result.merged.duplicates == 0
    assert infers == len(frame) == len(times) and (frame["status"] == "ok").all()
    np.testing.assert_array_equal(frame["arrival_s"].to_numpy(), times)
    np.testing.assert_array_equal(frame["user_id"].to_numpy(), users)
    assert frame["batch_id"].nunique() == len(frame)
    assert (sends["send_lag_s"] >= 0).all()  # a request never leaves before its time
    assert (frame["finish_s"] >= sends["send_s"]).all()


def test_the_generators_processes_run_with_the_least_timer_slack(tmp_path: Path) -> None:
    """Linux may fire a sleeping thread's timer up to its timer slack late (50 µs by default):
    send lag. The runner starts the generator's processes with 1 ns."""
    if not Path("/proc/self/timerslack_ns").exists():
        pytest.skip("no /proc/self/timerslack_ns on this system")
    out = tmp_path / "slack.txt"
    code = f"open({str(out)!r}, 'w').write(open('/proc/self/timerslack_ns').read())"
    proc = spawn("slack", [sys.executable, "-c", code], {}, tmp_path / "slack.log", nice=0)
    assert proc.popen.wait(timeout=60) == 0
    assert int(out.read_text()) == TIMER_SLACK_NS == 1


# -- no Locust: the bookkeeping ---------------------------------------------------------------


def test_locust_and_gevent_never_enter_servelabs_own_processes() -> None:
    code = ("import sys, scenarios.run_real, real.loadgen, real.loadgen.runner, real.loadgen.merge; "
            "bad = [m for m in ('locust', 'gevent', 'geventhttpclient') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_worker_shares_partition_the_schedule() -> None:
    ids = np.arange(1001)
    shares = [worker_share(ids, w, 3) for w in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == ids.tolist()


def _record_file(path: Path, rows: list[tuple[object, ...]]) -> None:
    cols = list(zip(*rows)) if rows else [[] for _ in RECORD_FIELDS]
    write_arrays(path, {name: np.asarray(c, dtype=dt) for (name, dt), c in zip(RECORD_FIELDS.items(), cols)})


def test_merge_keeps_every_scheduled_request_once_and_maps_outcomes(tmp_path: Path) -> None:
    times = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    users = np.array([5, 6, 7, 8, 9, 10, 11])
    nan = float("nan")

    def row(i: int, status: int, finish: float, batch: int = 1, service: float = 0.01) -> tuple[object, ...]:
        answered = status == 200
        return (i, int(users[i]), times[i], times[i] + 0.001, finish, status, 0.002 if answered else nan,
                service if answered else nan, 0.013 if answered else nan, nan, batch if answered else 0,
                i if answered else -1, 1 if answered else -1, "2" if answered else "")

    rows = [row(0, 200, 0.02, batch=2), row(1, 503, 0.102), row(2, CLIENT_TIMEOUT, 1.2), row(3, 504, 0.4),
            row(4, CONNECTION_ERROR, 0.41), row(5, CUT_SHORT, nan), row(0, 200, 0.03)]  # a duplicate of 0
    _record_file(records_path(tmp_path, 0), rows)
    merged = merge([records_path(tmp_path, 0)], schedule=(times, users), timeout_s=1.0)
    f = merged.requests
    assert f["request_id"].tolist() == list(range(7)) and f["user_id"].tolist() == users.tolist()
    assert f["status"].tolist() == ["ok", "shed", "timeout", "timeout", "error", "error", "error"]
    assert merged.duplicates == 1 and merged.never_sent == 1  # request 6 was never sent
    assert f.loc[0, "replica"] == 1 and f.loc[0, "version"] == "2" and f.loc[0, "batch_size"] == 2
    # start = send + (finish - send - server_s) / 2 + queue_s
    assert f.loc[0, "start_s"] == pytest.approx(0.001 + (0.02 - 0.001 - 0.013) / 2 + 0.002)
    assert f.loc[0, "latency_s"] == pytest.approx(0.02)
    assert np.isnan(f.loc[6, "finish_s"]) and f.loc[6, "replica"] == -1
    assert f.loc[1:, "replica"].eq(-1).all() and f.loc[1:, "batch_size"].eq(0).all()


def test_a_failure_a_replica_answered_keeps_its_replica_and_version(tmp_path: Path) -> None:
    """A 500 (the version's error rate) or a 503 from a full queue came from a replica the
    gateway names (x-replica, x-model-version): the row keeps both, as the twin's does, so the
    version's error rate counts it; no batch (none answered). No answer at all names nobody."""
    times, users, nan = np.array([0.0, 0.1, 0.2]), np.array([1, 2, 3]), float("nan")
    rows = [(0, 1, 0.0, 0.001, 0.02, 500, nan, nan, nan, nan, 0, -1, 1, "2"),
            (1, 2, 0.1, 0.101, 0.11, 503, nan, nan, nan, nan, 0, -1, 0, "1"),
            (2, 3, 0.2, 0.201, 0.21, CONNECTION_ERROR, nan, nan, nan, nan, 0, -1, -1, "")]
    _record_file(records_path(tmp_path, 0), rows)
    f = merge([records_path(tmp_path, 0)], schedule=(times, users), timeout_s=1.0).requests
    assert f["status"].tolist() == ["error", "shed", "error"]
    assert f["replica"].tolist() == [1, 0, -1] and f["version"].tolist() == ["2", "1", ""]
    assert f["batch_id"].eq(-1).all() and f["batch_size"].eq(0).all()


def test_outcome_late_answer_is_a_timeout() -> None:
    status = outcome(np.array([200, 200, 503, 504, 0, -1, 500]), np.array([0.5, 1.5, 0.1, 0.1, 1.0, 0.1, 0.1]), 1.0)
    assert status.tolist() == [0, 2, 1, 2, 2, 3, 3]


def test_closed_loop_merge_numbers_requests_by_intended_time(tmp_path: Path) -> None:
    nan = float("nan")
    for w, starts in ((0, [0.3, 0.1]), (1, [0.2])):
        _record_file(records_path(tmp_path, w), [(-1, w, t, t, t + 0.01, 200, 0.0, 0.005, 0.006, nan, 1, k, w, "1")
                                                 for k, t in enumerate(starts)])
    merged = merge(sorted(tmp_path.glob("records-*.npz")), schedule=None, timeout_s=0.0)
    assert merged.requests["arrival_s"].tolist() == [0.1, 0.2, 0.3]
    assert merged.requests["request_id"].tolist() == [0, 1, 2]


def test_batch_members_share_their_derived_start(tmp_path: Path) -> None:
    nan = float("nan")
    rows = [(i, 0, 0.01 * i, 0.01 * i, 0.05 + 0.001 * i, 200, 0.03 - 0.01 * i, 0.007, 0.04, nan, 3, 7, 0, "1") for i in range(3)]
    _record_file(records_path(tmp_path, 0), rows)
    f = merge([records_path(tmp_path, 0)], schedule=(np.array([0.0, 0.01, 0.02]), np.zeros(3, np.int64)), timeout_s=0).requests
    assert f["start_s"].nunique() == 1 and f["batch_id"].tolist() == [0, 0, 0]


def test_batches_with_the_same_device_time_stay_apart(tmp_path: Path) -> None:
    """Two batches on one replica report the same service_s: only the server's batch id tells
    them apart (grouping by device time gave request 184 of a real run a start 3.7 s after its
    finish). A batch of 2 on replica 0 at ~0.95 s and one at ~4.6 s, a lone request on replica 1
    with the same server batch id as the first: three batches, each start inside its members'."""
    nan = float("nan")
    times = np.array([0.950, 0.951, 4.630, 4.631, 0.952])
    #       id, user, intended, send, finish, http, queue_s, service_s, server_s, gw, size, batch, replica, version
    rows = [(0, 0, 0.950, 0.9502, 0.9590, 200, 0.0020, 0.0040, 0.0070, nan, 2, 5, 0, "1"),
            (1, 1, 0.951, 0.9512, 0.9592, 200, 0.0012, 0.0040, 0.0061, nan, 2, 5, 0, "1"),
            (2, 2, 4.630, 4.6302, 4.6390, 200, 0.0020, 0.0040, 0.0070, nan, 2, 6, 0, "1"),
            (3, 3, 4.631, 4.6312, 4.6392, 200, 0.0012, 0.0040, 0.0061, nan, 2, 6, 0, "1"),
            (4, 4, 0.952, 0.9522, 0.9600, 200, 0.0000, 0.0040, 0.0050, nan, 1, 5, 1, "2")]
    _record_file(records_path(tmp_path, 0), rows)
    f = merge([records_path(tmp_path, 0)], schedule=(times, np.arange(5)), timeout_s=0).requests
    assert f["batch_id"].tolist() == [0, 0, 2, 2, 1]  # run-wide ids in order of start
    assert f.loc[0, "start_s"] == f.loc[1, "start_s"] and f.loc[2, "start_s"] == f.loc[3, "start_s"]
    assert f.loc[0, "start_s"] != f.loc[2, "start_s"]
    assert ((f["arrival_s"] <= f["start_s"]) & (f["start_s"] <= f["finish_s"])).all()
    # both members had been sent before the batch started and were answered after it ran
    assert 0.9512 <= f.loc[0, "start_s"] <= 0.9590 - 0.0040


def test_a_batch_start_stays_inside_every_members_readings(tmp_path: Path) -> None:
    """The mean of the members' derived starts can fall before a late member was even sent;
    the merge clamps it to the latest send."""
    nan = float("nan")
    # member 0 waited long in the gateway (way in slow): its derived start is far too early
    rows = [(0, 0, 0.100, 0.100, 0.140, 200, 0.000, 0.004, 0.005, nan, 2, 0, 0, "1"),
            (1, 1, 0.130, 0.130, 0.136, 200, 0.000, 0.004, 0.005, nan, 2, 0, 0, "1")]
    _record_file(records_path(tmp_path, 0), rows)
    f = merge([records_path(tmp_path, 0)], schedule=(np.array([0.1, 0.13]), np.arange(2)), timeout_s=0).requests
    assert f["start_s"].tolist() == [0.130, 0.130]
