"""The `servelab` command as a user meets it: errors before anything runs, and a run's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.records import COLUMNS


def servelab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from scenarios.cli import main; sys.argv = ['servelab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("arrival.rate=-5", "arrival.rate", "must be > 0"),
        ("batching.max_batch_size=0", "batching.max_batch_size", "must be >= 1"),
        ("lb.policy=fastest", "lb.policy", "p2c"),
        ("arrival.kind=sometimes", "arrival.kind", "poisson"),
        ("replicas=two", "replicas", "Integer"),
        ("batching.max_batch=4", "batching.max_batch", "did you mean 'batching.max_batch_size'"),
        ("mode=fly", "mode", "sim, real, compare"),
        ("scenario=nope", "scenario", "quickstart"),
        ("service.kind=empirical", "service.profile", "mode=profile"),
    ],
)
def test_bad_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, override: str, key: str, allowed: str) -> None:
    result = servelab(override, f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"servelab: config error: {key}"), lines[0]
    assert allowed in lines[0]
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_bad_value_inside_a_sweep_stops_the_whole_sweep(tmp_path: Path) -> None:
    result = servelab("-m", "arrival.rate=100,-1", cwd=tmp_path)
    assert result.returncode == 2 and "arrival.rate" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_mode_sim_writes_the_four_outputs_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = servelab("duration_s=3", "arrival.rate=200", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "achieved" in result.stdout and "p99" in result.stdout and str(out) in result.stdout
    frame = pd.read_parquet(out / "requests.parquet")
    assert list(frame.columns) == list(COLUMNS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests_total"] == len(frame)
    assert sum(summary["status_counts"].values()) == summary["requests_measured"]
    assert "arrival" in (out / "config.yaml").read_text()
    assert len(pd.read_parquet(out / "timeseries.parquet")) >= 3


def test_sweep_writes_one_run_per_value(tmp_path: Path) -> None:
    result = servelab("-m", "duration_s=2", "arrival.rate=50,100", f"out_dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rates = sorted(json.loads(p.read_text())["offered_rate"] for p in (tmp_path / "sweep").glob("*/summary.json"))
    assert len(rates) == 2 and rates[0] < rates[1]


def test_help_lists_modes_and_keys(tmp_path: Path) -> None:
    result = servelab("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "mode=" in result.stdout and "max_queue_delay_s" in result.stdout and "quickstart" in result.stdout
