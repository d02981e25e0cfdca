"""A/B experiments on the real stack, end to end through `servelab mode=real`: the gateway splits by
the experiment's allocation, the controller reads the gateway's windows and stops the experiment
through the control API, and the run's records are analysed into experiment.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sim.stats.verdict import GUARDRAIL_BREACHED, NO_DIFFERENCE
from tests.real.conftest import processes_mentioning

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVELAB = [sys.executable, "-c", "from scenarios.cli import main; main()"]


def run_real(out: Path, *overrides: str) -> dict[str, Any]:
    """A mode=real run (exit 0, or 3 when a busy machine's send lag voided the timing: the
    experiment is analysed either way); its experiment.json."""
    done = subprocess.run([*SERVELAB, "mode=real", "progress=false", f"out_dir={out}", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert "experiment design" in done.stdout and "experiment.json" in done.stdout  # the design before, the verdict after
    assert not processes_mentioning(str(out))
    return json.loads((out / "experiment.json").read_text())  # type: ignore[no-any-return]


def assert_every_offered_request_recorded_once(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out / "requests.parquet")
    with np.load(out / "loadgen" / "schedule.npz") as z:
        scheduled = len(z["times_s"])
    assert frame["request_id"].tolist() == list(range(scheduled))
    return frame


def test_a_treatment_that_breaks_the_p99_guardrail_is_stopped_and_traffic_goes_back_to_control(tmp_path: Path) -> None:
    """ab_latency_guardrail in 10 s: version 2 is twice as slow, its replica's queue pushes its
    p99 past 120 ms in the first windows; the controller aborts the experiment on that breach
    and sends every request back to version 1, and the verdict says so."""
    out = tmp_path / "run"
    doc = run_real(out, "scenario=ab_latency_guardrail", "duration_s=10")
    assert doc["status"] == "done" and doc["stopped_early"] and doc["end_s"] < doc["planned_end_s"] == 10
    assert doc["verdict"]["decision"] == GUARDRAIL_BREACHED
    assert "p99_s" in doc["stop_reason"] and "breached by 2" in doc["stop_reason"]
    [guardrail] = doc["guardrails"]
    assert guardrail["metric"] == "p99_s" and {b["variant"] for b in guardrail["breaches"]} == {"2"}
    assert all(b["value"] > 0.12 for b in guardrail["breaches"])

    summary = json.loads((out / "summary.json").read_text())
    rollout = summary["rollout"]
    assert rollout["strategy"] == "experiment" and rollout["outcome"] == "aborted" and rollout["decided_s"] == doc["end_s"]
    assert summary["experiment"]["decision"] == GUARDRAIL_BREACHED
    events = json.loads((out / "events.json").read_text())
    weights = [e for e in events["events"] if e["detail"].get("action") == "SetWeights"]
    assert weights and weights[-1]["detail"]["weights"] == [1.0, 0.0] and weights[-1]["time_s"] == rollout["decided_s"]

    frame = assert_every_offered_request_recorded_once(out)
    before = frame[frame["arrival_s"] < rollout["decided_s"]]
    after = frame[frame["arrival_s"] > rollout["decided_s"] + 1.0]  # a second for the gateway to hear of it
    assert set(before["version"].astype(str)) == {"1", "2"}
    assert len(after) > 100 and set(after["version"].astype(str)) == {"1"}


def test_an_aa_experiment_finds_no_difference_and_checks_the_split(tmp_path: Path) -> None:
    """aa in 10 s, 50/50 sticky by user: the controller never stops it, the verdict is no
    detectable difference on either metric (a false positive has a chance of at most alpha per
    metric: tests/test_experiment_twin.py measures it), and the sample-ratio check on the users
    is there and passes."""
    out = tmp_path / "run"
    doc = run_real(out, "scenario=aa", "duration_s=10")
    assert doc["status"] == "done" and doc["design_kind"] == "sequential" and not doc["stopped_early"]
    assert doc["looks"] >= 7 and doc["end_s"] == doc["planned_end_s"] == 10
    assert doc["verdict"]["decision"] == NO_DIFFERENCE
    assert [m["metric"] for m in doc["verdict"]["metrics"]] == ["accuracy", "latency_s"]
    assert all(m["winner"] is None and m["test"] == "mixture SPRT" for m in doc["verdict"]["metrics"])
    srm = doc["srm"]
    assert srm["unit"] == "user" and min(srm["counts"]) > 100 and srm["p_value"] >= srm["threshold"] and not srm["mismatch"]
    frame = assert_every_offered_request_recorded_once(out)
    per_user = frame.groupby("user_id")["version"].nunique()
    assert (per_user == 1).all()  # sticky: a user never switches variant
    assert set(frame["version"].astype(str)) == {"a", "b"}
    assert (out / "experiment.parquet").exists()
