"""The wide fidelity benchmark's harness, without a stack: its Latin-hypercube design, that every
cell is a config the CLI accepts, and that every cell is judged and shown, valid or not."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scenarios.bench_fidelity import (FACTORS, QUEUE_BATCHES, Timing, design, failed_record, format_table, judge,
                                      plan_cell, repeat_verdict, summarise)
from scenarios.cli import preflight
from sim.profile import load_profile

PROFILE = str(Path(__file__).parent / "data" / "profile_quickstart_small.json")


def _level_counts(cells: list[Any]) -> dict[str, Counter[Any]]:
    return {name: Counter(getattr(c, name) for c in cells) for name in FACTORS}


def test_the_design_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    assert design(30, 7) == design(30, 7)
    assert design(30, 7) != design(30, 8)


@pytest.mark.parametrize("cells,seed", [(30, 0), (30, 11), (5, 3), (12, 1)])
def test_every_level_of_every_factor_appears_in_shares_that_differ_by_at_most_one(cells: int, seed: int) -> None:
    for name, counts in _level_counts(design(cells, seed)).items():
        assert set(counts) == set(FACTORS[name]), name
        assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)


def test_fewer_cells_than_a_factors_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 5 cells"):
        design(4, 0)


def test_every_cell_of_the_default_design_passes_the_config_check_as_it_will_run() -> None:
    profile = load_profile(PROFILE)
    timing = Timing(warmup_s=2.0, duration_s=10.0, min_requests=2000, max_duration_s=25.0)
    plans = []
    for cell in design(30, 0):
        plan = plan_cell(cell, seed=cell.index, profile_path=PROFILE, profile=profile, timing=timing)
        plans.append(plan)
        cfg = plan.cfg  # preflight() validated it: the schema's ranges and the profile it names
        assert cfg.mode == "compare" and cfg.compare.load_fractions == [] and cfg.overhead.profile == PROFILE
        assert (cfg.replicas, cfg.concurrency, cfg.lb.policy) == (cell.replicas, cell.concurrency, cell.lb)
        assert cfg.service.base_s == pytest.approx(cell.device_s) and cfg.service.per_item_s == pytest.approx(cell.device_s / 5)
        assert cfg.service.kind == cell.spread.kind and (cell.spread.kind != "lognormal" or cfg.service.cv == cell.spread.cv)
        assert cfg.batching.max_batch_size == cell.batching.max_batch_size
        bounded = QUEUE_BATCHES * cell.batching.max_batch_size * cell.concurrency
        assert cfg.batching.max_queue_size == (bounded if cell.load > 1 else 0)
        assert cfg.arrival.kind == "poisson" and cfg.arrival.rate == pytest.approx(cell.load * plan.capacity.rps, abs=0.05)
        assert 10.0 <= cfg.duration_s - cfg.warmup_s <= 25.0
    # the overrides recorded for a cell compose to the config it runs: the fastest, a bounded one,
    # and one whose duration is stretched for its low rate (the rate and duration spelt exactly)
    stretched = next(p for p in plans if 10.0 < p.measured_s < 25.0)
    bounded = next(p for p in plans if p.cell.load > 1)
    for plan in (max(plans, key=lambda p: p.rate), bounded, stretched):
        assert preflight(plan.overrides) == plan.cfg


def test_a_cell_at_a_low_rate_measures_longer_within_the_bounds() -> None:
    timing = Timing(warmup_s=3.0, duration_s=15.0, min_requests=3000, max_duration_s=30.0)
    assert timing.measured_s(1000.0) == 15.0
    assert timing.measured_s(150.0) == 20.0
    assert timing.measured_s(10.0) == 30.0


def _summary(p50: float, p99: float, throughput: float, **extra: Any) -> dict[str, Any]:
    return {"latency_s": {"p50": p50, "p99": p99}, "throughput": throughput, **extra}


def test_a_cell_misses_the_targets_it_misses_and_shed_comes_from_status_counts_when_missing() -> None:
    predicted = _summary(0.0106, 0.0300, 99.0, status_counts={"ok": 70, "shed": 30})
    measured = _summary(0.0100, 0.0280, 100.0, shed_fraction=0.27, valid=True, warnings=[])
    verdict = judge(predicted, measured)
    assert verdict["status"] == "ok"
    assert verdict["errors"]["latency_p50"] == pytest.approx(0.06) and verdict["within"]["latency_p50"] is False
    assert verdict["within"]["latency_p99"] is True and verdict["within"]["throughput"] is True
    assert verdict["errors"]["shed_pp"] == pytest.approx(3.0) and verdict["within"]["shed_pp"] is False
    assert verdict["meets_all"] is False


def _record(index: int, verdict: dict[str, Any], binds: str = "host") -> dict[str, Any]:
    settings = {"device_base_s": 0.005, "device_per_item_s": 0.001, "spread": "cv 0.1", "replicas": 2,
                "concurrency": 1, "max_batch_size": 4, "max_queue_delay_s": 0.002, "lb": "p2c", "load": 0.6,
                "max_queue_size": 0}
    return {"index": index, "settings": settings, "rate": 600.0, "capacity_rps": 1000.0, "binds": binds, **verdict}


def test_an_invalid_cell_is_counted_and_shown_with_its_reason_never_dropped() -> None:
    good = judge(_summary(0.010, 0.020, 100.0, shed_fraction=0.0), _summary(0.010, 0.020, 100.0, shed_fraction=0.0, valid=True))
    lagging = _summary(0.012, 0.090, 100.0, shed_fraction=0.0, valid=False,
                       warnings=["load generator fell behind: send lag p99 9.00 ms > loadgen.max_lag_p99_s 5.00 ms"])
    invalid = judge(_summary(0.010, 0.020, 100.0, shed_fraction=0.0), lagging)
    crashed = failed_record(RuntimeError("replica 1 exited\nbefore it was ready"))
    records = [_record(1, good, "device"), _record(2, invalid), _record(3, crashed)]
    summary = summarise(records)
    assert (summary["cells"], summary["valid"], summary["met_all"], summary["invalid"], summary["failed"]) == (3, 1, 1, 1, 1)
    assert summary["binds"] == {"device": 1, "host": 2}
    assert invalid["meets_all"] is None and invalid["errors"]["latency_p99"] == pytest.approx(-0.7778, abs=1e-4)
    table = format_table(records)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == 3  # one row per cell, valid or not
    assert "**INVALID** [1]" in rows[1] and "-77.8%" in rows[1] and "✗" not in rows[1]  # shown, not judged
    assert "**FAILED** [2]" in rows[2]
    assert "[1] cell 2: load generator fell behind" in table
    assert "[2] cell 3: RuntimeError: replica 1 exited before it was ready" in table
    assert "1 of 1 valid cells meet every target" in table and "1 invalid, 1 failed" in table


def test_a_figure_missing_on_one_side_misses_its_target_rather_than_passing_it() -> None:
    verdict = judge(_summary(0.010, 0.020, 50.0, shed_fraction=0.0),
                    _summary(None, None, 0.0, shed_fraction=0.0, valid=True))  # no answer measured at all
    assert verdict["errors"]["latency_p50"] is None and verdict["within"]["latency_p50"] is False
    assert verdict["within"]["throughput"] is False  # 50 req/s against none: no tolerance relative to nothing
    assert verdict["meets_all"] is False


def test_a_second_real_measurement_is_judged_against_the_first_and_counted_only_where_both_stand() -> None:
    first = _summary(0.010, 0.020, 100.0, shed_fraction=0.0, valid=True)
    records = []
    for index, again in enumerate([_summary(0.0102, 0.021, 100.0, shed_fraction=0.0, valid=True),    # agrees
                                   _summary(0.0110, 0.020, 100.0, shed_fraction=0.0, valid=True),    # p50 +10%
                                   _summary(0.0100, 0.020, 100.0, shed_fraction=0.0, valid=False)],  # not standing
                                  start=1):
        verdict = judge(first, first)
        verdict["repeat"] = repeat_verdict(again, first)
        records.append(_record(index, verdict))
    summary = summarise(records)
    assert (summary["repeat_valid"], summary["repeat_met_all"]) == (2, 1)  # the third pair does not stand
    assert summary["repeat_per_target"]["latency_p50"] == 1
    table = format_table(records)
    assert "real again: p50 / p99 error" in table
    assert "**+10.0%** ✗" in table.splitlines()[3]
    assert "1 of 2 cells agree within every target" in table


def test_repredict_judges_the_stored_measurement_against_the_twin_and_keeps_the_second_one(tmp_path: Path) -> None:
    import json
    import shlex

    from scenarios.bench_fidelity import repredict
    from sim.files import write_json

    timing = Timing(warmup_s=1.0, duration_s=2.0, min_requests=10, max_duration_s=2.0)
    plan = plan_cell(design(30, 0)[1], seed=2, profile_path=PROFILE, profile=load_profile(PROFILE), timing=timing)
    run_dir = tmp_path / "cells" / "02"
    measured = _summary(0.5, 0.9, plan.rate, shed_fraction=0.0, valid=True)  # far from any twin's figure
    write_json(run_dir / "real" / "summary.json", measured)
    repeat = repeat_verdict(measured, measured)
    record = {"index": 2, "settings": plan.cell.levels(), "rate": plan.rate, "capacity_rps": plan.capacity.rps,
              "binds": plan.capacity.binds, "status": "ok", "reasons": [], "notes": [], "figures": {}, "errors": {},
              "within": {}, "meets_all": True, "run_dir": str(run_dir), "repeat": repeat,
              "command": "servelab " + " ".join(shlex.quote(o) for o in plan.overrides) + f" out_dir={run_dir}"}
    write_json(tmp_path / "results.json", {"cells": [record], "summary": {}})
    assert repredict(tmp_path) == 0
    cell = json.loads((tmp_path / "results.json").read_text())["cells"][0]
    assert cell["figures"]["latency_p50"]["measured"] == 0.5 and cell["figures"]["latency_p50"]["predicted"] < 0.5
    assert cell["meets_all"] is False and cell["repeat"] == repeat
    assert (tmp_path / "table.md").read_text().count("\n| 2 |") == 1
