"""mode=batch (issue 14, offline batch scoring): bad input refused before anything runs, every
row scored exactly once, a rerun scoring only what a crash left out, and the twin's job model
against closed forms and a toy search."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy

from real.batch import FEATURE_COLUMNS, WorkerSpec, chunk_path
from real.models import load_model
from scenarios.batch import BatchJobError, generate_input, plan_chunks, run_job
from scenarios.cli import preflight
from sim.batch_job import BatchJob, JobCosts, SharedCores, predict, search
from sim.config import ConfigError, ServiceConfig
from tests.test_cli import assert_config_error, servelab


def refused(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        preflight(["mode=batch", *overrides])
    assert len(str(info.value).splitlines()) == 1, str(info.value)
    return info.value


# --- bad input: one line naming the key, before anything runs -------------------------------------

def _features(rows: int) -> pd.DataFrame:
    return pd.DataFrame(np.zeros((rows, 64), dtype=np.float32), columns=list(FEATURE_COLUMNS))


@pytest.mark.parametrize("name, make, fragment", [
    ("missing.parquet", None, "does not exist"),
    ("text.parquet", lambda p: p.write_text("x0,x1\n1,2\n"), "is not a Parquet file"),
    ("short.parquet", lambda p: _features(3).drop(columns=["x7", "x63"]).to_parquet(p), "lacks column(s) x7, x63"),
    ("words.parquet", lambda p: _features(3).assign(x5="a").to_parquet(p), "column x5 is"),
    ("empty.parquet", lambda p: _features(0).to_parquet(p), "has no rows"),
])
def test_bad_input_file_is_refused(tmp_path: Path, name: str, make, fragment: str) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    error = refused([f"batch.input={path}"])
    assert error.key == "batch.input" and fragment in str(error), str(error)
    assert "x0..x63" in str(error)


@pytest.mark.parametrize("override, key", [("batch.batch_size=0", "batch.batch_size"), ("batch.parallelism=0", "batch.parallelism"),
                                           ("batch.chunk_rows=0", "batch.chunk_rows"), ("batch.rows=0", "batch.rows"),
                                           ("batch.price_per_replica_hour=-1", "batch.price_per_replica_hour")])
def test_out_of_range_number_is_refused(override: str, key: str) -> None:
    assert refused([override]).key == key


def test_batch_keys_are_only_checked_in_batch_mode() -> None:
    preflight(["mode=sim", "batch.batch_size=0"])  # no error: mode=sim never reads batch.*


def test_console_script_refuses_a_missing_input_in_one_line(tmp_path: Path) -> None:
    result = servelab("mode=batch", "batch.input=nowhere.parquet", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    line = assert_config_error(result, "batch.input")
    assert str(tmp_path / "nowhere.parquet") in line  # made absolute against where servelab started
    assert not (tmp_path / "out").exists()  # nothing ran


# --- the real job ----------------------------------------------------------------------------------

def _spec(tmp_path: Path, rows: int = 1000, chunk_rows: int = 300, batch_size: int = 64, backend: str = "numpy") -> WorkerSpec:
    path = tmp_path / "input.parquet"
    generate_input(path, rows)
    return WorkerSpec(str(path), str(tmp_path / "predictions"), rows, chunk_rows, batch_size, backend, "1",
                      ServiceConfig(kind="deterministic", base_s=0.0005, per_item_s=0.0), 1.0, 0)


def _predictions(spec: WorkerSpec) -> pd.DataFrame:
    files = sorted(Path(spec.predictions_dir).glob("chunk-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_job_scores_every_row_exactly_once_as_the_model_does(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    todo, done = plan_chunks(spec, resume=True)
    assert (todo, done) == ([0, 1, 2, 3], [])
    measured = run_job(spec, todo, parallelism=2)
    assert (measured.rows, measured.chunks) == (1000, 4)
    pred = _predictions(spec).sort_values("row")
    assert pred["row"].tolist() == list(range(1000))
    x = pd.read_parquet(spec.input_path, columns=list(FEATURE_COLUMNS)).to_numpy(dtype=np.float32)
    model = load_model("1")
    assert np.array_equal(pred["label"].to_numpy(), model.predict(x))
    proba = model.predict_proba(x)
    assert np.allclose(pred["probability"].to_numpy(), proba[np.arange(1000), pred["label"].to_numpy()], atol=1e-6)


def test_emulated_backend_answers_label_zero_without_a_probability(tmp_path: Path) -> None:
    spec = _spec(tmp_path, rows=200, chunk_rows=100, batch_size=50, backend="emulated")
    run_job(spec, plan_chunks(spec, resume=True)[0], parallelism=1)
    pred = _predictions(spec)
    assert len(pred) == 200 and (pred["label"] == 0).all() and pred["probability"].isna().all()


def test_rerun_after_a_crash_scores_only_the_missing_chunks(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    run_job(spec, plan_chunks(spec, resume=True)[0], parallelism=2)
    before = _predictions(spec).sort_values("row").reset_index(drop=True)
    chunk_path(spec.predictions_dir, 1).unlink()  # never written
    chunk_path(spec.predictions_dir, 3).write_bytes(chunk_path(spec.predictions_dir, 3).read_bytes()[:40])  # torn
    kept = chunk_path(spec.predictions_dir, 0).stat().st_mtime_ns
    (Path(spec.predictions_dir) / ".chunk-00002.parquet.abc123").write_bytes(b"half")  # a crashed write's temp file
    todo, done = plan_chunks(spec, resume=True)
    assert (todo, done) == ([1, 3], [0, 2])
    measured = run_job(spec, todo, parallelism=2)
    assert (measured.rows, measured.chunks) == (300 + 100, 2)
    assert chunk_path(spec.predictions_dir, 0).stat().st_mtime_ns == kept
    assert not list(Path(spec.predictions_dir).glob(".chunk-*"))
    pd.testing.assert_frame_equal(_predictions(spec).sort_values("row").reset_index(drop=True), before)


def test_resume_false_rescores_everything(tmp_path: Path) -> None:
    spec = _spec(tmp_path, rows=300, chunk_rows=100)
    run_job(spec, plan_chunks(spec, resume=True)[0], parallelism=1)
    assert plan_chunks(spec, resume=True) == ([], [0, 1, 2])
    assert plan_chunks(spec, resume=False) == ([0, 1, 2], [])


def test_resume_into_another_jobs_directory_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, rows=300, chunk_rows=100)
    plan_chunks(spec, resume=True)
    with pytest.raises(ConfigError) as info:
        plan_chunks(replace(spec, chunk_rows=150), resume=True)
    assert info.value.key == "batch.resume" and "chunk_rows" in str(info.value)


def test_a_failing_worker_stops_the_job_naming_it_and_keeps_nothing_half_written(tmp_path: Path) -> None:
    spec = _spec(tmp_path, rows=200, chunk_rows=100)
    todo, _ = plan_chunks(spec, resume=True)
    bad = replace(spec, input_path=str(tmp_path / "gone.parquet"))  # vanished after the pre-flight
    with pytest.raises(BatchJobError, match=r"worker \d: FileNotFoundError"):
        run_job(bad, todo, parallelism=2)
    assert not list(Path(spec.predictions_dir).glob("*chunk-*"))


@pytest.mark.slow
def test_mode_batch_writes_twin_and_measured_figures(tmp_path: Path) -> None:
    result = servelab("mode=batch", "model.backend=numpy", "batch.rows=2000", "batch.chunk_rows=500", "batch.parallelism=1",
                      "batch.search=false", f"out_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "batch.json").read_text())
    assert doc["chunks"] == {"total": 4, "skipped": 0, "scored": 4} and doc["rows_predicted"] == 2000
    assert doc["accuracy"] > 0.9  # the held-out digits, scored by the real model
    for side in ("twin", "real"):
        assert doc[side]["completion_s"] > 0
    real = doc["real"]
    assert math.isclose(real["cost_per_1000"], 1.0 * 1 * real["completion_s"] / 3600 / 2, rel_tol=1e-9)
    report = (tmp_path / "report.md").read_text()  # every run ends with a report
    assert "Twin against the measured job" in report and "completion (s)" in report and "report.html" in result.stdout
    rerun = servelab("mode=batch", "model.backend=numpy", "batch.rows=2000", "batch.chunk_rows=500", "batch.parallelism=1",
                     "batch.search=false", f"out_dir={tmp_path}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing to score" in rerun.stdout
    assert json.loads((tmp_path / "batch.json").read_text())["chunks"] == {"total": 4, "skipped": 4, "scored": 0}


# --- the twin ----------------------------------------------------------------------------------------

def test_shared_cores_is_processor_sharing() -> None:
    env = simpy.Environment()
    cores = SharedCores(env, 1)
    finished: dict[str, float] = {}

    def job(name: str, at: float, work: float):
        yield env.timeout(at)
        yield cores.run(work)
        finished[name] = env.now

    env.process(job("a", 0.0, 1.0))
    env.process(job("b", 0.0, 2.0))
    env.process(job("c", 1.5, 0.25))
    env.run()
    # a and b share the core (rate 1/2) until a is done at 2.0, except c arrives at 1.5: three
    # share from 1.5 (a has 0.25 left, c 0.25, b 1.25) until a and c end at 2.25; b alone after
    assert finished["a"] == pytest.approx(2.25) and finished["c"] == pytest.approx(2.25)
    assert finished["b"] == pytest.approx(3.25)  # all the work, 3.25 s, on one core that never idled


def test_one_worker_completion_is_the_closed_form() -> None:
    batch_s, chunk_s, start_s = 0.002, 0.01, 0.5
    costs = JobCosts(batch_cpu_s=lambda b: batch_s, chunk_s=chunk_s, start_s=start_s, cores=2)
    job = BatchJob.split(rows=1050, chunk_rows=200, batch_size=64, parallelism=1)
    assert job.chunks == (200, 200, 200, 200, 200, 50)
    n_batches = 5 * math.ceil(200 / 64) + math.ceil(50 / 64)
    p = predict(job, costs)
    assert p.startup_s == pytest.approx(start_s)
    assert p.scoring_s == pytest.approx(n_batches * batch_s + 6 * chunk_s)
    assert p.rows_per_s == pytest.approx(1050 / (start_s + n_batches * batch_s + 6 * chunk_s))


def test_device_time_overlaps_across_workers_but_cpu_time_does_not_beyond_the_cores() -> None:
    job = BatchJob.split(rows=4000, chunk_rows=100, batch_size=100, parallelism=4)
    device = predict(job, JobCosts(batch_cpu_s=lambda b: 0.0, batch_device_s=lambda b: 0.01, cores=1))
    cpu = predict(job, JobCosts(batch_cpu_s=lambda b: 0.01, cores=1))
    assert device.scoring_s == pytest.approx(40 * 0.01 / 4)
    assert cpu.scoring_s == pytest.approx(40 * 0.01)  # one core: four workers take as long as one


def test_serialised_loads_add_up_and_starts_share_the_cores() -> None:
    job = BatchJob.split(rows=100, chunk_rows=100, batch_size=100, parallelism=3)
    assert predict(job, JobCosts(batch_cpu_s=lambda b: 0.0, load_s=0.5, load_cores=1)).startup_s == pytest.approx(1.5)
    assert predict(job, JobCosts(batch_cpu_s=lambda b: 0.0, load_s=0.5, load_cores=None)).startup_s == pytest.approx(0.5)
    # three starts of 0.3 s on two cores take 0.45 s; then three loads of 0.5 s, one at a time
    both = JobCosts(batch_cpu_s=lambda b: 0.0, start_s=0.3, load_s=0.5, cores=2, load_cores=1)
    assert predict(job, both).startup_s == pytest.approx(0.45 + 1.5)


def test_completion_falls_with_parallelism_up_to_the_cores_then_stops() -> None:
    costs = JobCosts(batch_cpu_s=lambda b: 1e-4 + 1e-5 * b, chunk_s=0.002, start_s=0.1, cores=4)
    scoring = [predict(BatchJob.split(100_000, 1000, 32, p), costs).scoring_s for p in range(1, 9)]
    assert all(later < earlier for earlier, later in zip(scoring[:4], scoring[1:4]))
    assert min(scoring[4:]) >= scoring[3] * (1 - 1e-9)  # beyond the cores: shared, no faster


def test_search_picks_the_best_points_of_a_toy_cost_model() -> None:
    # a device (no core contention) with a fixed cost per call: bigger batches and more workers
    # are faster; the start cost per worker makes one worker the cheapest per prediction
    costs = JobCosts(batch_cpu_s=lambda b: 0.0, batch_device_s=lambda b: 0.01 + 0.0001 * b, start_s=1.0, cores=None, load_cores=None)
    found = search(12_000, 1000, [1, 16, 256], [1, 2, 3, 4], costs, price_per_replica_hour=3.6)
    assert len(found.points) == 12
    assert found.fastest is not None and found.cheapest is not None
    best_rate = max(p.rows_per_s for p in found.points)
    assert found.fastest.rows_per_s == best_rate
    assert (found.fastest.batch_size, found.fastest.parallelism) == (256, 4)
    assert (found.cheapest.batch_size, found.cheapest.parallelism) == (256, 1)
    assert found.cheapest.cost_per_1000(3.6) == min(p.cost_per_1000(3.6) for p in found.points)


def test_search_breaks_a_throughput_tie_towards_fewer_workers() -> None:
    # one core, CPU-bound, one chunk per worker slot: 2 workers take as long as 1 (plus no start)
    costs = JobCosts(batch_cpu_s=lambda b: 0.001, cores=1)
    found = search(1000, 100, [100], [1, 2], costs, price_per_replica_hour=1.0)
    assert found.fastest is not None and found.fastest.parallelism == 1


def test_the_batch_report_draws_the_search_with_the_measured_job(tmp_path: Path) -> None:
    from reports.batch import write_batch_report

    point = {"startup_s": 1.0, "scoring_s": 2.0, "completion_s": 3.0, "rows_per_s": 1000.0, "cost_per_1000": 0.001}
    grid = [dict(point, batch_size=b, parallelism=n, rows_per_s=100.0 * b * n) for b in (8, 32) for n in (1, 2)]
    doc = {"backend": "numpy", "version": "2", "rows": 3000, "batch_size": 8, "parallelism": 2, "cores": 2,
           "chunks": {"total": 3, "skipped": 0, "scored": 3}, "accuracy": 0.97, "twin": point, "real": dict(point, completion_s=4.0),
           "search": {"fastest": grid[-1], "cheapest": grid[0], "grid": grid}}
    html, md = write_batch_report(tmp_path, doc, {"mode": "batch"})
    text = md.read_text()
    assert "| completion (s) | 3.000 | 4.000 | -25.0% |" in text and "batch_search.png" in text
    assert (tmp_path / "figures" / "batch_search.png").stat().st_size > 0 and html.exists()
