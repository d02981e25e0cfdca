"""The Locust side of servelab's load generator. Runs only inside `locust -f` subprocesses.

Never import this from servelab or its tests: importing Locust monkey-patches the process with
gevent. `real.loadgen.runner` starts it and reads back what it writes.

Why not Locust's own scheduling: a User with `constant_throughput` waits *after* its request, so
a slow answer delays the next send (coordinated omission) and many such users do not add up to a
Poisson process. Here each worker process runs exactly one driver User that replays its share of
the precomputed schedule: every request is sent at `t0 + arrival_s` in its own greenlet whatever
the server does, and latency is measured from that intended time. Locust still provides the
process model (master/workers over ZeroMQ, also across hosts), the run lifecycle and its stats.

The HTTP client is geventhttpclient's `HTTPClient` used directly rather than `FastHttpSession`:
the session's cookie jar, redirect handling and compat request objects cost CPU on every request,
and on a 2-core box that CPU is taken from the server being measured. Every request still fires
Locust's `request` event, so Locust's own statistics and UI stay meaningful.

Each worker writes `records-<i>.npz` (atomically) when its share is done, or when Locust quits
early (SIGTERM, Ctrl-C); a request still in flight then is recorded as cut short.

What it sends: with the plan's `inputs` (the held-out digits, `plan.write_inputs`), request r
sends image `input_index(r, n)` with its label as `parameters.label`, and records whether the
label the server answered is the one it sent (when the server judged the answer: its
`parameters.correct`); without them, one synthetic unlabelled row.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent
import gevent.pool
import numpy as np
import orjson
from gevent.event import AsyncResult
from geventhttpclient import HTTPClient
from locust import User, events, task
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from real.loadgen.plan import (
    PLAN_ENV,
    WORKER_ENV,
    LoadPlan,
    input_index,
    read_inputs,
    read_schedule,
    read_schedule_pins,
    records_path,
    started_path,
    worker_share,
    write_arrays,
    write_json_file,
)
from real.loadgen.recordfile import CLIENT_TIMEOUT, CONNECTION_ERROR, CUT_SHORT, RECORD_FIELDS
from sim.policy.users import ThinkTime
from sim.rng import make_streams

T0_MESSAGE = "servelab_t0"
clock = time.perf_counter

_t0_wall: AsyncResult = AsyncResult()  # set once the master (or the local runner) says go


def _plan() -> LoadPlan:
    return LoadPlan.read(os.environ[PLAN_ENV])


class Driver:
    """One worker's share of the load: sends, waits, records. One per process."""

    def __init__(self, plan: LoadPlan, worker: int, environment: Environment) -> None:
        self.plan = plan
        self.worker = worker
        self.fire = environment.events.request.fire
        timeout = plan.timeout_s if plan.timeout_s > 0 else plan.drain_s
        self.client = HTTPClient.from_url(
            plan.url, concurrency=plan.max_connections, connection_timeout=max(timeout, 1.0),
            network_timeout=timeout + 5.0, headers={"Content-Type": "application/json"},
        )
        self._head = b'{"id":"'
        # per input: the body between the id and the timeout's value, and the label it carries
        self._mids, self._labels = _bodies(plan)
        self.rows: list[tuple[Any, ...]] = []
        self.pins = read_schedule_pins(plan.schedule) if plan.schedule else {}  # request_id -> x-model-version
        self.in_flight: dict[int, tuple[int, int, float, float]] = {}
        self.group = gevent.pool.Group()
        # the twin's closed users draw from the very same per-user streams
        self.think = ThinkTime(plan.think_s, make_streams(plan.seed).think) if plan.closed else None
        self.t0 = 0.0
        self.flushed = False
        self._next_key = 0

    # -- sending ---------------------------------------------------------------------------

    def send(self, request_id: int, user_id: int, intended_s: float) -> None:
        """One request, from intended send to outcome; never raises (an outcome is a record)."""
        t0 = self.t0
        early = t0 + intended_s - clock()
        if early > 0:  # a timer may fire a little early when the loop's cached time is stale
            gevent.sleep(early)
        key = self._next_key
        self._next_key += 1
        send_s = clock() - t0
        self.in_flight[key] = (request_id, user_id, intended_s, send_s)
        timeout_s = self.plan.timeout_s
        remaining = timeout_s - (send_s - intended_s) if timeout_s > 0 else 0.0
        # the server drops a request whose deadline passes in its queue (504); 0 would mean none
        micros = max(int(remaining * 1e6), 1) if timeout_s > 0 else 0
        rid = request_id if request_id >= 0 else key
        k = input_index(rid, len(self._mids))
        label = self._labels[k]
        body = self._head + f"w{self.worker}-{rid}".encode() + self._mids[k] + str(micros).encode() + b"}}"
        status, params, gateway_s, length, exc = CONNECTION_ERROR, None, float("nan"), 0, None
        replica, version = -1, ""  # who answered, when the answer's parameters do not say (an error)
        correct = -1
        timer = gevent.Timeout.start_new(max(remaining, 1e-6)) if timeout_s > 0 else None
        response = None
        try:
            headers = {"x-user-id": str(user_id)}
            pin = self.pins.get(request_id) if self.pins else None
            if pin is not None:  # a trace row's version: header routing, as the twin pins it
                headers["x-model-version"] = pin
            response = self.client.request("POST", self.plan.infer_path, body=body, headers=headers)
            payload = response.read()
            status = response.status_code
            length = len(payload)
            gw = response.get("x-gateway-s")
            if gw is not None:
                gateway_s = float(gw)  # type: ignore[arg-type]
            if status == 200:
                doc = orjson.loads(payload)
                params = doc.get("parameters")
                if label is not None and "correct" in (params or {}):
                    correct = _judge(doc, label)
            else:  # the gateway names the replica and version behind any answer of theirs (500, 503, 504)
                served_by, served_version = response.get("x-replica"), response.get("x-model-version")
                if served_by is not None and served_version is not None:
                    replica, version = int(served_by), str(served_version)  # type: ignore[arg-type]
            response.release()
            response = None
        except gevent.Timeout as t:
            if t is not timer:
                raise
            status, exc = CLIENT_TIMEOUT, t
        except Exception as e:  # connection refused/reset, parse error: the outcome is an error
            status, exc = CONNECTION_ERROR, e
        finally:
            if timer is not None:
                timer.close()
            if response is not None:
                _discard(response)
        finish_s = clock() - t0
        self.in_flight.pop(key, None)
        p = params or {}
        self.rows.append((request_id, user_id, intended_s, send_s, finish_s, status,
                          float(p.get("queue_s", np.nan)), float(p.get("service_s", np.nan)),
                          float(p.get("server_s", np.nan)), float(p.get("gateway_s", gateway_s)),
                          int(p.get("batch_size", 0)), int(p.get("batch_id", -1)), int(p.get("replica", replica)),
                          str(p.get("version", version)), correct))
        if exc is None and status >= 400:
            exc = RuntimeError(f"HTTP {status}")
        self.fire(request_type="POST", name="infer", response_time=(finish_s - intended_s) * 1e3,
                  response_length=length, exception=exc, context={})

    def run_open(self) -> None:
        times, users, ids = read_schedule(self.plan.schedule)
        mine = worker_share(ids, self.worker, self.plan.workers)
        times, users, ids = times[mine].tolist(), users[mine].tolist(), ids[mine].tolist()
        spawn = self.group.spawn
        t0 = self.t0
        if self.plan.dispatch == "timers":
            self._run_timers(times, users, ids)
            return
        for k in range(len(times)):
            due = t0 + times[k]
            delay = due - clock()
            if delay > 0:
                gevent.sleep(delay)
            spawn(self.send, ids[k], users[k], times[k])

    def _run_timers(self, times: list[float], users: list[int], ids: list[int], horizon_s: float = 0.5) -> None:
        """A timer per request, armed half a second ahead (so a long run never holds all of them)."""
        t0 = self.t0
        group = self.group
        k, n = 0, len(times)
        while k < n:
            limit = clock() - t0 + horizon_s
            while k < n and times[k] < limit:
                g = gevent.Greenlet(self.send, ids[k], users[k], times[k])
                group.add(g)
                g.start_later(max(t0 + times[k] - clock(), 0.0))
                k += 1
            gevent.sleep(horizon_s / 2)

    def run_closed(self) -> None:
        plan = self.plan
        for user in range(self.worker, plan.users, plan.workers):
            self.group.spawn(self._closed_user, user)

    def _closed_user(self, user: int) -> None:
        """The twin's closed user: think, send, wait for the answer or the deadline. User u's
        think times are the twin's user u's (sim.policy.users.ThinkTime), on whichever worker."""
        plan = self.plan
        think = self.think
        assert think is not None
        t0 = self.t0
        next_s = 0.0
        while True:
            next_s += think.draw(user)
            if next_s >= plan.duration_s:
                return
            delay = t0 + next_s - clock()
            if delay > 0:
                gevent.sleep(delay)
            self.send(-1, user, next_s)
            next_s = clock() - t0

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        t0_wall = _t0_wall.get()
        self.t0 = clock() + (t0_wall - time.time())
        write_json_file(started_path(self.plan.out_dir, self.worker), {"worker": self.worker, "t0_wall": t0_wall})
        try:
            if self.plan.closed:
                self.run_closed()
            else:
                self.run_open()
            drain = self.plan.drain_after_s
            if self.plan.closed:
                drain += self.plan.duration_s
            self.group.join(timeout=drain)
        finally:
            self.flush()

    def flush(self) -> None:
        """Write what happened; a request still in flight is recorded as cut short."""
        if self.flushed:
            return
        self.flushed = True
        rows = list(self.rows)
        for rid, user, intended, send_s in list(self.in_flight.values()):
            rows.append((rid, user, intended, send_s, np.nan, CUT_SHORT, np.nan, np.nan, np.nan, np.nan, 0, -1, -1, "", -1))
        columns = list(zip(*rows)) if rows else [[] for _ in RECORD_FIELDS]
        arrays = {name: np.asarray(col, dtype=dtype) for (name, dtype), col in zip(RECORD_FIELDS.items(), columns)}
        write_arrays(records_path(self.plan.out_dir, self.worker), arrays)


