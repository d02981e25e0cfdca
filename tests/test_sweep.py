"""reports.sweep: one table (CSV + Markdown) of every job of a sweep, and its load curve."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from reports.sweep import find_runs, sweep_keys, write_sweep_report
from scenarios.outputs import sweep_dir, write_run
from scenarios.run_sim import simulate
from tests.test_reports_support import PNG_SIGNATURE, tiny

RATES = (100.0, 200.0, 400.0)


def write_job(run_dir: Path, rate: float, *, source: str | None = None, **overrides: object) -> None:
    cfg = dataclasses.replace(tiny(0, rate), **overrides)
    frame, summary, series = simulate(cfg)
    if source:
        summary["source"] = source
    write_run(run_dir, cfg, frame, summary, series)


def test_one_row_per_job_in_csv_and_markdown_and_a_load_curve(tmp_path: Path) -> None:
    for num, rate in enumerate(RATES):
        write_job(tmp_path / str(num), rate)
    paths = write_sweep_report(tmp_path)
    assert set(paths) == {"csv", "md", "load_curve"}
    table = pd.read_csv(paths["csv"])
    assert list(table["job"]) == [0, 1, 2] and list(table["arrival.rate"]) == list(RATES)
    for column in ("source", "offered_rate", "throughput", "capacity_rps", "latency_p50_s", "latency_p99_s",
                   "shed_fraction", "batch_size_mean_per_batch", "batch_size_mean_per_request",
                   "utilisation_mean", "valid"):
        assert column in table, column
    assert table["throughput"].is_monotonic_increasing and table["valid"].all()
    md = paths["md"].read_text()
    assert "Swept: `arrival.rate`" in md and "| 2 | 400 |" in md
    assert len([line for line in md.splitlines() if line.startswith("| ")]) == 1 + len(RATES)
    assert "](load_curve.png)" in md and paths["load_curve"].read_bytes()[:8] == PNG_SIGNATURE


def test_compare_jobs_give_two_rows_and_calibration_is_not_a_sweep_key(tmp_path: Path) -> None:
    for num, rate in enumerate((100.0, 200.0)):
        job = tmp_path / str(num)
        write_job(job / "real", rate, source="real")
        write_job(job / "sim", rate, service=dataclasses.replace(tiny(0).service, kind="deterministic"))
        write_job(job / "load" / "0.30" / "sim", 0.3 * rate)  # a load point: not a job of the sweep
    runs = find_runs(tmp_path)
    assert [(r.job, r.path.name) for r in runs] == [("0", "sim"), ("0", "real"), ("1", "sim"), ("1", "real")]
    assert sweep_keys([r.config for r in runs]) == ["arrival.rate"]
    paths = write_sweep_report(tmp_path)
    table = pd.read_csv(paths["csv"])
    assert list(table["source"]) == ["sim", "real", "sim", "real"]
    assert list(table.columns[:3]) == ["job", "arrival.rate", "source"]


def test_no_runs_no_files(tmp_path: Path) -> None:
    assert write_sweep_report(tmp_path) == {} and list(tmp_path.iterdir()) == []


def test_the_sweep_directory_is_the_jobs_parent(tmp_path: Path) -> None:
    assert sweep_dir([tmp_path / "s" / "0", tmp_path / "s" / "1"]) == tmp_path / "s"
    assert sweep_dir([tmp_path / "s" / "0"]) == tmp_path / "s"
    assert sweep_dir([]) is None


def test_servelab_multirun_writes_the_table_in_hydras_sweep_dir(tmp_path: Path) -> None:
    """No out_dir: Hydra picks runs/multirun/DATE/TIME, and the table lands there."""
    code = "import sys; from scenarios.cli import main; sys.argv = ['servelab', *sys.argv[1:]]; main()"
    result = subprocess.run([sys.executable, "-c", code, "-m", "arrival.rate=100,300", "duration_s=1",
                             "warmup_s=0.2", "progress=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("sweep table: ")]
    md = Path(line.removeprefix("sweep table: "))
    assert md.is_file() and md.parent.parent.parent == tmp_path / "runs" / "multirun"
    table = pd.read_csv(md.parent / "sweep.csv")
    assert list(table["arrival.rate"]) == [100.0, 300.0]
    assert json.loads((md.parent / "1" / "summary.json").read_text())["offered_rate"] == table["offered_rate"][1]
    assert (md.parent / "load_curve.png").is_file()
