"""reports.experiment: an A/B experiment's figures, report section and comparison rows, read
from synthetic experiment.json / experiment.parquet files built here from the schema."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from reports.compare import comparison_rows, comparison_verdict, compare_summaries, format_comparison_table
from reports.experiment import (EXPERIMENT_JSON, EXPERIMENT_PARQUET, METRICS_PNG, SEQUENTIAL_PNG, SPLIT_PNG,
                                add_experiment_comparison, experiment_compare_section, experiment_section,
                                verdict_test, write_experiment_compare_figures,
                                write_experiment_figures)
from reports.report import write_report, write_run_report
from reports.rollout import VERDICT_COLORS
from tests.test_reports_support import PNG_SIGNATURE, twin_runs

SPRT = "mixture SPRT (always valid)"


def _test(metric: str, test: str, estimate: float, half_width: float, p: float, baseline: float) -> dict[str, Any]:
    return {"metric": metric, "test": test, "estimate": estimate, "ci_low": estimate - half_width,
            "ci_high": estimate + half_width, "p_value": p, "alpha": 0.05, "baseline": baseline, "statistic": estimate / half_width * 2,
            "relative_lift": estimate / baseline, "significant": p <= 0.05}


def experiment_doc(*, design_kind: str = "sequential", stopped_early: bool = False, decision: str = "treatment_better",
                   accuracy_effect: float = 0.021, srm_mismatch: bool = False) -> dict[str, Any]:
    """experiment.json as the engine writes it (schema of the A/B issue), v2 more accurate and slower."""
    end = 12.0 if stopped_early else 20.0
    fixed_accuracy, fixed_latency = "two-proportion z", "Welch t"
    verdict_tests = [SPRT] if design_kind == "sequential" else [fixed_accuracy, fixed_latency]
    accuracy_test = SPRT if design_kind == "sequential" else fixed_accuracy
    latency_test = SPRT if design_kind == "sequential" else fixed_latency
    headline = {"treatment_better": "2 better than 1", "no_detectable_difference": "no detectable difference between 1 and 2",
                "control_better": "1 better than 2"}.get(decision, decision)
    return {
        "control": "1", "treatment": "2", "variants": ["1", "2"], "allocation": [0.5, 0.5], "unit": "request",
        "alpha": 0.05, "power": 0.8, "design_kind": design_kind, "window_s": 2.0, "start_s": 2.0, "planned_end_s": 20.0,
        "end_s": end, "stopped_early": stopped_early,
        "stop_reason": "accuracy: always-valid p 0.003 <= alpha 0.05 at look 5" if stopped_early else None,
        "design": {"rate_rps": 200.0, "source": "twin pilot run (seed 1)",
                   "metrics": [{"metric": "accuracy", "baseline": 0.962, "sd": None, "mde": 0.02,
                                "fixed": {"n_control": 1137, "n_treatment": 1137, "duration_s": 11.4},
                                "sequential": {"n_control": 2410, "n_treatment": 2410, "duration_s": 24.1}},
                               {"metric": "latency_s", "baseline": 0.0031, "sd": 0.0012, "mde": 0.0005,
                                "fixed": {"n_control": 91, "n_treatment": 91, "duration_s": 0.9},
                                "sequential": {"n_control": 190, "n_treatment": 190, "duration_s": 1.9}}],
                   "duration_needed_s": 26.1, "run_s": 20.0, "enough": False},
        "estimates": [{"metric": "accuracy", "variant": "1", "n": 1040, "value": 0.961, "ci_low": 0.947, "ci_high": 0.972},
                      {"metric": "accuracy", "variant": "2", "n": 1010, "value": 0.982, "ci_low": 0.972, "ci_high": 0.989},
                      {"metric": "latency_s", "variant": "1", "n": 1040, "value": 0.0031, "ci_low": 0.0030, "ci_high": 0.0032},
                      {"metric": "latency_s", "variant": "2", "n": 1010, "value": 0.0036, "ci_low": 0.0035, "ci_high": 0.0037}],
        "tests": [_test("accuracy", SPRT, accuracy_effect, 0.017, 0.003, 0.961),
                  _test("accuracy", fixed_accuracy, accuracy_effect, 0.012, 0.001, 0.961),
                  _test("latency_s", SPRT, 0.0005, 0.0003, 0.01, 0.0031),
                  _test("latency_s", fixed_latency, 0.0005, 0.0002, 0.001, 0.0031),
                  _test("latency_s", "Mann-Whitney U", 0.0004, 0.0002, 0.001, 0.0031)],
        "verdict_tests": verdict_tests,
        "srm": {"unit": "request", "counts": [1300, 750] if srm_mismatch else [1050, 1010],
                "expected": [1025.0, 1025.0] if srm_mismatch else [1030.0, 1030.0],
                "p_value": 1e-30 if srm_mismatch else 0.38, "threshold": 0.001, "mismatch": srm_mismatch},
        "guardrails": [{"metric": "p99_s", "max": 0.05, "breaches": []}],
        "verdict": {"decision": decision, "headline": headline,
                    "lines": [headline, "  2 better on accuracy by 0.021 (2 - 1 = +0.021)", "  guardrails held: p99_s <= 0.05 s"],
                    "metrics": [{"metric": "accuracy", "winner": "treatment", "test": accuracy_test, "estimate": accuracy_effect,
                                 "ci_low": accuracy_effect - 0.017, "ci_high": accuracy_effect + 0.017, "p_value": 0.003},
                                {"metric": "latency_s", "winner": "control", "test": latency_test, "estimate": 0.0005,
                                 "ci_low": 0.0002, "ci_high": 0.0008, "p_value": 0.01}]},
    }


def experiment_looks(doc: dict[str, Any], burn_in: int = 2, reject_at: int | None = 5) -> pd.DataFrame:
    """experiment.parquet: per look, metric and variant, cumulative; +-inf and NaN during the burn-in."""
    rows = []
    looks = int((doc["end_s"] - doc["start_s"]) / doc["window_s"])
    for look in range(1, looks + 1):
        t = doc["start_s"] + look * doc["window_s"]
        for metric, (a, b) in {"accuracy": (0.96, 0.98), "latency_s": (0.0031, 0.0036)}.items():
            burning = look <= burn_in
            z = math.nan if burning else 0.8 * look
            boundary = math.inf if burning else 2.5 + 1.0 / look
            for variant, role, value in (("1", "control", a), ("2", "treatment", b)):
                n = 0 if look == 1 and variant == "2" else 100 * look  # no treatment request yet: NaN estimates
                value = math.nan if n == 0 else value
                rows.append({"look": look, "window_start_s": doc["start_s"], "window_end_s": t, "metric": metric,
                             "variant": variant, "role": role, "n": n, "value": value, "ci_low": value * 0.98,
                             "ci_high": value * 1.02, "effect": b - a,
                             "effect_ci_low": -math.inf if burning else (b - a) * 0.5,
                             "effect_ci_high": math.inf if burning else (b - a) * 1.5,
                             "p_value": 1.0 if burning else 0.5 / look ** 2, "z": z, "z_boundary": boundary,
                             "rejected": reject_at is not None and look >= reject_at, "assigned": n + (3 if variant == "1" else 0),
                             "expected_share": 0.5})
    return pd.DataFrame(rows)


def write_experiment(run_dir: Path, doc: dict[str, Any], looks: pd.DataFrame | None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / EXPERIMENT_JSON).write_text(json.dumps(doc))
    if looks is not None:
        looks.to_parquet(run_dir / EXPERIMENT_PARQUET, index=False)
    return run_dir


def ab_section(html: str) -> str:
    """The report's A/B section: from its heading to the next one of its level."""
    start = html.index('id="ab"')
    end = html.find("<h2", start)
    return html[start:] if end < 0 else html[start:end]


