"""mode=compare end to end, short: the twin and the real stack on one scenario and seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_short_compare_run(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = "import sys; from scenarios.cli import main; sys.argv = ['servelab', *sys.argv[1:]]; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "mode=compare", "scenario=quickstart", "duration_s=9", "warmup_s=3",
         "compare.load_fractions=[]", "compare.overhead_fractions=[0.6]", "compare.profile_samples=8",
         f"out_dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode in (0, 3), result.stdout[-2000:] + result.stderr[-2000:]
    assert "latency p50" in result.stdout and str(out / "report.html") in result.stdout
    for side in ("sim", "real"):
        for name in ("requests.parquet", "summary.json", "timeseries.parquet", "config.yaml"):
            assert (out / side / name).is_file(), f"{side}/{name} missing"
    sim = pd.read_parquet(out / "sim" / "requests.parquet")
    real = pd.read_parquet(out / "real" / "requests.parquet")
    # one seed, one schedule: both halves saw exactly the same requests at the same times
    assert sim["request_id"].tolist() == real["request_id"].tolist()
    assert (sim["arrival_s"] == real["arrival_s"]).all()
    assert (real["status"] == "ok").mean() > 0.99
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
    assert (out / "profile.json").is_file()