def _bodies(plan: LoadPlan) -> tuple[list[bytes], list[int | None]]:
    """Each input's body part after the id (ending where the timeout's value goes) and its label."""
    head = b'","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":'
    if not plan.inputs:
        data = np.random.default_rng(plan.seed).uniform(0.0, 16.0, 64).round(3).tolist()
        return [head + orjson.dumps(data) + b'}],"parameters":{"timeout":'], [None]
    images, labels = read_inputs(plan.inputs)
    mids = [head + orjson.dumps(image.tolist()) + b'}],"parameters":{"label":' + str(int(label)).encode() + b',"timeout":'
            for image, label in zip(images, labels)]
    return mids, [int(label) for label in labels]


def _judge(doc: dict[str, Any], label: int) -> int:
    """1 if the answer's label output is the label sent, 0 if not, -1 if it has none."""
    for output in doc.get("outputs") or ():
        if output.get("name") == "label" and output.get("data"):
            return int(output["data"][0] == label)
    return -1


def _discard(response: Any) -> None:
    """Close a connection whose answer was not read to the end: back in the pool it would hand
    the rest of that answer to the next request."""
    pool, sock = getattr(response, "_pool", None), getattr(response, "_sock", None)
    if pool is not None and sock is not None:
        pool.release_socket(sock)
        response._pool = response._sock = None


