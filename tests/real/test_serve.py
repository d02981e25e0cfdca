"""`servelab mode=serve`: the stack stays up, prints where it is, and goes away on a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_the_urls_serves_and_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from scenarios.cli import main; main()", "mode=serve", "gateway.port=0", "replicas=2",
         f"out_dir={tmp_path}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        gateway = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", text)
        assert gateway, text
        assert len(re.findall(r"replica \d http://127\.0\.0\.1:\d+", text)) == 2
        assert "curl" in text and str(tmp_path / "stack" / "token") in text
        r = requests.post(gateway.group(1) + "/v2/models/digits/infer", json=BODY, timeout=10)
        assert r.status_code == 200, r.text
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "stack stopped" in out
        with pytest.raises(requests.ConnectionError):
            requests.get(gateway.group(1) + "/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
