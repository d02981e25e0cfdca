"""`python -m real.server` as the launcher runs it: starts, serves, stops on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sim.config import to_plain
from tests.real.conftest import real_cfg

ROOT = Path(__file__).resolve().parents[2]


def start(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "real.server", "--config", str(config), "--replica", "0", "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    m = re.search(r"listening on (http://\S+)", line)
    assert m, line
    url = m.group(1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server never became ready")


@pytest.mark.real
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_process_serves_then_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create({"mode": "real", **to_plain(real_cfg())}), config)
    proc, url = start(config)
    try:
        doc = {"id": "p", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        req = urllib.request.Request(url + "/v2/models/digits/infer", json.dumps(doc).encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["id"] == "p"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.real
def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("replicas: 0\n")
    r = subprocess.run([sys.executable, "-m", "real.server", "--config", str(config), "--replica", "0", "--port", "0"],
                       cwd=ROOT, capture_output=True, timeout=30)
    assert r.returncode == 2 and b"replicas" in r.stderr
