"""The Locust side of servelab's load generator. Runs only inside `locust -f` subprocesses.

Never import this from servelab or its tests: importing Locust monkey-patches the process with
gevent. `real.loadgen.runner` starts it and reads back what it writes.

Why not Locust's own scheduling: a User with `constant_throughput` waits *after* its request, so
a slow answer delays the next send (coordinated omission) and many such users do not add up to a
Poisson process. Here each worker process runs exactly one driver User that replays its share of
the precomputed schedule: every request is sent at `t0 + arrival_s` whatever the server does,
and latency is measured from that intended time. Locust still provides the process model
(master/workers over ZeroMQ, also across hosts), the run lifecycle and its stats.

Why not an HTTP client library: the generator shares two cores with the stack it measures, and
what it spends per request is taken from the server and added to every latency it measures.
geventhttpclient with a greenlet and a timeout per request cost ~230 µs of CPU per request and
~0.6 ms of each latency at a low rate (against `null_server`; now ~125 µs and ~0.25 ms, see
scenarios/bench_loadgen.py). So the driver speaks HTTP/1.1 itself on gevent's event loop, with
no greenlet per request: the dispatcher greenlet writes each request's bytes (`wire.RequestEncoder`,
from parts built once) on a pooled keep-alive connection the instant it is due, and the answer
is read and recorded in the connection's read callback on the hub (`wire.AnswerReader`, httptools'
C parser). One greenlet enforces every client deadline from a heap. Every request still fires
Locust's `request` event, so Locust's own statistics and UI stay meaningful.

Waking up on time: a sleeping process wakes late (the kernel's timer slack, 50 µs by default,
which the runner sets to 1 ns for these processes, and the vCPU's wake-up), and that lateness is
send lag *and* latency (~0.1 ms here, and ~0.05 ms more through gevent's hub). With
`loadgen.spin_s` > 0 the dispatcher sleeps until that long before a send and spins the rest,
reading any answer that comes in meanwhile; only before a send due at least SPIN_GATE spins away,
so at high rates, where that CPU would be the stack's, it does not spin. Closed-loop users spin
as the dispatcher does; `loadgen.dispatch=timers` never spins.

Each worker writes `records-<i>.npz` (atomically) when its share is done, or when Locust quits
early (SIGTERM, Ctrl-C); a request still in flight then is recorded as cut short.

What it sends: with the plan's `inputs` (the held-out digits, `plan.write_inputs`), request r
sends image `input_index(r, n)` with its label as `parameters.label`, and records whether the
label the server answered is the one it sent (when the server judged the answer: its
`parameters.correct`); without them, one synthetic unlabelled row.
"""

from __future__ import annotations

import _socket
import errno
import heapq
import json
import os
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

import gevent
import gevent.pool
import httptools
import numpy as np
import orjson
from gevent.event import AsyncResult
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
from real.loadgen.async_client import CALLBACK_REPLY, POLLING, SUBMITTING, AsyncCall, Callback, CallbackReader, Done, Poll, \
    ResultRequestEncoder, ready_on_run_clock, result_parameters, submit_mid
from real.loadgen.recordfile import ASYNC_RECORD_FIELDS, CLIENT_TIMEOUT, CONNECTION_ERROR, CUT_SHORT, RECORD_FIELDS
from real.loadgen.wire import ENTITY_MID, Answer, AnswerReader, RequestEncoder
from sim.policy.async_jobs import PollSchedule
from sim.policy.users import ThinkTime
from sim.rng import make_streams

if TYPE_CHECKING:  # imported by GrpcDriver only: an HTTP run never loads grpc
    from real.loadgen.grpc_wire import GrpcH2Client, GrpcReply

T0_MESSAGE = "servelab_t0"
clock = time.perf_counter
READ, WRITE = 1, 2  # libev's event bits
RECV_BYTES = 65536
REAPER_MAX_SLEEP_S = 0.05  # the deadline greenlet looks at least this often (new requests join its heap)
IDLE_POLL_S = 0.01  # how often a finished dispatch looks whether the last answers are in
SPIN_GATE = 10  # loadgen.spin_s spins only before a send due at least this many spins away

_t0_wall: AsyncResult = AsyncResult()  # set once the master (or the local runner) says go


def _plan() -> LoadPlan:
    return LoadPlan.read(os.environ[PLAN_ENV])


class _Request:
    """One request from its due time to its outcome."""

    __slots__ = ("key", "request_id", "user_id", "intended_s", "send_s", "deadline", "conn", "done", "on_done")

    def __init__(self, key: int, request_id: int, user_id: int, intended_s: float, deadline: float,
                 on_done: Callable[[], None] | None) -> None:
        self.key = key
        self.request_id = request_id
        self.user_id = user_id
        self.intended_s = intended_s
        self.send_s = float("nan")
        self.deadline = deadline  # on the worker's clock; inf = none
        self.conn: _Conn | None = None
        self.done = False
        self.on_done = on_done

    def __lt__(self, other: _Request) -> bool:  # heap ties on the deadline
        return self.key < other.key


