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
    """The installed console script when there is one (what users run), else its entry point."""
    script = Path(sys.executable).with_name("servelab")
    if script.is_file():
        return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    code = "import sys; from scenarios.cli import main; sys.argv = ['servelab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_config_error(result: subprocess.CompletedProcess[str], key: str) -> str:
    """Exit 2 and exactly one stderr line naming the key; returns that line."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"servelab: config error: {key}:"), lines[0]
    return lines[0]


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


@pytest.mark.parametrize(
    "files, args, key, fragment",
    [
        ({"t.csv": "arrival_s;user_id\n0.1;1\n"}, ["arrival.kind=trace", "arrival.path=t.csv"], "arrival.path", "semicolon-separated"),
        ({"t.csv": "arrival_s\n20\n"}, ["arrival.kind=trace", "arrival.path=t.csv"], "arrival.path", "at or after duration_s=10"),
        ({"p.json": '{"meta": {}}'}, ["service.kind=empirical", "service.profile=p.json"], "service.profile", "needs 'times_s'"),
        ({"p.json": ""}, ["overhead.profile=p.json"], "overhead.profile", "is empty"),
        ({"f": "x"}, ["out_dir=f/run"], "out_dir", "under a file"),
        ({}, ["replicas=2", "model.versions=[1,1]"], "model.versions", "appears twice"),
        ({}, ["lb.weights=[1,2]"], "lb.weights", "only lb.policy=weighted"),
        ({}, ["arrival.rate=inf"], "arrival.rate", "must be a finite number > 0, got inf"),
        ({}, ["-m", "arrival.kind=closed", "arrival.rate=100,200"], "arrival.rate", "arrival.users and arrival.think_s"),
        ({}, ["arrival.rate=1e9"], "arrival.rate", "more than the limit"),
    ],
)
def test_input_errors_are_one_line_exit_2_before_anything_runs(tmp_path: Path, files: dict[str, str], args: list[str],
                                                                key: str, fragment: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    line = assert_config_error(servelab(*args, cwd=tmp_path), key)
    assert fragment in line
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_relative_paths_reach_the_run_as_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("arrival_s,user_id\n0.1,1\n0.2,2\n")
    result = servelab("duration_s=1", "warmup_s=0", "arrival.kind=trace", "arrival.path=t.csv", "out_dir=out",
                      "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / "config.yaml").read_text()
    assert f"path: {tmp_path / 't.csv'}" in written and f"out_dir: {tmp_path / 'out'}" in written


def test_a_bad_value_inside_a_sweep_stops_the_whole_sweep(tmp_path: Path) -> None:
    result = servelab("-m", "arrival.rate=100,-1", cwd=tmp_path)
    assert result.returncode == 2 and "arrival.rate" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_mode_sim_writes_the_four_outputs_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = servelab("duration_s=3", "arrival.rate=200", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "throughput" in result.stdout and "p99" in result.stdout and str(out) in result.stdout
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


def test_help_lists_every_key_with_its_help(tmp_path: Path) -> None:
    from scenarios.config import KEYS

    result = servelab("replicas=3", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for k in KEYS:
        line = next((x for x in lines if x.strip().startswith(f"{k.key}=")), None)
        assert line is not None and line.rstrip().endswith(k.help), k.key
    assert any(x.strip().startswith("replicas=3 ") for x in lines)  # values as this command line sets them
    assert "quickstart" in result.stdout and "scenario:" not in result.stdout
    assert "3 a measurement flagged invalid (real, compare, profile)" in " ".join(result.stdout.split())  # the exit statuses
