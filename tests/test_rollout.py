"""The canary controller: steps, pauses, analysis against stable, abort and promote."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from scenarios.cli import preflight
from scenarios.rehearse import run as rehearse
from scenarios.run_sim import run
from sim.config import ConfigError, GatewayConfig, ModelConfig
from sim.policy.controller import SetWeights, VersionWindow, View
from sim.policy.rollout import Analysis, CanaryController, canary, controller_from_config
from sim.records import requests_frame
from sim.twin import Twin
from tests.conftest import scenario


def view(now: float, canary_window: VersionWindow | None = None, stable_p99: float = 0.01) -> View:
    windows = {0: VersionWindow(requests=100, ok=100, latency_p99_s=stable_p99)}
    if canary_window is not None:
        windows[1] = canary_window
    return View(now, (1.0, 0.0), (0, 1), (True, True), windows)


def healthy(n: int = 50) -> VersionWindow:
    return VersionWindow(requests=n, ok=n, latency_p99_s=0.011)


def test_steps_pause_then_promote() -> None:
    c = CanaryController(canary([("set_weight", 20), ("pause_s", 2.0), ("set_weight", 50)], interval_s=1.0))
    assert c.on_tick(0.0, view(0.0)) == [SetWeights((0.8, 0.2))]
    assert c.on_tick(1.0, view(1.0, healthy())) == [] and c.state == "paused"
    assert c.on_tick(2.0, view(2.0, healthy())) == [SetWeights((0.5, 0.5)), SetWeights((0.0, 1.0))]
    assert c.state == "promoted" and c.on_tick(3.0, view(3.0, healthy())) == []


def test_too_many_failed_measurements_abort_to_stable() -> None:
    spec = canary([("set_weight", 20), ("pause_s", math.inf)], analysis=Analysis(max_p99_ratio=1.5, failure_limit=1))
    c = CanaryController(spec)
    c.on_tick(0.0, view(0.0))
    slow = VersionWindow(requests=50, ok=50, latency_p99_s=0.03)
    assert c.on_tick(1.0, view(1.0, slow)) == []  # one failure is within the limit
    assert c.on_tick(2.0, view(2.0, slow)) == [SetWeights((1.0, 0.0))]
    assert c.state == "aborted" and [d.kind for d in c.decisions][-1] == "aborted"


def test_errors_fail_and_a_thin_window_is_inconclusive() -> None:
    c = CanaryController(canary([("set_weight", 10), ("pause_s", math.inf)], analysis=Analysis(min_requests=20)))
    c.on_tick(0.0, view(0.0))
    assert c.on_tick(1.0, view(1.0, VersionWindow(requests=5, ok=0, errors=5))) == [] and c.failures == 0
    assert c.on_tick(2.0, view(2.0, VersionWindow(requests=40, ok=38, errors=2, latency_p99_s=0.01))) == [SetWeights((1.0, 0.0))]


def test_an_indefinite_pause_waits_for_a_manual_promote() -> None:
    c = CanaryController(canary([("set_weight", 30), ("pause_s", math.inf)]))
    c.on_tick(0.0, view(0.0))
    assert c.on_tick(100.0, view(100.0, healthy())) == []
    c.promote()
    assert c.on_tick(101.0, view(101.0, healthy())) == [SetWeights((0.0, 1.0))]


@pytest.mark.parametrize("bad", [[], [("set_weight", 120)], [("pause_s", -1)]])
def test_a_spec_that_cannot_work_is_refused(bad: list[tuple[str, float]]) -> None:
    with pytest.raises(ValueError):
        canary(bad)


@pytest.mark.parametrize("factor, outcome", [(1.0, "promoted"), (4.0, "aborted")])
def test_the_twin_rehearses_a_canary_of_a_good_and_a_slow_version(factor: float, outcome: str) -> None:
    cfg = scenario(duration_s=12.0, replicas=4, arrival=dict(rate=300.0),
                   service=dict(kind="lognormal", base_s=0.004, per_item_s=0.0005, cv=0.2),
                   model=ModelConfig(versions=["1", {"name": "2", "service_factor": factor}]),
                   gateway=GatewayConfig(version_weights=[1.0, 0.0]))
    controller = CanaryController(canary([("set_weight", 25), ("pause_s", 3.0), ("set_weight", 50), ("pause_s", 3.0)],
                                         analysis=Analysis(max_p99_ratio=2.0, failure_limit=1), interval_s=1.0))
    result = Twin(cfg, controller=controller).run()
    assert controller.state == outcome
    frame = requests_frame(result.columns)
    decided = controller.decisions[-1].time_s
    after = frame[frame["arrival_s"] >= decided]
    assert set(after["version"]) == ({"2"} if outcome == "promoted" else {"1"})


SLOW_CANARY = ["rollout.strategy=canary", "model.versions=[1,{name:2,service_factor:4}]", "replicas=4",
               "arrival.rate=300", "duration_s=8", "rollout.failure_limit=1", "rollout.max_p99_ratio=2",
               "rollout.steps=[{pause_s:1},{set_weight:25},{pause_s:3},{set_weight:50},{pause_s:3}]"]


def test_mode_sim_runs_a_configured_canary_and_writes_its_decisions(tmp_path, capsys) -> None:
    cfg = preflight([*SLOW_CANARY, f"out_dir={tmp_path}"])
    assert run(cfg, tmp_path) == 0
    assert "rollout   canary aborted" in capsys.readouterr().out
    events = json.loads((tmp_path / "events.json").read_text())
    outcome = json.loads((tmp_path / "summary.json").read_text())["rollout"]
    assert outcome["outcome"] == "aborted" and "events" not in outcome  # the log lives in events.json only
    assert [d["kind"] for d in events["decisions"]][-1] == "aborted"
    windows = pd.read_parquet(tmp_path / "rollout.parquet")
    first = windows[windows["window_start_s"] == 0.0]
    by_version = first.set_index("version")
    assert by_version.loc["1", "weight"] == 1.0 and by_version.loc["2", "requests"] == 0  # the first pause: all on stable
    assert windows.loc[windows["version"] == "2", "weight"].max() == 0.25
    after_abort = windows[(windows["version"] == "2") & (windows["window_start_s"] >= events["decisions"][-1]["time_s"])]
    assert len(after_abort) > 0 and (after_abort["weight"] == 0).all() and (after_abort["requests"] == 0).all()
    assert (tmp_path / "figures" / "rollout.png").stat().st_size > 0
    assert "figures/rollout.png" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("overrides, key", [
    (["rollout.strategy=canary", "rollout.steps=[{set_weight:10}]"], "model.versions"),
    (["rollout.strategy=canary", "model.versions=[1,2]"], "rollout.steps"),
    (["rollout.strategy=canary", "model.versions=[1,2]", "rollout.steps=[{set_weight:10,pause_s:1}]"], "rollout.steps"),
    (["rollout.strategy=canary", "model.versions=[1,2]", "rollout.steps=[{pause_s:-1}]"], "rollout.steps"),
    (["rollout.strategy=canary", "model.versions=[1,2]", "rollout.steps=[{set_weight:10}]", "rollout.canary=3"], "rollout.canary"),
    (["rollout.strategy=canary", "model.versions=[1,2]", "rollout.steps=[{set_weight:10}]", "mode=profile"], "rollout.strategy"),
    (["rollout.strategy=blue"], "rollout.strategy"),
])
def test_a_rollout_that_cannot_work_is_refused_before_anything_runs(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight(overrides)
    assert caught.value.key == key or str(caught.value).startswith(key)


def test_a_rehearsal_stops_sending_at_the_decision_and_loses_nothing_sent() -> None:
    cfg = preflight([*SLOW_CANARY, "duration_s=20"])
    controller = controller_from_config(cfg)
    result = Twin(cfg, controller=controller, stop_when_done=True).run()
    frame = requests_frame(result.columns)
    decided = controller.decisions[-1].time_s
    assert controller.done and frame["arrival_s"].max() < decided < 20.0
    assert (frame["status"] != "error").all() and frame["request_id"].is_unique


def test_mode_rehearse_reports_power_and_false_rollbacks(tmp_path, capsys) -> None:
    cfg = preflight(["mode=rehearse", "rehearse.runs=8", "rehearse.workers=2", *SLOW_CANARY, f"out_dir={tmp_path}"])
    assert rehearse(cfg, tmp_path) == 0
    assert "report:" in capsys.readouterr().out
    oc = json.loads((tmp_path / "experiment.json").read_text())["operating_characteristics"]
    bad, good = oc["bad (as configured)"], oc["good (canary like stable)"]
    assert bad["runs"] == good["runs"] == 8
    assert bad["rollback_probability"] == 1.0 and good["rollback_probability"] == 0.0
    low, high = bad["rollback_probability_ci95"]
    assert low < 1.0 <= high  # a Wilson interval from 8 runs is wide, and says so
    runs = pd.read_parquet(tmp_path / "rehearsal.parquet")
    assert len(runs) == 16 and sorted(runs["seed"].unique()) == list(range(8))
    assert (tmp_path / "figures" / "rehearsal.png").stat().st_size > 0
    assert "Operating characteristics" in (tmp_path / "report.html").read_text()


def test_mode_rehearse_needs_a_rollout() -> None:
    with pytest.raises(ConfigError):
        preflight(["mode=rehearse"])
