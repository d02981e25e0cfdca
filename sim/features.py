"""The twin's feature lookup stage: what a replica's model instance does with a batch before
the model runs, and how long it takes.

The real server (real/server) looks features up PER BATCH, on the model instance, after the
batch formed and before the model runs: one `LookupPlan` against the replica's `FeatureCache`,
one round trip for the distinct misses, the fetched rows put into the cache, missing entities
decided by the `FallbackPolicy`. The twin drives the very same objects with the same entity ids
(the request's user_id), so which request hits, which row expires and which entity falls back
are the same decisions; only the round trip's duration is modelled:

- `ModelledLookup`: without a profile, `features.round_trip_s + features.per_miss_s * fetched`,
  and nothing for a batch the cache answered whole (no round trip).
- `MeasuredLookup`: the lookup times mode=profile measured against the configured store
  (`LookupTimes`, the profile's `feature_lookups`): a sample per number of ids fetched in one
  round trip, interpolated between the measured numbers, and the measured hit-only time for a
  batch the cache answered whole. `store=embedded` and `store=redis` differ only here.

A round trip longer than `features.timeout_s` is cut there: every miss of the batch is then
decided as a timeout (fallback, or 503), and nothing is put into the cache.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from sim.config import ConfigError, FeatureConfig, ScenarioConfig
from sim.policy.features import (FallbackPolicy, FeatureCache, FeatureRow, LookupFailureReason, LookupPlan, ZipfPopularity,
                                 lru_ttl_hit_ratio)

# The features' random stream: a child of the run's seed far past sim.rng.Streams' own children,
# so a stream appended there never moves (or collides with) this one.
FEATURE_STREAM_KEY = 64
_BUFFER = 16384
# what the twin's cache holds for an entity: a row standing for the store's (no pixels: only
# that the store had it matters to the decisions)
_PRESENT = FeatureRow(-1, np.zeros(0, dtype=np.float32))


def feature_stream(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(FEATURE_STREAM_KEY,)))


class LookupTime(Protocol):
    def draw_s(self, fetched: int) -> float:
        """One batch's lookup time: `fetched` distinct ids in its round trip (0: all hits)."""
        ...

    def mean_s(self, fetched: int) -> float:
        """The mean of `draw_s(fetched)` (what capacity counts)."""
        ...


@dataclass(frozen=True)
class ModelledLookup:
    """The round trip without a profile: a fixed cost plus one per row fetched; a batch the
    cache answered whole makes no round trip and costs nothing."""

    round_trip_s: float
    per_miss_s: float

    def draw_s(self, fetched: int) -> float:
        return self.round_trip_s + self.per_miss_s * fetched if fetched else 0.0

    mean_s = draw_s  # no spread to average


def _quantile(samples: Sequence[float], u: float) -> float:
    return samples[min(int(u * len(samples)), len(samples) - 1)]


