"""The twin's feature lookup stage (sim.features): per batch, on the instance, before the model:
the replica's cache decides hits as the real server's does, misses cost one round trip, missing
entities fall back or fail as configured, and every offered request still ends in one record."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from sim.arrivals import make_schedule
from sim.config import FeatureConfig, ScenarioConfig
from scenarios.run_sim import simulate
from sim.features import (FeatureStage, LookupTimes, MeasuredLookup, ModelledLookup, coverage_warnings, feature_stream,
                          predicted_hit_ratio)
from sim.host import HostCosts
from sim.records import requests_frame, summarize
from sim.rng import make_streams
from sim.twin import Twin
from tests.conftest import scenario


def with_features(cfg: ScenarioConfig, **features: Any) -> ScenarioConfig:
    return dataclasses.replace(cfg, features=dataclasses.replace(FeatureConfig(), store="embedded", **features))


def run(cfg: ScenarioConfig, lookups: LookupTimes | None = None, host: HostCosts | None = None) -> Any:
    return requests_frame(Twin(cfg, lookups=lookups, host=host).run().columns)


def scheduled(cfg: ScenarioConfig) -> int:
    streams = make_streams(cfg.seed)
    return len(make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users).times_s)


# -- the cache against its theory -------------------------------------------------------------

# (Zipf exponent, users, entities, cache rows, TTL): the capacity binding (LRU, Che), the TTL
# binding, both at once, and a table missing a tail of the users (those never cached)
HIT_RATIO_CASES = [
    (0.8, 5000, 5000, 200, math.inf),
    (1.2, 2000, 2000, 1000, 2.0),
    (1.0, 4000, 4000, 300, 5.0),
    (1.0, 4000, 1000, 300, 5.0),
]


@pytest.mark.parametrize("zipf_s, users, entities, cache_size, ttl_s", HIT_RATIO_CASES)
def test_twin_hit_ratio_matches_the_lru_ttl_prediction(zipf_s: float, users: int, entities: int,
                                                       cache_size: int, ttl_s: float) -> None:
    """Tolerance 0.02 absolute. The twin's cache is the exact FeatureCache, so what separates it
    from the formula is (a) Che's approximation itself, within ~0.01 for Zipf popularity at
    these cache sizes (Fricker, Robert & Roberts 2012; exact at both TTL-only and LRU-only ends
    for the TTL extension), (b) binomial noise of ~24,000 lookups per replica, sd < 0.004,
    and (c) batching: a duplicate of a missed id in one batch counts as a miss, and rows enter
    the cache a round trip late, both rare at batches of ~2 and a 0.2 ms round trip."""
    cfg = with_features(
        scenario(duration_s=70.0, warmup_s=10.0, replicas=2, arrival=dict(rate=800.0, users=users, user_zipf_s=zipf_s)),
        entities=entities, cache_size=cache_size, cache_ttl_s=ttl_s)
    f = run(cfg)
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=cfg.replicas, concurrency=1,
                  hit_ratio_at=predicted_hit_ratio(cfg))
    features = s["features"]
    assert features["lookups"] == s["requests_measured"]
    assert 0.05 < features["predicted_hit_ratio"] < 0.95  # a case where the cache matters either way
    assert features["hit_ratio"] == pytest.approx(features["predicted_hit_ratio"], abs=0.02)
    assert features["hit_ratio_error"] == pytest.approx(features["hit_ratio"] - features["predicted_hit_ratio"])


def test_hits_are_the_feature_caches_decisions_replayed_on_the_same_ids() -> None:
    """Per replica, the requests' hit flags are exactly what a FeatureCache fed that replica's
    ids, batch by batch at the batches' start and rows put at the round trip's end, decides."""
    from sim.policy.features import FeatureCache, LookupPlan

    cfg = with_features(scenario(duration_s=10.0, replicas=2, arrival=dict(rate=600.0, users=300, user_zipf_s=1.0)),
                        entities=250, cache_size=40, cache_ttl_s=0.5)
    f = run(cfg)
    for _, mine in f.groupby("replica"):
        cache: FeatureCache[bool] = FeatureCache(cfg.features.cache_size, cfg.features.cache_ttl_s)
        pending: list[tuple[float, dict[int, bool]]] = []
        for _, batch in mine.sort_values(["start_s", "batch_id", "request_id"]).groupby(["start_s", "batch_id"], sort=True):
            now = float(batch["start_s"].iloc[0])
            for done_at, rows in sorted(pending, key=lambda p: p[0]):
                if done_at <= now:
                    cache.put_many(rows, done_at)
            pending = [p for p in pending if p[0] > now]
            plan = LookupPlan.make(batch["user_id"].tolist(), cache, now)
            expected = [e in plan.hits for e in plan.ids]
            assert batch["feature_hit"].tolist() == expected
            found = {e: True for e in plan.fetch if e < cfg.features.entities}
            pending.append((now + float(batch["feature_lookup_s"].iloc[0]), found))


# -- the round trip ---------------------------------------------------------------------------

class RecordingTime:
    """A lookup-time model that records how many ids each batch fetched."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fetched: list[int] = []

    def draw_s(self, fetched: int) -> float:
        self.fetched.append(fetched)
        return self.seconds if fetched else 0.0


