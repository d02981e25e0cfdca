"""mode=profile's feature part: the configured store's lookup times per number of ids fetched
and for a hit-only batch, written into the profile (an additive field: old profiles still
load), and the twin drawing its lookups from them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from real.features.redis_server import INSTALL_HINT, redis_server_binary
from scenarios.profile import (feature_batches, feature_fetch_sizes, format_profile, measure_feature_lookups,
                               profile_warnings)
from sim.config import ConfigError, FeatureConfig, ScenarioConfig
from sim.features import LookupTimes, load_point, measured_lookups
from sim.profile import Profile, load_profile
from sim.records import requests_frame
from sim.twin import Twin
from tests.conftest import scenario


def feature_cfg(store: str, max_batch_size: int = 8) -> ScenarioConfig:
    cfg = scenario(batching=dict(max_batch_size=max_batch_size, max_queue_delay_s=0.002))
    return dataclasses.replace(cfg, features=dataclasses.replace(FeatureConfig(), store=store, entities=300))


def check_measured(times: LookupTimes, store: str, samples: int, max_batch_size: int) -> None:
    assert times.store == store
    assert sorted(times.fetch_s) == feature_fetch_sizes(max_batch_size)
    assert all(len(v) == samples for v in times.fetch_s.values()) and len(times.hit_only_s) == samples
    assert all(x > 0 for v in times.fetch_s.values() for x in v) and min(times.hit_only_s) > 0


def test_fetch_sizes_double_up_to_the_largest_batch() -> None:
    assert feature_fetch_sizes(1) == [1]
    assert feature_fetch_sizes(8) == [1, 2, 4, 8]
    assert feature_fetch_sizes(12) == [1, 2, 4, 8, 12]


def test_embedded_store_is_measured_per_fetch_size_and_hit_only() -> None:
    times = measure_feature_lookups(feature_cfg("embedded"), samples=20, warmup=2)
    check_measured(times, "embedded", 20, 8)
    assert times.meta["entities"] == 300


@pytest.mark.skipif(redis_server_binary() is None, reason=f"redis-server is not installed: {INSTALL_HINT}")
def test_redis_store_is_measured_against_a_private_server() -> None:
    times = measure_feature_lookups(feature_cfg("redis", max_batch_size=4), samples=20, warmup=2)
    check_measured(times, "redis", 20, 4)
    # a hit-only batch stays in the process; every fetch crosses loopback to the server
    assert np.median(times.hit_only_s) < np.median(times.fetch_s[1])


def test_no_store_is_not_measured() -> None:
    with pytest.raises(ValueError, match="features.store=none"):
        measure_feature_lookups(feature_cfg("none"), samples=5, warmup=0)


def profile_with(lookups: LookupTimes | None) -> Profile:
    return Profile(times_s={1: [0.004], 2: [0.005]}, meta={"backend": "emulated"}, feature_lookups=lookups)


def test_profile_keeps_the_lookup_times_through_its_file(tmp_path: Path) -> None:
    times = LookupTimes("embedded", {1: [1e-5, 2e-5], 4: [3e-5]}, hit_only_s=[4e-6], meta={"entities": 300})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_with(times).to_json()))
    loaded = load_profile(str(path)).feature_lookups
    assert loaded is not None
    assert (loaded.store, loaded.fetch_s, loaded.hit_only_s, loaded.meta) == (times.store, times.fetch_s, times.hit_only_s, times.meta)
    assert "feature lookup of a batch, embedded store" in format_profile(load_profile(str(path)))


def test_a_profile_without_lookup_times_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    doc = profile_with(None).to_json()
    assert "feature_lookups" not in doc
    path.write_text(json.dumps(doc))
    assert load_profile(str(path)).feature_lookups is None
    assert measured_lookups([load_profile(str(path))], 100.0) is None


@pytest.mark.parametrize("bad", [[], {"store": "redis", "fetch_s": {}, "hit_only_s": [1e-5]},
                                 {"store": "redis", "fetch_s": {"1": [1e-4]}, "hit_only_s": [1e-5], "by_rate": [{"rate": "x"}]},
                                 {"store": "redis", "fetch_s": {"1": [1e-4]}, "hit_only_s": [1e-5],
                                  "by_rate": [{"rate": 1.0, "excess_s": ["slow"]}]},
                                 {"store": "redis", "fetch_s": {"0": [1e-4]}, "hit_only_s": [1e-5]},
                                 {"store": "redis", "fetch_s": {"1": [-1.0]}, "hit_only_s": [1e-5]},
                                 {"store": "redis", "fetch_s": {"1": [1e-4]}, "hit_only_s": []}])
def test_bad_lookup_times_in_a_profile_are_a_config_error_naming_it(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "profile.json"
    doc = profile_with(None).to_json() | {"feature_lookups": bad}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    assert err.value.key == "service.profile" and str(path) in str(err.value) and "feature_lookups" in str(err.value)


def test_a_profile_of_another_store_is_a_warning() -> None:
    profile = profile_with(LookupTimes("embedded", {1: [1e-5]}, hit_only_s=[1e-6]))
    notes = profile_warnings(profile, feature_cfg("redis"))
    assert any("feature lookups of store 'embedded'" in note for note in notes)
    assert not any("feature lookups" in note for note in profile_warnings(profile, feature_cfg("embedded")))


def test_twin_draws_its_lookups_from_the_measured_times() -> None:
    times = LookupTimes("redis", {1: [2e-4, 3e-4], 8: [6e-4, 9e-4]}, hit_only_s=[1e-5, 2e-5])
    cfg = dataclasses.replace(feature_cfg("redis"), duration_s=5.0,
                              arrival=dataclasses.replace(ScenarioConfig().arrival, rate=400.0, users=400, user_zipf_s=1.0))
    f = requests_frame(Twin(cfg, lookups=times).run().columns)
    per_batch = f.drop_duplicates("batch_id")
    hit_only = per_batch[per_batch["batch_id"].map(f.groupby("batch_id")["feature_hit"].all())]
    fetched = per_batch.drop(hit_only.index)
    assert len(hit_only) > 10 and len(fetched) > 10
    assert set(hit_only["feature_lookup_s"]) <= {1e-5, 2e-5}
    # between the smallest and the largest measured fetch, whatever the number of misses
    assert fetched["feature_lookup_s"].between(2e-4, 9e-4).all()
    assert fetched["feature_lookup_s"].nunique() > 2  # interpolated between sizes, not one figure
    assert not math.isnan(f["feature_lookup_s"].mean())


# -- the lookups under load: the stack's own batches at the profile's load points ----------------

def test_feature_batches_count_the_distinct_ids_each_round_trip_fetched() -> None:
    import pandas as pd

    answered = pd.DataFrame({
        "batch_id": [0, 0, 0, 1, 1, 2, 3],
        "user_id": [5, 5, 6, 7, 8, 9, 1],
        "feature_hit": pd.array([False, False, True, True, True, False, None], dtype="boolean"),
        "feature_lookup_s": [3e-4, 3e-4, 3e-4, 2e-5, 2e-5, 4e-4, float("nan")],
    })
    # batch 0: user 5 missed twice (one id fetched); 1: all hits; 2: one miss; 3: no lookup
    assert feature_batches(answered) == [(1, 3e-4), (0, 2e-5), (1, 4e-4)]


def test_a_load_point_keeps_hit_only_times_and_round_trips_beyond_the_idle_mean() -> None:
    idle = LookupTimes("redis", {1: [1e-4, 3e-4], 4: [4e-4]}, hit_only_s=[1e-5])
    point = load_point(300.0, [(0, 2e-5), (1, 5e-4), (4, 1e-3), (2, 3e-4)], idle)
    assert point["rate"] == 300.0 and point["hit_only_s"] == [2e-5]
    assert point["excess_s"] == pytest.approx([5e-4 - 2e-4, 1e-3 - 4e-4, 3e-4 - idle.mean_s(2)])


def test_under_load_interpolates_the_points_by_rate_and_clamps_outside() -> None:
    idle = LookupTimes("redis", {1: [2e-4]}, hit_only_s=[1e-5], by_rate=[
        {"rate": 100.0, "hit_only_s": [2e-5], "excess_s": [1e-4]},
        {"rate": 300.0, "hit_only_s": [4e-5], "excess_s": [3e-4]},
    ])
    assert idle.excess_s == [] and idle.draw_s(1, 0.5, 0.5) == 2e-4  # idle: the measured sample
    mid = idle.under_load(200.0)
    assert np.allclose(mid.hit_only_s, 3e-5) and np.allclose(mid.excess_s, 2e-4)
    assert mid.draw_s(1, 0.9, 0.3) == pytest.approx(2e-4 + 2e-4) and mid.draw_s(0, 0.9, 0.3) == pytest.approx(3e-5)
    assert np.allclose(idle.under_load(10.0).excess_s, 1e-4) and np.allclose(idle.under_load(1e4).excess_s, 3e-4)
    assert LookupTimes("redis", {1: [2e-4]}, hit_only_s=[1e-5]).under_load(200.0).excess_s == []


def test_a_profiles_load_points_survive_its_file_and_reach_the_twin(tmp_path: Path) -> None:
    times = LookupTimes("redis", {1: [2e-4], 8: [6e-4]}, hit_only_s=[1e-5],
                        by_rate=[{"rate": 150.0, "hit_only_s": [3e-5], "excess_s": [5e-4, 7e-4]}])
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_with(times).to_json()))
    loaded = measured_lookups([load_profile(str(path))], 150.0)
    assert loaded is not None and loaded.by_rate == times.by_rate
    assert min(loaded.excess_s) == pytest.approx(5e-4, rel=1e-3) and max(loaded.excess_s) == pytest.approx(7e-4, rel=1e-3)
    cfg = dataclasses.replace(feature_cfg("redis"), duration_s=3.0,
                              arrival=dataclasses.replace(ScenarioConfig().arrival, rate=150.0, users=400, user_zipf_s=1.0))
    f = requests_frame(Twin(cfg, lookups=loaded).run().columns)
    per_batch = f.drop_duplicates("batch_id")
    fetched = per_batch[~per_batch["batch_id"].map(f.groupby("batch_id")["feature_hit"].all())]
    # a round trip under load: the idle mean for its ids plus the point's excess
    assert fetched["feature_lookup_s"].between(2e-4 + 5e-4, 6e-4 + 7e-4).all()