def _open_socket(family: int) -> Any:
    """A non-blocking TCP socket with Nagle off (a request is one write). Raises OSError."""
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    return sock


class _Socket:
    """A raw non-blocking socket and its read and write watchers on the hub's loop: what the
    HTTP and the gRPC driver's connections share. Each method raises OSError for a broken
    connection (one closed by the server too); the driver decides what breaks with it."""

    __slots__ = ("sock", "read_watcher", "write_watcher", "pending", "closed")

    def __init__(self, sock: Any, loop: Any) -> None:
        self.sock = sock
        fd = sock.fileno()
        self.read_watcher = loop.io(fd, READ)
        self.write_watcher = loop.io(fd, WRITE)
        self.pending = b""  # bytes not yet written, in order (connecting, or a short write)
        self.closed = False

    def send(self, data: bytes) -> bool:
        """Write what the socket takes now; True when some is left in `pending` for the write
        watcher (`flush`)."""
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.pending = data[n:]
            return True
        return False

    def flush(self) -> None:
        """The write watcher's turn: write more of `pending`; stop watching once it is out."""
        try:
            n = self.sock.send(self.pending)
        except BlockingIOError:
            return
        self.pending = self.pending[n:]
        if not self.pending:
            self.write_watcher.stop()

    def receive(self) -> bytes | None:
        """What the socket holds, or None when nothing yet."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return None
        if not data:
            raise ConnectionResetError("the server closed the connection")
        return data

    def connect_error(self) -> ConnectionError | None:
        """Why a non-blocking connect failed, once the socket turns writable; None: connected."""
        err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        return ConnectionError(err, os.strerror(err)) if err else None


class _Conn(_Socket):
    """A keep-alive connection: its answer reader, and the request it carries (one at a time,
    no pipelining)."""

    __slots__ = ("reader", "request")

    def __init__(self, sock: Any, loop: Any) -> None:
        super().__init__(sock, loop)
        self.reader = AnswerReader()
        self.request: _Request | None = None


class Driver:
    """One worker's share of the load: sends, reads, records. One per process."""

    # what `send` makes of a due request, from (key, request_id, user_id, intended_s, deadline, on_done)
    request_type: Callable[..., _Request] = _Request

    def __init__(self, plan: LoadPlan, worker: int, environment: Environment) -> None:
        self.plan = plan
        self.worker = worker
        self.fire = environment.events.request.fire
        parts = urlsplit(plan.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        family, _, _, _, self.address = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)[0]
        self.family = family
        self.loop = gevent.get_hub().loop
        mids, self._labels = _bodies(plan)
        self.encoder = RequestEncoder(parts.netloc, plan.infer_path, self._sent_bodies(mids))
        # free connections, taken in the order they were freed (FIFO): while uvicorn wrote each
        # answer in two segments, reusing the one just freed (LIFO) put ~1.8 ms on the p50 through
        # the gateway at 1000 req/s (4.3 vs 2.5 ms); with one write per answer both measure alike
        self.idle: deque[_Conn] = deque()
        self.open = 0
        self.waiting: deque[_Request] = deque()  # due, but every allowed connection is busy
        self.deadlines: list[tuple[float, _Request]] = []
        self.rows: list[tuple[Any, ...]] = []
        self.pins = read_schedule_pins(plan.schedule) if plan.schedule else {}  # request_id -> x-model-version
        self.in_flight: dict[int, _Request] = {}
        self.group = gevent.pool.Group()
        # the twin's closed users draw from the very same per-user streams
        self.think = ThinkTime(plan.think_s, make_streams(plan.seed).think) if plan.closed else None
        self.t0 = 0.0
        self.flushed = False
        self._next_key = 0
        self._armed = 0  # dispatch=timers: timers armed that have not sent yet
        self._max_sleep = min(REAPER_MAX_SLEEP_S, plan.timeout_s / 4) if plan.timeout_s > 0 else REAPER_MAX_SLEEP_S

    # -- sending ---------------------------------------------------------------------------

    def send(self, request_id: int, user_id: int, intended_s: float, on_done: Callable[[], None] | None = None) -> None:
        """Send one request now (its due time): on an idle connection, a new one, or, when
        loadgen.max_connections are all busy, the first that frees. Never raises."""
        key = self._next_key
        self._next_key += 1
        timeout_s = self.plan.timeout_s
        req = self.request_type(key, request_id, user_id, intended_s,
                                self.t0 + intended_s + timeout_s if timeout_s > 0 else float("inf"), on_done)
        self.in_flight[key] = req
        if timeout_s > 0:
            heapq.heappush(self.deadlines, (req.deadline, req))
        self._dispatch(req)

    def _sent_bodies(self, mids: list[bytes]) -> list[bytes]:
        """Each input's body part as this driver sends it (a sync infer: as it is)."""
        return mids

    def _dispatch(self, req: _Request) -> None:
        """On an idle connection, a new one, or, when loadgen.max_connections are all busy,
        the first that frees (a send and an async poll alike)."""
        if self.idle:
            self._write(self.idle.popleft(), req)
        elif self.open < self.plan.max_connections:
            self._connect(req)
        else:
            self.waiting.append(req)

    def _bytes(self, req: _Request, now: float) -> bytes:
        timeout_s = self.plan.timeout_s
        # the server drops a request whose deadline passes in its queue (504); 0 means none
        micros = max(int((req.deadline - now) * 1e6), 1) if timeout_s > 0 else 0
        rid = req.request_id if req.request_id >= 0 else req.key
        pin = self.pins.get(req.request_id) if self.pins else None  # a trace row's version: header routing
        return self.encoder.encode(f"w{self.worker}-{rid}", req.user_id, input_index(rid, len(self._labels)), micros, pin,
                                   self.plan.entity)

    def _write(self, conn: _Conn, req: _Request) -> None:
        now = clock()
        if req.send_s != req.send_s:  # NaN: not yet attempted (a new connection's connect was)
            req.send_s = now - self.t0
        req.conn = conn
        conn.request = req
        try:
            if conn.send(self._bytes(req, now)):
                conn.write_watcher.start(self._on_writable, conn)
        except OSError as exc:
            self._broken(conn, exc)

    def _connect(self, req: _Request) -> None:
        """A new connection for `req`: its send time is now, when the generator acts (a
        client's connect is part of the request's latency, not of the generator's lag)."""
        self.open += 1
        req.send_s = clock() - self.t0
        try:
            sock = _open_socket(self.family)
        except OSError as exc:
            self.open -= 1
            self._finish(req, CONNECTION_ERROR, None, exc)
            return
        conn = _Conn(sock, self.loop)
        conn.read_watcher.start(self._on_readable, conn)
        err = sock.connect_ex(self.address)
        if err == 0:
            self._write(conn, req)
        elif err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            conn.request = req
            req.conn = conn
            conn.write_watcher.start(self._on_connected, conn)
        else:
            req.conn = conn
            conn.request = req
            self._broken(conn, ConnectionError(err, os.strerror(err)))

    def _on_connected(self, conn: _Conn) -> None:
        conn.write_watcher.stop()
        req = conn.request
        error = conn.connect_error()
        if req is None:  # its deadline passed while connecting
            self._close(conn)
        elif error is not None:
            self._broken(conn, error)
        else:
            self._write(conn, req)

    def _on_writable(self, conn: _Conn) -> None:
        try:
            conn.flush()
        except OSError as exc:
            self._broken(conn, exc)

    # -- answers ---------------------------------------------------------------------------

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.receive()
        except OSError as exc:
            self._broken(conn, exc)
            return
        if data is None:
            return
        try:
            answers = conn.reader.feed(data)
        except httptools.HttpParserError as exc:
            self._broken(conn, exc)
            return
        for answer in answers:
            req = conn.request
            if req is None:  # an answer nobody asked for: the connection cannot be trusted
                self._broken(conn, ConnectionError("an answer without a request"))
                return
            conn.request = None
            self._answered(req, answer)
            if not answer.keep_alive:
                self._close(conn)
                return
        if answers and not conn.closed:
            self._release(conn)

    def _answered(self, req: _Request, answer: Answer) -> None:
        status = answer.status
        params: dict[str, Any] | None = None
        correct = -1
        replica, version = -1, ""  # who answered, when the answer's parameters do not say (an error)
        exc: BaseException | None = None
        if status == 200:
            try:
                doc = orjson.loads(answer.body)
                params = doc.get("parameters")
                rid = req.request_id if req.request_id >= 0 else req.key
                label = self._labels[input_index(rid, len(self._labels))]
                if label is not None and "correct" in (params or {}):
                    correct = _judge(doc, label)
                elif self.plan.entity and "correct" in (params or {}):  # judged by the feature table's label
                    correct = int(bool(params["correct"]))  # type: ignore[index]
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
                status, exc = CONNECTION_ERROR, e
        elif answer.replica is not None and answer.version is not None:
            # the gateway names the replica and version behind any answer of theirs (500, 503, 504)
            try:
                replica, version = int(answer.replica), answer.version.decode("latin-1")
            except ValueError:
                pass
        gateway_s = float("nan")
        if answer.gateway_s is not None:
            try:
                gateway_s = float(answer.gateway_s)
            except ValueError:
                pass
        self._finish(req, status, params, exc, gateway_s, replica, version, correct, len(answer.body),
                     feature_failed=int(answer.feature_failure is not None and status != 200))

    def _release(self, conn: _Conn) -> None:
        """A connection free again: the longest-waiting request takes it, else it idles."""
        while self.waiting:
            req = self.waiting.popleft()
            if not req.done:
                self._write(conn, req)
                return
        self.idle.append(conn)

    def _broken(self, conn: _Conn, exc: BaseException) -> None:
        """The connection failed (refused, reset, not HTTP): its request, if any, is an error."""
        req = conn.request
        conn.request = None
        self._close(conn)
        if req is not None and not req.done:
            self._finish(req, CONNECTION_ERROR, None, exc)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.open -= 1
        conn.read_watcher.stop()
        conn.write_watcher.stop()
        conn.read_watcher.close()
        conn.write_watcher.close()
        conn.sock.close()
        if conn in self.idle:  # an idle connection the server closed
            self.idle.remove(conn)
        if self.waiting and self.open < self.plan.max_connections:
            req = self.waiting.popleft()
            if not req.done:
                self._connect(req)

    def _finish(self, req: _Request, status: int, params: dict[str, Any] | None, exc: BaseException | None,
                gateway_s: float = float("nan"), replica: int = -1, version: str = "", correct: int = -1,
                length: int = 0, feature_failed: int = 0) -> None:
        """Record the outcome, fire Locust's event, wake a closed-loop user. `feature_failed`: the
        refusal was the feature lookup's (the replica's x-feature-failure)."""
        finish_s = clock() - self.t0
        req.done = True
        self.in_flight.pop(req.key, None)
        p = params or {}
        self.rows.append((req.request_id, req.user_id, req.intended_s, req.send_s, finish_s, status,
                          float(p.get("queue_s", np.nan)), float(p.get("service_s", np.nan)),
                          float(p.get("server_s", np.nan)), float(p.get("gateway_s", gateway_s)),
                          int(p.get("batch_size", 0)), int(p.get("batch_id", -1)), int(p.get("replica", replica)),
                          str(p.get("version", version)), correct, float(p.get("feature_lookup_s", np.nan)),
                          -1 if p.get("feature_hit") is None else int(bool(p["feature_hit"])),
                          int(bool(p.get("feature_fallback", False))), feature_failed))
        if exc is None and status >= 400:
            exc = RuntimeError(f"HTTP {status}")
        try:
            self.fire(request_type="POST", name="infer", response_time=(finish_s - req.intended_s) * 1e3,
                      response_length=length, exception=exc, context={})
        finally:
            if req.on_done is not None:
                req.on_done()

    def _reap(self) -> None:
        """The client deadline (timeout_s from the intended send): a request still unanswered
        then is a client timeout, and its connection is closed (the rest of its answer would
        reach the next request)."""
        heap = self.deadlines
        while True:
            now = clock()
            while heap and (heap[0][1].done or heap[0][0] <= now):
                _, req = heapq.heappop(heap)
                if req.done:
                    continue
                conn = req.conn
                if conn is not None and conn.request is req:
                    conn.request = None
                    self._close(conn)
                if req.send_s != req.send_s:  # never left: it waited for a connection until its deadline
                    req.send_s = now - self.t0
                self._finish(req, CLIENT_TIMEOUT, None, TimeoutError(f"no answer within {self.plan.timeout_s:g} s"))
            gevent.sleep(min(heap[0][0] - now, self._max_sleep) if heap else self._max_sleep)

    # -- schedules -------------------------------------------------------------------------

    def _wait_until(self, due: float) -> None:
        """Sleep until `due` (worker clock). With loadgen.spin_s, a wait of more than
        SPIN_GATE x spin_s sleeps until spin_s before `due` and spins the rest, so a late
        wake-up of the process is not a late send; shorter waits (a high rate, when the spin's
        CPU would be the stack's) only sleep. Spinning costs at most 1/SPIN_GATE of the time
        the worker would have slept."""
        spin = self.plan.spin_s
        if spin > 0 and due - clock() < SPIN_GATE * spin:
            spin = 0.0
        while True:  # a timer may also fire a little early on the loop's cached time
            left = due - clock()
            if left <= 0:
                return
            if left > spin:
                gevent.sleep(left - spin)
            else:  # ~5 µs a turn: the loop reads whatever answers are in, then comes back
                gevent.idle()

    def run_open(self) -> None:
        times, users, ids = read_schedule(self.plan.schedule)
        mine = worker_share(ids, self.worker, self.plan.workers)
        times, users, ids = times[mine].tolist(), users[mine].tolist(), ids[mine].tolist()
        if self.plan.dispatch == "timers":
            self._run_timers(times, users, ids)
            return
        t0 = self.t0
        send = self.send
        wait = self._wait_until
        for k in range(len(times)):
            due = t0 + times[k]
            if due > clock():
                wait(due)
            send(ids[k], users[k], times[k])

    def _run_timers(self, times: list[float], users: list[int], ids: list[int], horizon_s: float = 0.5) -> None:
        """A libev timer per request, armed half a second ahead (so a long run never holds all
        of them); its callback sends on the hub."""
        t0 = self.t0
        loop = self.loop
        k, n = 0, len(times)
        while k < n:
            limit = clock() - t0 + horizon_s
            while k < n and times[k] < limit:
                timer = loop.timer(max(t0 + times[k] - clock(), 0.0))
                timer.start(self._timer_send, timer, ids[k], users[k], times[k], update=True)
                self._armed += 1
                k += 1
            gevent.sleep(horizon_s / 2)

    def _timer_send(self, timer: Any, request_id: int, user_id: int, intended_s: float) -> None:
        timer.close()
        self._armed -= 1
        due = self.t0 + intended_s
        while clock() < due:  # libev's cached time may fire a timer a little early
            pass
        self.send(request_id, user_id, intended_s)

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
            if t0 + next_s > clock():
                self._wait_until(t0 + next_s)
            answered = AsyncResult()
            self.send(-1, user, next_s, on_done=lambda: answered.set(None))
            answered.get()
            next_s = clock() - t0

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        t0_wall = _t0_wall.get()
        self.t0 = clock() + (t0_wall - time.time())
        write_json_file(started_path(self.plan.out_dir, self.worker), {"worker": self.worker, "t0_wall": t0_wall})
        reaper = gevent.spawn(self._reap) if self.plan.timeout_s > 0 else None
        try:
            if self.plan.closed:
                self.run_closed()
            else:
                self.run_open()
            drain = self.plan.drain_after_s
            if self.plan.closed:
                drain += self.plan.duration_s
            self.group.join(timeout=drain)
            end = clock() + drain
            while (self.in_flight or self._armed) and clock() < end:
                gevent.sleep(IDLE_POLL_S)
        finally:
            if reaper is not None:
                reaper.kill(block=False)
            self.flush()

    def flush(self) -> None:
        """Write what happened; a request still in flight is recorded as cut short."""
        if self.flushed:
            return
        self.flushed = True
        rows = list(self.rows)
        for req in list(self.in_flight.values()):
            rows.append((req.request_id, req.user_id, req.intended_s, req.send_s, np.nan, CUT_SHORT,
                         np.nan, np.nan, np.nan, np.nan, 0, -1, -1, "", -1, np.nan, -1, 0, 0))
        columns = list(zip(*rows)) if rows else [[] for _ in RECORD_FIELDS]
        arrays = {name: np.asarray(col, dtype=dtype) for (name, dtype), col in zip(RECORD_FIELDS.items(), columns)}
        write_arrays(records_path(self.plan.out_dir, self.worker), {**arrays, **self.extra_columns()})

    def extra_columns(self) -> dict[str, np.ndarray]:
        """Fields a kind of driver records beyond RECORD_FIELDS, one per row in `flush`'s order
        (its rows, then the requests still in flight): none here."""
        return {}