def test_an_all_hit_batch_makes_no_round_trip() -> None:
    time = RecordingTime(0.001)
    stage = FeatureStage(FeatureConfig(store="embedded", entities=10, cache_size=8, cache_ttl_s=math.inf), time)
    first = stage.begin([1, 2, 2, 3], now=0.0)
    stage.done(first, now=first.duration_s)
    again = stage.begin([3, 1, 2], now=1.0)
    assert time.fetched == [3, 0]  # three distinct misses in one trip, then none at all
    assert first.duration_s == 0.001 and first.hit == [False] * 4
    assert again.duration_s == 0.0 and again.hit == [True] * 3 and again.failed is None and again.fallback is None


@pytest.mark.parametrize("fallback", ["default", "error"])
@pytest.mark.parametrize("round_trip_s", [0.001, 0.2])  # within the 0.05 s timeout, and over it
def test_stage_outcomes_are_lookup_plan_join_decisions(fallback: str, round_trip_s: float) -> None:
    from sim.policy.features import FallbackPolicy, FeatureCache, FeatureRow, LookupPlan

    f = FeatureConfig(store="embedded", entities=5, cache_size=3, cache_ttl_s=1.0, fallback=fallback, round_trip_s=round_trip_s)
    stage = FeatureStage(f, ModelledLookup(f.round_trip_s, 0.0))
    cache: FeatureCache[FeatureRow] = FeatureCache(f.cache_size, f.cache_ttl_s)
    rng = np.random.default_rng(3)
    now = 0.0
    for _ in range(200):
        ids = rng.integers(0, 8, size=int(rng.integers(1, 6))).tolist()  # ids 5..7 are missing entities
        got = stage.begin(ids, now)
        plan = LookupPlan.make(ids, cache, now)
        timed_out = bool(plan.fetch) and f.round_trip_s > f.timeout_s
        fetched = None if timed_out else [FeatureRow(e, np.zeros(1)) if e < 5 else None for e in plan.fetch]
        outcomes = plan.join(fetched, FallbackPolicy(fallback))  # type: ignore[arg-type]
        assert (got.fallback or [False] * len(ids)) == [o.fallback for o in outcomes]
        assert (got.failed or [False] * len(ids)) == [not o.ok for o in outcomes]
        assert got.duration_s == (0.0 if not plan.fetch else min(f.round_trip_s, f.timeout_s))
        now += got.duration_s
        stage.done(got, now)
        cache.put_many(plan.found(fetched) if fetched is not None else {}, now)
        now += float(rng.exponential(0.3))


def test_measured_hit_only_batch_takes_the_profiles_hit_only_time() -> None:
    times = LookupTimes("redis", {1: [3e-4], 8: [5e-4]}, hit_only_s=[2e-5])
    stage = FeatureStage(FeatureConfig(store="redis", entities=10, cache_size=8), MeasuredLookup(times, feature_stream(0)))
    stage.done(stage.begin([4, 5], now=0.0), now=1e-3)
    assert stage.begin([5, 4], now=0.01).duration_s == 2e-5