@dataclass
class LookupTimes:
    """A store's measured lookup times, as mode=profile writes them into the profile
    (`feature_lookups`): the whole lookup of a batch (cache, one round trip for the misses,
    rows joined and cached) per number of ids fetched, and of a batch with no miss."""

    store: str  # embedded | redis: what was measured
    fetch_s: dict[int, list[float]]  # ids fetched in the round trip -> measured seconds, sorted
    hit_only_s: list[float]  # a batch the cache answered whole, sorted
    meta: dict[str, Any] = field(default_factory=dict)
    # the lookups of the stack's own batches under load (mode=profile's load points, the store
    # on), per offered rate: [{"rate": r, "hit_only_s": [...], "excess_s": [...]}], a hit-only
    # batch's time there and a round trip's time beyond the idle mean for its number of ids (a
    # busy replica loop, a store sharing the cores): `under_load` replays them at a run's rate
    by_rate: list[dict[str, Any]] = field(default_factory=list)
    # a round trip's time beyond the idle mean, sorted; empty: the idle samples as measured
    excess_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.fetch_s or any(not v for v in self.fetch_s.values()) or not self.hit_only_s:
            raise ValueError("measured lookups need samples for at least one fetch size, and hit-only samples")
        self.excess_s = sorted(float(x) for x in self.excess_s)
        self.fetch_s = {int(n): sorted(float(x) for x in v) for n, v in self.fetch_s.items()}
        self.hit_only_s = sorted(float(x) for x in self.hit_only_s)
        self._sizes = sorted(self.fetch_s)
        self._means = [float(np.mean(self.fetch_s[n])) for n in self._sizes]

    def mean_s(self, fetched: int) -> float:
        """The mean lookup time, interpolated (and beyond the largest size, extrapolated on the
        last two sizes' slope: a round trip's cost grows with its rows)."""
        if fetched <= 0:
            return float(np.mean(self.hit_only_s))
        return self.sample_s(fetched, math.nan)

    def sample_s(self, fetched: int, u: float) -> float:
        """The time at quantile u of a round trip of `fetched` ids: linear in `fetched` between
        the two measured sizes around it, the same quantile of each (u NaN: their means)."""
        if fetched <= 0:
            return float(np.mean(self.hit_only_s)) if math.isnan(u) else _quantile(self.hit_only_s, u)
        sizes = self._sizes

        def at(k: int) -> float:
            return self._means[k] if math.isnan(u) else _quantile(self.fetch_s[sizes[k]], u)

        k = bisect.bisect_left(sizes, fetched)
        if k < len(sizes) and sizes[k] == fetched:
            return at(k)
        if k == 0:
            return at(0)
        if k == len(sizes):
            last = len(sizes) - 1
            slope = 0.0 if last == 0 else max((self._means[last] - self._means[last - 1]) / (sizes[last] - sizes[last - 1]), 0.0)
            return at(last) + slope * (fetched - sizes[last])
        lo, hi = sizes[k - 1], sizes[k]
        w = (fetched - lo) / (hi - lo)
        return (1.0 - w) * at(k - 1) + w * at(k)

    def under_load(self, rate: float, n: int = 2048) -> LookupTimes:
        """These times at an offered `rate`: the hit-only samples and the round trips' excess
        of the two load points that bracket it, quantile by quantile, interpolated linearly in
        rate (clamped at the ends, as sim.profile's overheads are); as measured idle without
        load points. A point that had no batch of a kind keeps the idle times for it."""
        points = sorted(self.by_rate, key=lambda point: float(point["rate"]))
        if not points:
            return self
        rates = [float(point["rate"]) for point in points]
        k = bisect.bisect_left(rates, rate)
        lo, hi = points[max(k - 1, 0)], points[min(k, len(points) - 1)]
        span = rates[min(k, len(points) - 1)] - rates[max(k - 1, 0)]
        w = 0.0 if span <= 0 else min(max((rate - float(lo["rate"])) / span, 0.0), 1.0)
        q = (np.arange(n) + 0.5) / n

        def blend(name: str, idle: list[float]) -> list[float]:
            a, b = lo.get(name) or idle, hi.get(name) or idle
            if not a or not b:
                return []
            return ((1 - w) * np.quantile(a, q) + w * np.quantile(b, q)).tolist()

        return LookupTimes(self.store, self.fetch_s, blend("hit_only_s", self.hit_only_s), self.meta,
                           by_rate=self.by_rate, excess_s=blend("excess_s", []))

    def draw_s(self, fetched: int, u: float, v: float) -> float:
        """One batch's time from two uniforms: with a round trip under load, the idle mean for
        its ids plus an excess (quantile v); else the measured sample at quantile u."""
        if fetched > 0 and self.excess_s:
            return max(self.mean_s(fetched) + _quantile(self.excess_s, v), 0.0)
        return self.sample_s(fetched, u)

    def to_json(self) -> dict[str, Any]:
        doc = {"store": self.store, "fetch_s": {str(n): v for n, v in self.fetch_s.items()},
               "hit_only_s": self.hit_only_s, "meta": self.meta}
        if self.by_rate:
            doc["by_rate"] = self.by_rate
        return doc

    @classmethod
    def from_json(cls, raw: Any, path: str, key: str) -> LookupTimes:
        """The profile's `feature_lookups`, checked field by field: a ConfigError names the file."""
        where = f"profile {path}: feature_lookups"
        if not isinstance(raw, dict):
            raise ConfigError(key, f"{where} must be an object")
        fetch, hit_only, store = raw.get("fetch_s"), raw.get("hit_only_s"), raw.get("store")
        if not isinstance(store, str) or not isinstance(fetch, dict) or not fetch:
            raise ConfigError(key, f"{where} needs 'store' and 'fetch_s': ids fetched -> measured seconds")

        def seconds(value: Any, name: str) -> list[float]:
            if not (isinstance(value, list) and value and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in value)):
                raise ConfigError(key, f"{where}.{name} must be a non-empty list of seconds >= 0")
            return [float(x) for x in value]

        sizes: dict[int, list[float]] = {}
        for n, value in fetch.items():
            if not (isinstance(n, str) and n.isdigit() and int(n) >= 1):
                raise ConfigError(key, f"{where}.fetch_s keys must be numbers of ids >= 1, got {n!r}")
            sizes[int(n)] = seconds(value, f"fetch_s[{n}]")
        meta = raw.get("meta", {})
        by_rate = raw.get("by_rate", [])
        if not isinstance(by_rate, list) or not all(
                isinstance(p, dict) and isinstance(p.get("rate"), (int, float)) and math.isfinite(p["rate"]) for p in by_rate):
            raise ConfigError(key, f"{where}.by_rate must be a list of {{rate, hit_only_s, excess_s}}")
        points = []
        for p in by_rate:
            point: dict[str, Any] = {"rate": float(p["rate"])}
            for name in ("hit_only_s", "excess_s"):
                value = p.get(name, [])
                if not (isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        and math.isfinite(x) for x in value)):
                    raise ConfigError(key, f"{where}.by_rate {name} must be a list of seconds")
                point[name] = [float(x) for x in value]
            points.append(point)
        return cls(store, sizes, seconds(hit_only, "hit_only_s"), dict(meta) if isinstance(meta, dict) else {}, by_rate=points)


