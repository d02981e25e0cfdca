"""The pieces of a real-stack rollout that need no stack: the control documents (adding a
replica, manual commands), when the load's time 0 is, what the candidate served, the rollout
rows of a comparison and their verdicts, and which modes run a rollout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from real.gateway.control import (BadControl, Command, NewReplica, commands_after, new_replica, replica_action,
                                  replica_action_doc, rollout_command, state_doc)
from reports.compare import add_rollout_comparison, compare_rollouts, compare_summaries, comparison_verdict, format_comparison_table
from scenarios.cli import preflight
from scenarios.run_real import candidate_exposure, load_time_zero
from sim.config import ConfigError
from sim.policy.controller import RemoveReplica, View
from sim.policy.membership import Membership

CANARY = ["rollout.strategy=canary", "model.versions=[1,2]", "rollout.steps=[{set_weight:20},{pause_s:2}]"]


# -- control documents --------------------------------------------------------------------------


def test_a_new_replica_needs_an_http_url_with_a_port_and_a_known_version() -> None:
    m = Membership(["1", "2"], [0, 1])
    urls = ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    assert new_replica({"url": "http://127.0.0.1:9002/", "version": "2"}, m, urls) == NewReplica("http://127.0.0.1:9002", 1)
    assert new_replica({"url": "http://[::1]:9002", "version": "1", "active": False}, m, urls).active is False
    for bad in ({"url": "127.0.0.1:9002", "version": "1"}, {"url": "http://127.0.0.1", "version": "1"},
                {"url": "http://127.0.0.1:9002?x=1", "version": "1"}, {"url": "http://127.0.0.1:9002", "version": "3"},
                {"url": "http://127.0.0.1:9002", "version": "1", "active": 1}, {"url": None, "version": "1"}):
        with pytest.raises(BadControl) as err:
            new_replica(bad, m, urls)
        assert err.value.status == 400, bad
    with pytest.raises(BadControl) as taken:
        new_replica({"url": urls[1], "version": "2"}, m, urls)
    assert taken.value.status == 409
    m.remove(1)  # a removed replica's URL may come back as a new one
    assert new_replica({"url": urls[1], "version": "2"}, m, urls).url == urls[1]


def test_remove_is_a_replica_action_and_a_removed_replica_takes_none() -> None:
    m = Membership(["1"], [0, 0])
    assert replica_action(1, {"action": "remove"}, m) == RemoveReplica(1)
    assert replica_action_doc(RemoveReplica(1), ["1"]) == {"action": "remove"}
    m.remove(1)
    with pytest.raises(BadControl) as gone:
        replica_action(1, {"action": "activate"}, m)
    assert gone.value.status == 404


def test_manual_commands_are_numbered_and_a_driver_reads_those_it_has_not_seen() -> None:
    assert [rollout_command({"command": c}) for c in ("promote", "abort")] == ["promote", "abort"]
    for bad in ({"command": "rollback"}, {}, ["promote"], {"command": 1}):
        with pytest.raises(BadControl):
            rollout_command(bad)
    m = Membership(["1", "2"], [0, 1])
    queued = [Command(1, "promote", 0.5), Command(2, "abort", 0.75)]
    doc = json.loads(json.dumps(state_doc(View(1.0, (1.0, 0.0), (0, 1), (True, True)), m, 1.0, queued)))
    assert commands_after(doc, 0) == queued and commands_after(doc, 1) == queued[1:] and commands_after(doc, 2) == []


# -- the load's time 0 and the candidate's exposure -----------------------------------------------


def test_time_zero_is_what_a_worker_announced_and_a_stale_announcement_is_ignored(tmp_path: Path) -> None:
    poll = load_time_zero(tmp_path, not_before=time.time())
    assert poll() is None
    (tmp_path / "started-0.json").write_text(json.dumps({"worker": 0, "t0_wall": time.time() - 3600}))  # a previous run's
    assert poll() is None
    t0 = time.time() + 0.5
    (tmp_path / "started-1.json").write_text(json.dumps({"worker": 1, "t0_wall": t0}))
    assert poll() == t0


def test_the_candidate_exposure_counts_primary_requests_sent_before_the_decision() -> None:
    frame = pd.DataFrame({"version": ["1", "2", "2", "2", "2", "2"], "arrival_s": [0.1, 0.2, 0.3, 0.4, 1.5, 0.5],
                          "user_id": [1, 2, 2, 3, 4, 5], "shadow": [False, False, False, False, False, True]})
    assert candidate_exposure(frame, "2", decided_s=1.0) == {"candidate_requests": 3, "candidate_users": 2}
    assert candidate_exposure(frame, "2", decided_s=None) == {"candidate_requests": 4, "candidate_users": 3}


# -- the comparison's rollout rows ---------------------------------------------------------------


def rollout(outcome: str | None, decided_s: float | None, requests: int) -> dict[str, object]:
    return {"strategy": "canary", "outcome": outcome, "decided_s": decided_s, "candidate_requests": requests}


def test_rollout_rows_meet_their_targets_when_both_sides_decide_alike() -> None:
    rows = compare_rollouts(rollout("aborted", 2.0, 100), rollout("aborted", 2.9, 85), interval_s=1.0)
    assert [rows[k]["within_target"] for k in rows] == [True, True, True]
    assert rows["rollout_decision_time"]["abs_error"] == pytest.approx(-0.9)
    assert rows["rollout_candidate_requests"]["rel_error"] == pytest.approx(100 / 85 - 1)


def test_rollout_rows_miss_by_how_much() -> None:
    rows = compare_rollouts(rollout("promoted", 6.0, 130), rollout("aborted", 3.0, 100), interval_s=1.0)
    assert rows["rollout_decision"]["within_target"] is False
    assert rows["rollout_decision_time"]["missed_by"] == pytest.approx(2.0)
    assert rows["rollout_candidate_requests"]["missed_by"] == pytest.approx(0.1)
    one_sided = compare_rollouts(rollout("paused", None, 50), rollout("aborted", 3.0, 50), interval_s=1.0)
    assert one_sided["rollout_decision_time"]["within_target"] is False
    neither = compare_rollouts(rollout("paused", None, 50), rollout("paused", None, 50), interval_s=1.0)
    assert neither["rollout_decision"]["within_target"] is True and neither["rollout_decision_time"]["within_target"] is None


def test_a_missed_rollout_target_shows_in_the_table_and_the_verdict_like_the_others() -> None:
    summary = {"latency_s": {"p50": 0.01, "p99": 0.02}, "throughput": 100.0}
    comparison = compare_summaries(summary, summary)
    assert comparison["all_within_target"] is True
    add_rollout_comparison(comparison, rollout("aborted", 4.0, 100), rollout("aborted", 2.0, 100), interval_s=1.0)
    assert comparison["all_within_target"] is False and comparison["within_target"]["rollout_decision_time"] is False
    assert comparison_verdict(comparison) == "fidelity: 5 of 6 targets met; missed: rollout decision time"
    table = format_comparison_table(comparison)
    line = next(row for row in table.splitlines() if row.startswith("rollout decision time"))
    assert "4.00 s" in line and "2.00 s" in line and "+2.00 s" in line and "<= 1 s" in line and "MISSED by 1.00 s" in line
    decision = next(row for row in table.splitlines() if row.startswith("rollout decision "))
    assert decision.split()[2:5] == ["aborted", "aborted", "same"]
    assert comparison["rollout"]["measured"]["decided_s"] == 2.0 and comparison["targets"]["rollout_decision"] == "same"
    assert "| rollout decision time |" in format_comparison_table(comparison, markdown=True)


# -- which modes run a rollout ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["real", "compare"])
def test_real_and_compare_take_a_rollout(mode: str) -> None:
    assert preflight([f"mode={mode}", *CANARY]).rollout.strategy == "canary"


@pytest.mark.parametrize("mode", ["serve", "profile"])
def test_modes_that_run_no_rollout_refuse_one_in_one_line(mode: str) -> None:
    with pytest.raises(ConfigError) as err:
        preflight([f"mode={mode}", *CANARY])
    assert str(err.value).startswith("rollout.strategy:") and len(str(err.value).splitlines()) == 1