def test_in_the_twin_only_batches_with_a_miss_wait_for_the_store() -> None:
    cfg = with_features(scenario(duration_s=5.0, replicas=1, arrival=dict(kind="constant", rate=50.0, users=1),
                                 service=dict(kind="deterministic", base_s=0.002, per_item_s=0.0),
                                 batching=dict(max_batch_size=1, max_queue_delay_s=0.0)),
                        entities=5, cache_size=4, cache_ttl_s=math.inf, round_trip_s=0.003, per_miss_s=0.0)
    f = run(cfg).sort_values("arrival_s")
    hit = f["feature_hit"].to_numpy(dtype=bool)
    assert not hit[0] and hit[1:].all()  # one user: only the first request misses
    assert f["feature_lookup_s"].iloc[0] == 0.003 and (f["feature_lookup_s"].iloc[1:] == 0.0).all()
    latency = f["latency_s"].to_numpy()
    assert latency[0] == pytest.approx(0.005, abs=1e-12)
    assert latency[1:] == pytest.approx(np.full(len(f) - 1, 0.002), abs=1e-12)


def test_lookup_adds_its_modelled_time_to_latency() -> None:
    base = scenario(duration_s=4.0, replicas=1, arrival=dict(kind="constant", rate=40.0, users=50),
                    service=dict(kind="deterministic", base_s=0.004, per_item_s=0.001),
                    batching=dict(max_batch_size=1, max_queue_delay_s=0.0))
    plain = run(base)
    looked = run(with_features(base, entities=50, cache_size=0, round_trip_s=0.0007, per_miss_s=0.0001))
    assert looked["feature_lookup_s"].to_numpy() == pytest.approx(np.full(len(looked), 0.0008), abs=1e-12)
    added = looked["latency_s"].to_numpy() - plain["latency_s"].to_numpy()
    assert added == pytest.approx(np.full(len(plain), 0.0008), abs=1e-12)
    # the batch starts with its lookup; the model's time is the same as without one
    assert looked["start_s"].to_numpy() == pytest.approx(plain["start_s"].to_numpy(), abs=1e-12)
    assert looked["service_s"].to_numpy() == pytest.approx(plain["service_s"].to_numpy(), abs=1e-12)


def test_a_round_trip_over_the_timeout_is_cut_there_and_falls_back() -> None:
    cfg = with_features(scenario(duration_s=3.0, replicas=1, arrival=dict(rate=100.0, users=20)),
                        entities=20, cache_size=100, timeout_s=0.01, round_trip_s=0.05)
    f = run(cfg)
    assert (f["feature_lookup_s"] == 0.01).all()  # nothing is ever cached: every batch misses
    assert not f["feature_hit"].to_numpy(dtype=bool).any()
    assert f["feature_fallback"].all() and (f["status"] == "ok").all()
    failed = run(dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, fallback="error")))
    assert (failed["status"] == "error").all() and failed["service_s"].isna().all()


# -- missing entities: fallback or error, never lost ----------------------------------------------

def missing_entity_scenario(fallback: str) -> ScenarioConfig:
    base = scenario(duration_s=6.0, replicas=2, arrival=dict(rate=300.0, users=40),
                    service=dict(kind="deterministic", base_s=0.003, per_item_s=0.001),
                    batching=dict(max_batch_size=8, max_queue_delay_s=0.002))
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, backend="numpy"))  # answers are judged
    return with_features(base, entities=20, cache_size=16, fallback=fallback)


def test_missing_entity_with_default_fallback_is_served_and_never_judged() -> None:
    cfg = missing_entity_scenario("default")
    f = run(cfg)
    assert len(f) == scheduled(cfg) and f["request_id"].is_unique
    missing = f["user_id"].to_numpy() >= cfg.features.entities
    assert 0.3 < missing.mean() < 0.7
    assert (f["status"] == "ok").all()
    assert np.array_equal(f["feature_fallback"].to_numpy(), missing)
    assert f.loc[missing, "correct"].isna().all()
    assert f.loc[~missing, "correct"].notna().all()  # the others are judged as ever
    assert not f.loc[missing, "feature_hit"].to_numpy(dtype=bool).any()  # never cached
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=2, concurrency=1)
    assert s["features"]["fallbacks"] == int(missing[f["arrival_s"].to_numpy() >= cfg.warmup_s].sum())


