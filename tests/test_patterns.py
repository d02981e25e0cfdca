"""scenario=patterns (issue 14, teaching the trade-off): one demand served as sync, async and
batch in the twin, each pattern's row complete, the figures meaning what their definitions say,
and bad keys refused in one line before anything runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reports.patterns import PATTERNS, compare_rows, format_patterns_table
from scenarios.cli import preflight
from scenarios.config import ServelabConfig
from scenarios.patterns import (async_workers_needed, batch_job, batch_latency_s, batch_parallelism_needed, comparison, demand,
                                run, service_job_costs, sync_replicas_needed)
from scenarios.run_sim import simulate
from sim.async_serving import async_capacity_rps
from sim.batch_job import cost_per_1000, predict
from sim.config import ConfigError
from sim.service import capacity_rps
from tests.test_cli import assert_config_error, servelab

SHORT = ["scenario=patterns", "duration_s=5", "warmup_s=1"]


def preset(*overrides: str) -> ServelabConfig:
    return preflight([*SHORT, *overrides])


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServelabConfig, Path, dict[str, Any]]:
    cfg = preset()
    out = tmp_path_factory.mktemp("patterns")
    assert run(cfg, out) == 0
    return cfg, out, json.loads((out / "patterns.json").read_text())


def _requests(out: Path, pattern: str) -> pd.DataFrame:
    return pd.read_parquet(out / pattern / "sim" / "requests.parquet")


# --- the twin's run: every pattern, one demand -----------------------------------------------------------

def test_every_pattern_has_a_row_of_finite_figures_and_the_run_a_report(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    cfg, out, doc = twin_run
    assert list(doc["patterns"]) == list(PATTERNS)
    for pattern in PATTERNS:
        entry = doc["patterns"][pattern]
        twin = entry["twin"]
        for key in ("p50_s", "p99_s", "throughput_rps", "cost_per_1000"):
            assert twin[key] is not None and math.isfinite(twin[key]) and twin[key] > 0, (pattern, key, twin[key])
        assert twin["p50_s"] <= twin["p99_s"]
        assert isinstance(entry["replicas_needed"], int) and entry["replicas_needed"] >= 1
        assert "real" not in entry  # mode=sim: the twin only
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert (out / "figures" / "patterns.png").stat().st_size > 0
    table = format_patterns_table(doc)
    assert all(f"  {p}" in table for p in PATTERNS)


def test_every_pattern_serves_the_same_demand(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    cfg, out, doc = twin_run
    schedule = demand(cfg)
    assert doc["demand"]["requests"] == len(schedule)
    for pattern in PATTERNS:
        frame = _requests(out, pattern).sort_values("request_id")
        np.testing.assert_array_equal(np.sort(frame["arrival_s"].to_numpy()), schedule.times_s)
        assert doc["patterns"][pattern]["twin"]["requests"] == len(schedule)


def test_async_latency_is_its_ready_time_plus_the_wait_for_a_poll(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    _, out, doc = twin_run
    frame = _requests(out, "async")
    ok = frame[frame["status"] == "ok"]
    ready = ok["ready_s"].to_numpy() - ok["arrival_s"].to_numpy()
    observed = ok["latency_s"].to_numpy()
    assert np.isfinite(ready).all()
    assert (observed > ready).all()  # a client learns of a result at its next poll, after it is ready
    assert (ok["polls"].to_numpy() >= 1).all()
    twin = doc["patterns"]["async"]["twin"]
    assert twin["p50_s"] > twin["ready_p50_s"] and twin["p99_s"] > twin["ready_p99_s"]
    assert twin["polls_per_request"] >= 1


def test_batch_latency_is_the_wait_for_the_period_plus_the_job(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    cfg, out, doc = twin_run
    frame = _requests(out, "batch")
    completion = doc["patterns"]["batch"]["twin"]["completion_s"]
    np.testing.assert_allclose(frame["latency_s"], cfg.duration_s - frame["arrival_s"] + completion)
    np.testing.assert_allclose(batch_latency_s(np.array([0.0, cfg.duration_s]), cfg.duration_s, completion),
                               [cfg.duration_s + completion, completion])
    assert frame["latency_s"].min() >= completion


def test_batch_outruns_sync_at_the_same_replica_count(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    """By construction of the service model: a call of B rows takes base + per_item x B, so a
    row costs base / B + per_item, less in the job's large calls than in sync's small batches;
    and sync cannot answer more than its replicas' capacity."""
    cfg, _, doc = twin_run
    assert cfg.batch.parallelism == cfg.replicas
    assert cfg.batch.batch_size > cfg.batching.max_batch_size and cfg.service.base_s > 0
    sync, batch = doc["patterns"]["sync"]["twin"], doc["patterns"]["batch"]["twin"]
    assert sync["throughput_rps"] <= capacity_rps(cfg) * (1 + 1e-9) < batch["throughput_rps"]


