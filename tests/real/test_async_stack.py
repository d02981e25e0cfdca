"""pattern=async through the launcher: the workers start with the stack (ready before it yields),
serve submissions through the gateway, take over a killed worker's work, and stop with it."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
import requests

from real.features.redis_server import INSTALL_HINT, redis_server_binary
from real.launcher import launch
from sim.config import AsyncJobsConfig, ScenarioConfig, ServiceConfig
from tests.real.conftest import alive

pytestmark = [pytest.mark.real, pytest.mark.slow,
              pytest.mark.skipif(redis_server_binary() is None, reason=f"redis-server is not installed: {INSTALL_HINT}")]

INFER = "/v2/models/digits/infer"
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
N = 40


def test_async_stack_serves_submissions_survives_a_killed_worker_and_stops_cleanly(tmp_path: Path) -> None:
    cfg = ScenarioConfig(replicas=1, pattern="async", async_jobs=AsyncJobsConfig(workers=2, batch_size=4, claim_idle_s=0.5),
                         service=ServiceConfig(kind="deterministic", base_s=0.02, per_item_s=0.0))
    with launch(cfg, run_dir=tmp_path) as stack, requests.Session() as http:
        assert len(stack.workers) == 2 and all(p.poll() is None for p in stack.workers)
        pids = stack.pids
        assert all(log.exists() for log in stack.worker_logs)
        # a sync request on the async stack: unchanged, answered by the replica
        sync = http.post(stack.gateway_url + INFER, json=BODY, timeout=10)
        assert sync.status_code == 200 and sync.json()["parameters"]["replica"] == 0
        locations = []
        for i in range(N):
            r = http.post(stack.gateway_url + INFER, json={**BODY, "id": f"a{i}", "parameters": {"async": True}}, timeout=10)
            assert r.status_code == 202, r.text
            locations.append(r.headers["Location"])
            if i == N // 2:
                stack.workers[0].send_signal(signal.SIGKILL)  # whatever it holds is claimed by worker 1
        deadline = time.monotonic() + 60
        results: dict[str, dict[str, object]] = {}
        while len(results) < N and time.monotonic() < deadline:
            for loc in locations:
                if loc not in results:
                    r = http.get(stack.gateway_url + loc, timeout=10)
                    assert r.status_code in (200, 202), r.text
                    if r.status_code == 200:
                        results[loc] = r.json()
            time.sleep(0.05)
        assert len(results) == N
        assert sorted(doc["id"] for doc in results.values()) == sorted(f"a{i}" for i in range(N))
        metrics = http.get(stack.gateway_url + "/metrics", timeout=10).text
        assert re.search(rf"servelab_gateway_async_submitted_total {N}\.0", metrics)
        assert "servelab_gateway_async_queue_length 0.0" in metrics
        assert "servelab_gateway_async_running 0.0" in metrics  # every entry acknowledged
        # no id written twice (the killed worker may have died between a write and its log line)
        written = sum(int(n) for log in stack.worker_logs for n in re.findall(r"(\d+) results written", log.read_text()))
        assert N - cfg.async_jobs.batch_size <= written <= N
    assert not [p for p in pids if alive(p)]