def test_missing_entity_with_error_fallback_fails_without_running_the_model() -> None:
    cfg = missing_entity_scenario("error")
    f = run(cfg)
    assert len(f) == scheduled(cfg) and f["request_id"].is_unique
    missing = f["user_id"].to_numpy() >= cfg.features.entities
    assert np.array_equal((f["status"] == "error").to_numpy(), missing)
    assert (f.loc[~missing, "status"] == "ok").all()
    failed = f[missing]
    assert failed["service_s"].isna().all() and not failed["feature_fallback"].any()
    assert failed["finish_s"].to_numpy() == pytest.approx((failed["start_s"] + failed["feature_lookup_s"]).to_numpy())
    # the model ran each batch's other requests: its time is that of their number
    served = f[~missing]
    ran = served.groupby("batch_id")["request_id"].transform("size").to_numpy()
    assert served["service_s"].to_numpy() == pytest.approx(0.003 + 0.001 * ran)
    assert (served["batch_size"].to_numpy() >= ran).all() and (served["batch_size"].to_numpy() > ran).any()
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=2, concurrency=1)
    assert s["status_counts"]["error"] == int(missing[(f["arrival_s"] >= cfg.warmup_s).to_numpy()].sum())
    # the summary counts answered lookups, as the real stack can (it learns a lookup from the answer)
    assert s["features"]["lookups"] == s["status_counts"]["ok"] and s["features"]["fallbacks"] == 0
    assert s["batch_size_mean_per_batch"] is not None


def test_closed_loop_users_get_features_too() -> None:
    cfg = with_features(scenario(duration_s=3.0, replicas=1, arrival=dict(kind="closed", users=8, think_s=0.01)),
                        entities=4, fallback="error")
    f = run(cfg)
    assert len(f) > 100
    assert np.array_equal((f["status"] == "error").to_numpy(), f["user_id"].to_numpy() >= 4)
    assert f["feature_lookup_s"].notna().all()


# -- the summary and the records without a feature store ---------------------------------------

def test_without_a_feature_store_records_and_summary_have_none() -> None:
    cfg = scenario(duration_s=2.0, replicas=1)
    f = run(cfg)
    assert f["feature_lookup_s"].isna().all() and f["feature_hit"].isna().all() and not f["feature_fallback"].any()
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=1, concurrency=1,
                  hit_ratio_at=predicted_hit_ratio(cfg))
    assert "features" not in s
    assert predicted_hit_ratio(cfg) is None


def test_summary_lookup_times_count_each_batch_once() -> None:
    cfg = with_features(scenario(duration_s=5.0, replicas=1, arrival=dict(rate=500.0, users=10_000),
                                 batching=dict(max_batch_size=8, max_queue_delay_s=0.004)),
                        entities=10_000, cache_size=0, round_trip_s=0.001, per_miss_s=0.0001)
    f = run(cfg)
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=1, concurrency=1)["features"]
    started = f[(f["start_s"] >= cfg.warmup_s) & (f["start_s"] < cfg.duration_s)].drop_duplicates("batch_id")
    assert s["batches"] == len(started)
    per_batch = started["feature_lookup_s"].to_numpy()
    assert s["lookup_s"]["p50"] == pytest.approx(float(np.percentile(per_batch, 50)))
    assert s["hit_ratio"] == 0.0 and s["misses"] == s["lookups"]


# -- measured lookup times ------------------------------------------------------------------------

def test_measured_times_interpolate_between_fetch_sizes() -> None:
    times = LookupTimes("redis", {1: [1.0, 2.0], 4: [4.0, 8.0]}, hit_only_s=[0.5])
    assert times.sample_s(1, 0.0) == 1.0 and times.sample_s(4, 0.99) == 8.0
    assert times.sample_s(2, 0.0) == pytest.approx(2.0) and times.sample_s(3, 0.9) == pytest.approx(2 / 3 * 8.0 + 1 / 3 * 2.0)
    assert times.sample_s(0, 0.3) == 0.5
    # beyond the largest measured size: its quantile plus the last means' slope, (6 - 1.5) / 3 per id
    assert times.sample_s(6, 0.0) == pytest.approx(4.0 + 2 * 1.5)