def _bodies(plan: LoadPlan) -> tuple[list[bytes], list[int | None]]:
    """Each input's body part after the id (ending where the timeout's value goes) and its label;
    with `plan.entity`, the one part of an input-less request, ending where its entity id goes."""
    head = b'","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":'
    if plan.entity:  # the replica's feature store gives the input (and the label that judges it)
        return [ENTITY_MID], [None]
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


class _AsyncRequest(_Request):
    """An async request: its conversation (submit, then polls) and its next poll's timer."""

    __slots__ = ("call", "timer")

    def __init__(self, schedule: PollSchedule | None, key: int, request_id: int, user_id: int, intended_s: float,
                 deadline: float, on_done: Callable[[], None] | None) -> None:
        super().__init__(key, request_id, user_id, intended_s, deadline, on_done)
        self.call = AsyncCall(schedule)
        self.timer: Any = None  # the next poll's libev timer, while one is armed


class AsyncDriver(Driver):
    """pattern=async (real.loadgen.async_client): each scheduled request is submitted at its
    time exactly as a sync request is sent (the same dispatcher, connections, send lag and
    deadline heap), its 202 read, then its result polled: a GET on a pooled keep-alive
    connection (beyond loadgen.max_connections in flight, it waits for one, as a send does)
    at each of the plan's PollSchedule times from the 202, by a libev timer on the hub. The
    client deadline ends the polling; the record is written once, when the conversation ends.

    With `async_jobs.callback` it never polls: each submission names a loopback listener of
    this worker's (`parameters.callback_url`), the server's worker POSTs the result there, and
    the request ends when that is read. A callback may overtake its own 202 (the worker is
    quick, the gateway's answer still on its way): it waits in `early` until the 202 names it."""

    def __init__(self, plan: LoadPlan, worker: int, environment: Environment) -> None:
        super().__init__(plan, worker, environment)
        schedule = None if plan.callback else PollSchedule(plan.poll_first_s, plan.poll_backoff, plan.poll_max_interval_s)
        self.request_type = partial(_AsyncRequest, schedule)
        netloc = urlsplit(plan.url).netloc
        self.by_job: dict[str, _AsyncRequest] = {}  # callbacks: the requests waiting for theirs
        self.early: dict[str, Callback] = {}  # callbacks read before their 202
        self.results = ResultRequestEncoder(netloc, plan.model)
        self.t0_wall = float("nan")
        self.ready: list[float] = []  # per row, beside self.rows
        self.polls: list[int] = []

    def _sent_bodies(self, mids: list[bytes]) -> list[bytes]:
        """Each body as a submission (parameters.async, and the callback URL when there is one)."""
        callback_url = self._listen() if self.plan.callback else None
        return [submit_mid(m, callback_url) for m in mids]

    def _listen(self) -> str:
        """A loopback listener for the results' callbacks; its URL."""
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.listener = sock
        self.accepting = self.loop.io(sock.fileno(), READ)
        self.accepting.start(self._accept)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/callback/w{self.worker}"

    def _accept(self) -> None:
        while True:
            try:
                fd, _ = self.listener._accept()  # the C socket's accept: a descriptor
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the callback's sender times out, the request too
                return
            sock = _socket.socket(fileno=fd)
            sock.setblocking(False)
            watcher = self.loop.io(fd, READ)
            watcher.start(self._callback_readable, sock, watcher, CallbackReader())

    def _callback_readable(self, sock: Any, watcher: Any, reader: CallbackReader) -> None:
        try:
            data = sock.recv(RECV_BYTES)
            if data:
                for callback in reader.feed(data):
                    sock.send(CALLBACK_REPLY)  # a few bytes on a fresh socket: it takes them
                    self._called_back(callback)
                return
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, httptools.HttpParserError):
            pass
        watcher.stop()
        watcher.close()
        sock.close()

    def _called_back(self, callback: Callback) -> None:
        req = self.by_job.pop(callback.job, None)
        if req is None:
            self.early[callback.job] = callback
        elif not req.done:
            self._result(req, callback)

    def _result(self, req: _AsyncRequest, callback: Callback) -> None:
        """A result told by callback: recorded as a polled result is."""
        Driver._answered(self, req, Answer(callback.status, callback.body, None, None, None, False))

    def run(self) -> None:
        self.t0_wall = _t0_wall.get()  # a result's ready_unix_s - this = its time on the run's clock
        super().run()

    def _bytes(self, req: _Request, now: float) -> bytes:
        call = req.call  # type: ignore[attr-defined]
        if call.phase == POLLING:
            return self.results.encode(call.job)
        return super()._bytes(req, now)

    def _connect(self, req: _Request) -> None:
        sent = req.send_s
        super()._connect(req)
        if req.call.phase == POLLING:  # type: ignore[attr-defined]  # a poll's connection: the record keeps the submit's send time
            req.send_s = sent

    def _answered(self, req: _Request, answer: Answer) -> None:
        call: AsyncCall = req.call  # type: ignore[attr-defined]
        step = call.submitted(answer.status, answer.body) if call.phase == SUBMITTING else call.answered(answer.status)
        if step is None:  # told by callback: wait for it (it may be here already)
            job = call.job
            assert job is not None
            early = self.early.pop(job, None)
            if early is not None:
                self._result(req, early)  # type: ignore[arg-type]
            else:
                self.by_job[job] = req  # type: ignore[assignment]
            return
        if isinstance(step, Poll):
            timer = self.loop.timer(step.after_s)
            timer.start(self._poll, req, update=True)
            req.timer = timer  # type: ignore[attr-defined]
            return
        assert isinstance(step, Done)
        if step.http_status == CONNECTION_ERROR:
            self._finish(req, CONNECTION_ERROR, None, ValueError("a 202 that names no request id"))
            return
        super()._answered(req, answer)  # the result (or the refusal, the 404): recorded as a sync answer is

    def _poll(self, req: _AsyncRequest) -> None:
        """A poll is due: send it on a free connection, a new one, or the first that frees."""
        timer, req.timer = req.timer, None
        if timer is not None:
            timer.close()
        if req.done:
            return
        req.call.polled()
        self._dispatch(req)

    def _finish(self, req: _Request, status: int, params: dict[str, Any] | None, exc: BaseException | None,
                *args: Any, **kwargs: Any) -> None:
        """Driver's, with the poll timer stopped and the result's ready time and polls beside
        the row; the rest of the arguments pass through as they are."""
        timer = req.timer  # type: ignore[attr-defined]
        if timer is not None:  # the deadline (or a stop) came between polls
            req.timer = None  # type: ignore[attr-defined]
            timer.close()
        if req.call.job is not None:  # type: ignore[attr-defined]
            self.by_job.pop(req.call.job, None)  # type: ignore[attr-defined]
        self.ready.append(ready_on_run_clock(params, self.t0_wall) if status == 200 else float("nan"))
        self.polls.append(req.call.polls)  # type: ignore[attr-defined]
        super()._finish(req, status, result_parameters(params), exc, *args, **kwargs)

    def extra_columns(self) -> dict[str, np.ndarray]:
        in_flight = list(self.in_flight.values())  # flush's order for the rows it adds
        ready = self.ready + [float("nan")] * len(in_flight)
        polls = self.polls + [req.call.polls for req in in_flight]  # type: ignore[attr-defined]
        return {"ready_s": np.asarray(ready, dtype=ASYNC_RECORD_FIELDS["ready_s"]),
                "polls": np.asarray(polls, dtype=ASYNC_RECORD_FIELDS["polls"])}


