"""mode=rehearse's parts: the good scenario it compares with, one rehearsal's exposure, and the
operating characteristics' intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scenarios.cli import preflight
from scenarios.rehearse import _quantiles, good_version_of, operating_characteristics, rehearse_once
from sim.config import version_specs
from sim.policy.versions import NUMPY_DIGITS_ACCURACY


def test_the_good_scenario_makes_the_candidate_like_stable_and_drops_its_faults() -> None:
    cfg = preflight(["rollout.strategy=linear",
                     "model.versions=[{name:1,error_rate:0.001,accuracy:0.9,faults:[{at_s:4,error_rate:0.2}]},"
                     "{name:2,service_factor:2,error_rate:0.05,accuracy:0.5,faults:[{at_s:3,slowdown:4}]}]"])
    good = good_version_of(cfg)
    stable, candidate = version_specs(good.model)
    assert (candidate.name, candidate.service_factor, candidate.error_rate, candidate.accuracy) == ("2", 1.0, 0.001, 0.9)
    assert candidate.faults == []  # like stable, without stable's schedule: no fault of its own
    assert stable == version_specs(cfg.model)[0] and len(stable.faults) == 1  # stable's own fault stays: it is part of the scenario


def test_a_numpy_candidate_is_made_like_stable_through_the_models_measured_accuracy() -> None:
    cfg = preflight(["rollout.strategy=canary", "rollout.steps=[{set_weight:50}]", "model.backend=numpy", "model.versions=[2,3]"])
    good = good_version_of(cfg)
    assert good.model.backend == "emulated"  # the twin only reads a numpy model's accuracy as a number
    assert [v.accuracy for v in version_specs(good.model)] == [NUMPY_DIGITS_ACCURACY["2"]] * 2


def test_a_rehearsal_counts_what_the_candidate_served_before_the_verdict_only() -> None:
    cfg = preflight(["rollout.strategy=rolling", "model.versions=[1,{name:2,service_factor:3}]", "replicas=4",
                     "arrival.rate=300", "duration_s=14"])
    row = rehearse_once(cfg, "bad", 0)
    assert row["rolled_back"] and row["outcome"] == "aborted"
    # the rolling rollback takes ticks to carry out: the candidate serves on after the verdict
    assert 0 < row["canary_requests"] < row["canary_requests_total"]


@pytest.mark.parametrize("n", [20, 200])
def test_the_median_interval_covers_the_true_median_about_95_percent_of_the_time(n: int) -> None:
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(400):
        values = rng.exponential(10.0, n)
        q = _quantiles(values)
        lo, hi = q["p50_ci95"]
        assert lo <= q["p50"] <= hi
        hits += lo <= 10 * np.log(2) <= hi  # the exponential's median
    assert 0.92 <= hits / 400 <= 1.0


def test_the_median_interval_of_a_few_runs_is_their_whole_range_and_narrows_with_more() -> None:
    values = np.array([3.0, 9.0, 4.0])
    assert _quantiles(values)["p50_ci95"] == [3.0, 9.0]  # three runs cannot say more
    rng = np.random.default_rng(0)
    widths = [np.diff(_quantiles(rng.exponential(10.0, n))["p50_ci95"])[0] for n in (20, 2000)]
    assert widths[1] < widths[0] / 4


def test_operating_characteristics_give_wilson_intervals_per_scenario() -> None:
    runs = pd.DataFrame({"scenario": ["bad"] * 10 + ["good"] * 10, "rolled_back": [True] * 9 + [False] + [False] * 10,
                         "decided_s": [5.0] * 20, "canary_requests": [100] * 20, "canary_users": [50] * 20})
    oc = operating_characteristics(runs)
    assert oc["bad"]["rollback_probability"] == 0.9 and oc["good"]["rollback_probability"] == 0.0
    low, high = oc["bad"]["rollback_probability_ci95"]
    assert low < 0.9 < high < 1.0
    assert oc["good"]["rollback_probability_ci95"][0] == 0.0 < oc["good"]["rollback_probability_ci95"][1]