def test_modelled_lookup_is_free_without_a_miss() -> None:
    model = ModelledLookup(0.001, 0.0002)
    assert model.draw_s(0) == 0.0 and model.draw_s(3) == pytest.approx(0.0016)


# -- the figures: the run report and the comparison -----------------------------------------------

def feature_summary(hit_ratio: float, p50_s: float, cfg: ScenarioConfig | None = None) -> dict[str, Any]:
    cfg = cfg or with_features(scenario(duration_s=4.0, replicas=1, arrival=dict(rate=200.0, users=100, user_zipf_s=1.0)),
                               entities=100, cache_size=20)
    s = summarize(run(cfg), warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=1, concurrency=1,
                  hit_ratio_at=predicted_hit_ratio(cfg))
    s["features"] |= {"hit_ratio": hit_ratio, "lookup_s": {"p50": p50_s, "p99": 2 * p50_s, "mean": p50_s}}
    return s


def test_comparison_has_hit_ratio_and_lookup_rows_only_with_a_feature_store() -> None:
    from reports.compare import compare_summaries, format_comparison_table

    twin, real = feature_summary(0.6, 0.0003), feature_summary(0.5, 0.0004)
    c = compare_summaries(twin, real)
    hit, lookup = c["metrics"]["feature_hit_ratio"], c["metrics"]["feature_lookup_p50"]
    assert (hit["predicted"], hit["measured"]) == (0.6, 0.5) and hit["rel_error"] == pytest.approx(0.2)
    assert hit["abs_error"] == pytest.approx(0.1)
    assert lookup["rel_error"] == pytest.approx(-0.25)
    table = format_comparison_table(c)
    assert "feature cache hit ratio" in table and "feature lookup p50" in table and "+20.0%" in table
    plain = scenario(duration_s=2.0, replicas=1)
    s = summarize(run(plain), warmup_s=plain.warmup_s, duration_s=plain.duration_s, replicas=1, concurrency=1)
    assert not {"feature_hit_ratio", "feature_lookup_p50"} & set(compare_summaries(s, s)["metrics"])


def test_run_report_and_terminal_summary_show_the_features() -> None:
    from reports.report import summary_rows
    from reports.text import format_summary

    s = feature_summary(0.5, 0.0003)
    rows = dict(summary_rows([s]))
    predicted = s["features"]["predicted_hit_ratio"]
    assert rows["feature cache hit ratio (measured / predicted)"] == [f"50.00% / {predicted:.2%}"]
    assert rows["feature lookup per batch p50 / p99"] == ["0.30 ms / 0.60 ms"]
    assert not any(label.startswith("features.") for label in rows)  # not repeated as raw extras
    assert f"hit ratio 0.500 (predicted {predicted:.3f})" in format_summary(s)


# -- every path through the twin keeps its accounting -------------------------------------------

