"""Service-time models: the means the twin promises and the profiles it replays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.config import ConfigError, ServiceConfig
from sim.profile import Profile, load_profile
from sim.service import ServiceTime


@pytest.mark.parametrize("kind, cv", [("deterministic", 0.0), ("exponential", 1.0), ("lognormal", 0.2), ("lognormal", 1.5)])
def test_mean_is_base_plus_per_item_and_spread_matches_kind(kind: str, cv: float) -> None:
    model = ServiceTime(ServiceConfig(kind=kind, base_s=0.004, per_item_s=0.0005, cv=cv), np.random.default_rng(0))
    draws = np.array([model.draw(8) for _ in range(200_000)])
    assert draws.mean() == pytest.approx(0.008, rel=0.01 if cv < 1.2 else 0.03)
    assert draws.std() / draws.mean() == pytest.approx(cv, abs=0.02 if cv < 1.2 else 0.15)


def test_profile_replays_measured_sizes_and_interpolates_the_rest() -> None:
    profile = Profile(times_s={1: [0.010, 0.012], 4: [0.020, 0.022, 0.024]})
    assert profile.mean_s(1) == pytest.approx(0.011)
    assert profile.mean_s(2) == pytest.approx(0.011 + (0.022 - 0.011) / 3)
    assert profile.sample_s(4, 0.0) == 0.020 and profile.sample_s(4, 0.99) == 0.024
    # size 3 takes size 4's shape scaled to the interpolated mean
    assert profile.sample_s(3, 0.5) == pytest.approx(0.022 * profile.mean_s(3) / 0.022)
    model = ServiceTime(ServiceConfig(kind="empirical"), np.random.default_rng(1), profile)
    assert set(round(model.draw(1), 6) for _ in range(200)) == {0.010, 0.012}


def test_profile_round_trips_through_json(tmp_path) -> None:
    profile = Profile(times_s={1: [0.01], 8: [0.02, 0.03]}, overheads_s={"before_s": [0.0004, 0.0005]}, meta={"backend": "emulated"})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile.to_json()))
    loaded = load_profile(str(path))
    assert loaded.times_s == profile.times_s and loaded.overheads_s == profile.overheads_s and loaded.meta == profile.meta


@pytest.mark.parametrize("content", [None, "{not json", '{"times_s": {}}', '{"times_s": {"1": []}}'])
def test_bad_profile_names_the_key(tmp_path, content: str | None) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert info.value.key == "service.profile"


def test_paired_overhead_samples_replay_the_measured_total() -> None:
    from sim.service import Overhead

    totals = np.array([0.001, 0.002, 0.010])
    overhead = Overhead(0.0, 0.0, np.random.default_rng(0), {"before_s": list(totals / 2), "after_s": list(totals / 2)})
    drawn = {round(sum(overhead.draw()), 9) for _ in range(300)}
    assert drawn == set(totals)  # never a mix of two requests' halves


def test_overhead_under_load_interpolates_between_measured_rates() -> None:
    profile = Profile(times_s={1: [0.01]}, overhead_by_rate=[{"rate": 100.0, "total_s": [0.002] * 10},
                                                             {"rate": 300.0, "total_s": [0.006] * 10}])
    mid = profile.overhead_samples(200.0)
    assert np.allclose(np.add(mid["before_s"], mid["after_s"]), 0.004)
    assert np.allclose(np.add(*profile.overhead_samples(50.0).values()), 0.002)  # clamped below
    assert np.allclose(np.add(*profile.overhead_samples(900.0).values()), 0.006)  # and above


@pytest.mark.parametrize("replicas, concurrency, shared_cores", [(2, 1, 0), (3, 2, 0), (4, 1, 1)])
def test_capacity_is_the_throughput_the_twin_reaches_at_overload(replicas: int, concurrency: int, shared_cores: int) -> None:
    from sim.records import requests_frame, summarize
    from sim.service import capacity_rps
    from sim.twin import Twin
    from tests.conftest import scenario

    cfg = scenario(duration_s=20.0, warmup_s=4.0, replicas=replicas, concurrency=concurrency, arrival=dict(rate=5000.0),
                   service=dict(kind="deterministic", base_s=0.004, per_item_s=0.001, shared_cores=shared_cores),
                   batching=dict(max_batch_size=8, max_queue_delay_s=0.001, max_queue_size=16))
    frame = requests_frame(Twin(cfg).run().columns)
    s = summarize(frame, warmup_s=4.0, duration_s=20.0, replicas=replicas, concurrency=concurrency)
    assert s["throughput"] == pytest.approx(capacity_rps(cfg), rel=0.02)
