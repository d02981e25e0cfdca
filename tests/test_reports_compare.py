"""reports.compare: the error convention, target flags, tables, and reading a run back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reports.compare import (
    DEFAULT_TARGETS,
    METRICS,
    Run,
    compare_metric,
    compare_summaries,
    format_comparison_markdown,
    format_comparison_table,
    load_run,
)
from tests.test_reports_support import twin_runs


def summary(p50: float, p99: float, rate: float, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "latency_s": {"p50": p50, "p90": p50 * 1.5, "p99": p99, "mean": p50 * 1.1},
        "throughput": rate,
        "batch_size_mean_per_batch": 2.0,
        "batch_size_mean_per_request": 2.5,
        "queue_s_mean": 0.002,
        "shed_fraction": 0.0,
    }
    base.update(extra)
    return base


def test_rel_error_is_relative_to_measured_and_signed() -> None:
    c = compare_summaries(summary(0.0105, 0.022, 98.0), summary(0.010, 0.020, 100.0))
    m = c["metrics"]
    assert m["latency_p50"]["rel_error"] == pytest.approx(0.05)
    assert m["latency_p99"]["rel_error"] == pytest.approx(0.10)
    assert m["throughput"]["rel_error"] == pytest.approx(-0.02)
    assert m["latency_p50"]["abs_error"] == pytest.approx(0.0005)
    assert m["latency_p50"]["predicted"] == 0.0105 and m["latency_p50"]["measured"] == 0.010


def test_within_target_on_the_boundary_and_past_it() -> None:
    met = compare_summaries(summary(0.0105, 0.022, 98.0), summary(0.010, 0.020, 100.0))
    assert met["within_target"] == {"latency_p50": True, "latency_p99": True, "throughput": True}
    assert met["all_within_target"] is True
    missed = compare_summaries(summary(0.0111, 0.0175, 97.0), summary(0.010, 0.020, 100.0))
    assert missed["within_target"] == {"latency_p50": False, "latency_p99": False, "throughput": False}
    assert missed["metrics"]["latency_p50"]["missed_by"] == pytest.approx(0.06)
    assert missed["metrics"]["latency_p99"]["missed_by"] == pytest.approx(0.025)
    assert missed["all_within_target"] is False
    # untargeted metrics carry no verdict
    assert missed["metrics"]["latency_p90"]["within_target"] is None


def test_targets_are_a_parameter() -> None:
    c = compare_summaries(summary(0.0111, 0.02, 100.0), summary(0.010, 0.02, 100.0),
                          targets={"latency_p50": 0.2, "batch_size_mean_per_batch": 0.0})
    assert c["targets"] == {"latency_p50": 0.2, "batch_size_mean_per_batch": 0.0}
    assert c["within_target"] == {"latency_p50": True, "batch_size_mean_per_batch": True}
    assert DEFAULT_TARGETS == {"latency_p50": 0.05, "latency_p99": 0.10, "throughput": 0.02}
    with pytest.raises(ValueError, match="unknown metrics"):
        compare_summaries(summary(1, 1, 1), summary(1, 1, 1), targets={"p42": 0.1})


def test_the_table_compares_throughput_and_both_batch_size_means() -> None:
    """Throughput is the summary's completions-per-second figure (it stays at capacity under
    overload, so its error is about saturation); the batch size row a server's histogram can
    check is the per-batch mean, and the per-request one is shown beside it."""
    c = compare_summaries(summary(0.01, 0.02, 440.0), summary(0.01, 0.02, 400.0, batch_size_mean_per_batch=2.5))
    m = c["metrics"]
    assert m["throughput"]["predicted"] == 440.0 and m["throughput"]["rel_error"] == pytest.approx(0.10)
    assert c["within_target"]["throughput"] is False
    assert m["batch_size_mean_per_batch"]["rel_error"] == pytest.approx(-0.2)
    assert m["batch_size_mean_per_request"]["rel_error"] == 0.0
    assert {"achieved_rate", "mean_batch_size"}.isdisjoint(m)
    text = format_comparison_table(c)
    assert "batch size, mean per batch" in text and "batch size, mean per request" in text


def test_measured_zero_and_missing_values() -> None:
    assert compare_metric(0.0, 0.0, 0.05)["rel_error"] == 0.0
    assert compare_metric(0.0, 0.0, 0.05)["within_target"] is True
    e = compare_metric(0.01, 0.0, 0.05)
    assert e["rel_error"] is None and e["rel_error_undefined"] is True
    assert e["abs_error"] == pytest.approx(0.01) and e["within_target"] is False
    for x, y in ((None, 1.0), (1.0, None), (float("nan"), 1.0), (1.0, float("inf"))):
        e = compare_metric(x, y, 0.05)
        assert e["rel_error"] is None and e["within_target"] is None
    # a side with no answered requests: no crash, the target is reported as having no data
    empty = {"latency_s": {"p50": None, "p99": None, "mean": None}, "throughput": 0.0, "shed_fraction": 1.0}
    c = compare_summaries(empty, summary(0.01, 0.02, 100.0))
    assert c["within_target"]["latency_p50"] is None and c["all_within_target"] is False
    assert any("no value" in w for w in c["warnings"])
    json.dumps(c, allow_nan=False)  # comparison.json is strict JSON


def test_invalid_measurement_is_a_warning() -> None:
    measured = summary(0.01, 0.02, 100.0, valid=False)
    c = compare_summaries(summary(0.01, 0.02, 100.0), measured)
    assert any(w.startswith("measured:") and "invalid" in w for w in c["warnings"])
    measured["warnings"] = ["send lag p99 9 ms over the limit"]
    c = compare_summaries(summary(0.01, 0.02, 100.0), measured)
    assert c["warnings"] == ["measured: send lag p99 9 ms over the limit"]
    assert "WARNING: measured: send lag" in format_comparison_table(c)


def test_tables_name_every_metric() -> None:
    c = compare_summaries(summary(0.0111, 0.02, 100.0), summary(0.010, 0.02, 100.0))
    text = format_comparison_table(c)
    md = format_comparison_markdown(c)
    for m in METRICS:
        assert m.label in text and f"| {m.label} |" in md
    assert "11.10 ms" in text and "+11.0%" in text and "MISSED by 6.0 pp" in text
    header, _, p50_row = text.splitlines()[:3]
    assert p50_row.index("MISSED") == header.index("verdict")  # fixed-width columns line up
    assert md.splitlines()[1].startswith("|---|")


def test_twin_runs_compare_and_load(tmp_path: Path) -> None:
    sim, real = twin_runs(tmp_path)
    assert isinstance(sim, Run) and sim.label == "sim" and sim.backend.startswith("twin:")
    assert len(sim.requests) > 100 and not sim.timeseries.empty and sim.config["seed"] == 0
    assert real.config["seed"] == 1 and sim.missing == []
    c = compare_summaries(sim.summary, real.summary)
    for key, entry in c["metrics"].items():
        assert entry["predicted"] is not None and entry["measured"] is not None, key
        if entry["measured"]:
            assert entry["rel_error"] == pytest.approx((entry["predicted"] - entry["measured"]) / entry["measured"])
    json.dumps(c, allow_nan=False)


def test_load_run_tolerates_a_partial_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="summary.json"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(summary(0.01, 0.02, 100.0)))
    run = load_run(tmp_path)
    assert run.requests.empty and "request_id" in run.requests
    assert set(run.missing) == {"requests.parquet", "timeseries.parquet", "config.yaml"}
    assert any("missing" in w for w in run.warnings)
