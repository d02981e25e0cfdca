"""mode=compare with pattern=async: the twin's async model (sim/async_serving.py) and the real
stack's queue and workers (real/asyncq) driven by the load generator's async client, on one
schedule, through a stored profile (tests/data/profile_quickstart_small.json: no calibration).

What is asserted is what must hold on any box however busy: the same requests on both sides,
each with exactly one record, the async block in both summaries, polls (or none, with
callbacks) as the client's mode says, and the throughput a light load must get. How close the
latencies come is measured, not asserted (README, "Asynchronous serving in the twin").
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.real.test_compare import SMALL_PROFILE, assert_same_requests_both_sides, servelab

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.mark.parametrize("callback", [False, True], ids=["polling", "callback"])
def test_compare_runs_async_serving_in_both_worlds(tmp_path: Path, callback: bool) -> None:
    out = tmp_path / "cmp"
    result = servelab(tmp_path, "mode=compare", "scenario=quickstart", "pattern=async", "duration_s=5", "warmup_s=1",
                      "arrival.rate=60", "async_jobs.poll_first_s=0.01", "async_jobs.poll_max_interval_s=0.05",
                      f"async_jobs.callback={str(callback).lower()}", "compare.load_fractions=[]",
                      f"overhead.profile={SMALL_PROFILE}", f"out_dir={out}")
    assert "latency p50" in result.stdout
    assert_same_requests_both_sides(out)
    for side in ("sim", "real"):
        frame = pd.read_parquet(out / side / "requests.parquet")
        summary = json.loads((out / side / "summary.json").read_text())
        block = summary["async"]
        assert block["submitted"] == summary["requests_measured"] == block["accepted"] + block["refused"]
        assert frame["request_id"].is_unique
        ok = frame[frame["status"] == "ok"]
        assert ok["ready_s"].notna().all() and (ok["ready_s"] <= ok["finish_s"] + 1e-3).all(), side
        if callback:
            assert (frame["polls"] == 0).all(), side
        else:
            assert (ok["polls"] >= 1).all(), side
    comparison = json.loads((out / "comparison.json").read_text())
    # a light load is answered in full on both sides, whatever else runs on the box
    assert abs(comparison["metrics"]["throughput"]["rel_error"]) < 0.1
    # load and capacity are the async workers' (the capacity the summaries quote), never the
    # sync replicas' stack, which serves no async request
    assert comparison["capacity_rps"] == pytest.approx(json.loads((out / "sim" / "summary.json").read_text())["capacity_rps"])
    assert "stack_capacity" not in comparison and "stack as deployed" not in result.stdout
