"""mode=profile's async paths: a submit's 202, a poll that finds its result and a sync request,
timed on one stack with one client, which the twin turns into its submit and poll ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from real.features.redis_server import INSTALL_HINT, redis_server_binary
from scenarios.profile import measure_async_ways
from sim.async_serving import AsyncWayScale
from sim.config import ScenarioConfig, ServiceConfig

pytestmark = [pytest.mark.real, pytest.mark.slow,
              pytest.mark.skipif(redis_server_binary() is None, reason=f"redis-server is not installed; {INSTALL_HINT}")]


def test_profile_times_the_async_paths_beside_a_sync_request(tmp_path: Path) -> None:
    cfg = ScenarioConfig(replicas=1, service=ServiceConfig(kind="deterministic", base_s=0.002, per_item_s=0.0))
    ways = measure_async_ways(cfg, tmp_path, samples=8, warmup=2)
    assert sorted(ways) == ["async_poll_s", "async_submit_s", "async_sync_s"]
    for samples in ways.values():
        assert len(samples) == 8 and all(np.isfinite(samples)) and min(samples) > 0
    scale = AsyncWayScale.from_overheads(ways)
    assert scale != AsyncWayScale() and 0 < scale.submit and 0 < scale.poll
