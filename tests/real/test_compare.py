"""mode=compare end to end: the twin and the real stack on one scenario and seed.

The fast test replays a small stored profile (tests/data/profile_quickstart_small.json, measured
once with `servelab mode=profile scenario=quickstart compare.profile_samples=10
compare.overhead_fractions=[0.3,0.6]` and cut to <= 64 quantiles per list) through
`overhead.profile`, so it measures the real stack for a few seconds and calibrates nothing. The
slow test runs the whole thing: a calibration on this machine, then the measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.profile import load_profile

pytestmark = pytest.mark.real

SMALL_PROFILE = Path(__file__).resolve().parents[1] / "data" / "profile_quickstart_small.json"
CODE = "import sys; from scenarios.cli import main; sys.argv = ['servelab', *sys.argv[1:]]; main()"


def servelab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", CODE, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=400)
    # 3: a busy box's send lag flags the measurement; the comparison is still written
    assert result.returncode in (0, 3), result.stdout[-2000:] + result.stderr[-2000:]
    return result


def assert_same_requests_both_sides(out: Path) -> None:
    for side in ("sim", "real"):
        for name in ("requests.parquet", "summary.json", "timeseries.parquet", "config.yaml"):
            assert (out / side / name).is_file(), f"{side}/{name} missing"
    sim = pd.read_parquet(out / "sim" / "requests.parquet")
    real = pd.read_parquet(out / "real" / "requests.parquet")
    # one seed, one schedule: both halves saw exactly the same requests at the same times
    assert sim["request_id"].tolist() == real["request_id"].tolist()
    assert (sim["arrival_s"] == real["arrival_s"]).all()
    assert (real["status"] == "ok").mean() > 0.99


def test_compare_replays_a_stored_profile(tmp_path: Path) -> None:
    """overhead.profile names a calibration: compare reuses it as it is (no profiling), and the
    twin replays it: empirical device times and the profile's overheads."""
    out = tmp_path / "cmp"
    result = servelab(tmp_path, "mode=compare", "scenario=quickstart", "duration_s=4", "warmup_s=1",
                      "compare.load_fractions=[]", f"overhead.profile={SMALL_PROFILE}", f"out_dir={out}")
    assert f"calibration: {SMALL_PROFILE}" in result.stdout and "calibrating" not in result.stdout
    assert not (out / "profile.json").exists() and not (out / "stack" / "profile").exists()
    assert "latency p50" in result.stdout and str(out / "report.html") in result.stdout
    assert_same_requests_both_sides(out)
    sim_cfg = (out / "sim" / "config.yaml").read_text()
    assert "kind: empirical" in sim_cfg and f"profile: {SMALL_PROFILE}" in sim_cfg
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["profile"] == str(SMALL_PROFILE)
    assert set(comparison["metrics"]) >= {"latency_p50", "latency_p99", "throughput", "batch_size_mean_per_batch"}
    # at 60% load every request is answered on both sides: throughput agrees whatever the box's load
    assert abs(comparison["metrics"]["throughput"]["rel_error"]) < 0.1
    # the profile's device times set the capacity: 2 replicas x 4 / mean time of a batch of 4
    capacity = 2 * 4 / load_profile(str(SMALL_PROFILE)).mean_s(4)
    assert comparison["capacity_rps"] == pytest.approx(capacity)
    assert len(comparison["predicted_curve"]) >= 5 and max(p["load"] for p in comparison["predicted_curve"]) > 1.2
    report = (out / "report.md").read_text()
    assert "different scenarios" not in report  # the calibration differs by design, nothing else


@pytest.mark.slow
def test_short_compare_run_with_its_own_calibration(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = servelab(tmp_path, "mode=compare", "scenario=quickstart", "duration_s=9", "warmup_s=3",
                      "compare.load_fractions=[]", "compare.overhead_fractions=[0.6]", "compare.profile_samples=8",
                      "compare.profile_idle_samples=100", "compare.profile_point_warmup_s=2",
                      "compare.profile_point_duration_s=4", f"out_dir={out}")
    assert "calibrating" in result.stdout
    assert "latency p50" in result.stdout and str(out / "report.html") in result.stdout
    assert_same_requests_both_sides(out)
    comparison = json.loads((out / "comparison.json").read_text())
    metrics = comparison["metrics"]
    assert set(metrics) >= {"latency_p50", "latency_p99", "throughput", "batch_size_mean_per_batch",
                            "batch_size_mean_per_request"}
    # loose bounds: a 9 s run on a shared 2-core machine; the README table holds the real figures
    assert abs(metrics["throughput"]["rel_error"]) < 0.03
    assert abs(metrics["latency_p50"]["rel_error"]) < 0.2
    assert abs(metrics["batch_size_mean_per_batch"]["rel_error"]) < 0.2
    assert len(comparison["predicted_curve"]) >= 5  # twin-only points past capacity: the knee
    assert max(p["load"] for p in comparison["predicted_curve"]) > 1.2
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    # the calibration measured what the compare.profile_* keys asked for
    profile = json.loads((out / "profile.json").read_text())
    assert {len(v) for v in profile["times_s"].values()} == {8} and sorted(profile["times_s"]) == ["1", "2", "3", "4"]
    assert len(profile["overheads_s"]["total_s"]) == 100
    # one point, at 0.6 of the devices' capacity as measured: 2 replicas x batches of 4 / the
    # measured time of a batch of 4 (the first point; later ones are fractions of the stack's)
    measured = load_profile(str(out / "profile.json"))
    assert [p["rate"] for p in profile["overhead_by_rate"]] == [pytest.approx(0.6 * 2 * 4 / measured.mean_s(4))]
    # and the host it ran on: each role's CPU per request, read from the processes' CPU time
    host = measured.host
    assert host is not None and host.cores >= 1
    assert all(cost > 0 for cost in host.cpu_per_request_s.values())
    assert set(profile["overhead_by_rate"][0]["cores_used"]) >= {"loadgen", "gateway", "replica"}
