"""Rollout strategies (canary, linear, blue_green, rolling, recreate): their state machines on
hand-made views, and the twin running them with replicas started and stopped at run time."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.cli import preflight
from scenarios.run_sim import run as run_sim
from sim.config import ConfigError
from sim.policy.analysis import FAILED, INCONCLUSIVE, PASSED, Analysis, AnalysisRun
from sim.policy.blue_green import BlueGreenController, BlueGreenSpec
from sim.policy.canary import CanaryController, canary
from sim.policy.controller import AddReplica, RemoveReplica, Scheduled, SetWeights, VersionWindow, View, apply, view_of
from sim.policy.linear import LinearController, LinearSpec
from sim.policy.membership import Membership, initial_versions
from sim.policy.recreate import RecreateController, RecreateSpec
from sim.policy.rollout import controller_from_config
from sim.policy.rolling import RollingController, RollingSpec
from sim.policy.split import Router
from sim.records import requests_frame
from sim.twin import Twin, TwinResult
from tests.conftest import scenario

# --------------------------------------------------------------------------- the analysis


def window(n: int = 50, errors: int = 0, p99: float = 0.010, judged: int = 0, correct: int = 0) -> VersionWindow:
    return VersionWindow(requests=n, ok=n - errors, errors=errors, latency_p99_s=p99, judged=judged, correct=correct)


def views(now: float, stable: VersionWindow | None, candidate: VersionWindow | None) -> View:
    windows = {v: w for v, w in ((0, stable), (1, candidate)) if w is not None}
    return View(now, (0.5, 0.5), (0, 1), (True, True), windows)


def test_an_accuracy_drop_beyond_the_limit_fails_only_with_enough_judged_answers() -> None:
    run = AnalysisRun(Analysis(max_accuracy_drop=0.05, min_requests=20), candidate=1, baseline=0)
    stable = window(judged=50, correct=48)  # 0.96
    bad = run.measure(0, views(0, stable, window(judged=50, correct=40)))  # 0.80: 0.16 below
    assert bad.result == FAILED and "accuracy" in bad.reason and run.failures == 1
    thin = AnalysisRun(Analysis(max_accuracy_drop=0.05, min_requests=20), candidate=1, baseline=0)
    assert thin.measure(0, views(0, stable, window(judged=10, correct=2))).result == PASSED  # too few judged: not checked


def test_without_a_baseline_a_window_cannot_pass_and_a_remembered_one_is_used() -> None:
    run = AnalysisRun(Analysis(max_p99_ratio=1.5), candidate=1, baseline=0)
    assert run.measure(0, views(0, None, window(p99=0.030))).result == INCONCLUSIVE
    assert run.measure(1, views(1, window(p99=0.010), None)).result == INCONCLUSIVE  # candidate thin; stable remembered
    slow = run.measure(2, views(2, None, window(p99=0.030)))  # stable is gone (a blue-green switch): the memory judges
    assert slow.result == FAILED and "p99 3.00x" in slow.reason
    assert run.measure(3, views(3, None, window(errors=5))).result == FAILED  # errors fail with or without a baseline


def test_the_accuracy_check_passes_within_the_allowed_drop() -> None:
    run = AnalysisRun(Analysis(max_accuracy_drop=0.05, min_requests=20), candidate=1, baseline=0)
    assert run.measure(0, views(0, window(judged=100, correct=96), window(judged=100, correct=92))).result == PASSED


# --------------------------------------------------------------------------- linear (Flagger)


def test_linear_steps_on_passing_checks_holds_on_thin_ones_and_promotes_at_max_weight() -> None:
    c = LinearController(LinearSpec(step_weight=20, max_weight=40, threshold=2))
    assert c.on_tick(0, views(0, window(), None)) == [SetWeights((0.8, 0.2))]
    assert c.on_tick(1, views(1, window(), window(n=5))) == []  # inconclusive: hold
    assert c.on_tick(2, views(2, window(), window())) == [SetWeights((0.6, 0.4))]
    assert c.on_tick(3, views(3, window(), window())) == [SetWeights((0.0, 1.0))] and c.state == "promoted"


def test_linear_rolls_back_after_threshold_failed_checks() -> None:
    c = LinearController(LinearSpec(step_weight=10, max_weight=50, threshold=2))
    c.on_tick(0, views(0, window(), None))
    assert c.on_tick(1, views(1, window(), window(p99=0.05))) == []  # one failure: hold, not yet
    assert c.weight == 10
    assert c.on_tick(2, views(2, window(), window(p99=0.05))) == [SetWeights((1.0, 0.0))]
    assert c.state == "aborted" and "threshold 2" in c.decision.reason  # type: ignore[union-attr]


# --------------------------------------------------------------------------- blue-green


class World:
    """A deployment a controller acts on: the shared Router and Membership, replicas ready a
    given number of ticks after they are added (their start and readiness probes)."""

    def __init__(self, replicas: int, versions: int = 2, start_ticks: list[int] | None = None) -> None:
        self.router = Router(Membership([str(v + 1) for v in range(versions)], [0] * replicas), "p2c", version_weights=[1.0] + [0.0] * (versions - 1))
        self.start_ticks = list(start_ticks or [])
        self.ready_at: dict[int, int] = {}
        self.tick = 0

    def view(self, windows: dict[int, VersionWindow] | None = None) -> View:
        return view_of(self.router, float(self.tick), windows or {})

    def act(self, actions: list) -> None:  # type: ignore[type-arg]
        for a in actions:
            apply(a, self.router)
            if isinstance(a, AddReplica):
                delay = self.start_ticks.pop(0) if self.start_ticks else 1
                self.ready_at[len(self.router.membership) - 1] = self.tick + delay

    def advance(self) -> None:
        self.tick += 1
        for r, t in self.ready_at.items():
            if t <= self.tick and not self.router.membership.removed[r]:
                self.router.membership.set_healthy(r, True)

    def live(self, version: int | None = None) -> list[int]:
        m = self.router.membership
        return [r for r in range(len(m)) if not m.removed[r] and (version is None or m.version_of[r] == version)]

    def ready(self) -> int:
        m = self.router.membership
        return sum(m.routable(r) for r in range(len(m)))


def stable_window() -> dict[int, VersionWindow]:
    return {0: window()}


def test_blue_green_starts_a_full_green_set_switches_when_all_are_ready_then_removes_blue() -> None:
    world = World(3, start_ticks=[1, 3, 2])
    c = BlueGreenController(BlueGreenSpec(scale_down_delay_s=2.0))
    first = c.on_tick(0, world.view(stable_window()))
    assert first == [SetWeights((1.0, 0.0)), AddReplica(1), AddReplica(1), AddReplica(1)]
    world.act(first)
    switched = None
    for _ in range(6):
        world.advance()
        actions = c.on_tick(world.tick, world.view(stable_window()))
        world.act(actions)
        if SetWeights((0.0, 1.0)) in actions:
            switched = world.tick
            break
    assert switched == 3  # the slowest green replica was ready at tick 3: not before
    world.advance()
    assert c.on_tick(world.tick, world.view({1: window()})) == [] and world.live(0) == [0, 1, 2]  # blue kept
    world.advance()
    done = c.on_tick(world.tick, world.view({1: window()}))
    assert done == [RemoveReplica(0), RemoveReplica(1), RemoveReplica(2)] and c.state == "promoted"
    c.abort()
    assert c.on_tick(world.tick + 1, world.view()) == [] and c.state == "promoted"  # no instant way back after scale-down


def test_blue_green_rolls_back_instantly_within_the_scale_down_delay() -> None:
    world = World(2)
    c = BlueGreenController(BlueGreenSpec(scale_down_delay_s=30.0))
    world.act(c.on_tick(0, world.view(stable_window())))
    world.advance()
    switch = c.on_tick(1, world.view(stable_window()))
    assert switch == [SetWeights((0.0, 1.0))]
    world.act(switch)
    back = c.on_tick(2, world.view({1: window(errors=10)}))
    assert back == [SetWeights((1.0, 0.0)), RemoveReplica(2), RemoveReplica(3)] and c.state == "aborted"
    assert world.live(0) == [0, 1]  # blue never stopped


# --------------------------------------------------------------------------- rolling and recreate


@dataclass(frozen=True)
class Bounds:
    n: int
    surge: int
    unavailable: int


@st.composite
def rolling_cases(draw: st.DrawFn) -> tuple[Bounds, list[int]]:
    n = draw(st.integers(1, 6))
    surge = draw(st.integers(0, 3))
    unavailable = draw(st.integers(0 if surge else 1, n))
    starts = draw(st.lists(st.integers(0, 4), min_size=4 * n, max_size=4 * n))
    return Bounds(n, surge, unavailable), starts


@settings(max_examples=150, deadline=None, database=None)
@given(rolling_cases())
def test_a_rolling_update_keeps_its_bounds_and_ends_with_every_replica_new(case: tuple[Bounds, list[int]]) -> None:
    """Kubernetes' two rules at every tick: at most n + max_surge replicas live, at least
    n - max_unavailable ready; version weights always sum to 1; and the update completes."""
    b, starts = case
    world = World(b.n, start_ticks=starts)
    c = RollingController(RollingSpec(b.surge, b.unavailable, analysis=None))
    for _ in range(20 * b.n + 10):
        actions = c.on_tick(world.tick, world.view())
        world.act(actions)
        for a in actions:
            if isinstance(a, SetWeights):
                assert math.isclose(sum(a.weights), 1.0) and all(0 <= w <= 1 for w in a.weights)
        assert len(world.live()) <= b.n + b.surge
        assert world.ready() >= b.n - b.unavailable
        if c.done:
            break
        world.advance()
    assert c.state == "promoted"
    assert world.live(0) == [] and len(world.live(1)) == b.n and world.ready() == b.n
    assert world.router.version_weights[1] == 1.0


def test_a_failed_rolling_update_rolls_the_other_way_within_the_same_bounds() -> None:
    world = World(3)
    c = RollingController(RollingSpec(1, 0, Analysis(max_p99_ratio=1.5)))
    world.act(c.on_tick(0, world.view(stable_window())))
    world.advance()
    world.act(c.on_tick(1, world.view(stable_window())))
    world.advance()
    slow = {0: window(), 1: window(p99=0.05)}
    actions = c.on_tick(2, world.view(slow))
    world.act(actions)
    assert c.state == "rolling_back" and c.decision is not None and c.decision.kind == "aborted"
    for tick in range(3, 30):
        world.advance()
        world.act(c.on_tick(tick, world.view({0: window()})))
        assert world.ready() >= 3
        if c.done:
            break
    assert c.state == "aborted" and len(world.live(0)) == 3 and world.live(1) == []
    assert world.router.version_weights == [1.0, 0.0]


def test_recreate_stops_everything_before_it_starts_anything() -> None:
    world = World(3)
    c = RecreateController(RecreateSpec(analysis=None))
    stop = c.on_tick(0, world.view())
    assert stop == [RemoveReplica(2), RemoveReplica(1), RemoveReplica(0)]
    world.act(stop)
    world.advance()
    assert c.on_tick(1, world.view()) == [AddReplica(1)] * 3  # the next tick: the old ones are gone


def test_replica_strategies_wait_for_a_baseline_before_replacing_stable() -> None:
    world = World(2)
    c = RecreateController(RecreateSpec(analysis=Analysis()))
    assert c.on_tick(0, world.view()) == [] and "waiting" in c.decisions[0].reason  # no stable window yet
    assert c.on_tick(1, world.view(stable_window())) == [RemoveReplica(1), RemoveReplica(0)]


@pytest.mark.parametrize("make", [
    lambda: CanaryController(canary([("set_weight", 20), ("pause_s", math.inf)])),
    lambda: LinearController(LinearSpec()),
    lambda: BlueGreenController(BlueGreenSpec()),
    lambda: RollingController(RollingSpec()),
    lambda: RecreateController(RecreateSpec()),
])
def test_every_strategy_aborts_by_hand_at_its_next_tick(make) -> None:  # type: ignore[no-untyped-def]
    world = World(2)
    c = make()
    world.act(c.on_tick(0, world.view(stable_window())))
    world.advance()
    c.abort()
    world.act(c.on_tick(1, world.view(stable_window())))
    assert c.decision is not None and c.decision.kind == "aborted" and "by hand" in c.decision.reason
    assert world.router.version_weights[0] == 1.0 or world.live(1) == []


def test_a_canary_waiting_until_promoted_promotes_by_hand() -> None:
    c = CanaryController(canary([("set_weight", 20), ("pause_s", math.inf)]))
    c.on_tick(0, views(0, window(), None))
    assert c.on_tick(500, views(500, window(), window())) == [] and c.state == "paused"
    c.promote()
    assert c.on_tick(501, views(501, window(), window())) == [SetWeights((0.0, 1.0))] and c.state == "promoted"


# --------------------------------------------------------------------------- the twin

GOOD = "model.versions=[1,2]"
SLOW = "model.versions=[1,{name:2,service_factor:3}]"
LOAD = ["replicas=4", "arrival.rate=300", "duration_s=14", "warmup_s=0.5", "health.probe_interval_s=0.25"]
STRATEGIES = {
    "canary": ["rollout.strategy=canary", "rollout.steps=[{set_weight:25},{pause_s:2},{set_weight:50},{pause_s:2}]"],
    "linear": ["rollout.strategy=linear", "rollout.step_weight=25", "rollout.max_weight=50"],
    "blue_green": ["rollout.strategy=blue_green", "rollout.scale_down_delay_s=3"],
    "rolling": ["rollout.strategy=rolling"],
    "rolling_unavailable": ["rollout.strategy=rolling", "rollout.max_surge=0", "rollout.max_unavailable=1"],
    "recreate": ["rollout.strategy=recreate"],
}


def rehearse(strategy: str, version: str, *extra: str) -> tuple[pd.DataFrame, TwinResult, object]:
    cfg = preflight([*STRATEGIES[strategy], version, *LOAD, *extra])
    controller = controller_from_config(cfg)
    result = Twin(cfg, controller=controller).run()
    return requests_frame(result.columns), result, controller


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "recreate"])
def test_a_good_version_is_promoted_and_no_request_is_lost(strategy: str) -> None:
    frame, result, c = rehearse(strategy, GOOD)
    assert c.state == "promoted"  # type: ignore[attr-defined]
    expected = preflight([*STRATEGIES[strategy], GOOD, *LOAD])
    assert frame["request_id"].is_unique and len(frame) == len(Twin(expected).run().columns["arrival_s"])
    assert (frame["status"] == "ok").all(), frame["status"].value_counts().to_dict()  # no 503, no error, no timeout
    decided = c.decision.time_s  # type: ignore[attr-defined]
    assert set(frame.loc[frame["arrival_s"] > decided + 1.0, "version"]) == {"2"}  # after the rollout: the new version only


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_slow_version_is_rolled_back_and_stable_serves_everything_after(strategy: str) -> None:
    frame, result, c = rehearse(strategy, SLOW)
    assert c.decision is not None and c.decision.kind == "aborted", c.decisions  # type: ignore[attr-defined]
    assert c.state == "aborted"  # type: ignore[attr-defined]  # the rollback finished too
    back = max(e.time_s for e in result.events if e.kind == "action")  # the rollback's last change
    after = frame[frame["arrival_s"] > back + 1.0]
    assert len(after) > 300 and (after["version"] == "1").all()
    if strategy != "recreate":
        assert (frame["status"] == "ok").all()


def test_recreate_has_downtime_and_it_is_measured(tmp_path, capsys) -> None:
    cfg = preflight([*STRATEGIES["recreate"], GOOD, *LOAD, f"out_dir={tmp_path}"])
    assert run_sim(cfg, tmp_path) == 0
    out = capsys.readouterr().out
    dip = json.loads((tmp_path / "summary.json").read_text())["rollout"]["capacity_dip"]
    assert dip["ready_before"] == 4 and dip["ready_min"] == 0
    # stopped at one tick, started at the next, ready after replica_start_s and a probe
    assert cfg.rollout.interval_s + cfg.rollout.replica_start_s <= dip["downtime_s"] <= \
        cfg.rollout.interval_s + cfg.rollout.replica_start_s + cfg.health.probe_interval_s + 1e-9
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    shed = frame[frame["status"] == "shed"]
    assert len(shed) > 0 and (shed["replica"] == -1).all()  # the gateway's 503: nothing was ready
    assert shed["arrival_s"].max() - shed["arrival_s"].min() <= dip["downtime_s"]
    assert "none ready for" in out


def test_mode_sim_writes_replica_counts_and_every_strategys_decision(tmp_path) -> None:
    cfg = preflight([*STRATEGIES["blue_green"], SLOW, *LOAD, f"out_dir={tmp_path}"])
    assert run_sim(cfg, tmp_path) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rollout"]["strategy"] == "blue_green" and summary["rollout"]["outcome"] == "aborted"
    assert set(summary["utilisation"]) == {str(r) for r in range(8)}  # the green set's replicas too
    events = json.loads((tmp_path / "events.json").read_text())
    added = [e for e in events["events"] if e["detail"].get("action") == "AddReplica"]
    assert [e["detail"]["replica"] for e in added] == [4, 5, 6, 7]
    table = pd.read_parquet(tmp_path / "rollout.parquet")
    green = table[table["version"] == "2"]
    assert green["replicas_live"].max() == 4 and green["replicas_ready"].max() == 4
    assert table.loc[table["version"] == "1", "replicas_ready"].min() == 4  # blue ready throughout: instant rollback
    assert set(table["analysis"].dropna()) <= {"passed", "failed", "inconclusive"} and "failed" in set(table["analysis"])


def test_a_new_replica_takes_traffic_after_its_start_time_at_the_next_probe() -> None:
    cfg = scenario(duration_s=6.0, replicas=2, arrival=dict(rate=300.0))
    result = Twin(cfg, controller=Scheduled([(1.0, AddReplica(0))], tick_s=0.5)).run()
    frame = requests_frame(result.columns)
    ready = next(e.time_s for e in result.events if e.kind == "restore" and e.detail["replica"] == 2)
    earliest = 1.0 + cfg.rollout.replica_start_s
    assert earliest <= ready <= earliest + cfg.health.probe_interval_s + 1e-9
    on_new = frame[frame["replica"] == 2]
    assert len(on_new) > 100 and on_new["arrival_s"].min() >= ready
    assert (frame["status"] == "ok").all()


def test_a_removed_replica_finishes_what_it_holds_and_gets_nothing_new() -> None:
    cfg = scenario(duration_s=6.0, replicas=3, arrival=dict(rate=600.0), service=dict(base_s=0.02, per_item_s=0.002))
    result = Twin(cfg, controller=Scheduled([(2.0, RemoveReplica(1))], tick_s=0.5)).run()
    frame = requests_frame(result.columns)
    on_it = frame[frame["replica"] == 1]
    assert on_it["arrival_s"].max() < 2.0 and on_it["finish_s"].max() > 2.0  # in flight at the removal, then answered
    assert (frame["status"] == "ok").all() and frame["request_id"].is_unique


def test_the_initial_membership_puts_every_replica_on_stable_for_replica_strategies() -> None:
    cfg = preflight(["rollout.strategy=rolling", "model.versions=[1,2,3]", "rollout.stable=2", "rollout.canary=3", "replicas=3"])
    assert initial_versions(cfg) == [1, 1, 1]
    assert Router.from_config(cfg).version_weights == [0, 3, 0]
    assert initial_versions(preflight(["model.versions=[1,2]", "replicas=3"])) == [0, 1, 0]


def test_an_accuracy_drop_rolls_a_canary_back() -> None:
    cfg = preflight([*STRATEGIES["canary"], "model.versions=[{name:1,accuracy:0.97},{name:2,accuracy:0.75}]", *LOAD])
    c = controller_from_config(cfg)
    Twin(cfg, controller=c).run()
    assert c is not None and c.state == "aborted" and "accuracy" in " ".join(d.reason for d in c.decisions)


def test_mode_rehearse_works_for_a_replica_strategy(tmp_path) -> None:
    from scenarios.rehearse import run as rehearse_mode

    cfg = preflight(["mode=rehearse", "rehearse.runs=3", "rehearse.workers=1", *STRATEGIES["rolling"], SLOW, *LOAD,
                     f"out_dir={tmp_path}"])
    assert rehearse_mode(cfg, tmp_path) == 0
    oc = json.loads((tmp_path / "experiment.json").read_text())["operating_characteristics"]
    assert oc["bad (as configured)"]["rollback_probability"] == 1.0
    assert oc["good (canary like stable)"]["rollback_probability"] == 0.0
    runs = pd.read_parquet(tmp_path / "rehearsal.parquet")
    bad = runs[runs["scenario"] == "bad (as configured)"]
    assert (bad["canary_requests"] > 0).all() and (bad["canary_requests_total"] >= bad["canary_requests"]).all()
    assert "Operating characteristics" in (tmp_path / "report.html").read_text()


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides, key", [
    (["rollout.strategy=canary", GOOD, "rollout.steps=[{set_weight:100},{pause_s:5}]"], "rollout.steps"),
    (["rollout.strategy=canary", GOOD, "rollout.steps=[{set_weight:130}]"], "rollout.steps"),
    (["rollout.strategy=linear", GOOD, "rollout.step_weight=60", "rollout.max_weight=50"], "rollout.step_weight"),
    (["rollout.strategy=linear", GOOD, "rollout.max_weight=120"], "rollout.max_weight"),
    (["rollout.strategy=linear", GOOD, "rollout.threshold=0"], "rollout.threshold"),
    (["rollout.strategy=blue_green", GOOD, "rollout.scale_down_delay_s=-1"], "rollout.scale_down_delay_s"),
    (["rollout.strategy=rolling", GOOD, "rollout.max_surge=0", "rollout.max_unavailable=0"], "rollout.max_surge"),
    (["rollout.strategy=rolling", GOOD, "rollout.max_unavailable=5"], "rollout.max_unavailable"),
    (["rollout.strategy=recreate", GOOD, "rollout.replica_start_s=-0.5"], "rollout.replica_start_s"),
    (["rollout.strategy=rolling", "model.versions=[1]"], "model.versions"),
    (["rollout.strategy=rolling", GOOD, "rollout.canary=7"], "rollout.canary"),
    (["rollout.strategy=linear", GOOD, "rollout.steps=[{set_weight:10}]"], "rollout.steps"),
    (["rollout.strategy=linear", GOOD, "rollout.max_surge=2"], "rollout.max_surge"),
    (["rollout.strategy=canary", GOOD, "rollout.steps=[{set_weight:10}]", "rollout.scale_down_delay_s=5"], "rollout.scale_down_delay_s"),
    (["rollout.strategy=blue_green", GOOD, "rollout.analysis=false", "rollout.failure_limit=2"], "rollout.failure_limit"),
    (["rollout.strategy=blue_green", GOOD, "gateway.version_weights=[1,1]"], "gateway.version_weights"),
    (["rollout.strategy=blue_green", GOOD, "lb.policy=weighted", "lb.weights=[1,1]"], "lb.policy"),
    (["rollout.max_surge=2"], "rollout.max_surge"),
    (["rollout.strategy=rolling", GOOD, "rollout.interval_s=-1"], "rollout.interval_s"),
])
def test_a_rollout_that_cannot_work_stops_before_anything_runs(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight(overrides)
    assert caught.value.key == key, str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_strategies_build_from_config() -> None:
    kinds = {name: type(controller_from_config(preflight([*flags, GOOD]))).__name__ for name, flags in STRATEGIES.items()}
    assert kinds == {"canary": "CanaryController", "linear": "LinearController", "blue_green": "BlueGreenController",
                     "rolling": "RollingController", "rolling_unavailable": "RollingController", "recreate": "RecreateController"}
    assert np.isclose(controller_from_config(preflight([*STRATEGIES["linear"], GOOD])).tick_s, 1.0)  # type: ignore[union-attr]
    assert controller_from_config(preflight([GOOD])) is None
