"""Common random numbers: the twin and a real replica decide a request's failure and correctness
from one number, a pure function of (seed, request id, version, purpose)
(`sim.policy.versions.common_unit`). Here: the function itself, and the twin's use of it (its
request index; a shadow copy as its primary). The real replica's side is in
tests/real/test_quality.py, the gateway's routing after a warm-up in tests/real/test_gateway.py."""

from __future__ import annotations

import dataclasses
import timeit

import numpy as np
import pytest
from scipy import stats

from sim.config import ModelConfig, ScenarioConfig, validate
from sim.policy.versions import (
    CORRECT_DRAW,
    ERROR_DRAW,
    FLIP_DRAW,
    WRONG_DRAW,
    common_key,
    common_unit,
    common_units,
    unit_of,
)
from sim.records import requests_frame
from sim.twin import Twin
from tests.conftest import scenario

# --- the function ----------------------------------------------------------------------------


def test_a_common_number_is_a_pure_function_of_its_four_arguments() -> None:
    u = common_unit(3, 41, 1, ERROR_DRAW)
    assert 0.0 <= u < 1.0 and u == common_unit(3, 41, 1, ERROR_DRAW)  # no state anywhere
    others = {common_unit(4, 41, 1, ERROR_DRAW), common_unit(3, 42, 1, ERROR_DRAW),
              common_unit(3, 41, 0, ERROR_DRAW), common_unit(3, 41, 1, CORRECT_DRAW)}
    assert u not in others and len(others) == 4
    assert unit_of(common_key(3, 1, ERROR_DRAW), 41) == u


def test_the_bulk_numbers_are_the_one_at_a_time_numbers() -> None:
    bulk = common_units(9, 2, CORRECT_DRAW, 5000)
    assert bulk.dtype == np.float64 and bulk.tolist() == [common_unit(9, j, 2, CORRECT_DRAW) for j in range(5000)]


@pytest.mark.parametrize("purpose", [ERROR_DRAW, CORRECT_DRAW, WRONG_DRAW, FLIP_DRAW])
def test_common_numbers_are_uniform_and_independent_across_purposes_and_versions(purpose: int) -> None:
    n = 200_000
    u = common_units(0, 1, purpose, n)
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # consecutive request ids
    for other in (common_units(0, 1, purpose % 4 + 1, n), common_units(0, 2, purpose, n), common_units(1, 1, purpose, n)):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.01
    assert abs(np.mean(u < 0.02) - 0.02) < 4 * np.sqrt(0.02 * 0.98 / n)


def test_common_numbers_cost_little_on_the_twins_path() -> None:
    """The twin reads a precomputed array per (version, purpose); computing it for a million
    requests takes milliseconds, not the second a per-request hash in Python would."""
    seconds = min(timeit.repeat(lambda: common_units(0, 1, ERROR_DRAW, 1_000_000), number=1, repeat=3))
    assert seconds < 0.5, seconds


# --- the twin --------------------------------------------------------------------------------


def with_versions(cfg: ScenarioConfig, versions: list[object]) -> ScenarioConfig:
    cfg = dataclasses.replace(cfg, model=ModelConfig(versions=versions))
    validate(cfg)
    return cfg


def test_the_twin_fails_and_judges_request_i_by_its_common_numbers() -> None:
    cfg = with_versions(scenario(seed=5, duration_s=5.0, replicas=2, arrival=dict(rate=600.0), timeout_s=0.0),
                        [{"name": "1", "accuracy": 0.9}, {"name": "2", "error_rate": 0.2, "accuracy": 0.6}])
    f = requests_frame(Twin(cfg).run().columns)
    assert len(f) > 2000 and set(f["version"]) == {"1", "2"}
    for name, v, error_rate, accuracy in (("1", 0, 0.0, 0.9), ("2", 1, 0.2, 0.6)):
        rows = f[f["version"] == name]
        ids = rows["request_id"].to_numpy()
        fails = common_units(cfg.seed, v, ERROR_DRAW, len(f))[ids] < error_rate
        np.testing.assert_array_equal(rows["status"].to_numpy() == "error", fails)
        right = common_units(cfg.seed, v, CORRECT_DRAW, len(f))[ids] < accuracy
        answered = rows["status"].to_numpy() == "ok"
        np.testing.assert_array_equal(rows["correct"].to_numpy()[answered].astype(bool), right[answered])
    assert (f["status"] == "error").sum() > 50


def test_a_shadow_copy_is_judged_as_its_primarys_request_on_the_shadow_version() -> None:
    """The gateway copies the primary's body, id included: the copy's numbers are the primary's
    request id's, for the shadow version."""
    cfg = scenario(seed=2, duration_s=4.0, replicas=2, arrival=dict(rate=300.0), timeout_s=0.0)
    cfg = dataclasses.replace(cfg, model=ModelConfig(versions=["1", {"name": "2", "error_rate": 0.3}]),
                              gateway=dataclasses.replace(cfg.gateway, version_weights=[1.0, 0.0], shadow_version="2",
                                                          shadow_percent=50.0))
    validate(cfg)
    f = requests_frame(Twin(cfg).run().columns)
    primaries, copies = f[~f["shadow"]], f[f["shadow"]]
    assert len(copies) > 200 and (primaries["status"] == "ok").all()
    primary_of = {t: i for i, t in zip(primaries["request_id"], primaries["arrival_s"])}  # poisson: distinct times
    ids = np.array([primary_of[t] for t in copies["arrival_s"]])
    fails = common_units(cfg.seed, 1, ERROR_DRAW, len(primaries))[ids] < 0.3
    np.testing.assert_array_equal(copies["status"].to_numpy() == "error", fails)


def test_closed_loop_requests_draw_by_their_index_too() -> None:
    cfg = with_versions(scenario(seed=1, duration_s=3.0, replicas=1, timeout_s=0.0,
                                 arrival=dict(kind="closed", users=20, think_s=0.01)),
                        [{"name": "1", "error_rate": 0.25}])
    f = requests_frame(Twin(cfg).run().columns)
    ids = f["request_id"].to_numpy()
    np.testing.assert_array_equal(f["status"].to_numpy() == "error",
                                  np.array([common_unit(cfg.seed, int(i), 0, ERROR_DRAW) < 0.25 for i in ids]))