class MeasuredLookup:
    """Lookup times drawn from a profile's measurements (`LookupTimes`), one uniform per batch
    from the features' own stream (pre-drawn in blocks, as sim.service does)."""

    def __init__(self, times: LookupTimes, rng: np.random.Generator) -> None:
        self.times = times
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0

    def draw_s(self, fetched: int) -> float:
        if self._pos + 2 > len(self._buf):
            self._buf = self._rng.random(_BUFFER).tolist()
            self._pos = 0
        u, v = self._buf[self._pos], self._buf[self._pos + 1]
        self._pos += 2
        return self.times.draw_s(fetched, u, v)

    def mean_s(self, fetched: int) -> float:
        return self.times.mean_s(fetched)


def lookup_time(f: FeatureConfig, measured: LookupTimes | None, seed: int) -> LookupTime:
    """The run's lookup-time model: the profile's measurements when there are some, else the
    configured round trip."""
    if measured is not None:
        return MeasuredLookup(measured, feature_stream(seed))
    return ModelledLookup(f.round_trip_s, f.per_miss_s)


def measured_lookups(profiles: Sequence[Any], rate: float) -> LookupTimes | None:
    """The first of the run's loaded profiles (sim.profile.Profile) that measured lookups, as
    they are at the run's offered `rate` (`LookupTimes.under_load`)."""
    for profile in profiles:
        times = getattr(profile, "feature_lookups", None)
        if times is not None:
            return times.under_load(rate)
    return None


def load_point(rate: float, batches: Sequence[tuple[int, float]], idle: LookupTimes) -> dict[str, Any]:
    """One load point's entry of `LookupTimes.by_rate`, from the stack's batches measured at
    that rate, each as (distinct ids it fetched, its lookup time): hit-only batches' times as
    they are, and each round trip's time less the idle mean for its number of ids."""
    return {"rate": float(rate),
            "hit_only_s": [float(t) for n, t in batches if n == 0],
            "excess_s": [float(t) - idle.mean_s(n) for n, t in batches if n > 0]}


@dataclass(slots=True)
class BatchLookup:
    """One batch's lookup as it happened: how long it took and, per request in batch order,
    whether its row came from the cache, whether it got the fallback row, and whether it failed
    (fallback=error: the request is answered with an error and the model does not run for it).
    `fallback` and `failed` are None when every request got its own row (the common case)."""

    duration_s: float
    hit: list[bool]
    fallback: list[bool] | None
    failed: list[bool] | None
    found: dict[int, FeatureRow]  # rows the round trip brought, to cache when it ends


class FeatureStage:
    """A replica's lookup stage: its cache, the run's fallback and lookup-time model, and the
    table's entity range (an id >= `entities` is a missing entity). The caller holds the
    instance for `duration_s`, then calls `done` so the fetched rows enter the cache when the
    round trip returned, as the real instance puts them."""

    __slots__ = ("cache", "policy", "time", "entities", "timeout_s")

    def __init__(self, f: FeatureConfig, time: LookupTime) -> None:
        self.cache: FeatureCache[FeatureRow] = FeatureCache(f.cache_size, f.cache_ttl_s)
        self.policy = FallbackPolicy(f.fallback)  # type: ignore[arg-type]  (validated by the config)
        self.time = time
        self.entities = f.entities
        self.timeout_s = f.timeout_s

    def begin(self, ids: Sequence[int], now: float) -> BatchLookup:
        """The batch's plan against the cache, its round trip's time, and each request's
        outcome as `LookupPlan.join` decides it (a hit, a fetched row, else the policy's
        decision for a missing entity or a timed-out trip), without building the rows."""
        plan = LookupPlan.make(ids, self.cache, now)
        fetch = plan.fetch
        duration = self.time.draw_s(len(fetch))
        hits = plan.hits
        hit = [e in hits for e in ids]
        if not fetch:  # the cache answered the whole batch: no round trip
            return BatchLookup(duration, hit, None, None, {})
        if duration > self.timeout_s:  # the round trip is cut at the timeout: every miss fails
            duration = self.timeout_s
            found: dict[int, FeatureRow] = {}
            reason: LookupFailureReason = "timeout"
        else:
            entities = self.entities
            found = plan.found([_PRESENT if 0 <= e < entities else None for e in fetch])
            reason = "missing"
            if len(found) == len(fetch):
                return BatchLookup(duration, hit, None, None, found)
        decided = {e: self.policy.decide(e, reason) for e in fetch if e not in found}
        return BatchLookup(
            duration_s=duration,
            hit=hit,
            fallback=[e in decided and decided[e].fallback for e in ids],
            failed=[e in decided and not decided[e].ok for e in ids],
            found=found,
        )

    def done(self, lookup: BatchLookup, now: float) -> None:
        if lookup.found:
            self.cache.put_many(lookup.found, now)


