"""Benchmark: model-server infer rate per transport, beside that transport's bare echo and beside
Seldon MLServer serving the same task, all in one run.

    .venv/bin/python -m scenarios.bench_server [--duration 3] [--connections 16] [--rounds 2]
        [--transports json,binary,grpc] [--batches 1,8] [--no-mlserver]
    .venv/bin/python -m scenarios.bench_server --timer      # max_queue_delay timer precision only

Three transports, each at batch 1 and batch 8 (one request of 1 or 8 digits images):
- json: OIP REST with a JSON body; load from wrk (HTTP/1.1);
- binary: OIP REST with Triton's binary tensor data extension (a JSON header of
  `Inference-Header-Content-Length` bytes, then the raw FP32 rows; outputs asked as binary), as
  tritonclient sends it; load from wrk;
- grpc: `inference.GRPCInferenceService/ModelInfer` (KServe v2 / Triton), the input as
  `raw_input_contents` as tritonclient.grpc sends it; load from h2load (nghttp2's HTTP/2 load
  tool: a unary gRPC call is one HTTP/2 POST).
Every target of a transport gets the same tool, the same flags (one thread, `--connections`
connections, one request in flight on each, `--duration` s) and the same request bytes, apart
from the output names each server's model has:
- the bare echo of that transport: a Starlette JSON echo (parse, serialise back; the binary one
  parses the JSON header and sends header + tensor bytes back) on the same uvicorn settings as
  the replica, and a grpc.aio server whose ModelInfer hands the request bytes back untouched;
- the servelab replica (numpy digits v1, batching up to 16 rows, no queue delay), one process
  serving REST and gRPC;
- Seldon MLServer 1.7.1 with its sklearn runtime serving the same digits v1 model (REST and gRPC;
  it has no binary tensor extension), installed by scenarios.mlserver_env into a venv of its
  own, started as a process and never imported: its defaults, except loopback ports, no
  access log, and parallel_workers 0 (inference in the server process, `--mlserver-workers`):
  its default of one inference worker process dies at start with the uvloop pip resolves for
  it (0.23: the worker calls asyncio.get_event_loop() with no loop set).
The ratio server/echo says what the server adds on top of its transport; servelab/MLServer per
transport is the comparison with a widely used OIP server (target >= 3x at batch 1); the
original target, the replica >= 50% of the JSON echo at batch 1, still holds. Before the load,
one request per target is checked (status, outputs; servelab and MLServer must give the same
labels); after it, servelab's own statistics must count every request the tool completed, so a
rate of errors cannot pass for a rate of answers (h2load only sees HTTP statuses).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
UVICORN = dict(loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False,
               server_header=False, date_header=False)
TRANSPORTS = ("json", "binary", "grpc")
SERVERS = ("echo", "servelab", "mlserver")
MODEL = "digits"
VERSION = "1"
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_INFER = f"/{GRPC_SERVICE}/ModelInfer"
INFER_PATH = f"/v2/models/{MODEL}/versions/{VERSION}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The outputs each server's digits model has: class probabilities, then the label.
OUTPUTS = {"servelab": ("probabilities", "label"), "echo": ("probabilities", "label"), "mlserver": ("predict_proba", "predict")}
TARGET_ECHO_RATIO = 0.5  # servelab >= 50% of the JSON echo at batch 1
TARGET_MLSERVER_RATIO = 3.0  # servelab >= 3x MLServer at batch 1, per transport


# -- request bodies (pure: the tests check them against tritonclient's own encoders) --------


def json_body(rows: np.ndarray, outputs: tuple[str, ...]) -> bytes:
    """An OIP JSON infer request: one FP32 input of shape rows.shape, the named outputs."""
    return orjson.dumps({
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.astype(np.float32).ravel().tolist()}],
        "outputs": [{"name": name} for name in outputs],
    })


def binary_body(rows: np.ndarray, outputs: tuple[str, ...]) -> tuple[bytes, int]:
    """Triton's binary tensor data extension: (body, JSON header length). The header names the
    input's `binary_data_size` and asks every output as binary; the raw little-endian FP32 rows
    follow it. The length goes in the Inference-Header-Content-Length request header."""
    raw = rows.astype("<f4").tobytes()
    header = orjson.dumps({
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    })
    return header + raw, len(header)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as protobuf does: ten bytes of two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2): string, bytes, message, packed list."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def grpc_infer_request(rows: np.ndarray, outputs: tuple[str, ...], model: str = MODEL, version: str = VERSION) -> bytes:
    """A serialised inference.ModelInferRequest (grpc_service.proto: model_name 1, model_version
    2, inputs 5 {name 1, datatype 2, shape 3 packed}, outputs 6 {name 1}, raw_input_contents 7),
    encoded by hand so that no generated module is needed to build the load."""
    tensor = _field(1, b"input") + _field(2, b"FP32") + _field(3, b"".join(_varint(d) for d in rows.shape))
    message = _field(1, model.encode()) + _field(2, version.encode()) + _field(5, tensor)
    message += b"".join(_field(6, _field(1, name.encode())) for name in outputs)
    return message + _field(7, rows.astype("<f4").tobytes())


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def pb_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialised protobuf message, one level deep: enough
    to read an answer's output names without a generated module."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            yield number, wire, value
        elif wire == 2:
            size, i = _read_varint(buf, i)
            yield number, wire, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, wire, buf[i:i + width]
            i += width
        else:
            raise ValueError(f"protobuf wire type {wire} not supported")


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def grpc_output_names(response: bytes) -> list[str]:
    """The output tensor names of a serialised ModelInferResponse (outputs = field 5, name = 1)."""
    names = []
    for number, _, value in pb_fields(response):
        if number == 5 and isinstance(value, bytes):
            names += [v.decode() for n, _, v in pb_fields(value) if n == 1 and isinstance(v, bytes)]
    return names


# -- the echo baselines ------------------------------------------------------------------------


def echo_app():  # type: ignore[no-untyped-def]
    """The HTTP baseline: parse the JSON body and send it back; with Inference-Header-Content-Length
    (the binary extension), parse the JSON header and send it back with the tensor bytes."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        body = await request.body()
        length = request.headers.get(HEADER_LENGTH)
        if length is None:
            return Response(orjson.dumps(orjson.loads(body)), media_type="application/json")
        header = orjson.dumps(orjson.loads(body[: int(length)]))
        return Response(header + body[int(length):], media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/v2/health/ready", ready)])


def serve_grpc_echo(port: int) -> None:
    """The gRPC baseline: a grpc.aio server whose ModelInfer hands the request bytes back (no
    protobuf parsing at all: the transport's own cost), on uvloop as the replica's is."""
    import grpc
    import uvloop

    async def echo(request: bytes, context: object) -> bytes:
        return request

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(GRPC_SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


# -- processes -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def grpc_call(address: str, message: bytes, timeout_s: float = 5.0) -> bytes:
    """One raw ModelInfer call (bytes in, bytes out); raises grpc.RpcError on a non-OK status."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GRPC_INFER)  # no serialisers: bytes pass through
        return call(message, timeout=timeout_s)  # type: ignore[no-any-return]


def _wait_grpc(address: str, message: bytes, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> bytes:
    import grpc

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            return grpc_call(address, message, 2.0)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.2)


def _http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _servelab_grpc_flag() -> str | None:
    """The replica's command-line option for its gRPC port, if this servelab has one."""
    out = subprocess.run([sys.executable, "-m", "real.server", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    return "--grpc-port" if "--grpc-port" in out else None


def servelab_inferences(url: str) -> int:
    """Rows the replica answered successfully so far (its Triton-shaped statistics)."""
    with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/versions/{VERSION}/stats", timeout=5) as r:
        return int(orjson.loads(r.read())["model_stats"][0]["inference_count"])


# -- load tools ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    rps: float
    failed: int  # non-2xx (wrk) or failed + errored requests (h2load)
    completed: int
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None


def _ms(text: str) -> float:
    """wrk's and h2load's durations ('812.00us', '1.23ms', '2.00s') in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if m is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]


def parse_wrk(out: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    mean = re.search(r"Latency\s+(\S+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return LoadResult(rps, failed, completed, _ms(p50.group(1)) if p50 else None, _ms(p99.group(1)) if p99 else None,
                      _ms(mean.group(1)) if mean else None)


def parse_h2load(out: str) -> LoadResult:
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert counts is not None, out
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return LoadResult(rps, int(counts.group(2)) + int(counts.group(3)), int(counts.group(1)), None, None,
                      _ms(mean.group(1)) if mean else None)


@dataclass(frozen=True)
class Target:
    """One thing measured: a server, over a transport, at a batch size, with its request."""

    transport: str
    batch: int
    server: str
    url: str  # http://.../path, or host:port for gRPC (h2load gets http://host:port/<method>)
    body: Path  # the request body as sent (gRPC: framed)
    headers: tuple[tuple[str, str], ...] = ()


def run_load(target: Target, workdir: Path, duration_s: int, connections: int) -> LoadResult:
    """The transport's load tool on `target` with the benchmark's flags."""
    if target.transport == "grpc":
        out = subprocess.run(
            ["h2load", "-t1", f"-c{connections}", "-m1", "-D", str(duration_s), "-d", str(target.body),
             "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{target.url}{GRPC_INFER}"],
            capture_output=True, text=True, check=True,
        ).stdout
        return _parsed(parse_h2load, out)
    lua = workdir / f"{target.transport}-{target.batch}-{target.server}.lua"
    lines = ['wrk.method = "POST"'] + [f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers]
    lines += [f'local f = assert(io.open("{target.body}", "rb"))', 'wrk.body = f:read("*a")', "f:close()"]
    lua.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua), target.url],
        capture_output=True, text=True, check=True,
    ).stdout
    return _parsed(parse_wrk, out)


def _parsed(parse: Callable[[str], LoadResult], out: str) -> LoadResult:
    try:
        return parse(out)
    except (AttributeError, AssertionError, ValueError):
        print(f"cannot read the load tool's output:\n{out}", file=sys.stderr)
        raise


def _lateness_ms(samples: list[float]) -> str:
    a = np.asarray(samples) * 1e3
    return f"p50 {np.percentile(a, 50):.3f} ms, p99 {np.percentile(a, 99):.3f} ms, max {a.max():.3f} ms"


def measure_timer(samples: int = 300, delay_s: float = 0.005) -> None:
    """How late the batcher dispatches a lone request after max_queue_delay_s.

    A real server process (uvloop) with an emulated device of ~0 time gets one-row requests one
    at a time, so every dispatch is a timer dispatch; its reported queue_s minus the delay is
    the lateness (thread timer + hand-off to the loop + hand-off to the instance thread). For
    contrast, the same delay as a plain uvloop `call_later`.
    """
    import asyncio

    import uvloop
    from omegaconf import OmegaConf

    from sim.config import BatchingConfig, ScenarioConfig, ServiceConfig, to_plain

    cfg = ScenarioConfig(
        replicas=1,
        service=ServiceConfig(kind="deterministic", base_s=1e-6, per_item_s=0.0),
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_s=delay_s),
    )
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench_timer.") as tmp:
        config = Path(tmp) / "config.yaml"
        OmegaConf.save(OmegaConf.create(to_plain(cfg)), config)
        proc = subprocess.Popen([sys.executable, "-m", "real.server", "--config", str(config), "--replica", "0", "--port", str(port)], cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            late: list[float] = []
            for _ in range(samples + 10):
                req = urllib.request.Request(url + "/v2/models/digits/infer", body, {"content-type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    late.append(orjson.loads(r.read())["parameters"]["queue_s"] - delay_s)
        finally:
            proc.terminate()
            proc.wait(10)

    async def loop_timer() -> list[float]:
        loop = asyncio.get_running_loop()
        out: list[float] = []
        for _ in range(samples):
            fut = loop.create_future()
            t0 = time.perf_counter()
            loop.call_later(delay_s, fut.set_result, None)
            await fut
            out.append(time.perf_counter() - t0 - delay_s)
        return out

    print(f"max_queue_delay_s={delay_s}: lateness of the dispatch after the delay ran out, {samples} lone requests")
    print(f"  server batcher (thread timer -> loop -> instance thread): {_lateness_ms(late[10:])}")
    print(f"  plain uvloop call_later, for contrast:                  {_lateness_ms(uvloop.run(loop_timer()))}")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Endpoints:
    """Where each server of the run listens; None = not running in this run."""

    echo_http: str
    servelab_http: str
    echo_grpc: str | None = None
    servelab_grpc: str | None = None
    mlserver_http: str | None = None
    mlserver_grpc: str | None = None


@dataclass
class Plan:
    targets: list[Target] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per target left out, and why


def _labels(doc: dict[str, object], name: str) -> list[int]:
    for out in doc["outputs"]:  # type: ignore[attr-defined]
        if out["name"] == name:
            return [int(v) for v in out["data"]]
    raise KeyError(name)


def plan_targets(ep: Endpoints, transports: list[str], batches: list[int], rows: np.ndarray, workdir: Path) -> Plan:
    """Write each target's request body, send it once and keep the targets that answered it
    properly; a server that cannot (no binary extension, no gRPC service yet) is skipped with
    a line saying why."""
    plan = Plan()
    for transport in transports:
        for batch in batches:
            x = rows[:batch]
            for server in SERVERS:
                outputs = OUTPUTS[server]
                name = f"{transport} batch {batch} {server}"
                body = workdir / f"{transport}-{batch}-{server}.body"
                if transport == "grpc":
                    address = {"echo": ep.echo_grpc, "servelab": ep.servelab_grpc, "mlserver": ep.mlserver_grpc}[server]
                    if address is None:
                        plan.skipped.append(f"{name}: skipped, {_why_no_grpc(server)}")
                        continue
                    message = grpc_infer_request(x, outputs)
                    problem = _check_grpc(address, message, outputs if server != "echo" else ())
                    body.write_bytes(grpc_frame(message))
                    target = Target(transport, batch, server, address, body)
                else:
                    base = {"echo": ep.echo_http, "servelab": ep.servelab_http, "mlserver": ep.mlserver_http}[server]
                    if base is None:
                        plan.skipped.append(f"{name}: skipped, MLServer is not part of this run (--no-mlserver)")
                        continue
                    if transport == "binary" and server == "mlserver":
                        plan.skipped.append(f"{name}: n/a, MLServer has no binary tensor data extension")
                        continue
                    url = base + ("/echo" if server == "echo" else INFER_PATH)
                    if transport == "json":
                        content, headers = json_body(x, outputs), (("Content-Type", "application/json"),)
                    else:
                        content, length = binary_body(x, outputs)
                        headers = (("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(length)))
                    body.write_bytes(content)
                    problem = _check_http(url, content, dict(headers), transport, server)
                    target = Target(transport, batch, server, url, body, headers)
                if problem is not None:
                    plan.skipped.append(f"{name}: skipped, {problem}")
                else:
                    plan.targets.append(target)
    return plan


def _why_no_grpc(server: str) -> str:
    if server == "servelab":
        return "the servelab replica has no gRPC service yet (python -m real.server has no --grpc-port)"
    if server == "mlserver":
        return "MLServer is not part of this run (--no-mlserver)"
    return "no gRPC echo"


def _check_http(url: str, body: bytes, headers: dict[str, str], transport: str, server: str) -> str | None:
    status, answer_headers, answer = _http_post(url, body, headers)
    if status != 200:
        what = "the binary tensor data extension" if transport == "binary" else "this request"
        return f"it does not support {what} yet: HTTP {status} {answer[:160]!r}"
    if transport == "binary" and HEADER_LENGTH.lower() not in answer_headers:
        return f"its answer has no {HEADER_LENGTH} header (outputs were asked as binary)"
    return None


def _check_grpc(address: str, message: bytes, outputs: tuple[str, ...]) -> str | None:
    import grpc

    try:
        answer = grpc_call(address, message)
    except grpc.RpcError as exc:
        return f"ModelInfer failed: {exc.code().name} {exc.details()}"  # type: ignore[attr-defined]
    missing = set(outputs) - set(grpc_output_names(answer))
    return f"its answer lacks the outputs {sorted(missing)}" if missing else None


def check_same_task(ep: Endpoints, rows: np.ndarray, truth: np.ndarray) -> str:
    """servelab's and MLServer's labels for the same rows (one JSON request each): they serve
    the same model, so they must agree."""
    assert ep.mlserver_http is not None
    ours = _labels(orjson.loads(_http_post(ep.servelab_http + INFER_PATH, json_body(rows, OUTPUTS["servelab"]), {"Content-Type": "application/json"})[2]), "label")
    theirs = _labels(orjson.loads(_http_post(ep.mlserver_http + INFER_PATH, json_body(rows, OUTPUTS["mlserver"]), {"Content-Type": "application/json"})[2]), "predict")
    agree = sum(a == b for a, b in zip(ours, theirs))
    right = sum(a == t for a, t in zip(ours, truth.tolist()))
    line = f"same task: servelab and MLServer agree on {agree}/{len(rows)} labels (servelab right on {right}/{len(rows)})"
    if agree != len(rows):
        raise RuntimeError(line + ": they do not serve the same model")
    return line


@dataclass
class Measurement:
    target: Target
    result: LoadResult
    answered_rows: int | None = None  # servelab: rows its statistics counted during the load


def measure(targets: list[Target], workdir: Path, duration_s: int, connections: int, rounds: int,
            servelab_url: str, log: Callable[[str], None] = print) -> dict[Target, list[Measurement]]:
    """Warm every target up for 1 s, then `rounds` interleaved rounds over all of them."""
    for t in targets:
        run_load(t, workdir, 1, connections)
    results: dict[Target, list[Measurement]] = {t: [] for t in targets}
    for r in range(rounds):
        for t in targets:
            before = servelab_inferences(servelab_url) if t.server == "servelab" else None
            res = run_load(t, workdir, duration_s, connections)
            m = Measurement(t, res)
            if before is not None:
                time.sleep(0.05)  # the answers in flight when the tool stopped
                m.answered_rows = servelab_inferences(servelab_url) - before
            results[t].append(m)
            log(f"  round {r + 1} {t.transport:6s} batch {t.batch} {t.server:8s} {res.rps:9.0f} req/s  failed {res.failed}")
    return results


def _best(ms: list[Measurement]) -> Measurement:
    return max(ms, key=lambda m: m.result.rps)


def _latency(r: LoadResult) -> str:
    if r.p50_ms is not None and r.p99_ms is not None:
        return f"p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms"
    return f"mean {r.mean_ms:.2f} ms" if r.mean_ms is not None else ""


def report(results: dict[Target, list[Measurement]], transports: list[str], batches: list[int]) -> tuple[list[str], list[str]]:
    """The table's lines and the problems (missed targets, failed or uncounted requests)."""
    best = {(t.transport, t.batch, t.server): _best(ms) for t, ms in results.items()}
    lines = [f"{'transport':9s} {'batch':>5s} {'echo req/s':>11s} {'servelab infer/s':>17s} {'vs echo':>8s} "
             f"{'MLServer infer/s':>17s} {'servelab/MLServer':>18s}  servelab latency"]
    problems: list[str] = []
    for transport in transports:
        for batch in batches:
            echo, ours, theirs = (best.get((transport, batch, s)) for s in SERVERS)
            cell = lambda m: f"{m.result.rps:,.0f}" if m is not None else "-"  # noqa: E731
            vs_echo = f"{ours.result.rps / echo.result.rps:.0%}" if ours and echo else "-"
            vs_ml = f"{ours.result.rps / theirs.result.rps:.2f}x" if ours and theirs else "-"
            lines.append(f"{transport:9s} {batch:5d} {cell(echo):>11s} {cell(ours):>17s} {vs_echo:>8s} {cell(theirs):>17s} "
                         f"{vs_ml:>18s}  {_latency(ours.result) if ours else ''}")
            if batch == 1 and ours and theirs and ours.result.rps < TARGET_MLSERVER_RATIO * theirs.result.rps:
                problems.append(f"{transport} batch 1: servelab is {ours.result.rps / theirs.result.rps:.2f}x MLServer (target >= {TARGET_MLSERVER_RATIO:.0f}x)")
            if transport == "json" and batch == 1 and ours and echo and ours.result.rps < TARGET_ECHO_RATIO * echo.result.rps:
                problems.append(f"json batch 1: servelab is {ours.result.rps / echo.result.rps:.0%} of the echo (target >= {TARGET_ECHO_RATIO:.0%})")
    for t, ms in results.items():
        for m in ms:
            if m.result.failed:
                problems.append(f"{t.transport} batch {t.batch} {t.server}: {m.result.failed} requests failed")
            if m.answered_rows is not None and m.answered_rows < m.result.completed * t.batch:
                problems.append(f"{t.transport} batch {t.batch} servelab: it answered {m.answered_rows} rows, the tool counted "
                                f"{m.result.completed} requests of {t.batch} done (errors passing as answers?)")
    return lines, problems


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _csv(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allowed is not None and (bad := [s for s in items if s not in allowed]):
        raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scenarios.bench_server", description="Model-server infer rate per transport, beside its bare echo and beside MLServer.")
    p.add_argument("--duration", type=int, default=3, help="seconds of load per measurement")
    p.add_argument("--connections", type=int, default=16, help="connections, one request in flight on each")
    p.add_argument("--rounds", type=int, default=2, help="measurements of each target, interleaved; the best counts")
    p.add_argument("--transports", type=lambda s: _csv(s, TRANSPORTS), default=list(TRANSPORTS), help="json,binary,grpc")
    p.add_argument("--batches", type=lambda s: [int(b) for b in _csv(s)], default=[1, 8], help="rows per request, e.g. 1,8")
    p.add_argument("--no-mlserver", action="store_true", help="leave MLServer out (no venv, no comparison)")
    p.add_argument("--mlserver-workers", type=int, default=0,
                   help="MLServer's parallel_workers (default 0: inference in its server process; its own default, 1 worker process, "
                        "dies at start with the uvloop pip resolves for it, 0.23)")
    p.add_argument("--timer", action="store_true", help="only measure the batcher's max_queue_delay precision")
    p.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--serve-grpc-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_echo is not None:  # child mode: the HTTP baseline
        import uvicorn

        uvicorn.run(echo_app(), host="127.0.0.1", port=args.serve_echo, **UVICORN)  # type: ignore[arg-type]
        return 0
    if args.serve_grpc_echo is not None:  # child mode: the gRPC baseline
        serve_grpc_echo(args.serve_grpc_echo)
        return 0
    if args.timer:
        measure_timer()
        return 0
    if max(args.batches) > 16 or min(args.batches) < 1:
        p.error("--batches: 1..16 rows (the replica's max_batch_size is 16)")

    if shutil.which("wrk") is None and {"json", "binary"} & set(args.transports):
        print("wrk is not installed. Install it with:  sudo apt-get install -y wrk   (Debian/Ubuntu)", file=sys.stderr)
        return 2
    transports = list(args.transports)
    if "grpc" in transports:
        try:
            import grpc  # noqa: F401
        except ImportError:
            print("grpc: skipped, grpcio is not installed in this environment")
            transports.remove("grpc")
        else:
            if shutil.which("h2load") is None:
                print("grpc: skipped, h2load is not installed. Install it with:  sudo apt-get install -y nghttp2-client")
                transports.remove("grpc")

    from omegaconf import OmegaConf

    from real.models import test_split
    from scenarios import mlserver_env
    from sim.config import BatchingConfig, ModelConfig, ScenarioConfig, to_plain

    cfg = ScenarioConfig(
        replicas=1,
        model=ModelConfig(backend="numpy", versions=[VERSION]),
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_s=0.0),
    )
    x_test, y_test = test_split()
    rows, truth = x_test[: max(args.batches)], y_test[: max(args.batches)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench_server.") as tmp:
        work = Path(tmp)
        config = work / "config.yaml"
        OmegaConf.save(OmegaConf.create(to_plain(cfg)), config)
        try:
            ml: mlserver_env.MLServerEnv | None = None
            if not args.no_mlserver:
                ml = mlserver_env.MLServerEnv(mlserver_env.default_home().resolve())
                mlserver_env.ensure_venv(ml)
                accuracy = mlserver_env.write_model(ml)
                print(f"MLServer {mlserver_env.REQUIREMENTS}: digits v1 (sklearn LogisticRegression, held-out accuracy {accuracy:.4f}), venv {ml.venv}")

            ports = {k: _free_port() for k in ("echo", "echo_grpc", "servelab", "servelab_grpc", "ml_http", "ml_grpc", "ml_metrics")}
            ep = Endpoints(echo_http=f"http://127.0.0.1:{ports['echo']}", servelab_http=f"http://127.0.0.1:{ports['servelab']}")
            procs.append(subprocess.Popen([sys.executable, "-m", "scenarios.bench_server", "--serve-echo", str(ports["echo"])], cwd=ROOT, env=env))
            server_cmd = [sys.executable, "-m", "real.server", "--config", str(config), "--replica", "0", "--port", str(ports["servelab"])]
            if "grpc" in transports:
                procs.append(subprocess.Popen([sys.executable, "-m", "scenarios.bench_server", "--serve-grpc-echo", str(ports["echo_grpc"])], cwd=ROOT, env=env))
                ep.echo_grpc = f"127.0.0.1:{ports['echo_grpc']}"
                if (flag := _servelab_grpc_flag()) is not None:
                    server_cmd += [flag, str(ports["servelab_grpc"])]
                    ep.servelab_grpc = f"127.0.0.1:{ports['servelab_grpc']}"
            procs.append(subprocess.Popen(server_cmd, cwd=ROOT, env=env))
            servelab_proc = procs[-1]
            if ml is not None:
                workers = args.mlserver_workers
                mlserver_env.write_settings(ml, ports["ml_http"], ports["ml_grpc"], ports["ml_metrics"], workers)
                procs.append(mlserver_env.start(ml, work / "mlserver.log"))
                ep.mlserver_http = f"http://127.0.0.1:{ports['ml_http']}"
                ep.mlserver_grpc = f"127.0.0.1:{ports['ml_grpc']}" if "grpc" in transports else None
                _wait_ready(ep.mlserver_http, procs[-1], timeout_s=120)
            _wait_ready(ep.echo_http, procs[0])
            _wait_ready(ep.servelab_http, servelab_proc)
            if ep.echo_grpc is not None:
                _wait_grpc(ep.echo_grpc, b"", procs[1])
            if ep.servelab_grpc is not None:
                _wait_grpc(ep.servelab_grpc, grpc_infer_request(rows[:1], OUTPUTS["servelab"]), servelab_proc)

            if ep.mlserver_http is not None:
                print(check_same_task(ep, rows, truth))
            plan = plan_targets(ep, transports, args.batches, rows, work)
            for line in plan.skipped:
                print(line)
            if not plan.targets:
                print("nothing to measure", file=sys.stderr)
                return 1
            results = measure(plan.targets, work, args.duration, args.connections, args.rounds, ep.servelab_http)
        except BaseException:
            if ml is not None and (work / "mlserver.log").exists():
                print("MLServer's log (tail):\n" + (work / "mlserver.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            _stop(procs)

    print(f"\nHTTP: wrk -t1 -c{args.connections} -d{args.duration}s; gRPC: h2load -t1 -c{args.connections} -m1 -D {args.duration}; "
          f"best of {args.rounds} interleaved rounds; servelab numpy digits v1 (max_batch_size 16, no queue delay); "
          f"MLServer 1.7.1 sklearn runtime, parallel_workers {args.mlserver_workers}")
    print("infer/s = requests/s (a request of batch 8 carries 8 rows)")
    lines, problems = report(results, transports, args.batches)
    for line in lines:
        print(line)
    for transport in transports:
        ours = [m for t, ms in results.items() for m in ms if t.transport == transport and t.batch == 1 and t.server == "servelab"]
        theirs = [m for t, ms in results.items() for m in ms if t.transport == transport and t.batch == 1 and t.server == "mlserver"]
        if ours and theirs:
            ratio = _best(ours).result.rps / _best(theirs).result.rps
            verdict = "met" if ratio >= TARGET_MLSERVER_RATIO else "MISSED"
            print(f"{transport} batch 1: servelab {ratio:.2f}x MLServer (target >= {TARGET_MLSERVER_RATIO:.0f}x): {verdict}")
    for line in problems:
        print(f"PROBLEM: {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