class _H2Link(_Socket):
    """The gRPC driver's one HTTP/2 connection: the protocol state (`grpc_wire.GrpcH2Client`)
    and the requests by stream."""

    __slots__ = ("client", "streams", "connected")

    def __init__(self, sock: Any, loop: Any, client: GrpcH2Client) -> None:
        super().__init__(sock, loop)
        self.client = client
        self.streams: dict[int, _Request] = {}
        self.connected = False


class GrpcDriver(Driver):
    """`loadgen.protocol=grpc`: the same schedule, records and deadlines, over the gateway's
    GRPCInferenceService, as the HTTP driver does it: the dispatcher writes each call's bytes
    (`grpc_wire.GrpcH2Client`: HTTP/2 and gRPC's framing without I/O, the message from
    `GrpcRequestEncoder`'s parts) on one HTTP/2 connection the instant it is due, and the
    answers are read and recorded in the connection's read callback on gevent's hub; the reaper
    enforces the client deadline (and resets the call's stream, as grpc does). grpcio through its
    gevent integration cost ~0.6 ms of CPU per call here, four times the HTTP driver
    (scenarios/bench_loadgen.py, `--only grpcnull`). The server-side deadline travels in
    `parameters.timeout`, as over REST, and in grpc-timeout, as grpc sends it."""

    def __init__(self, plan: LoadPlan, worker: int, environment: Environment) -> None:
        super().__init__(plan, worker, environment)
        from real.loadgen import grpc_wire

        self.wire = grpc_wire  # imported here: an HTTP run never loads grpc

        if plan.inputs:
            images, labels = read_inputs(plan.inputs)
            label_list: list[int | None] = [int(x) for x in labels]
        else:
            images = np.random.default_rng(plan.seed).uniform(0.0, 16.0, (1, 64)).round(3)
            label_list = [None]
        self.grpc_encoder = (grpc_wire.GrpcRequestEncoder.for_entities(plan.model) if plan.entity
                             else grpc_wire.GrpcRequestEncoder(plan.model, images, label_list))
        self.authority = plan.url.split("//", 1)[-1].rstrip("/")
        host, _, port = self.authority.rpartition(":")
        family, _, _, _, self.grpc_address = _socket.getaddrinfo(host.strip("[]") or "127.0.0.1", int(port), 0,
                                                                  _socket.SOCK_STREAM)[0]
        self.grpc_family = family
        self.link: _H2Link | None = None
        self.link_error: BaseException = ConnectionError("cannot open a socket")  # why the last connection failed
        self.calls: dict[int, tuple[_H2Link, int]] = {}  # request key -> its connection and stream while unanswered

    def send(self, request_id: int, user_id: int, intended_s: float, on_done: Callable[[], None] | None = None) -> None:
        key = self._next_key
        self._next_key += 1
        timeout_s = self.plan.timeout_s
        req = _Request(key, request_id, user_id, intended_s,
                       self.t0 + intended_s + timeout_s if timeout_s > 0 else float("inf"), on_done)
        self.in_flight[key] = req
        req.send_s = clock() - self.t0
        if timeout_s > 0:
            heapq.heappush(self.deadlines, (req.deadline, req))
        link = self.link
        if link is None or link.closed or link.client.closing:
            link = self._open()
        if link is None or link.closed:  # refused at once
            self._finish(req, CONNECTION_ERROR, None, self.link_error)
            return
        if link.connected and not self.waiting:
            self._call(link, req)
        else:
            self.waiting.append(req)

    def _call(self, link: _H2Link, req: _Request) -> bool:
        """Start `req`'s call on `link`; False if the connection cannot take it yet."""
        now = clock()
        rid = req.request_id if req.request_id >= 0 else req.key
        micros = max(int((req.deadline - now) * 1e6), 1) if self.plan.timeout_s > 0 else 0
        message = self.grpc_encoder.encode(f"w{self.worker}-{rid}", input_index(rid, len(self._labels)), micros,
                                           req.user_id if self.plan.entity else None)
        if not link.client.can_call(len(message)):
            return False
        metadata: tuple[tuple[str, str], ...] = (("x-user-id", str(req.user_id)),)
        pin = self.pins.get(req.request_id) if self.pins else None
        if pin is not None:
            metadata += (("x-model-version", pin),)
        sid, data = link.client.call(message, micros, metadata)
        link.streams[sid] = req
        self.calls[req.key] = (link, sid)
        self._send_bytes(link, data)
        return True

    def _flush_waiting(self, link: _H2Link) -> None:
        waiting = self.waiting
        while waiting and link.connected and not link.closed:
            req = waiting[0]
            if req.done:
                waiting.popleft()
            elif self._call(link, req):
                waiting.popleft()
            else:
                return

    def _send_bytes(self, link: _H2Link, data: bytes) -> None:
        if link.pending or not link.connected:  # keep the order: behind what is queued
            link.pending += data
            return
        try:
            if link.send(data):
                link.write_watcher.start(self._link_writable, link)
        except OSError as exc:
            self._link_broken(link, exc)

    def _open(self) -> _H2Link | None:
        try:
            sock = _open_socket(self.grpc_family)
        except OSError as exc:
            self.link_error = exc
            return None
        client = self.wire.GrpcH2Client(self.authority)
        link = _H2Link(sock, self.loop, client)
        link.pending = client.connect()
        self.link = link
        link.read_watcher.start(self._link_readable, link)
        err = sock.connect_ex(self.grpc_address)
        if err in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            link.write_watcher.start(self._link_connected, link)
        else:
            self._link_broken(link, ConnectionError(err, os.strerror(err)))
        return link

    def _link_connected(self, link: _H2Link) -> None:
        link.write_watcher.stop()
        error = link.connect_error()
        if error is not None:
            self._link_broken(link, error)
            return
        link.connected = True
        data, link.pending = link.pending, b""
        self._send_bytes(link, data)
        self._flush_waiting(link)

    def _link_writable(self, link: _H2Link) -> None:
        try:
            link.flush()
        except OSError as exc:
            self._link_broken(link, exc)

    def _link_readable(self, link: _H2Link) -> None:
        try:
            data = link.receive()
        except OSError as exc:
            self._link_broken(link, exc)
            return
        if data is None:
            return
        try:
            replies = link.client.feed(data)
        except self.wire.H2ProtocolError as exc:
            self._link_broken(link, exc)
            return
        out = link.client.take_outbound()
        if out:
            self._send_bytes(link, out)
        for reply in replies:
            req = link.streams.pop(reply.stream_id, None)
            if req is not None:
                self.calls.pop(req.key, None)
                if not req.done:
                    self._grpc_answered(req, reply)
        if link.client.closing and not link.streams:
            self._close_link(link)
        if self.waiting and link is self.link:
            if link.closed or link.client.closing:
                self._reopen()
            else:
                self._flush_waiting(link)

    def _reopen(self) -> None:
        """Requests wait and their connection is gone (GOAWAY, or closed): a new one takes them."""
        link = self._open()
        if link is None:
            while self.waiting:
                req = self.waiting.popleft()
                if not req.done:
                    self._finish(req, CONNECTION_ERROR, None, self.link_error)

    def _link_broken(self, link: _H2Link, exc: BaseException) -> None:
        """The connection failed (refused, reset, not HTTP/2): every call on it, and every call
        waiting for it, is an error (grpc: UNAVAILABLE, no server metadata)."""
        self.link_error = exc
        self._close_link(link)
        failed = list(link.streams.values())
        link.streams.clear()
        if self.link is link:
            failed += list(self.waiting)
            self.waiting.clear()
        for req in failed:
            self.calls.pop(req.key, None)
            if not req.done:
                self._finish(req, CONNECTION_ERROR, None, exc)

    def _close_link(self, link: _H2Link) -> None:
        if link.closed:
            return
        link.closed = True
        link.read_watcher.stop()
        link.write_watcher.stop()
        link.read_watcher.close()
        link.write_watcher.close()
        link.sock.close()

    def _finish(self, req: _Request, status: int, params: dict[str, Any] | None, exc: BaseException | None,
                gateway_s: float = float("nan"), replica: int = -1, version: str = "", correct: int = -1,
                length: int = 0, feature_failed: int = 0) -> None:
        """As the HTTP driver's; a call still open (its client deadline passed) is reset first."""
        where = self.calls.pop(req.key, None)
        if where is not None:
            link, sid = where
            link.streams.pop(sid, None)
            if not link.closed:
                self._send_bytes(link, link.client.cancel(sid))
        super()._finish(req, status, params, exc, gateway_s, replica, version, correct, length, feature_failed)

    def _grpc_answered(self, req: _Request, reply: GrpcReply) -> None:
        if reply.code is self.wire.OK:
            data = reply.message
            try:
                if data is None:
                    raise ValueError("an OK call without a message")
                params, label = self.wire.read_answer(data)
            except Exception as exc:  # not a ModelInferResponse
                self._finish(req, CONNECTION_ERROR, None, exc)
                return
            rid = req.request_id if req.request_id >= 0 else req.key
            sent = self._labels[input_index(rid, len(self._labels))]
            correct = int(label == sent) if sent is not None and label is not None and "correct" in params else -1
            if self.plan.entity and "correct" in params:  # judged by the feature table's label
                correct = int(bool(params["correct"]))
            self._finish(req, 200, params, None, float(params.get("gateway_s", float("nan"))),
                         correct=correct, length=len(data))
            return
        status, replica, version = self.wire.read_failure(reply.code, reply.details, reply.trailing)
        exc = TimeoutError(f"no answer within {self.plan.timeout_s:g} s") if status == CLIENT_TIMEOUT else None
        if status == CONNECTION_ERROR:
            exc = ConnectionError(f"gRPC {reply.code.name}: {reply.details}")
        feature_failed = int(any(k == "x-feature-failure" for k, _ in reply.trailing or ()))  # the lookup's refusal
        self._finish(req, status, None, exc, replica=replica, version=version, feature_failed=feature_failed)


_driver: Driver | None = None


class ScheduleUser(User):
    """The one User per worker process: it runs the driver, then idles until the parent stops Locust."""

    host = "http://127.0.0.1"

    @task
    def drive(self) -> None:
        global _driver
        if _driver is None:  # a second user on the same worker must not send the share twice
            plan = _plan()
            driver = GrpcDriver if plan.protocol == "grpc" else AsyncDriver if plan.pattern == "async" else Driver
            _driver = driver(plan, int(os.environ.get(WORKER_ENV, "0")), self.environment)
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
