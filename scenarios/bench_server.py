"""Benchmark: model-server infer rate vs a bare Starlette JSON echo, both under wrk.

    .venv/bin/python -m scenarios.bench_server [--duration 5] [--connections 16] [--rounds 2]
    .venv/bin/python -m scenarios.bench_server --timer      # max_queue_delay timer precision only

Both apps run in their own uvicorn process with the same settings (uvloop, httptools, no
access log) and receive the same wrk load (one thread, a Lua script POSTing one 64-float row);
the echo parses the JSON body and serialises it back, so the ratio isolates what the server adds
on top of HTTP + JSON: OIP validation, the batcher, the instance-thread hand-off, the model
(numpy v1) and the response. Target: server >= 50% of the echo's rate.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
UVICORN = dict(loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False,
               server_header=False, date_header=False)


def echo_app():  # type: ignore[no-untyped-def]
    """The baseline: parse the JSON body and send it back."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(orjson.dumps(orjson.loads(await request.body())), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/v2/health/ready", ready)])


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


@dataclass
class WrkResult:
    rps: float
    non_2xx: int
    p50_ms: str
    p99_ms: str


def run_wrk(url: str, lua: Path, duration_s: int, connections: int) -> WrkResult:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    return WrkResult(rps, int(bad.group(1)) if bad else 0, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?")


def _lateness_ms(samples: list[float]) -> str:
    import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scenarios.bench_server", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per measurement")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="echo/server measurements, interleaved")
    p.add_argument("--timer", action="store_true", help="only measure the batcher's max_queue_delay precision")
    p.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_echo is not None:  # child mode: the baseline app
        import uvicorn

        uvicorn.run(echo_app(), host="127.0.0.1", port=args.serve_echo, **UVICORN)  # type: ignore[arg-type]
        return 0

    if args.timer:
        measure_timer()
        return 0

    if shutil.which("wrk") is None:
        print("wrk is not installed. Install it with:  sudo apt-get install -y wrk   (Debian/Ubuntu)", file=sys.stderr)
        return 2

    from omegaconf import OmegaConf

    from sim.config import BatchingConfig, ModelConfig, ScenarioConfig, to_plain

    cfg = ScenarioConfig(
        replicas=1,
        model=ModelConfig(backend="numpy", versions=["1"]),
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_s=0.0),
    )
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [float(i % 17) for i in range(64)]}]})
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench_server.") as tmp:
        config = Path(tmp) / "config.yaml"
        OmegaConf.save(OmegaConf.create(to_plain(cfg)), config)
        lua = Path(tmp) / "post.lua"
        lua.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{body.decode()}]]\n"
        )
        echo_port, server_port = _free_port(), _free_port()
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "scenarios.bench_server", "--serve-echo", str(echo_port)], cwd=ROOT, env=env))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "real.server", "--config", str(config), "--replica", "0", "--port", str(server_port)],
                cwd=ROOT, env=env,
            ))
            echo_url, server_url = f"http://127.0.0.1:{echo_port}", f"http://127.0.0.1:{server_port}"
            _wait_ready(echo_url, procs[0])
            _wait_ready(server_url, procs[1])
            targets = {"echo": echo_url + "/echo", "server": server_url + "/v2/models/digits/versions/1/infer"}
            for url in targets.values():  # warm-up
                run_wrk(url, lua, 1, args.connections)
            results: dict[str, list[WrkResult]] = {"echo": [], "server": []}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    results[name].append(run_wrk(url, lua, args.duration, args.connections))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, POST one 64-float row, {args.rounds} interleaved rounds")
    for name, rs in results.items():
        for i, r in enumerate(rs):
            print(f"  {name:6s} round {i + 1}: {r.rps:9.0f} req/s  p50 {r.p50_ms:>8s}  p99 {r.p99_ms:>8s}  non-2xx {r.non_2xx}")
    echo = max(r.rps for r in results["echo"])
    server = max(r.rps for r in results["server"])
    ratio = server / echo
    print(f"best: echo {echo:.0f} req/s, server (numpy v1, batch-1 requests) {server:.0f} req/s, ratio {ratio:.1%} (target >= 50%)")
    if any(r.non_2xx for r in results["server"]):
        print("WARNING: the server answered non-2xx responses; the rate is not all successful infers")
        return 1
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
