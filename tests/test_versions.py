"""Versions that can be good or bad: per-version error rate and accuracy, fault schedules, in the
twin; the per-version figures of summary.json, timeseries.parquet and rollout.parquet; and the
config errors of both keys (one line each, naming the key, before anything runs)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scenarios.cli import preflight
from sim.config import ConfigError, FaultConfig, ModelConfig, ScenarioConfig, VersionConfig, validate, version_specs
from sim.policy.controller import View
from sim.policy.versions import NUMPY_DIGITS_ACCURACY, VersionBehaviour
from sim.records import requests_frame, summarize, timeseries, version_windows
from sim.twin import Twin
from tests.conftest import scenario


def with_versions(cfg: ScenarioConfig, versions: list[Any], backend: str = "emulated") -> ScenarioConfig:
    cfg = dataclasses.replace(cfg, model=ModelConfig(backend=backend, versions=versions))
    validate(cfg)
    return cfg


def within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    """`observed` successes of `trials` Bernoulli(p) draws, within `sigmas` standard errors."""
    se = math.sqrt(trials * p * (1 - p))
    return abs(observed - trials * p) <= sigmas * se


# --- the twin ------------------------------------------------------------------------------


def test_error_rate_and_accuracy_in_the_twin_match_the_config() -> None:
    cfg = with_versions(scenario(duration_s=20.0, replicas=2, arrival=dict(rate=1000.0)),
                        ["1", {"name": "2", "error_rate": 0.1, "accuracy": 0.8}])
    f = requests_frame(Twin(cfg).run().columns)
    v1, v2 = f[f["version"] == "1"], f[f["version"] == "2"]
    assert len(v2) > 5000 and (v1["status"] == "ok").all() and v1["correct"].isna().all()  # v1: nothing set
    errors = int((v2["status"] == "error").sum())
    assert within(errors, len(v2), 0.1)
    answered = v2[v2["status"] == "ok"]
    assert answered["correct"].notna().all() and v2.loc[v2["status"] == "error", "correct"].isna().all()
    assert within(int(answered["correct"].sum()), len(answered), 0.8)


def test_failures_and_judgements_leave_every_other_draw_where_it_was() -> None:
    """Failures and judgements read common numbers, no stream: making a version fail and be
    judged changes the status and correctness of its requests, never when or where anything ran."""
    base = scenario(duration_s=5.0, replicas=2, arrival=dict(rate=500.0))
    plain = requests_frame(Twin(with_versions(base, ["1", "2"])).run().columns)
    bad = requests_frame(Twin(with_versions(base, ["1", {"name": "2", "error_rate": 0.2, "accuracy": 0.5}])).run().columns)
    for column in ("arrival_s", "start_s", "finish_s", "replica", "batch_id", "service_s"):
        pd.testing.assert_series_equal(plain[column], bad[column])
    assert (bad["status"] == "error").sum() > 0 and (plain["status"] == "ok").all()


def test_a_fault_turns_a_version_bad_at_its_time() -> None:
    """Deterministic service: every batch of version 2 dispatched from t = 5 s runs exactly 3x
    as long, and its failures start with the first answer at or after 5 s."""
    cfg = scenario(duration_s=10.0, replicas=2, arrival=dict(rate=400.0),
                   service=dict(kind="deterministic", base_s=0.004, per_item_s=0.001))
    cfg = with_versions(cfg, ["1", {"name": "2", "faults": [{"at_s": 5.0, "slowdown": 3.0, "error_rate": 0.4}]}])
    f = requests_frame(Twin(cfg).run().columns)
    v2 = f[(f["version"] == "2") & (f["batch_id"] >= 0)]
    nominal = 0.004 + 0.001 * v2["batch_size"].to_numpy()
    late = v2["start_s"].to_numpy() >= 5.0
    np.testing.assert_allclose(v2["service_s"].to_numpy(), np.where(late, 3 * nominal, nominal), rtol=1e-12)
    failed = v2[v2["status"] == "error"]
    assert len(failed) and failed["finish_s"].min() >= 5.0
    after = v2[v2["finish_s"] >= 5.0]
    assert within(len(failed), len(after), 0.4)
    v1 = f[f["version"] == "1"]
    assert (v1["status"] == "ok").all() and (v1["service_s"] < 0.004 + 0.001 * 16 + 1e-9).all()


def test_the_numpy_backend_in_the_twin_is_right_as_often_as_its_real_model() -> None:
    cfg = with_versions(scenario(duration_s=20.0, replicas=2, arrival=dict(rate=1000.0)), ["2", "3"], backend="numpy")
    f = requests_frame(Twin(cfg).run().columns)
    for name in ("2", "3"):
        answered = f[(f["version"] == name) & (f["status"] == "ok")]
        assert answered["correct"].notna().all()
        assert within(int(answered["correct"].sum()), len(answered), NUMPY_DIGITS_ACCURACY[name]), name


@dataclasses.dataclass
class Watcher:
    """A controller that only looks: the views it was handed."""

    tick_s: float = 1.0
    views: list[View] = dataclasses.field(default_factory=list)

    def on_tick(self, now: float, view: View) -> list[Any]:
        self.views.append(view)
        return []


def test_a_controller_sees_each_versions_accuracy_and_errors_in_its_window() -> None:
    cfg = with_versions(scenario(duration_s=8.0, replicas=2, arrival=dict(rate=800.0), window_s=2.0),
                        [{"name": "1", "accuracy": 0.95, "faults": [{"at_s": 4.0, "error_rate": 0.25, "accuracy_drop": 0.45}]}, "2"])
    watcher = Watcher()
    Twin(cfg, controller=watcher).run()
    # the last view whose 2 s window lies before the fault, the first whose window lies after it
    before = [v for v in watcher.views if 2.0 <= v.now < 4.0][-1].windows
    after = next(v for v in watcher.views if v.now >= 6.0).windows
    assert before[0].errors == 0 and within(before[0].correct, before[0].judged, 0.95)
    assert within(after[0].errors, after[0].requests, 0.25) and within(after[0].correct, after[0].judged, 0.5)
    assert before[1].judged == 0 and before[1].accuracy is None  # version 2 is not judged


# --- the schedule --------------------------------------------------------------------------


def test_a_fault_keeps_what_it_does_not_name_and_a_later_one_can_heal() -> None:
    faults = [FaultConfig(8.0, accuracy_drop=0.3), FaultConfig(5.0, slowdown=2.0),  # order: by time
              FaultConfig(12.0, slowdown=1.0, error_rate=0.0, accuracy_drop=0.0)]
    versions = [VersionConfig("1"), VersionConfig("2", service_factor=1.5, error_rate=0.01, accuracy=0.9, faults=faults)]
    b = VersionBehaviour(versions)
    assert b.at(1, -math.inf) == b.at(1, 4.999)  # before time 0 is known: as configured
    configured, slow, slow_wrong, healed = (b.at(1, t) for t in (0.0, 5.0, 8.0, 12.0))
    assert (configured.device_factor, configured.error_rate, configured.accuracy) == (1.5, 0.01, 0.9)
    assert (slow.device_factor, slow.error_rate, slow.accuracy) == (3.0, 0.01, 0.9)
    assert (slow_wrong.device_factor, slow_wrong.error_rate) == (3.0, 0.01) and slow_wrong.accuracy == pytest.approx(0.6)
    assert (healed.device_factor, healed.error_rate, healed.accuracy) == (1.5, 0.0, 0.9)
    assert b.at(0, 8.0).device_factor == 1.0 and not b.at(0, 8.0).judged and b.judges and not b.static


def test_an_accuracy_drop_on_a_real_model_flips_right_answers_in_proportion() -> None:
    """A model right with p, each right answer made wrong with the flip probability, is right
    with p - drop: the real numpy replica's way to apply the twin's accuracy."""
    b = VersionBehaviour([VersionConfig("3", faults=[FaultConfig(1.0, accuracy_drop=0.2)])], NUMPY_DIGITS_ACCURACY)
    before, after = b.at(0, 0.0), b.at(0, 1.0)
    assert before.accuracy == NUMPY_DIGITS_ACCURACY["3"] and before.flip_probability == 0.0
    assert after.model_accuracy * (1 - after.flip_probability) == pytest.approx(after.accuracy)
    assert after.accuracy == pytest.approx(NUMPY_DIGITS_ACCURACY["3"] - 0.2)
    total = VersionBehaviour([VersionConfig("3", faults=[FaultConfig(1.0, accuracy_drop=1.0)])], NUMPY_DIGITS_ACCURACY)
    assert total.at(0, 2.0).accuracy == 0.0 and total.at(0, 2.0).flip_probability == 1.0


def test_nothing_configured_means_no_per_request_work_in_the_twin() -> None:
    twin = Twin(scenario())
    assert twin.judge is None and all(rep.judge is None and rep.version_factor is None for rep in twin.replicas)


# --- per-version figures -------------------------------------------------------------------


def hand_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"user_id": 0, "start_s": math.nan, "queue_s": 0.0, "service_s": 0.01, "replica": 0, "batch_id": -1,
            "batch_size": 1, "correct": -1, "shadow": False}
    full = [{**base, "request_id": i, **row} for i, row in enumerate(rows)]
    for row in full:
        row["latency_s"] = row["finish_s"] - row["arrival_s"]
        if row["status"] == "ok":
            row["start_s"], row["batch_id"] = row["arrival_s"], row["request_id"]
    return requests_frame({name: [row[name] for row in full] for name in full[0]})


def answer(arrival: float, latency: float, version: str, status: str = "ok", correct: int = -1,
           shadow: bool = False) -> dict[str, Any]:
    return {"arrival_s": arrival, "finish_s": arrival + latency, "version": version, "status": status,
            "correct": correct, "shadow": shadow}


FRAME_ROWS = [
    answer(0.2, 0.1, "a", correct=1), answer(0.4, 0.3, "a", correct=0), answer(0.6, 0.1, "a", "error"),
    answer(1.2, 0.2, "a", correct=1), answer(1.4, 0.1, "b"), answer(1.6, 0.3, "b", "error"),
    # shadow copies of version b: their own figures only
    answer(0.2, 0.05, "b", correct=0, shadow=True), answer(0.4, 0.05, "b", "error", shadow=True),
]


def test_summary_per_version_figures_keep_shadow_copies_apart() -> None:
    f = hand_frame(FRAME_ROWS)
    s = summarize(f, warmup_s=0.0, duration_s=2.0, replicas=1, concurrency=1, versions=["b", "a"])
    assert list(s["versions"]) == ["b", "a"]
    a, b = s["versions"]["a"], s["versions"]["b"]
    assert (a["requests"], a["offered_rate"], a["throughput"]) == (4, 2.0, 1.5)  # 3 ok answers by 2 s
    assert a["error_rate"] == 0.25 and a["accuracy"] == pytest.approx(2 / 3) and a["judged"] == 3
    assert a["latency_s"]["p50"] == pytest.approx(0.2) and a["status_counts"]["error"] == 1
    assert (b["requests"], b["error_rate"], b["accuracy"], b["judged"]) == (2, 0.5, None, 0)
    assert (b["shadow_requests"], b["shadow_error_rate"], b["shadow_accuracy"]) == (2, 0.5, 0.0)
    assert b["shadow_latency_s"]["p50"] == pytest.approx(0.05) and a["shadow_requests"] == 0
    # the run-wide figures are the offered requests only, as before per-version figures existed
    assert s["requests_total"] == 6 and s["status_counts"] == {"ok": 4, "shed": 0, "timeout": 0, "error": 2}


def test_timeseries_gains_per_version_columns_by_finish_time() -> None:
    ts = timeseries(hand_frame(FRAME_ROWS), 1.0, end_s=2.0, versions=["a", "b"])
    assert list(ts.columns[:7]) == ["window_start_s", "offered_rate", "throughput", "latency_p50_s", "latency_p99_s",
                                    "queue_len", "in_flight"]
    assert list(ts["offered_rate@a"]) == [3, 1] and list(ts["offered_rate@b"]) == [0, 2]  # shadow copies are not offered
    assert list(ts["throughput@a"]) == [2, 1] and list(ts["throughput@b"]) == [0, 1]
    assert list(ts["error_rate@a"]) == [pytest.approx(1 / 3), 0.0] and ts["error_rate@b"][1] == 0.5
    assert list(ts["accuracy@a"]) == [0.5, 1.0] and ts["accuracy@b"].isna().all()
    assert ts["latency_p99_s@a"][1] == pytest.approx(0.2) and math.isnan(ts["latency_p50_s@b"][0])
    assert math.isnan(ts["error_rate@b"][0])  # b's only outcomes in window 0 are shadow copies: not its own


def test_rollout_windows_gain_error_rate_and_accuracy() -> None:
    w = version_windows(hand_frame(FRAME_ROWS), 1.0, [(0.0, [0.5, 0.5])], ["a", "b"]).set_index(["window_start_s", "version"])
    a0, b0, b1 = w.loc[(0.0, "a")], w.loc[(0.0, "b")], w.loc[(1.0, "b")]
    assert (a0["requests"], a0["errors"], a0["judged"]) == (3, 1, 2)
    assert a0["error_rate"] == pytest.approx(1 / 3) and a0["accuracy"] == 0.5
    assert (b0["requests"], b0["shadow_requests"], b0["shadow_error_rate"], b0["shadow_accuracy"]) == (0, 2, 0.5, 0.0)
    assert math.isnan(b0["error_rate"]) and math.isnan(b0["accuracy"])
    assert (b1["requests"], b1["error_rate"], b1["shadow_requests"]) == (2, 0.5, 0) and math.isnan(b1["shadow_error_rate"])


# --- bad config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        (["model.versions=[1,{name:2,error_rate:1.5}]"], "model.versions[2].error_rate", "probability in [0, 1]"),
        (["model.versions=[1,{name:2,error_rate:-0.1}]"], "model.versions[2].error_rate", "probability in [0, 1]"),
        (["model.versions=[1,{name:2,accuracy:2}]"], "model.versions[2].accuracy", "probability in [0, 1]"),
        (["model.versions=[1,{name:2,accuracy:high}]"], "model.versions[2].accuracy", "must be a number"),
        (["model.backend=numpy", "model.versions=[1,{name:2,accuracy:0.9}]"], "model.versions[2].accuracy", "measured"),
        (["model.backend=numpy", "model.versions=[1,4]"], "model.versions", "digits models 1, 2, 3"),
        (["model.versions=[1,{name:2,faults:[{at_s:-1}]}]"], "model.versions[2].faults[0].at_s", ">= 0"),
        (["duration_s=10", "model.versions=[1,{name:2,faults:[{at_s:10}]}]"], "model.versions[2].faults[0].at_s", "never apply"),
        (["model.versions=[1,{name:2,faults:[{error_rate:0.5}]}]"], "model.versions[2].faults[0].at_s", "is required"),
        (["model.versions=[1,{name:2,faults:[{at_s:one}]}]"], "model.versions[2].faults[0].at_s", "must be a number"),
        (["model.versions=[{name:1,faults:[{at_s:1,error_rate:0.5},{at_s:2,error_rate:3}]},2]"],
         "model.versions[1].faults[1].error_rate", "[0, 1]"),
        (["model.versions=[{name:1,faults:[{at_s:1,slowdown:0}]}]"], "model.versions[1].faults[0].slowdown", "> 0"),
        (["model.versions=[{name:1,faults:[{at_s:1,accuracy_drop:0.1}]}]"], "model.versions[1].faults[0].accuracy_drop",
         "no accuracy to drop"),
        (["model.versions=[{name:1,accuracy:0.9,faults:[{at_s:1,accuracy_drop:1.1}]}]"],
         "model.versions[1].faults[0].accuracy_drop", "[0, 1]"),
        (["model.backend=numpy", "model.versions=[{name:1,faults:[{at_s:1,slowdown:2}]}]"], "model.versions[1].faults[0].slowdown",
         "model.backend=emulated"),
        (["model.versions=[{name:1,faults:[{at_s:1,speed:2}]}]"], "model.versions[1].faults[0]", "unknown key(s) speed"),
        (["model.versions=[{name:1,faults:[{at_s:1,version:1}]}]"], "model.versions[1].faults[0]", "unknown key(s) version"),
        (["model.versions=[{name:1,faults:[3]}]"], "model.versions[1].faults[0]", "must be a mapping"),
        (["model.versions=[{name:1,faults:{at_s:1}}]"], "model.versions[1].faults", "must be a list"),
    ],
)
def test_bad_version_or_fault_config_is_one_line_naming_the_key(overrides: list[str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(["replicas=2", *overrides])
    assert info.value.key == key and fragment in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_good_version_and_fault_config_passes() -> None:
    cfg = preflight(["replicas=2", "model.versions=[1,{name:2,service_factor:1.5,error_rate:0.02,accuracy:0.97,"
                     "faults:[{at_s:3,slowdown:2,error_rate:0.1,accuracy_drop:0.2},{at_s:6,slowdown:1}]}]"])
    assert [f.at_s for f in version_specs(cfg.model)[1].faults] == [3.0, 6.0] and not version_specs(cfg.model)[0].faults
    preflight(["replicas=2", "model.backend=numpy", "model.versions=[2,{name:3,faults:[{at_s:1,accuracy_drop:0.5}]}]"])


def test_the_fault_schedule_has_no_top_level_key() -> None:
    """Per-version settings live under the version (DESIGN.md): there is no `faults` key."""
    assert "faults" not in {f.name for f in dataclasses.fields(ScenarioConfig)}
    with pytest.raises(Exception, match="faults"):
        preflight(["replicas=2", "faults=[]"])


def test_profiling_runs_the_first_version_without_its_fault_schedule() -> None:
    from scenarios.profile import _profiling_config

    cfg = preflight(["replicas=2", "model.versions=[{name:1,error_rate:0.01,faults:[{at_s:1,slowdown:3}]},2]"])
    profiled = _profiling_config(cfg, 1)
    validate(profiled)
    (only,) = version_specs(profiled.model)
    assert (only.name, only.error_rate, only.faults) == ("1", 0.01, [])
    assert VersionBehaviour.from_config(profiled).static


def test_profiling_a_rollout_scenario_profiles_the_stack_without_the_rollout() -> None:
    """The profile is of one version's stack; a rollout over two versions cannot run on it (its
    replicas refused the config and mode=compare of every rollout preset stopped)."""
    from scenarios.profile import _profiling_config

    cfg = preflight(["replicas=2", "model.versions=[1,2]", "rollout.strategy=canary", "rollout.steps=[{set_weight:50}]"])
    profiled = _profiling_config(cfg, 1)
    validate(profiled)
    assert profiled.rollout.strategy == "none" and version_specs(profiled.model)[0].name == "1"