PATHS: dict[str, dict[str, Any]] = {
    "instances": dict(concurrency=2),
    "modelled host, emulated device": dict(host=True),
    "modelled host, numpy model": dict(host=True, model="numpy"),
    "shared cores": dict(service=dict(kind="lognormal", base_s=0.004, per_item_s=0.0005, shared_cores=1)),
    "gateway hop and deadline": dict(timeout_s=0.02, gateway=dict(hop_s=0.0005)),
    "overload": dict(arrival=dict(rate=3000.0, users=60), batching=dict(max_batch_size=8, max_queue_delay_s=0.002, max_queue_size=16)),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fallback", ["default", "error"])
def test_every_offered_request_is_one_record_on_every_path(path: str, fallback: str) -> None:
    overrides = dict(PATHS[path])
    gateway, backend = overrides.pop("gateway", None), overrides.pop("model", None)
    host = HostCosts(cores=2, cpu_per_request_s={"loadgen": 1e-4, "gateway": 2e-4, "replica": 2e-4}, wake_s=5e-5,
                     handoff_s=5e-5) if overrides.pop("host", False) else None
    cfg = scenario(duration_s=4.0, replicas=2, **{"arrival": dict(rate=600.0, users=60), **overrides})
    if gateway is not None:
        cfg = dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway, **gateway))
    if backend is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend=backend))
    cfg = with_features(cfg, entities=40, cache_size=10, cache_ttl_s=0.5, round_trip_s=0.001, fallback=fallback)
    f = run(cfg, host=host)
    assert len(f) == scheduled(cfg) and f["request_id"].is_unique
    assert f["finish_s"].notna().all() and (f["finish_s"] >= f["arrival_s"]).all()
    started = f["start_s"].notna()
    assert (f.loc[started, "start_s"] >= f.loc[started, "arrival_s"]).all()
    assert (f.loc[started, "finish_s"] >= f.loc[started, "start_s"]).all()
    # a request that reached an instance had its lookup, and only those
    assert np.array_equal(f["feature_lookup_s"].notna().to_numpy(), started.to_numpy())
    assert np.array_equal(f["feature_hit"].notna().to_numpy(), started.to_numpy())
    missing = (f["user_id"] >= cfg.features.entities).to_numpy() & started.to_numpy()
    if fallback == "error":
        assert (f.loc[missing, "status"].isin(["error", "timeout"])).all() and f.loc[missing, "service_s"].isna().all()
    else:
        assert np.array_equal(f["feature_fallback"].to_numpy(), missing)


def test_closed_loop_users_are_predicted_as_equally_popular() -> None:
    """Each closed-loop user sends at the same rate whatever arrival.user_zipf_s says: the
    prediction takes them as uniform, and the twin agrees within 0.03: wider than for open
    loops, since a user never asks again while it waits and thinks, so its requests are more
    evenly spaced than the formula's independent ones (seen: 0.321 against 0.333)."""
    cfg = with_features(scenario(duration_s=40.0, warmup_s=10.0, replicas=1,
                                 arrival=dict(kind="closed", users=300, think_s=0.5, user_zipf_s=1.5)),
                        entities=300, cache_size=100, cache_ttl_s=math.inf)
    s = summarize(run(cfg), warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=1, concurrency=1,
                  hit_ratio_at=predicted_hit_ratio(cfg))["features"]
    assert s["predicted_hit_ratio"] < 0.5  # uniform over 300 users with 100 rows: about a third
    assert s["hit_ratio"] == pytest.approx(s["predicted_hit_ratio"], abs=0.03)


def test_capacity_counts_the_lookup_that_holds_the_instance() -> None:
    """At overload the twin answers what capacity_rps says, lookups included: with no cache every
    full batch waits a round trip before its model runs, so the device-only capacity is too high."""
    from sim.service import capacity_rps

    base = scenario(duration_s=6.0, warmup_s=1.0, replicas=1,
                    service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0005),
                    batching=dict(max_batch_size=8, max_queue_delay_s=0.001), arrival=dict(rate=4000.0))
    cfg = with_features(base, cache_size=0, round_trip_s=0.004, per_miss_s=0.0001)
    device_only = capacity_rps(base)
    with_lookup = capacity_rps(cfg)
    assert with_lookup == pytest.approx(8 / (0.008 + 0.004 + 0.0008))
    answered = summarize(run(cfg), warmup_s=1.0, duration_s=6.0, replicas=1, concurrency=1)["throughput"]
    assert answered == pytest.approx(with_lookup, rel=0.03)
    assert answered < 0.8 * device_only


def test_users_beyond_the_table_are_a_summary_warning_with_the_share_the_run_shows() -> None:
    cfg = missing_entity_scenario("default")
    frame, summary, _ = simulate(cfg)
    [note] = [w for w in summary["warnings"] if w.startswith("arrival.users")]
    share = float(note.split("about ")[1].split("%")[0]) / 100
    assert share == pytest.approx((frame["user_id"] >= cfg.features.entities).mean(), abs=0.05)
    assert coverage_warnings(dataclasses.replace(cfg, arrival=dataclasses.replace(cfg.arrival, users=cfg.features.entities))) == []