_driver: Driver | None = None


class ScheduleUser(User):
    """The one User per worker process: it runs the driver, then idles until the parent stops Locust."""

    host = "http://127.0.0.1"

    @task
    def drive(self) -> None:
        global _driver
        if _driver is None:  # a second user on the same worker must not send the share twice
            _driver = Driver(_plan(), int(os.environ.get(WORKER_ENV, "0")), self.environment)
            _driver.run()
        while True:
            gevent.sleep(3600)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(T0_MESSAGE, lambda msg, **__: _t0_wall.set(float(msg.data)))


@events.spawning_complete.add_listener
def _on_spawned(user_count: int, **_: Any) -> None:
    """Every worker has its user: pick t0 a little ahead so all of them hear it before it comes."""
    env = _environment()
    if env is None:
        return
    t0_wall = time.time() + _plan().start_lead_s
    if isinstance(env.runner, MasterRunner):
        env.runner.send_message(T0_MESSAGE, t0_wall)
    elif isinstance(env.runner, LocalRunner) and not _t0_wall.ready():
        _t0_wall.set(t0_wall)


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    if _driver is not None:
        _driver.flush()


_env: list[Environment] = []


@events.init.add_listener
def _keep_environment(environment: Environment, **_: Any) -> None:
    _env.append(environment)


def _environment() -> Environment | None:
    return _env[0] if _env else None


if __name__ == "__main__":  # pragma: no cover - guidance for someone running the file directly
    print(json.dumps({"use": "python -m locust -f real/loadgen/locustfile.py (see real.loadgen.runner)"}))
