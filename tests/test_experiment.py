"""The A/B experiment (issue 13): its config errors, the controller's looks and stops, the
record analysis, the design, and what a mode=sim run writes.

The statistics themselves are tested in tests/test_stats_*.py; whole experiments run by the
twin many times over in tests/test_experiment_twin.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scenarios.cli import preflight
from scenarios.config import ServelabConfig
from sim.config import ConfigError, ExperimentMetric, Guardrail, traffic_split, validate
from sim.experiment import Baseline, analyse, design, experiment_rows, look_times, replay_looks
from sim.policy.controller import SetWeights, VersionWindow, View
from sim.policy.experiment import ExperimentController, ExperimentLooks, ExperimentSpec, metric_summary
from sim.policy.strategy import ABORTED, CONCLUDED, PROGRESSING
from sim.stats.verdict import GUARDRAIL_BREACHED, NO_DIFFERENCE, TREATMENT_BETTER

EMULATED_AB = ["model.backend=emulated", 'model.versions=[{name: "1", accuracy: 0.9}, {name: "2", accuracy: 0.95}]',
               'experiment.variants=["1","2"]']


def refused(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        preflight(overrides)
    assert len(str(info.value).splitlines()) == 1, str(info.value)
    return info.value


# --- bad input: one line naming the key, before anything runs --------------------------------

@pytest.mark.parametrize("overrides, key, fragment", [
    (['experiment.variants=["1","7"]'], "experiment.variants", "'7' is not one of model.versions"),
    (['experiment.variants=["1","2","1"]'], "experiment.variants", "compares two variants"),
    (['experiment.variants=["1","1"]'], "experiment.variants", "twice"),
    (["experiment.allocation=[0.5,0.4]"], "experiment.allocation", "must sum to 1, got 0.9"),
    (["experiment.allocation=[1.0,0.0]"], "experiment.allocation", "in (0, 1)"),
    (["experiment.alpha=0"], "experiment.alpha", "must be in (0, 1)"),
    (["experiment.alpha=1.5"], "experiment.alpha", "must be in (0, 1)"),
    (["experiment.power=1"], "experiment.power", "must be in (0, 1)"),
    (["experiment.metrics=[{metric: accuracy, mde: 0}]"], "experiment.metrics", "mde must be a number > 0"),
    (["experiment.metrics=[speed]"], "experiment.metrics", "'speed' is not allowed"),
    (["experiment.metrics=[]"], "experiment.metrics", "at least one metric"),
    (["experiment.unit=session"], "experiment.unit", "'session' is not allowed"),
    (["experiment.guardrails=[{metric: p50_s, max: 0.1}]"], "experiment.guardrails", "'p50_s' is not allowed"),
    (["experiment.guardrails=[{metric: p99_s, max: 0}]"], "experiment.guardrails", "max must be a number > 0"),
    (["gateway.version_weights=[1,1]"], "gateway.version_weights", "experiment.allocation sets the split"),
    (["rollout.strategy=linear"], "rollout.strategy", "run one at a time"),
    (["mode=serve"], "experiment.variants", "mode=serve runs no experiment"),
])
def test_a_bad_experiment_is_one_line_naming_its_key(overrides: list[str], key: str, fragment: str) -> None:
    error = refused(EMULATED_AB + overrides)
    assert error.key == key and fragment in str(error), str(error)


def test_accuracy_on_unjudged_emulated_versions_is_refused() -> None:
    error = refused(["model.backend=emulated", 'model.versions=["1","2"]', 'experiment.variants=["1","2"]'])
    assert error.key == "experiment.metrics" and "no accuracy" in str(error)


def test_experiment_keys_without_variants_are_refused_as_ignored() -> None:
    error = refused(["experiment.alpha=0.01"])
    assert error.key == "experiment.alpha" and "experiment.variants is empty" in str(error)


def test_the_allocation_becomes_the_router_split_and_the_user_unit_makes_it_sticky() -> None:
    cfg = ServelabConfig()
    cfg.model.versions = ["1", "2", "3"]
    cfg.replicas = 3
    cfg.experiment.variants = ["3", "1"]
    cfg.experiment.metrics = ["latency_s"]
    cfg.experiment.allocation = [0.25, 0.75]
    cfg.experiment.unit = "user"
    validate(cfg)
    assert traffic_split(cfg) == ([0.75, 0.0, 0.25], True)
    cfg.experiment.variants = []
    assert traffic_split(cfg) == ([], False)


# --- the looks and the controller ------------------------------------------------------------

def spec(**kw: object) -> ExperimentSpec:
    base: dict[str, object] = dict(control=0, treatment=1, names=("a", "b"), metrics=(ExperimentMetric("accuracy", 0.05),),
                                   guardrails=(Guardrail("p99_s", 0.1),), tick_s=1.0, min_samples=50)
    base.update(kw)
    return ExperimentSpec(**base)  # type: ignore[arg-type]


def window(requests: int, correct: int, p99: float = 0.05) -> VersionWindow:
    return VersionWindow(requests=requests, ok=requests, judged=requests, correct=correct, latency_p99_s=p99,
                         latency_sum_s=0.01 * requests, latency_sumsq_s2=0.0001 * requests)


def view(now: float, a: VersionWindow, b: VersionWindow) -> View:
    return View(now, (0.5, 0.5), (0, 1), (True, True), {0: a, 1: b})


def test_the_summaries_a_window_gives_each_metric() -> None:
    w = VersionWindow(requests=10, ok=8, judged=6, correct=5, latency_sum_s=0.08, latency_sumsq_s2=0.001)
    assert (metric_summary("accuracy", w).n, metric_summary("accuracy", w).successes) == (6, 5)
    assert (metric_summary("error_rate", w).n, metric_summary("error_rate", w).successes) == (10, 2)
    assert metric_summary("latency_s", w).mean == pytest.approx(0.01)


def test_a_clear_difference_concludes_and_sends_all_traffic_back_to_control() -> None:
    c = ExperimentController(spec(), 2)
    actions: list[object] = []
    for k in range(1, 20):
        actions = c.on_tick(float(k), view(float(k), window(100, 80), window(100, 95)))
        if c.done:
            break
    assert c.state == CONCLUDED and c.decision is not None and "accuracy" in c.decision.reason
    assert actions == [SetWeights((1.0, 0.0))]
    assert c.on_tick(30.0, view(30.0, window(100, 80), window(100, 95))) == []  # done: no more looks


def test_a_treatment_window_over_a_guardrail_aborts_but_a_thin_one_does_not_count() -> None:
    c = ExperimentController(spec(), 2)
    c.on_tick(1.0, view(1.0, window(100, 90), window(10, 9, p99=0.5)))  # 10 < min_requests 20
    assert c.state == PROGRESSING and not c.breaches
    actions = c.on_tick(2.0, view(2.0, window(100, 90), window(100, 90, p99=0.5)))
    assert c.state == ABORTED and actions == [SetWeights((1.0, 0.0))]
    assert c.decision is not None and "p99_s 0.5 s > 0.1 s" in c.decision.reason


def test_a_control_breach_is_recorded_but_does_not_stop() -> None:
    c = ExperimentController(spec(), 2)
    assert c.on_tick(1.0, view(1.0, window(100, 90, p99=0.5), window(100, 90))) == []
    assert c.state == PROGRESSING and [b.variant for b in c.breaches] == ["a"]


def test_a_fixed_horizon_experiment_only_watches() -> None:
    c = ExperimentController(spec(stop_early=False), 2)
    for k in range(1, 20):
        assert c.on_tick(float(k), view(float(k), window(100, 80), window(100, 95, p99=0.5))) == []
    assert c.state == PROGRESSING and c.looks.tests["accuracy"].rejected and c.breaches


def test_windows_of_the_warm_up_are_not_looked_at() -> None:
    c = ExperimentController(spec(start_s=3.0), 2)
    for k in range(0, 5):
        c.on_tick(float(k), view(float(k), window(100, 90), window(100, 90)))
    assert [look.time_s for look in c.looks.looks] == [4.0]  # the window [3, 4) is the first after the warm-up


def test_an_always_valid_test_does_not_reject_an_a_a_stream_looked_at_every_window() -> None:
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(200):
        looks = ExperimentLooks(spec())
        for k in range(1, 21):
            a, b = rng.binomial(100, 0.9, size=2)
            looks.observe(float(k), {0: window(100, int(a)), 1: window(100, int(b))})
        rejected += looks.tests["accuracy"].rejected
    assert rejected / 200 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


# --- the design ----------------------------------------------------------------------------------

def test_the_design_sizes_a_proportion_and_a_mean_and_says_whether_the_run_is_long_enough() -> None:
    metrics = [ExperimentMetric("accuracy", 0.05), ExperimentMetric("latency_s", 0.001)]
    found = {"accuracy": Baseline("accuracy", 0.9, None, 100.0), "latency_s": Baseline("latency_s", 0.01, 0.002, 100.0)}
    doc = design(metrics, found, [0.5, 0.5], 0.05, 0.8, sequential=True, start_s=1.0, run_s=20.0, source="test")
    acc, lat = doc["metrics"]
    # the two-proportion formula, 0.90 -> 0.95: (1.96 sqrt(2 * .925 * .075) + 0.8416 sqrt(.09 + .0475))^2 / .05^2 = 434.4
    assert acc["fixed"]["n_control"] == 435 == acc["fixed"]["n_treatment"]
    assert acc["sequential"]["n_control"] > acc["fixed"]["n_control"]
    assert acc["sequential"]["duration_s"] == pytest.approx(1.0 + 2 * acc["sequential"]["n_control"] / 100.0)
    # Welch, sd 2 ms, MDE 1 ms: 2 (1.96 + 0.84)^2 4 = 62.8 with normal quantiles; the t distribution's tails take one more
    assert lat["fixed"]["n_control"] == 64
    assert doc["duration_needed_s"] == acc["sequential"]["duration_s"] and doc["enough"] is (doc["duration_needed_s"] <= 20.0)


def test_a_metric_the_pilot_never_saw_is_named_not_sized() -> None:
    doc = design([ExperimentMetric("error_rate", 0.01)], {"error_rate": Baseline("error_rate", 0.0, None, 100.0)},
                 [0.5, 0.5], 0.05, 0.8, sequential=False, start_s=0.0, run_s=10.0, source="test")
    assert doc["metrics"][0]["fixed"] is None and "cannot size" in doc["metrics"][0]["note"]
    assert doc["duration_needed_s"] is None and doc["enough"] is False


# --- the record analysis -------------------------------------------------------------------------

def frame_of(rows: list[tuple[str, float, bool]]) -> pd.DataFrame:
    """Requests answered ok at finish_s by version, right or wrong; 10 ms each."""
    n = len(rows)
    return pd.DataFrame({
        "version": [v for v, _, _ in rows], "finish_s": [f for _, f, _ in rows], "arrival_s": [f - 0.01 for _, f, _ in rows],
        "latency_s": [0.01] * n, "status": ["ok"] * n, "correct": pd.array([c for _, _, c in rows], dtype="boolean"),
        "user_id": list(range(n)), "shadow": [False] * n,
    })


def test_the_records_give_one_look_per_tick_after_the_warm_up_up_to_the_stop() -> None:
    rng = np.random.default_rng(1)
    rows = [(v, t + 0.5, bool(rng.random() < p)) for t in range(10) for v, p in (("a", 0.8), ("b", 0.95)) for _ in range(60)]
    s = spec(start_s=2.0)
    assert look_times(s, 6.0, inclusive=True) == [3.0, 4.0, 5.0, 6.0]  # a stop at 6 s: that look is taken
    assert look_times(s, 6.0, inclusive=False) == [3.0, 4.0, 5.0]  # the arrivals' end: no tick there
    picked = experiment_rows(frame_of(rows), s, end_s=6.0)
    assert sorted(set(picked["look_time_s"])) == [3.0, 4.0, 5.0, 6.0]
    looks = replay_looks(picked, s, look_times(s, 6.0, inclusive=True))
    assert [look.time_s for look in looks.looks] == [3.0, 4.0, 5.0, 6.0]
    assert looks.looks[-1].totals["accuracy"][0].n == 240


def test_the_analysis_names_the_winner_and_the_sequential_test_in_a_sequential_design() -> None:
    rng = np.random.default_rng(2)
    rows = [(v, t + 0.5, bool(rng.random() < p)) for t in range(20) for v, p in (("a", 0.8), ("b", 0.95)) for _ in range(50)]
    doc, table = analyse(frame_of(rows), spec(guardrails=()), allocation=[0.5, 0.5], unit="request", planned_end_s=20.0,
                         stopped_s=None, stop_reason=None)
    assert doc["verdict"]["decision"] == TREATMENT_BETTER and doc["verdict_tests"] == ["mixture SPRT"]
    assert {t["test"] for t in doc["tests"]} == {"mixture SPRT", "two-proportion z"}
    assert doc["srm"]["counts"] == [950, 950] and not doc["srm"]["mismatch"]
    assert len(table) == 19 * 2 and table["rejected"].iloc[-1]  # ticks at 1..19 s: none at the arrivals' end
    assert set(table["role"]) == {"control", "treatment"} and table["assigned"].iloc[-1] == 950


def test_an_a_a_fixed_horizon_analysis_says_no_detectable_difference_with_its_interval() -> None:
    rng = np.random.default_rng(3)
    rows = [(v, t + 0.5, bool(rng.random() < 0.9)) for t in range(20) for v in ("a", "b") for _ in range(50)]
    doc, _ = analyse(frame_of(rows), spec(stop_early=False, guardrails=()), allocation=[0.5, 0.5], unit="request",
                     planned_end_s=20.0, stopped_s=None, stop_reason=None)
    assert doc["verdict"]["decision"] == NO_DIFFERENCE and doc["verdict_tests"] == ["two-proportion z"]
    m = doc["verdict"]["metrics"][0]
    assert m["ci_low"] < 0 < m["ci_high"]


def test_a_guardrail_breach_in_the_records_is_the_verdict() -> None:
    rows = [(v, t + 0.5, True) for t in range(5) for v in ("a", "b") for _ in range(30)]
    frame = frame_of(rows)
    frame.loc[(frame["version"] == "b") & (frame["finish_s"] == 3.5), "latency_s"] = 0.5
    doc, _ = analyse(frame, spec(), allocation=[0.5, 0.5], unit="request", planned_end_s=5.0, stopped_s=4.0,
                     stop_reason="guardrail breached by b")
    assert doc["verdict"]["decision"] == GUARDRAIL_BREACHED and doc["stopped_early"] and doc["end_s"] == 4.0
    assert doc["guardrails"][0]["breaches"] == [{"variant": "b", "window_end_s": 4.0, "value": pytest.approx(0.5)}]


# --- a mode=sim run --------------------------------------------------------------------------------

def test_mode_sim_plans_runs_and_writes_the_experiment(tmp_path: Path) -> None:
    from tests.test_cli import servelab

    out = tmp_path / "run"
    result = servelab("mode=sim", "scenario=ab_latency_guardrail", "duration_s=10", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert printed.index("experiment design (sequential") < printed.index("twin (mode=sim)")  # the design comes first
    assert "stopped early: guardrail p99_s breached by 2" in printed
    doc = json.loads((out / "experiment.json").read_text())
    assert doc["status"] == "done" and doc["design"]["metrics"][0]["metric"] == "accuracy"
    assert doc["stopped_early"] and doc["verdict"]["decision"] == GUARDRAIL_BREACHED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"]["decision"] == GUARDRAIL_BREACHED
    assert summary["rollout"]["strategy"] == "experiment" and summary["rollout"]["outcome"] == ABORTED
    table = pd.read_parquet(out / "experiment.parquet")
    assert table["window_end_s"].max() == doc["end_s"]


# --- a CPU model's versions compute at their own speed in the twin --------------------------------

def test_a_profile_with_each_version_s_own_times_makes_the_twin_draw_them(tmp_path: Path) -> None:
    from scenarios.run_sim import simulate
    from sim.profile import Profile

    profile = Profile(times_s={1: [0.001], 2: [0.0015]}, version_times_s={"2": {1: [0.003], 2: [0.004]}})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile.to_json()))
    cfg = ServelabConfig()
    cfg.model.versions = ["1", "2"]
    cfg.service.kind, cfg.service.profile = "empirical", str(path)
    cfg.batching.max_batch_size, cfg.arrival.rate = 2, 100.0
    validate(cfg)
    frame, _, _ = simulate(cfg)
    served = frame[frame["status"] == "ok"]
    one = served[(served["version"] == "1") & (served["batch_size"] == 1)]["service_s"]
    two = served[(served["version"] == "2") & (served["batch_size"] == 1)]["service_s"]
    assert len(one) and len(two) and one.max() == pytest.approx(0.001) and two.min() == pytest.approx(0.003)


def test_an_experiment_s_controller_rows_in_a_comparison_say_stop_and_drop_a_time_neither_side_has() -> None:
    from reports.compare import compare_rollouts

    ran = {"strategy": "experiment", "outcome": "progressing", "decided_s": None, "candidate_requests": 100}
    rows = compare_rollouts(ran, dict(ran), interval_s=1.0)
    assert rows["rollout_decision"]["label"] == "experiment stop" and rows["rollout_decision"]["within_target"] is True
    assert "rollout_decision_time" not in rows
    assert rows["rollout_candidate_requests"]["label"] == "treatment requests before the stop"
    stopped = compare_rollouts(ran | {"outcome": "aborted", "decided_s": 4.0}, ran, interval_s=1.0)
    assert stopped["rollout_decision_time"]["within_target"] is False  # one side stopped, the other did not