def _pngs(paths: dict[str, Path]) -> set[str]:
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in paths.values())
    return {p.name for p in paths.values()}


# -- figures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("design_kind", ["sequential", "fixed"])
@pytest.mark.parametrize("stopped_early", [False, True])
def test_the_three_figures_are_written_for_each_design_and_an_early_stop(tmp_path: Path, design_kind: str,
                                                                         stopped_early: bool) -> None:
    doc = experiment_doc(design_kind=design_kind, stopped_early=stopped_early)
    figures = write_experiment_figures(tmp_path, doc, experiment_looks(doc, reject_at=5 if stopped_early else None))
    assert _pngs(figures) == {METRICS_PNG, SEQUENTIAL_PNG, SPLIT_PNG}


def test_no_parquet_no_figures_and_the_section_says_so(tmp_path: Path) -> None:
    run_dir = write_experiment(tmp_path / "run", experiment_doc(), None)
    assert write_experiment_figures(tmp_path / "figs", experiment_doc(), None) == {}
    section = experiment_section(tmp_path / "figs", run_dir)
    assert section is not None and section.figures == {}
    assert any(f"{EXPERIMENT_PARQUET} missing" in p for p in section.paragraphs)
    assert not (tmp_path / "figs").exists() or not list((tmp_path / "figs").iterdir())


