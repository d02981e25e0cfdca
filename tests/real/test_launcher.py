"""The launcher with the real model server: the stack comes up, serves, and never leaves orphans."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from real.launcher import LaunchError, launch, launch_with, server_command
from sim.config import ScenarioConfig
from tests.real.conftest import alive, interruptible, processes_mentioning

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
BODY = {"id": "x", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def small_cfg(replicas: int = 2, versions: tuple[str, ...] = ("1", "2")) -> ScenarioConfig:
    cfg = ScenarioConfig(replicas=replicas, seed=3)
    cfg.model.versions = list(versions)
    cfg.lb.policy = "round_robin"
    return cfg


def test_stack_serves_through_the_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    with launch(small_cfg(), run_dir=tmp_path) as stack:
        pids = stack.pids
        assert len(pids) == 3 and all(alive(p) for p in pids)
        assert stack.gateway_url.startswith("http://127.0.0.1:")
        seen = set()
        with requests.Session() as http:
            for user in range(4):
                r = http.post(stack.gateway_url + "/v2/models/digits/infer", json=BODY, headers={"x-user-id": str(user)}, timeout=10)
                assert r.status_code == 200, r.text
                params = r.json()["parameters"]
                seen.add((params["replica"], params["version"]))
                assert float(r.headers["x-gateway-s"]) >= 0
            pinned = http.post(stack.gateway_url + "/v2/models/digits/versions/2/infer", json=BODY, timeout=10).json()
            assert pinned["parameters"]["version"] == "2" and pinned["parameters"]["replica"] == 1
            bad = http.post(stack.gateway_url + "/v2/models/digits/infer", data=b"{nope", headers={"content-type": "application/json"}, timeout=10)
            assert 400 <= bad.status_code < 500 and "error" in bad.json()
            # the token reaches the gateway through the environment, and the run files hold it only in token
            w = http.post(stack.gateway_url + "/v2/gateway/weights", json={"weights": [1, 1]},
                          headers={"Authorization": f"Bearer {stack.token}"}, timeout=10)
            assert w.status_code == 200
        assert seen == {(0, "1"), (1, "2")}
        assert stack.token not in (tmp_path / "stack" / "config.yaml").read_text()
        assert (tmp_path / "stack" / "token").stat().st_mode & 0o077 == 0
    assert wait_gone(pids, 2.0) == []
    assert all(p.returncode is not None for p in stack.processes)


def test_failed_start_names_the_process_shows_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    def command(config: Path, replica: int, port: int, host: str) -> list[str]:
        if replica == 1:
            return [sys.executable, "-c", f"import sys; print('replica exploding on purpose {config}'); sys.exit(3)"]
        return server_command(config, replica, port, host)

    with pytest.raises(LaunchError) as err:
        with launch_with(small_cfg(), run_dir=tmp_path, replica_command=command):
            pytest.fail("a stack with a dead replica must not start")
    message = str(err.value)
    assert "replica 1 exited with status 3" in message and "exploding on purpose" in message
    assert processes_mentioning(str(tmp_path)) == []


def test_a_replica_that_never_gets_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    def command(config: Path, replica: int, port: int, host: str) -> list[str]:
        # ignores SIGTERM as a hung process would: only the SIGKILL after the grace period ends it
        code = f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('hanging {config}', flush=True); time.sleep(60)"
        return [sys.executable, "-c", code]

    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="not ready .* within the start deadline"):
        with launch_with(small_cfg(replicas=1, versions=("1",)), run_dir=tmp_path, replica_command=command,
                         start_timeout_s=1.0, grace_s=0.5):
            pass
    assert time.monotonic() - t0 < 10
    assert processes_mentioning(str(tmp_path)) == []


def test_a_taken_gateway_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        cfg = small_cfg(replicas=1, versions=("1",))
        cfg.gateway.port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"^gateway.port: {cfg.gateway.port} is in use"):
            with launch(cfg):
                pass


PARENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from real.launcher import launch
    from sim.config import ScenarioConfig
    cfg = ScenarioConfig(replicas=2)
    with launch(cfg, run_dir=Path(sys.argv[1])) as stack:
        print(json.dumps(stack.pids), flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_killing_the_parent_leaves_no_orphan(tmp_path: Path, sig: signal.Signals) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line, f"the stack did not start: {parent.stderr.read() if parent.stderr else ''}"
        pids = json.loads(line)
        assert len(pids) == 3 and all(alive(p) for p in pids)
        parent.send_signal(sig)
        parent.wait(timeout=15)
        assert wait_gone(pids) == [], f"orphans after {sig.name}"
        assert processes_mentioning(str(tmp_path)) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
