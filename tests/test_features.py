"""The online feature store's core: the replica cache, one round trip per batch, the fallback,
the Zipf hit-ratio prediction, the offline table and the embedded store."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.features.embedded import EmbeddedStore
from real.features.offline import FEATURE_COLUMNS, TABLE_COLUMNS, generate_table, read_table, write_table
from sim.config import ConfigError
from sim.policy.features import (
    FallbackPolicy,
    FeatureCache,
    FeatureRow,
    LookupPlan,
    ZipfPopularity,
    lru_ttl_hit_ratio,
)


def row(entity_id: int, value: float = 1.0) -> FeatureRow:
    return FeatureRow(entity_id, np.full(4, value, dtype=np.float32), label=entity_id % 10)


# ---- FeatureCache -------------------------------------------------------------------------


def test_cache_row_expires_ttl_after_its_write_not_its_last_read() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=10, ttl_s=5.0)
    cache.put_many({1: "a"}, now=0.0)
    assert cache.get_many([1], now=4.9) == ({1: "a"}, [])  # read at 4.9 does not extend it
    assert cache.get_many([1], now=5.0) == ({}, [1])
    assert (cache.counters.hits, cache.counters.misses, cache.counters.expired) == (1, 1, 1)
    assert 1 not in cache


def test_cache_rewrite_refreshes_the_ttl() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=10, ttl_s=5.0)
    cache.put_many({1: "a"}, now=0.0)
    cache.put_many({1: "b"}, now=3.0)
    assert cache.get_many([1], now=7.0) == ({1: "b"}, [])


def test_cache_evicts_the_least_recently_used_row() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=2, ttl_s=math.inf)
    cache.put_many({1: "a", 2: "b"}, now=0.0)
    cache.get_many([1], now=1.0)  # 2 is now the least recently used
    cache.put_many({3: "c"}, now=2.0)
    assert 2 not in cache and 1 in cache and 3 in cache
    assert cache.counters.evicted == 1


def test_cache_drops_expired_rows_before_evicting_a_fresh_one() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=2, ttl_s=5.0)
    cache.put_many({1: "old"}, now=0.0)
    cache.put_many({2: "fresh"}, now=4.0)
    cache.get_many([1], now=4.5)  # 1 is the most recently used, but stale by t=6
    cache.put_many({3: "new"}, now=6.0)
    assert 1 not in cache and 2 in cache and 3 in cache
    assert (cache.counters.expired, cache.counters.evicted) == (1, 0)


def test_cache_of_capacity_zero_keeps_nothing() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=0, ttl_s=1.0)
    cache.put_many({1: "a"}, now=0.0)
    assert cache.get_many([1, 1], now=0.0) == ({}, [1])
    assert len(cache) == 0 and cache.counters.misses == 2


def test_duplicate_ids_in_one_lookup_count_each_and_miss_once() -> None:
    cache: FeatureCache[str] = FeatureCache(capacity=4, ttl_s=10.0)
    cache.put_many({1: "a"}, now=0.0)
    hits, misses = cache.get_many([1, 2, 1, 2, 3], now=1.0)
    assert hits == {1: "a"} and misses == [2, 3]
    c = cache.counters
    assert (c.lookups, c.hits, c.misses) == (5, 2, 3)


_ops = st.lists(
    st.tuples(
        st.sampled_from(["get", "put"]),
        st.lists(st.integers(0, 12), min_size=0, max_size=6),
        st.floats(0.0, 3.0),
    ),
    max_size=60,
)


@given(capacity=st.integers(0, 6), ttl_s=st.floats(0.1, 20.0), ops=_ops)
@settings(max_examples=150, deadline=None)
def test_cache_invariants(capacity: int, ttl_s: float, ops: list[tuple[str, list[int], float]]) -> None:
    cache: FeatureCache[int] = FeatureCache(capacity, ttl_s)
    now = 0.0
    asked = 0
    for op, ids, step in ops:
        now += step
        if op == "get":
            hits, misses = cache.get_many(ids, now)
            asked += len(ids)
            assert set(hits).isdisjoint(misses) and set(hits) | set(misses) == set(ids)
            assert all(hits[i] == i for i in hits)  # a hit is the row written for that id
        else:
            cache.put_many({i: i for i in ids}, now)
        assert len(cache) <= capacity
        c = cache.counters
        assert c.hits + c.misses == c.lookups == asked


# ---- LookupPlan and FallbackPolicy -------------------------------------------------------


def test_a_batch_fetches_its_distinct_misses_in_one_round_trip() -> None:
    async def scenario() -> tuple[LookupPlan[FeatureRow], EmbeddedStore, list[FeatureRow | None]]:
        store = EmbeddedStore()
        store.materialise(generate_table(20, seed=0))
        cache: FeatureCache[FeatureRow] = FeatureCache(capacity=8, ttl_s=60.0)
        cache.put_many({3: row(3)}, now=0.0)
        plan = LookupPlan.make([5, 3, 5, 7, 3, 7, 5], cache, now=1.0)
        fetched = await store.mget(plan.fetch)
        cache.put_many(plan.found(fetched), now=1.0)
        return plan, store, fetched

    plan, store, fetched = asyncio.run(scenario())
    assert plan.fetch == (5, 7) and plan.round_trips == 1 and store.round_trips == 1
    outcomes = plan.join(fetched, FallbackPolicy.zeros(64))
    assert [o.entity_id for o in outcomes] == [5, 3, 5, 7, 3, 7, 5]
    assert all(o.ok and not o.fallback for o in outcomes)


def test_a_batch_the_cache_answers_needs_no_round_trip() -> None:
    cache: FeatureCache[FeatureRow] = FeatureCache(capacity=8, ttl_s=60.0)
    cache.put_many({1: row(1), 2: row(2)}, now=0.0)
    plan = LookupPlan.make([2, 1, 2], cache, now=1.0)
    assert plan.fetch == () and plan.round_trips == 0
    assert [o.row.entity_id for o in plan.join([], FallbackPolicy()) if o.row] == [2, 1, 2]


def test_default_fallback_serves_a_marked_unlabelled_row_for_a_missing_entity() -> None:
    cache: FeatureCache[FeatureRow] = FeatureCache(capacity=8, ttl_s=60.0)
    plan = LookupPlan.make([1, 2], cache, now=0.0)
    policy = FallbackPolicy("default", (0.5,) * 4)
    first, second = plan.join([row(1), None], policy)
    assert first.ok and not first.fallback and first.row is not None and first.row.label == 1
    assert second.ok and second.fallback and second.failure is None
    assert second.row is not None and second.row.label is None
    assert second.row.features.tolist() == [0.5] * 4


def test_error_fallback_fails_a_missing_entity_with_404_and_a_timeout_with_503() -> None:
    policy = FallbackPolicy("error")
    missing = policy.decide(9, "missing")
    timeout = policy.decide(9, "timeout")
    assert not missing.ok and missing.failure is not None and missing.failure.status_code == 404
    assert not timeout.ok and timeout.failure is not None and timeout.failure.status_code == 503
    assert "9" in missing.failure.message


def test_a_timed_out_round_trip_decides_every_miss_as_a_timeout_and_keeps_the_hits() -> None:
    cache: FeatureCache[FeatureRow] = FeatureCache(capacity=8, ttl_s=60.0)
    cache.put_many({1: row(1)}, now=0.0)
    plan = LookupPlan.make([1, 2, 3], cache, now=1.0)
    outcomes = plan.join(None, FallbackPolicy("error"))
    assert outcomes[0].ok
    assert [o.failure.reason for o in outcomes[1:] if o.failure] == ["timeout", "timeout"]


def test_fallback_policy_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="fallback mode"):
        FallbackPolicy("zeros")  # type: ignore[arg-type]


# ---- Zipf popularity and the predicted hit ratio -----------------------------------------


def test_zipf_draws_follow_the_declared_probabilities() -> None:
    popularity = ZipfPopularity(50, 1.1)
    draws = popularity.draw(np.random.default_rng(3), 200_000)
    assert draws.min() >= 0 and draws.max() < 50
    observed = np.bincount(draws, minlength=50) / len(draws)
    assert np.abs(observed - popularity.probabilities).max() < 0.005
    assert popularity.probabilities[0] > popularity.probabilities[1] > popularity.probabilities[-1]


def test_zipf_draws_repeat_with_the_seed() -> None:
    popularity = ZipfPopularity(100, 0.9)
    first = popularity.draw(np.random.default_rng(11), 1000)
    assert np.array_equal(first, popularity.draw(np.random.default_rng(11), 1000))


def simulated_hit_ratio(popularity: ZipfPopularity, rate_per_s: float, capacity: int, ttl_s: float, n: int) -> float:
    """Poisson lookups one at a time through a FeatureCache, misses written at once; the first
    fifth of the lookups warms the cache and is not counted."""
    rng = np.random.default_rng(7)
    ids = popularity.draw(rng, n).tolist()
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, n)).tolist()
    cache: FeatureCache[int] = FeatureCache(capacity, ttl_s)
    warm = n // 5
    for k, (entity_id, now) in enumerate(zip(ids, times)):
        if k == warm:
            hits0, lookups0 = cache.counters.hits, cache.counters.lookups
        _, misses = cache.get_many((entity_id,), now)
        if misses:
            cache.put_many({entity_id: entity_id}, now)
    return (cache.counters.hits - hits0) / (cache.counters.lookups - lookups0)


@pytest.mark.parametrize(
    "n_entities, exponent, capacity, ttl_s",
    [
        (1000, 0.8, 100, math.inf),  # LRU only: Che's approximation
        (1000, 0.8, 10_000, 1.0),  # TTL only: capacity never binds, the exact TTL formula
        (1000, 1.0, 100, 5.0),  # both, the TTL longer than the characteristic time
        (1000, 0.8, 100, 1.6),  # both, the TTL close to it
    ],
)
def test_predicted_hit_ratio_matches_a_simulated_cache(n_entities: int, exponent: float, capacity: int, ttl_s: float) -> None:
    popularity = ZipfPopularity(n_entities, exponent)
    predicted = popularity.hit_ratio(100.0, capacity, ttl_s)
    simulated = simulated_hit_ratio(popularity, 100.0, capacity, ttl_s, n=120_000)
    assert predicted.hit_ratio == pytest.approx(simulated, rel=0.04)


def test_capacity_binds_only_when_the_ttl_keeps_more_rows_than_it_holds() -> None:
    p = ZipfPopularity(1000, 0.8).probabilities
    assert lru_ttl_hit_ratio(p, 100.0, 10_000, 1.0).characteristic_time_s == math.inf
    assert lru_ttl_hit_ratio(p, 100.0, 50, 1.0).characteristic_time_s < 1.0


def test_predicted_hit_ratio_grows_with_capacity_and_ttl() -> None:
    p = ZipfPopularity(1000, 0.9).probabilities
    by_capacity = [lru_ttl_hit_ratio(p, 100.0, c, 10.0).hit_ratio for c in (0, 10, 100, 1000)]
    by_ttl = [lru_ttl_hit_ratio(p, 100.0, 100, t).hit_ratio for t in (0.1, 1.0, 10.0, math.inf)]
    assert by_capacity == sorted(by_capacity) and by_capacity[0] == 0.0
    assert by_ttl == sorted(by_ttl)
    assert lru_ttl_hit_ratio(p, 100.0, 1000, math.inf).hit_ratio == pytest.approx(1.0)


# ---- the offline table ---------------------------------------------------------------------


def test_offline_table_round_trips_and_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    written = write_table(path, 500, seed=4)
    back = read_table(path, "features.table")
    assert list(back.columns) == list(TABLE_COLUMNS)
    assert back["entity_id"].tolist() == list(range(500))
    assert back[list(FEATURE_COLUMNS)].dtypes.unique().tolist() == [np.dtype(np.float32)]
    pd.testing.assert_frame_equal(back, written)
    assert generate_table(500, seed=4).equals(written)
    assert not generate_table(500, seed=5).equals(written)


def test_offline_table_entities_are_held_out_images_with_their_labels() -> None:
    from real.models.digits import test_split

    images, labels = test_split()
    table = generate_table(len(images) + 3, seed=0)
    pixels = table[list(FEATURE_COLUMNS)].to_numpy()
    # every row is one held-out image with its own label; ids past the split wrap around
    first = [int(np.flatnonzero((images == pixels[e]).all(axis=1))[0]) for e in (0, 1, 2)]
    assert [int(labels[i]) for i in first] == table["label"].iloc[:3].tolist()
    assert np.array_equal(pixels[len(images)], pixels[0])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not parquet"), "is not a Parquet file"),
        (lambda p: generate_table(5, 0).drop(columns=["x7", "label"]).to_parquet(p), "lacks column(s) x7, label"),
        (lambda p: generate_table(5, 0).assign(x3="a").to_parquet(p), "column x3 is"),
        (lambda p: generate_table(5, 0).assign(entity_id=1).to_parquet(p), "entity 1 appears more than once"),
        (lambda p: generate_table(5, 0).iloc[:0].to_parquet(p), "has no rows"),
    ],
)
def test_a_bad_offline_table_is_one_config_error_naming_the_key(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "table.parquet"
    make(path)
    with pytest.raises(ConfigError) as info:
        read_table(path, "features.table")
    assert info.value.key == "features.table"
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---- the embedded store --------------------------------------------------------------------


def test_embedded_store_answers_aligned_rows_and_none_for_unknown_ids() -> None:
    table = generate_table(10, seed=1)
    store = EmbeddedStore()
    assert store.materialise(table) == 10
    rows = asyncio.run(store.mget([4, 99, -1, 4]))
    assert rows[1] is None and rows[2] is None
    assert rows[0] is not None and rows[0] is rows[3]
    assert rows[0].entity_id == 4 and rows[0].label == int(table["label"].iloc[4])
    assert rows[0].features.dtype == np.float32
    assert rows[0].features.tolist() == table[list(FEATURE_COLUMNS)].iloc[4].tolist()


def test_embedded_store_latency_is_per_call_and_a_closed_store_refuses() -> None:
    store = EmbeddedStore(latency_s=60.0)
    store.materialise(generate_table(3, seed=0))

    async def scenario() -> None:
        with pytest.raises(asyncio.TimeoutError):  # the delay is real: a short wait_for gives up
            await asyncio.wait_for(store.mget([0, 1, 2]), timeout=0.01)
        await store.close()
        with pytest.raises(RuntimeError, match="closed"):
            await store.mget([0])

    asyncio.run(scenario())
    assert store.round_trips == 1
