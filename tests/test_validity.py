"""Say what is valid: every measured point of a compare (the main run and each load point) carries
its validity and why; the table, the report and the load-curve figure mark an invalid one; the
exit status is 3 when any is invalid, in compare and in mode=profile. Summaries are fed in: no
real stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reports.compare import compare_summaries, format_comparison_table, format_stack_capacity, invalid_measurements
from reports.figures import LoadPoint, load_curve_figure
from reports.report import write_report
import scenarios.profile as profile_mode
from scenarios.compare import EXIT_INVALID_MEASUREMENT, exit_status, load_curve_entry
from scenarios.config import ServelabConfig
from sim.config import ScenarioConfig
from sim.profile import Profile
from tests.test_reports_support import twin_runs

LAG = ("load generator fell behind: send lag p99 4.10 ms > loadgen.max_lag_p99_s 2.00 ms (max 9.00 ms); "
       "latencies include the generator's own delay")
STACK = {"rps": 800.0, "device_rps": 2453.0, "host_rps": 800.0, "binds": "host", "host_limit": "cores"}


def summary(rate: float, *, valid: bool = True, warnings: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"offered_rate": rate, "throughput": rate, "latency_s": {"p50": 0.004, "p90": 0.005, "p99": 0.008, "mean": 0.0045},
            "shed_fraction": 0.0, "valid": valid, "warnings": list(warnings)}


def comparison(*, main_valid: bool = True, point_valid: tuple[bool, ...] = (True, False),
               stack: dict[str, Any] | None = STACK) -> dict[str, Any]:
    """As scenarios.compare.run builds it: the main run, then load points at 40% and 85% of 800 req/s."""
    main = summary(400.0, valid=main_valid, warnings=() if main_valid else (LAG,))
    out = compare_summaries(summary(400.0), main)
    out["capacity_rps"] = 800.0
    if stack is not None:
        out["stack_capacity"] = stack
    rates = (320.0, 680.0)
    out["load_curve"] = [load_curve_entry(LoadPoint(rate, summary(rate), summary(rate, valid=ok, warnings=() if ok else (LAG,))), 800.0)
                         for rate, ok in zip(rates, point_valid)]
    return out


def test_an_invalid_load_point_says_so_in_comparison_json_and_the_table() -> None:
    c = comparison()
    assert [(e["valid"], e["invalid_reasons"]) for e in c["load_curve"]] == [(True, []), (False, [LAG])]
    assert c["valid"] is True and c["invalid_reasons"] == []
    json.dumps(c)  # comparison.json holds it as it is
    table = format_comparison_table(c)
    assert f"load point 85% (680 req/s): INVALID: {LAG}" in table.splitlines()
    assert "main run: INVALID" not in table
    row = next(line for line in table.splitlines() if line.lstrip().startswith("85%"))
    assert row.rstrip().endswith("INVALID")
    assert next(line for line in table.splitlines() if line.lstrip().startswith("40%")).rstrip().endswith("valid")


def test_exit_status_is_3_when_any_measured_point_is_invalid() -> None:
    assert exit_status(comparison()) == EXIT_INVALID_MEASUREMENT
    assert exit_status(comparison(main_valid=False, point_valid=(True, True))) == EXIT_INVALID_MEASUREMENT
    assert exit_status(comparison(point_valid=(True, True))) == 0


def test_an_invalid_main_run_is_named_with_its_reason() -> None:
    c = comparison(main_valid=False, point_valid=(True, True))
    assert c["valid"] is False and c["invalid_reasons"] == [LAG]
    assert invalid_measurements(c) == [f"main run: INVALID: {LAG}"]


def test_the_stack_capacity_line_and_load_fractions_of_it() -> None:
    c = comparison(stack={**STACK, "rps": 1050.0, "host_rps": 1050.0})
    assert format_stack_capacity(c) == ("predicted capacity of the stack as deployed: 1,050 req/s (host binds; "
                                        "device limit 2,453 req/s, host limit 1,050 req/s by its cores)")
    table = format_comparison_table(c)
    assert format_stack_capacity(c) in table.splitlines()
    assert "load point 65% (680 req/s): INVALID" in table  # 680 / 1,050, not the entry's 680 / 800
    unknown = format_stack_capacity(comparison(stack={**STACK, "host_rps": None}))
    assert unknown is not None and "host limit unknown" in unknown


def test_a_comparison_without_stack_capacity_or_validity_still_renders() -> None:
    old = comparison(stack=None)
    for key in ("valid", "invalid_reasons"):
        old.pop(key)
        for entry in old["load_curve"]:
            entry.pop(key)
    assert format_stack_capacity(old) is None
    table = format_comparison_table(old)
    assert "predicted capacity" not in table and "INVALID" not in table
    assert "load point 85% (680 req/s)" not in table and exit_status(old) == 0


def test_the_load_curve_figure_rings_an_invalid_measured_point() -> None:
    points = [(rate, summary(rate, valid=rate != 680.0, warnings=() if rate != 680.0 else (LAG,))) for rate in (320.0, 680.0)]
    fig = load_curve_figure({"real": points}, capacity=800.0, capacity_name="stack capacity")
    lat_ax, rate_ax = fig.axes[:2]
    for ax in (lat_ax, rate_ax):
        rings = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "white"]
        assert rings and all(list(ln.get_xdata()) == [680.0] for ln in rings)
    assert "real: INVALID measurement" in [ln.get_label() for ln in lat_ax.get_lines()]
    assert any(ln.get_label() == "stack capacity 800 req/s" for ln in rate_ax.get_lines())


def test_the_report_marks_the_invalid_point_and_states_the_stack_capacity(tmp_path: Path) -> None:
    sim, real = twin_runs(tmp_path)
    c = comparison()
    curve = [LoadPoint(e["offered_rate"], summary(e["offered_rate"]),
                       summary(e["offered_rate"], valid=e["valid"], warnings=tuple(e["invalid_reasons"]))) for e in c["load_curve"]]
    html_path, md_path = write_report(tmp_path / "report", comparison=c, sim_run=sim, real_run=real, load_curve=curve,
                                      capacity=2453.0)
    md, html = md_path.read_text(), html_path.read_text()
    assert "| 85% | 680 req/s |" in md and f"**INVALID: {LAG}**" in md
    assert format_stack_capacity(c) in md and format_stack_capacity(c) in html
    assert html.count('<tr class="invalid">') == 1 and 'class="banner bad"' in html
    assert md.index("load point 85% (680 req/s): INVALID") < md.index("## Fidelity")  # in the warnings, first


def profile_of(points: list[dict[str, Any]]) -> Profile:
    return Profile(times_s={1: [0.004]}, meta={"backend": "emulated"}, overhead_by_rate=points)


def test_mode_profile_exits_3_naming_an_invalid_load_point_and_still_writes_the_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    points = [{"rate": 200.0, "total_s": [0.001], "valid": True},
              {"rate": 900.0, "total_s": [0.002], "valid": False, "invalid_reasons": [LAG]}]
    monkeypatch.setattr(profile_mode, "measure_profile", lambda *args: profile_of(points))
    assert profile_mode.run(ServelabConfig(mode="profile"), tmp_path) == EXIT_INVALID_MEASUREMENT
    out = capsys.readouterr().out
    assert f"profile load point 900 req/s: INVALID: {LAG}" in out and "200 req/s: INVALID" not in out
    assert out.rstrip().splitlines()[-1] == "servelab: 1 of 2 profile load points INVALID (exit status 3)"
    assert json.loads((tmp_path / "profile.json").read_text())["overhead_by_rate"][1]["valid"] is False
    points[1]["valid"] = True
    assert profile_mode.run(ServelabConfig(mode="profile"), tmp_path) == 0


def test_a_run_on_a_profile_with_an_invalid_load_point_carries_it_as_a_warning() -> None:
    bad = profile_of([{"rate": 900.0, "total_s": [0.002], "valid": False, "invalid_reasons": [LAG]}])
    assert f"profile load point 900 req/s: INVALID: {LAG}" in profile_mode.profile_warnings(bad, ScenarioConfig())
    good = profile_of([{"rate": 900.0, "total_s": [0.002], "valid": True}])
    assert not any("INVALID" in note for note in profile_mode.profile_warnings(good, ScenarioConfig()))
