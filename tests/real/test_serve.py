"""`servelab mode=serve`: the stack stays up, prints where it is, and goes away on a signal."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.real.conftest import processes_mentioning

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-c", "from scenarios.cli import main; main()", "mode=serve"]
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def start_serve(args: list[str], cwd: Path, preexec_fn: Callable[[], None] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    """(process, gateway URL, what it printed up to its banner's last line)."""
    proc = subprocess.Popen([*SERVE, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=preexec_fn)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while not any("Ctrl-C" in line for line in lines):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail("mode=serve printed no banner:\n" + "".join(lines))
        lines.append(line)
    text = "".join(lines)
    gateway = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", text)
    assert gateway, text
    return proc, gateway.group(1), text


def stop_and_check(proc: subprocess.Popen[str], gateway: str, sig: signal.Signals) -> None:
    """`sig` stops the stack: exit 0, the gateway's port closed."""
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "stack stopped" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(gateway + "/v2/health/live", timeout=2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_the_urls_serves_and_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc, gateway, text = start_serve(["gateway.port=0", "replicas=2", f"out_dir={tmp_path}"], ROOT)
    try:
        assert len(re.findall(r"replica \d http://127\.0\.0\.1:\d+", text)) == 2
        assert "curl" in text and str(tmp_path / "stack" / "token") in text
        r = requests.post(gateway + "/v2/models/digits/infer", json=BODY, timeout=10)
        assert r.status_code == 200, r.text
        stop_and_check(proc, gateway, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `servelab mode=serve &` in a script inherits


def test_serve_started_in_the_background_still_stops_on_sigint_from_a_relative_out_dir(tmp_path: Path) -> None:
    """Started as a script's background job (SIGINT inherited as ignored), from a directory that
    is not the repository, with a relative out_dir: it serves, writes there, and SIGINT stops it."""
    out = tmp_path / "rel" / "serve"
    proc, gateway, text = start_serve(["gateway.port=0", "replicas=1", "out_dir=rel/serve"], tmp_path, _ignore_sigint)
    try:
        assert str(out / "stack" / "token") in text  # absolute: the banner's commands work from anywhere
        assert requests.post(gateway + "/v2/models/digits/infer", json=BODY, timeout=10).status_code == 200
        assert (out / "stack" / "config.yaml").exists() and (out / "config.yaml").exists()
        stop_and_check(proc, gateway, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(out)) == []


def test_a_gateway_port_in_use_is_one_line_naming_the_key_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([*SERVE, f"gateway.port={port}", "replicas=1", f"out_dir={tmp_path}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway.port" in lines[0] and str(port) in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