def test_side_by_side_figures_need_both_sides_looks(tmp_path: Path) -> None:
    doc = experiment_doc()
    both = write_experiment_compare_figures(tmp_path, {"twin": (doc, experiment_looks(doc)), "real": (doc, experiment_looks(doc))})
    assert _pngs(both) == {"experiment_metrics_compare.png", "experiment_sequential_compare.png", "experiment_split_compare.png"}
    assert write_experiment_compare_figures(tmp_path / "none", {"twin": (doc, experiment_looks(doc)), "real": (doc, None)}) == {}


def test_the_experiment_controller_s_conclusion_has_a_colour_of_its_own() -> None:
    assert VERDICT_COLORS["concluded"] not in {VERDICT_COLORS["promoted"], VERDICT_COLORS["aborted"]}


# -- the run report's A/B section ------------------------------------------------------------------


def test_a_run_report_has_the_ab_section_with_verdict_design_tests_and_figures(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    doc = experiment_doc(stopped_early=True)
    write_experiment(sim.path, doc, experiment_looks(doc))
    html_path, md_path = write_run_report(tmp_path / "report", sim)
    html, md = html_path.read_text(), md_path.read_text()
    section = ab_section(html)
    assert "2 better than 1" in section
    assert "<td>accuracy</td><td>96.20%</td>" in section  # design row: metric, baseline
    assert "1,137 / 1,137" in section and "2,410 / 2,410" in section  # n per variant, fixed and sequential
    assert "TOO SHORT" in section and "26.1 s" in section and "20.0 s" in section  # needed against run
    assert f"{SPRT} (verdict)" in section and "Mann-Whitney U" in section
    assert "stopped early at 12.0 s" in section and "sample ratio as planned" in section and "guardrails held" in section
    assert section.count("data:image/png;base64,") == 3
    assert html.count("data:image/png;base64,") == 5  # the run's two, the experiment's three
    assert "## A/B experiment" in md and "**2 better than 1**" in md and "| accuracy | 96.20% |" in md
    for name in (METRICS_PNG, SEQUENTIAL_PNG, SPLIT_PNG):
        link = re.search(rf"\]\(([^)]*{name})\)", md)
        assert link is not None and (md_path.parent / link.group(1)).read_bytes()[:8] == PNG_SIGNATURE


def test_a_run_without_an_experiment_has_no_ab_section(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    html_path, md_path = write_run_report(tmp_path / "report", sim)
    assert 'id="ab"' not in html_path.read_text() and "A/B" not in md_path.read_text()


def test_a_sample_ratio_mismatch_is_a_warning_before_any_number(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    doc = experiment_doc(srm_mismatch=True)
    write_experiment(sim.path, doc, experiment_looks(doc))
    html = write_run_report(tmp_path / "report", sim)[0].read_text()
    assert html.index('id="warnings"') < html.index("SAMPLE RATIO MISMATCH") < html.index('id="ab"')


def test_the_verdict_test_is_the_one_the_design_rests_on() -> None:
    assert verdict_test(experiment_doc(), "accuracy")["test"] == SPRT  # type: ignore[index]
    fixed = experiment_doc(design_kind="fixed")
    assert verdict_test(fixed, "latency_s")["test"] == "Welch t"  # type: ignore[index]
    del fixed["verdict"]["metrics"]  # only verdict_tests left
    assert verdict_test(fixed, "accuracy")["test"] == "two-proportion z"  # type: ignore[index]
    assert verdict_test(fixed, "error_rate") is None


# -- comparison rows -------------------------------------------------------------------------------


def _comparison(tmp_path: Path) -> dict[str, Any]:
    sim, real = twin_runs(tmp_path)
    return compare_summaries(sim.summary, real.summary)


def test_the_same_verdict_and_an_effect_inside_the_twin_interval_are_met(tmp_path: Path) -> None:
    comparison = add_experiment_comparison(_comparison(tmp_path), experiment_doc(), experiment_doc(accuracy_effect=0.03))
    within = comparison["within_target"]
    assert within["experiment_verdict"] is True
    assert within["experiment_effect_accuracy"] is True and within["experiment_effect_latency_s"] is True
    assert comparison["experiment"]["predicted"]["verdict"]["decision"] == "treatment_better"
    assert comparison["experiment"]["measured"]["verdict"]["headline"] == "2 better than 1"
    json.dumps(comparison, allow_nan=False)  # strict JSON: no inf target


def test_a_different_verdict_and_an_effect_outside_the_twin_interval_miss(tmp_path: Path) -> None:
    base = _comparison(tmp_path)
    real = experiment_doc(decision="no_detectable_difference", accuracy_effect=0.05)  # twin's interval: 0.004..0.038
    comparison = add_experiment_comparison(copy.deepcopy(base), experiment_doc(), real)
    assert comparison["within_target"]["experiment_verdict"] is False
    accuracy = comparison["metrics"]["experiment_effect_accuracy"]
    assert accuracy["within_target"] is False and accuracy["missed_by"] == pytest.approx(0.05 - 0.038)
    assert comparison["all_within_target"] is False
    assert "experiment verdict" in comparison_verdict(comparison)
    row = next(r for r in comparison_rows(comparison) if r[0].startswith("accuracy effect"))
    assert row[4] == "in [0.40%, 3.80%]" and row[5].startswith("MISSED by 1.20")
    assert "differs" in format_comparison_table(comparison)


def test_an_unbounded_twin_interval_takes_any_real_effect(tmp_path: Path) -> None:
    twin = experiment_doc()
    for t in twin["tests"]:
        t["ci_low"], t["ci_high"] = -math.inf, math.inf  # still in the burn-in at the end
    comparison = add_experiment_comparison(_comparison(tmp_path), twin, experiment_doc(accuracy_effect=0.5))
    assert comparison["within_target"]["experiment_effect_accuracy"] is True
    assert comparison["targets"]["experiment_effect_accuracy"] == [None, None]


def test_a_metric_only_one_side_tested_says_so_and_does_not_crash(tmp_path: Path) -> None:
    real = experiment_doc()
    real["tests"] = [t for t in real["tests"] if t["metric"] != "latency_s"]
    real["verdict"]["metrics"] = [m for m in real["verdict"]["metrics"] if m["metric"] != "latency_s"]
    real["estimates"] = [e for e in real["estimates"] if e["metric"] != "latency_s"]
    real["design"]["metrics"] = real["design"]["metrics"][:1]
    comparison = add_experiment_comparison(_comparison(tmp_path), experiment_doc(), real)
    latency = comparison["metrics"]["experiment_effect_latency_s"]
    assert latency["within_target"] is None and "no real test of latency_s" in latency["label"]
    assert comparison["all_within_target"] is False
    assert any("latency_s" in w and "no value" in w for w in comparison["warnings"])
    text = format_comparison_table(comparison)
    assert "no real test of latency_s" in text and "no data" in text


def test_the_compare_report_puts_both_experiments_side_by_side(tmp_path: Path) -> None:
    sim, real = twin_runs(tmp_path)
    doc = experiment_doc()
    write_experiment(sim.path, doc, experiment_looks(doc))
    write_experiment(real.path, experiment_doc(decision="no_detectable_difference"), experiment_looks(doc))
    comparison = add_experiment_comparison(compare_summaries(sim.summary, real.summary),
                                           json.loads((sim.path / EXPERIMENT_JSON).read_text()),
                                           json.loads((real.path / EXPERIMENT_JSON).read_text()))
    html_path, md_path = write_report(tmp_path / "report", comparison=comparison, sim_run=sim, real_run=real)
    html = html_path.read_text()
    section = ab_section(html)
    assert "the verdicts differ" in section and "twin: 2 better than 1" in section
    assert section.count("data:image/png;base64,") == 3
    assert "<td>experiment verdict</td>" in html  # the fidelity table's row
    md = md_path.read_text()
    assert "experiment_metrics_compare.png" in md


def test_the_compare_section_needs_both_sides(tmp_path: Path) -> None:
    doc = experiment_doc()
    sim_dir = write_experiment(tmp_path / "sim", doc, experiment_looks(doc))
    (tmp_path / "real").mkdir()
    assert experiment_compare_section(tmp_path / "figs", sim_dir, tmp_path / "real") is None
    real_dir = write_experiment(tmp_path / "real", doc, None)
    section = experiment_compare_section(tmp_path / "figs", sim_dir, real_dir)
    assert section is not None and section.figures == {} and "same verdict" in section.headline
    assert any("missing on the real side" in p for p in section.paragraphs)
    assert [row[0] for row in section.tables[0][2]] == ["accuracy", "latency_s"]
    assert all(row[-1] == "yes" for row in section.tables[0][2])  # the same doc: each effect in its own interval


def test_a_guardrail_breach_is_named_with_its_first_window_and_raises_the_alarm(tmp_path: Path) -> None:
    doc = experiment_doc(decision="guardrail_breached")
    doc["guardrails"][0]["breaches"] = [{"variant": "2", "window_end_s": 8.0, "value": 0.071},
                                        {"variant": "2", "window_end_s": 10.0, "value": 0.064}]
    section = experiment_section(tmp_path / "figs", write_experiment(tmp_path / "run", doc, experiment_looks(doc)))
    assert section is not None and section.alarm
    line = next(p for p in section.paragraphs if p.startswith("guardrails"))
    assert "BREACHED" in line and "p99_s <= 50.000 ms breached by 2 in 2 windows" in line and "8.0 s (71.000 ms)" in line
    held = experiment_section(tmp_path / "figs2", write_experiment(tmp_path / "held", experiment_doc(), None))
    assert held is not None and not held.alarm


@pytest.mark.parametrize("enough, expected", [(True, "long enough"), (False, "TOO SHORT"), (0.0, "TOO SHORT"),
                                              (None, "TOO SHORT")])
def test_the_design_line_says_whether_the_run_is_long_enough(tmp_path: Path, enough: Any, expected: str) -> None:
    doc = experiment_doc()  # needs 26.1 s, runs 20 s
    doc["design"]["enough"] = enough
    section = experiment_section(tmp_path, write_experiment(tmp_path / "run", doc, None))
    assert section is not None
    line = next(p for p in section.paragraphs if p.startswith("design ("))
    assert expected in line and "26.1 s at 200 req/s" in line


def test_an_experiment_without_a_look_reports_that_and_draws_nothing(tmp_path: Path) -> None:
    doc = experiment_doc()
    doc.update(estimates=[], tests=[], verdict_tests=[], srm=None, guardrails=[], verdict={
        "decision": None, "headline": "no look: the run ended before the first window after the warm-up", "lines": [], "metrics": []})
    looks = experiment_looks(doc).iloc[0:0]
    section = experiment_section(tmp_path / "figs", write_experiment(tmp_path / "run", doc, looks))
    assert section is not None and section.headline.startswith("no look") and section.figures == {}
    assert "sample ratio: no check recorded" in section.paragraphs
    comparison = add_experiment_comparison(_comparison(tmp_path), doc, experiment_doc())
    assert comparison["within_target"]["experiment_verdict"] is None  # nothing to compare: no data, not a match


def test_latency_effects_are_compared_in_milliseconds(tmp_path: Path) -> None:
    real = experiment_doc()
    for t in real["tests"]:
        if t["metric"] == "latency_s":
            t["estimate"] = 0.0009  # the twin's SPRT interval: 0.0002..0.0008
    comparison = add_experiment_comparison(_comparison(tmp_path), experiment_doc(), real)
    row = next(r for r in comparison_rows(comparison) if r[0].startswith("latency_s effect"))
    assert row[1:3] == ["0.50 ms", "0.90 ms"] and row[4] == "in [0.20 ms, 0.80 ms]" and row[5] == "MISSED by 0.10 ms"