def make_feature_stages(cfg: ScenarioConfig, measured: LookupTimes | None) -> Callable[[], FeatureStage] | None:
    """A factory of replica lookup stages sharing one lookup-time model (one stream), or None
    when the run has no feature store."""
    f = cfg.features
    if f.store == "none":
        return None
    time = lookup_time(f, measured, cfg.seed)
    return lambda: FeatureStage(f, time)


def entity_probabilities(cfg: ScenarioConfig) -> np.ndarray:
    """Each entity's share of the lookups: the users' popularity (arrival.user_zipf_s over
    arrival.users, uniform at 0; closed-loop users each send alike: uniform), with the ids the
    table lacks zeroed: a missing entity is never cached, so it takes no room and never hits."""
    a = cfg.arrival
    exponent = 0.0 if a.kind == "closed" else max(a.user_zipf_s, 0.0)
    p = ZipfPopularity(a.users, exponent).probabilities.copy()
    p[cfg.features.entities:] = 0.0
    return p


def coverage_warnings(cfg: ScenarioConfig) -> list[str]:
    """Users the feature table has no row for: each of their requests is a missing entity (the
    default row, or a 404 with features.fallback=error). Said in the summary, since a table
    smaller than the users is seldom what was meant, yet it is a scenario one may want."""
    f, a = cfg.features, cfg.arrival
    if f.store == "none" or a.kind == "trace" or a.users <= f.entities:
        return []
    missing = 1.0 - float(entity_probabilities(cfg).sum())
    return [f"arrival.users ({a.users}) > features.entities ({f.entities}): users {f.entities}.. have no feature row, "
            f"so about {missing:.1%} of requests are missing entities (features.fallback={f.fallback})"]


def mean_batch_lookup_s(cfg: ScenarioConfig, measured: LookupTimes | None, batch_size: int, rate_per_replica: float) -> float:
    """A batch's mean lookup time, for capacity: the instance is held while it runs, so a
    replica's full batch costs this on top of its model time. With the predicted hit ratio h
    (0 where none is predicted, e.g. a trace), a batch of b makes no round trip with
    probability h**b and otherwise fetches b(1 - h) / (1 - h**b) rows on average; missing
    entities are misses (the store is asked and says no)."""
    f = cfg.features
    if f.store == "none":
        return 0.0
    predict = predicted_hit_ratio(cfg)
    h = predict(rate_per_replica) if predict is not None else 0.0
    h = min(max(h if math.isfinite(h) else 0.0, 0.0), 1.0)
    all_hit = h ** batch_size
    time = lookup_time(f, measured, cfg.seed)  # the twin's own lookup-time model: its mean
    if all_hit >= 1.0:
        return time.mean_s(0)
    fetched = max(1, round(batch_size * (1.0 - h) / (1.0 - all_hit)))
    return all_hit * time.mean_s(0) + (1.0 - all_hit) * time.mean_s(fetched)


def predicted_hit_ratio(cfg: ScenarioConfig) -> Callable[[float], float] | None:
    """The cache's hit ratio a replica should reach at a given rate of lookups (its requests
    per second), by Che's approximation with the TTL (sim.policy.features.lru_ttl_hit_ratio),
    for the summary to print beside the measured one; None without a feature store, or with a
    trace (its users are its own, not drawn by a popularity). Assumes requests reach replicas
    independently of their user (every load balancer here does)."""
    f = cfg.features
    if f.store == "none" or cfg.arrival.kind == "trace":
        return None
    p = entity_probabilities(cfg)
    if not p.any():
        return lambda _rate: 0.0

    def at(rate_per_replica: float) -> float:
        if not rate_per_replica > 0:
            return math.nan
        return lru_ttl_hit_ratio(p, rate_per_replica, f.cache_size, f.cache_ttl_s).hit_ratio

    return at
