"""Changes made while traffic flows take effect in the twin at the instant they are made."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sim.config import GatewayConfig, HealthConfig, ModelConfig
from sim.policy.controller import Drain, Eject, Fault, Scheduled, SetWeights
from sim.records import requests_frame
from sim.twin import Twin, TwinResult
from tests.conftest import scenario


def run(controller: Scheduled, **overrides: object) -> tuple[pd.DataFrame, TwinResult]:
    cfg = scenario(duration_s=6.0, replicas=4, arrival=dict(rate=400.0), **overrides)
    result = Twin(cfg, controller=controller).run()
    return requests_frame(result.columns), result


def applied_at(result: TwinResult, kind: str, action: str | None = None) -> float:
    times = [e.time_s for e in result.events if e.kind == kind and (action is None or e.detail.get("action") == action)]
    assert times, f"no {kind} {action or ''} event"
    return times[0]


def test_a_weight_change_applies_from_its_instant() -> None:
    two_versions = dict(model=ModelConfig(versions=["1", "2"]), gateway=GatewayConfig(version_weights=[1.0, 0.0]))
    frame, result = run(Scheduled([(2.0, SetWeights((0.0, 1.0)))]), **two_versions)
    t = applied_at(result, "action", "SetWeights")
    assert 2.0 <= t < 2.0 + 0.1 + 1e-9
    before, after = frame[frame["arrival_s"] < t], frame[frame["arrival_s"] >= t]
    assert set(before["version"]) == {"1"} and set(after["version"]) == {"2"}
    assert len(before) > 500 and len(after) > 500


def test_a_drained_replica_gets_nothing_new_and_finishes_what_it_has() -> None:
    frame, result = run(Scheduled([(3.0, Drain(0))], tick_s=0.25))
    t = applied_at(result, "action", "Drain")
    assert t == pytest.approx(3.0)
    assert (frame.loc[frame["arrival_s"] >= t, "replica"] != 0).all()
    assert (frame.loc[frame["arrival_s"] < t, "replica"] == 0).sum() > 100
    assert (frame["status"] == "ok").all()  # nothing in flight on it was lost


def test_an_ejected_replica_leaves_rotation_at_once_until_a_probe_passes() -> None:
    health = HealthConfig(probe_interval_s=0.4)
    frame, result = run(Scheduled([(2.5, Eject(1))], tick_s=0.5), health=health)
    t = applied_at(result, "action", "Eject")
    back = applied_at(result, "restore")  # as after any ejection: a passing probe restores it
    assert t < back <= t + health.probe_interval_s + 1e-9
    sent = frame["arrival_s"]
    assert (frame.loc[(sent >= t) & (sent < back), "replica"] != 1).all()
    assert (frame.loc[sent < t, "replica"] == 1).any() and (frame.loc[sent >= back, "replica"] == 1).any()


def test_a_replica_that_goes_down_is_ejected_by_the_probes() -> None:
    health = HealthConfig(probe_interval_s=0.2, failure_threshold=2)
    frame, result = run(Scheduled([(2.0, Fault(2, down=True))], tick_s=0.5), health=health)
    down_at = applied_at(result, "action", "Fault")
    ejected_at = applied_at(result, "eject")
    # two failed probes: the first probe round after the fault, then one interval more
    assert down_at < ejected_at <= down_at + 2 * health.probe_interval_s + 1e-9
    on_it = frame[frame["replica"] == 2]
    window = on_it[(on_it["arrival_s"] >= down_at) & (on_it["arrival_s"] < ejected_at)]
    assert len(window) > 0 and (window["status"] == "shed").all()  # 503 until ejected
    assert (frame.loc[frame["arrival_s"] >= ejected_at, "replica"] != 2).all()


def test_a_slower_version_takes_its_factor_longer() -> None:
    versions = ModelConfig(versions=["1", {"name": "2", "service_factor": 2.0}])
    cfg = scenario(duration_s=10.0, replicas=2, arrival=dict(rate=50.0), model=versions,
                   service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0),
                   batching=dict(max_batch_size=1, max_queue_delay_s=0.0))
    frame = requests_frame(Twin(cfg).run().columns)
    service = frame.groupby("version")["service_s"].mean()
    assert service["1"] == pytest.approx(0.004) and service["2"] == pytest.approx(0.008)


def test_a_controller_tick_sees_a_replica_the_probe_at_the_same_instant_found_ready() -> None:
    """Probes (every 0.5 s) and ticks (every 1 s) fall on the same instants in the twin; the real
    driver and gateway share no phase. A tick must read the state after that instant's probe,
    else every new replica costs one more tick than on the real stack (a rolling update took
    7 s in the twin against 4 s measured)."""
    from scenarios.cli import preflight
    from sim.policy.rollout import controller_from_config

    cfg = preflight(["model.versions=[1,2]", "replicas=3", "rollout.strategy=rolling", "arrival.rate=100",
                     "duration_s=10", "rollout.replica_start_s=0.6", "health.probe_interval_s=0.5"])
    result = Twin(cfg, controller=controller_from_config(cfg)).run()
    ready = [e.time_s for e in result.events if e.kind == "restore"]
    removed = [e.time_s for e in result.events if e.kind == "action" and e.detail["action"] == "RemoveReplica"]
    assert ready and removed
    assert removed[0] == ready[0]  # the old replica goes at the tick that found its successor ready