def test_costs_are_price_times_replicas_needed_times_the_time_paid(twin_run: tuple[ServelabConfig, Path, dict[str, Any]]) -> None:
    cfg, _, doc = twin_run
    price = cfg.batch.price_per_replica_hour
    for pattern in ("sync", "async"):
        entry = doc["patterns"][pattern]
        expected = price * entry["replicas_needed"] * cfg.duration_s / 3600 / (entry["twin"]["answered"] / 1000)
        assert entry["twin"]["cost_per_1000"] == pytest.approx(expected)
    needed = doc["patterns"]["batch"]["replicas_needed"]
    job = predict(batch_job(cfg, doc["demand"]["requests"], needed), service_job_costs(cfg))
    assert doc["patterns"]["batch"]["twin"]["cost_per_1000"] == pytest.approx(cost_per_1000(price, needed, job.completion_s, job.rows))


# --- replicas needed: each pattern's rule ----------------------------------------------------------------

def _meets_target(cfg: ServelabConfig, replicas: int) -> bool:
    _, summary, _ = simulate(dataclasses.replace(cfg, replicas=replicas, pattern="sync"))
    counts = summary["status_counts"]
    return summary["latency_s"]["p99"] <= cfg.patterns.p99_target_s and counts["shed"] == 0 and counts["timeout"] == 0


def test_sync_needs_the_fewest_replicas_that_keep_p99_under_the_target() -> None:
    cfg = preset("arrival.rate=300", "timeout_s=1")
    needed = sync_replicas_needed(cfg)
    assert needed is not None and needed > 1
    assert _meets_target(cfg, needed) and not _meets_target(cfg, needed - 1)
    assert sync_replicas_needed(dataclasses.replace(cfg, patterns=dataclasses.replace(cfg.patterns, max_replicas=needed - 1))) is None


@pytest.mark.parametrize("instances", ["concurrency=1", "concurrency=4"])
def test_async_needs_the_fewest_workers_under_the_utilisation_bound(instances: str) -> None:
    """A worker runs one batch at a time whatever the replicas' concurrency: its capacity is the
    one the async summary quotes (full batches and their Redis round trip)."""
    cfg = preset("arrival.rate=300", instances)
    needed = async_workers_needed(cfg)
    assert needed is not None
    rate = len(demand(cfg)) / cfg.duration_s
    b = cfg.async_jobs.batch_size
    per_worker = b / (cfg.service.base_s + cfg.service.per_item_s * b + cfg.async_jobs.batch_overhead_s)
    assert per_worker == pytest.approx(async_capacity_rps(dataclasses.replace(cfg, async_jobs=dataclasses.replace(cfg.async_jobs, workers=1))))
    assert rate / (needed * per_worker) <= cfg.patterns.max_utilisation
    assert needed == 1 or rate / ((needed - 1) * per_worker) > cfg.patterns.max_utilisation


def test_batch_needs_the_fewest_workers_that_finish_within_the_period() -> None:
    cfg = preset("arrival.rate=2000", "duration_s=3", "batch.chunk_rows=64")
    rows = len(demand(cfg))
    costs = service_job_costs(cfg)
    needed, prediction = batch_parallelism_needed(cfg, rows, costs)
    assert needed is not None and needed > 1 and prediction is not None
    assert prediction.completion_s <= cfg.duration_s
    assert predict(batch_job(cfg, rows, needed - 1), costs).completion_s > cfg.duration_s


def test_a_load_no_allowed_count_can_carry_is_reported_as_such(tmp_path: Path) -> None:
    cfg = preset("arrival.rate=300", "patterns.max_replicas=1", "patterns.run=[sync]")
    assert run(cfg, tmp_path) == 0
    doc = json.loads((tmp_path / "patterns.json").read_text())
    entry = doc["patterns"]["sync"]
    assert entry["replicas_needed"] is None and entry["twin"]["cost_per_1000"] is None
    assert entry["twin"]["cost_per_1000_as_run"] is not None
    row = format_patterns_table(doc).splitlines()[-1].split()
    assert row[0] == "sync" and row.count("-") >= 2  # replicas needed and cost: none


# --- compare: the twin against the real stack per pattern --------------------------------------------------

def test_comparison_judges_each_figure_against_its_fidelity_target() -> None:
    twin = {"p50_s": 0.0104, "p99_s": 0.030, "throughput_rps": 100.0}
    real = {"p50_s": 0.0100, "p99_s": 0.020, "throughput_rps": 100.0}
    result = comparison(twin, real)
    verdicts = {k: m["within_target"] for k, m in result["metrics"].items()}
    assert verdicts == {"p50_s": True, "p99_s": False, "throughput_rps": True}
    assert result["all_within_target"] is False
    doc = {"patterns": {"sync": {"comparison": result}}}
    assert [row[-1] for row in compare_rows(doc)] == ["ok", "MISS", "ok"]


# --- bad input: one line naming the key, exit 2, before anything runs --------------------------------------

@pytest.mark.parametrize("override, key", [
    ("patterns.run=[sync,streaming]", "patterns.run"),
    ("patterns.run=[sync,sync]", "patterns.run"),
    ("mode=real", "patterns.run"),
    ("patterns.p99_target_s=0", "patterns.p99_target_s"),
    ("patterns.max_utilisation=1.5", "patterns.max_utilisation"),
    ("patterns.max_replicas=0", "patterns.max_replicas"),
    ("batch.input=/tmp/x.parquet", "batch.input"),
    ("batch.parallelism=0", "batch.parallelism"),
    ("features.store=embedded", "features.store"),
    ("loadgen.protocol=grpc", "loadgen.protocol"),
])
def test_bad_preset_keys_are_refused_in_one_line(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        preset(override)
    assert info.value.key == key
    assert len(str(info.value).splitlines()) == 1


def test_a_closed_loop_demand_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        preset("arrival.kind=closed")
    assert info.value.key in ("arrival.kind", "pattern")


def test_console_script_runs_the_preset_and_refuses_an_unknown_pattern(tmp_path: Path) -> None:
    assert_config_error(servelab(*SHORT, "patterns.run=[sync,streaming]", cwd=tmp_path), "patterns.run")
    out = tmp_path / "run"
    result = servelab(*SHORT, "duration_s=3", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "serving patterns:" in result.stdout and (out / "patterns.json").is_file()


# --- mode=compare on the real stack (slow) -----------------------------------------------------------------

SMALL_PROFILE = Path(__file__).resolve().parent / "data" / "profile_quickstart_small.json"


@pytest.mark.slow
@pytest.mark.real
def test_compare_measures_every_pattern_on_the_demand_the_twin_served(tmp_path: Path) -> None:
    """A stored profile (the quickstart's device, as the preset's) calibrates the twin, so only
    the three measurements run: each pattern's twin and real rows, the same schedule on both
    sides, and a verdict per figure."""
    out = tmp_path / "cmp"
    result = servelab(*SHORT, "duration_s=4", "mode=compare", f"overhead.profile={SMALL_PROFILE}", "progress=false",
                      f"out_dir={out}", cwd=tmp_path)
    assert result.returncode in (0, 3), result.stdout[-2000:] + result.stderr[-2000:]  # 3: a busy box's send lag
    doc = json.loads((out / "patterns.json").read_text())
    for pattern in PATTERNS:
        entry = doc["patterns"][pattern]
        for side in ("twin", "real"):
            assert all(math.isfinite(entry[side][k]) for k in ("p50_s", "p99_s", "throughput_rps")), (pattern, side)
        assert {m["within_target"] for m in entry["comparison"]["metrics"].values()} <= {True, False}
        twin, real = (pd.read_parquet(out / pattern / d / "requests.parquet") for d in ("sim", "real"))
        np.testing.assert_array_equal(np.sort(twin["arrival_s"].to_numpy()), np.sort(real["arrival_s"].to_numpy()))
    # each side's summary quotes the capacity of what serves: the async row the workers', on both sides
    sim_async, real_async_summary = (json.loads((out / "async" / d / "summary.json").read_text()) for d in ("sim", "real"))
    assert real_async_summary["capacity_rps"] == pytest.approx(sim_async["capacity_rps"], rel=0.01)
    real_async = pd.read_parquet(out / "async" / "real" / "requests.parquet")
    ok = real_async[real_async["status"] == "ok"]
    assert (ok["latency_s"] > ok["ready_s"] - ok["arrival_s"]).all() and (ok["polls"] >= 1).all()
    assert "twin against the real stack, per pattern:" in result.stdout
