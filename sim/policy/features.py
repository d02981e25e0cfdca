"""The online feature store's decisions: a replica's cache, the batch's one round trip, the
fallback for an entity the store cannot give, and how often the cache should hit.

A request names an entity (a user id); before inference the replica needs that entity's feature
row. Written once for both worlds, as everything in sim/policy: the real server drives these
objects from asyncio around a store (real/features), the twin from SimPy around a lookup-latency
distribution. No clock, no global RNG, no I/O: `now` and the random stream are arguments.

- `FeatureCache`: per replica, at most `capacity` rows, each fresh for `ttl_s` after it was
  written (reading it does not refresh it: a row is as stale as its last fetch), least recently
  used evicted first. Counts hits, misses, expiries and evictions for the records and /metrics.
- `LookupPlan`: a batch's lookups, split into cache hits and the distinct misses fetched in ONE
  round trip (MGET / one pipeline), then joined back to the batch's requests in order.
- `FallbackPolicy`: what a request gets when its entity is missing or the lookup timed out: a
  declared default row marked as a fallback (so accuracy is never judged on it), or a client-
  facing error with a status code that is never 500.
- `ZipfPopularity` and `lru_ttl_hit_ratio`: entity ids drawn by popularity, and the hit ratio a
  cache of a given capacity and TTL should reach under it (Che's approximation, extended to TTL),
  which is how the twin predicts the cache without simulating every row.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, Iterable, Literal, Mapping, Sequence, TypeVar

import numpy as np

V = TypeVar("V")

FALLBACK_MODES = ("default", "error")
LookupFailureReason = Literal["missing", "timeout"]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields
class FeatureRow:
    """One entity's features as the model takes them, and its label when the table knows it.

    `fallback` marks a row the store did not give (the declared default): its `label` is None,
    so the request is served but never counted for or against accuracy.
    """

    entity_id: int
    features: np.ndarray  # float32, one row of the model's input
    label: int | None = None
    fallback: bool = False


@dataclass
class CacheCounters:
    """Cumulative counts since the cache was made. Every id asked for is one lookup, and is
    either a hit or a miss; an expired row found is a miss that is also counted as `expired`."""

    lookups: int = 0
    hits: int = 0
    misses: int = 0
    expired: int = 0
    evicted: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.lookups if self.lookups else math.nan


@dataclass
class _Entry(Generic[V]):
    value: V
    expires_s: float


class FeatureCache(Generic[V]):
    """A replica's LRU cache of feature rows with a time-to-live from the row's write.

    `capacity` 0 disables it (every lookup misses, nothing is kept). `ttl_s` may be math.inf
    (rows never go stale, only LRU evicts). Expired rows are removed before a write makes room,
    so a stale row never pushes out a fresh one: with one TTL for all rows, expiry order is
    write order, kept in a second ordered map, so both removals are O(1) each.
    """

    def __init__(self, capacity: int, ttl_s: float) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0 entries, got {capacity}")
        if not ttl_s > 0:
            raise ValueError(f"cache ttl must be > 0 seconds, got {ttl_s}")
        self.capacity = int(capacity)
        self.ttl_s = float(ttl_s)
        self.counters = CacheCounters()
        self._by_use: OrderedDict[int, _Entry[V]] = OrderedDict()  # least recently used first
        self._by_write: OrderedDict[int, None] = OrderedDict()  # oldest write (soonest expiry) first

    def __len__(self) -> int:
        return len(self._by_use)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._by_use

    def get_many(self, ids: Iterable[int], now: float) -> tuple[dict[int, V], list[int]]:
        """Fresh rows for `ids` (as a dict by id) and the distinct ids that missed, in first-
        asked order. Each id asked is one lookup: a duplicate of a hit is a hit, of a miss a miss."""
        hits: dict[int, V] = {}
        misses: dict[int, None] = {}
        c = self.counters
        for entity_id in ids:
            c.lookups += 1
            if entity_id in hits:
                c.hits += 1
                continue
            if entity_id in misses:
                c.misses += 1
                continue
            entry = self._by_use.get(entity_id)
            if entry is not None and entry.expires_s <= now:
                self._remove(entity_id)
                c.expired += 1
                entry = None
            if entry is None:
                c.misses += 1
                misses[entity_id] = None
            else:
                c.hits += 1
                self._by_use.move_to_end(entity_id)
                hits[entity_id] = entry.value
        return hits, list(misses)

    def put_many(self, values: Mapping[int, V], now: float) -> None:
        """Store freshly fetched rows, each fresh until now + ttl_s; evicts expired rows first,
        then the least recently used, so that at most `capacity` rows stay."""
        if self.capacity == 0:
            return
        self.expire(now)
        for entity_id, value in values.items():
            if entity_id in self._by_use:
                self._remove(entity_id)
            self._by_use[entity_id] = _Entry(value, now + self.ttl_s)
            self._by_write[entity_id] = None
            while len(self._by_use) > self.capacity:
                oldest = next(iter(self._by_use))
                self._remove(oldest)
                self.counters.evicted += 1

    def expire(self, now: float) -> int:
        """Remove every row stale at `now`; returns how many (each also counted as expired)."""
        removed = 0
        while self._by_write:
            entity_id = next(iter(self._by_write))
            if self._by_use[entity_id].expires_s > now:
                break
            self._remove(entity_id)
            removed += 1
        self.counters.expired += removed
        return removed

    def _remove(self, entity_id: int) -> None:
        del self._by_use[entity_id]
        del self._by_write[entity_id]


@dataclass(frozen=True)
class LookupFailure:
    """Why a request got no features, as the client will be told: never a 500, because neither
    an unknown entity nor a slow store is the server failing on its own. A missing entity is the
    client naming something that does not exist (404); a timed-out lookup is a dependency that
    did not answer in time, worth retrying later (503, with Retry-After)."""

    entity_id: int
    reason: LookupFailureReason
    status_code: int

    @property
    def message(self) -> str:
        if self.reason == "missing":
            return f"unknown entity {self.entity_id}: the feature store has no row for it"
        return f"feature lookup for entity {self.entity_id} timed out"


@dataclass(frozen=True)
class LookupOutcome:
    """One request's result of the lookup: a row (possibly the fallback) or a failure."""

    entity_id: int
    row: FeatureRow | None
    failure: LookupFailure | None = None

    @property
    def ok(self) -> bool:
        return self.row is not None

    @property
    def fallback(self) -> bool:
        return self.row is not None and self.row.fallback


STATUS_BY_REASON: dict[str, int] = {"missing": 404, "timeout": 503}
FALLBACK_REASONS = tuple(STATUS_BY_REASON)  # why a request got no row of its own


@dataclass(frozen=True)
class FallbackPolicy:
    """What a request gets when the store has no row for its entity, or did not answer in time.

    mode "default": the declared `default_features` (e.g. zeros), marked as a fallback with no
    label; mode "error": the request fails with the reason's status (404 missing, 503 timeout).
    """

    mode: Literal["default", "error"] = "default"
    default_features: tuple[float, ...] = (0.0,) * 64

    def __post_init__(self) -> None:
        if self.mode not in FALLBACK_MODES:
            raise ValueError(f"fallback mode {self.mode!r} is not one of {', '.join(FALLBACK_MODES)}")
        if self.mode == "default" and not self.default_features:
            raise ValueError("fallback mode 'default' needs a non-empty default feature vector")

    @classmethod
    def zeros(cls, width: int) -> FallbackPolicy:
        return cls("default", (0.0,) * width)

    def default_row(self, entity_id: int) -> FeatureRow:
        return FeatureRow(entity_id, np.asarray(self.default_features, dtype=np.float32), None, fallback=True)

    def decide(self, entity_id: int, reason: LookupFailureReason) -> LookupOutcome:
        if reason not in STATUS_BY_REASON:
            raise ValueError(f"unknown lookup failure {reason!r}")
        if self.mode == "default":
            return LookupOutcome(entity_id, self.default_row(entity_id))
        return LookupOutcome(entity_id, None, LookupFailure(entity_id, reason, STATUS_BY_REASON[reason]))


@dataclass(frozen=True)
class LookupPlan(Generic[V]):
    """A batch's feature lookups: what the cache answered and what to fetch in one round trip.

    `ids` holds one entity per request of the batch, in batch order (duplicates allowed: two
    requests of one user in one batch). `fetch` is the distinct misses in first-asked order, the
    keys of the batch's single MGET; empty when the cache answered everything (no round trip).
    """

    ids: tuple[int, ...]
    hits: Mapping[int, V]
    fetch: tuple[int, ...]

    @classmethod
    def make(cls, ids: Sequence[int], cache: FeatureCache[V], now: float) -> LookupPlan[V]:
        hits, misses = cache.get_many(ids, now)
        return cls(tuple(ids), hits, tuple(misses))

    @property
    def round_trips(self) -> int:
        return 1 if self.fetch else 0

    def found(self, fetched: Sequence[V | None]) -> dict[int, V]:
        """The fetched rows the store had, by id (what to put in the cache); `fetched` is the
        store's answer aligned with `fetch`, None where it has no row."""
        if len(fetched) != len(self.fetch):
            raise ValueError(f"the store answered {len(fetched)} rows for {len(self.fetch)} keys")
        return {entity_id: row for entity_id, row in zip(self.fetch, fetched) if row is not None}

    def join(
        self, fetched: Sequence[V | None] | None, policy: FallbackPolicy
    ) -> list[LookupOutcome]:
        """Each request's outcome, in batch order. `fetched` None means the round trip timed out
        (or failed): every miss is then decided as a timeout; a None row inside it, as missing."""
        if fetched is None:
            rows: dict[int, V] = {}
            reason: LookupFailureReason = "timeout"
        else:
            rows = self.found(fetched)
            reason = "missing"
        outcomes: list[LookupOutcome] = []
        for entity_id in self.ids:
            row = self.hits.get(entity_id)
            if row is None:
                row = rows.get(entity_id)
            if row is None:
                outcomes.append(policy.decide(entity_id, reason))
            else:
                outcomes.append(LookupOutcome(entity_id, row))  # type: ignore[arg-type]
        return outcomes


@dataclass(frozen=True)
class ZipfPopularity:
    """Entity popularity: entity k (0-based) is asked with probability proportional to
    1 / (k + 1) ** exponent, so entity 0 is the most popular; exponent 0 is uniform."""

    n_entities: int
    exponent: float
    probabilities: np.ndarray = field(init=False, repr=False, compare=False)
    _cdf: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_entities < 1:
            raise ValueError(f"need at least one entity, got {self.n_entities}")
        if not (math.isfinite(self.exponent) and self.exponent >= 0):
            raise ValueError(f"Zipf exponent must be a finite number >= 0, got {self.exponent}")
        weights = np.arange(1, self.n_entities + 1, dtype=np.float64) ** -float(self.exponent)
        p = weights / weights.sum()
        cdf = np.cumsum(p)
        cdf[-1] = 1.0
        object.__setattr__(self, "probabilities", p)
        object.__setattr__(self, "_cdf", cdf)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` entity ids (int64) from the caller's stream."""
        return np.searchsorted(self._cdf, rng.random(size), side="right").astype(np.int64)

    def hit_ratio(self, rate_per_s: float, capacity: int, ttl_s: float) -> HitRatioPrediction:
        return lru_ttl_hit_ratio(self.probabilities, rate_per_s, capacity, ttl_s)


@dataclass(frozen=True)
class HitRatioPrediction:
    hit_ratio: float  # of all lookups
    characteristic_time_s: float  # Che's T_C: how long an unused row stays; inf if capacity never binds
    per_entity: np.ndarray = field(repr=False, compare=False)  # each entity's hit probability


def _mean_lifetime_s(rates: np.ndarray, t_c: float, ttl_s: float) -> np.ndarray:
    """Mean time a row stays cached after a miss writes it, per entity of Poisson rate λ: it
    leaves at the first gap of T_C without a request (LRU, Che) or at ttl_s after its write,
    whichever comes first. E[min(TTL, τ)] = ∫_0^TTL P(τ > t) dt, where P(τ > t) is 1 before
    T_C, drops to 1 - e^{-λT_C} at T_C, then decays; the decay is taken exponential with the
    rate that makes the mean of τ exact, (e^{λT_C} - 1) / λ. So both ends are exact: TTL <= T_C
    gives the TTL-only cache, TTL = inf gives Che's LRU; in between it is an approximation."""
    if math.isinf(t_c):
        return np.full_like(rates, ttl_s)
    if ttl_s <= t_c:
        return np.full_like(rates, ttl_s)
    a = rates * t_c
    stay = -np.expm1(-a)  # P(τ > T_C)
    beyond = np.zeros_like(rates)
    live = stay > 0
    with np.errstate(over="ignore"):
        mean_tau = np.expm1(a[live]) / rates[live]
    tail = np.maximum(mean_tau - t_c, 0.0) / stay[live]  # the tail's mean beyond T_C (inf: never)
    span = ttl_s - t_c
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.where(np.isinf(tail), span, tail * -np.expm1(-span / np.where(tail > 0, tail, 1.0)))
    beyond[live] = stay[live] * np.where(tail > 0, kept, 0.0)
    return t_c + beyond


def _hit_probability(rates: np.ndarray, t_c: float, ttl_s: float) -> np.ndarray:
    """Per entity: a miss writes the row, the λ·E[lifetime] requests of its life hit, the next
    one misses again, so hit = λL / (1 + λL) (with TTL only, λ·TTL / (1 + λ·TTL), exact)."""
    hits_per_miss = rates * _mean_lifetime_s(rates, t_c, ttl_s)
    return 1.0 - 1.0 / (1.0 + hits_per_miss)  # this form is 1, not nan, for an endless life


def lru_ttl_hit_ratio(
    probabilities: np.ndarray, rate_per_s: float, capacity: int, ttl_s: float
) -> HitRatioPrediction:
    """The hit ratio of a `FeatureCache(capacity, ttl_s)` fed independent lookups at
    `rate_per_s`, entity i with probability `probabilities[i]` (Poisson, independent reference).

    Che's approximation: with capacity binding, a row stays a characteristic time T_C after its
    last use, T_C being where the expected number of cached rows, the sum of the per-entity hit
    probabilities (the fraction of time each is cached), equals the capacity; solved by
    bisection. If the TTL alone keeps fewer rows than the capacity, the capacity never binds.
    """
    if capacity < 0 or not ttl_s > 0 or not rate_per_s > 0:
        raise ValueError("need capacity >= 0, ttl_s > 0 and rate_per_s > 0")
    p = np.asarray(probabilities, dtype=np.float64)
    rates = p * float(rate_per_s)
    if capacity == 0:
        return HitRatioPrediction(0.0, 0.0, np.zeros_like(rates))
    # with the TTL alone (T_C infinite), how many rows would be cached on average?
    if math.isinf(ttl_s):
        ttl_only_rows = float(np.count_nonzero(rates > 0))
    else:
        ttl_only_rows = float(_hit_probability(rates, math.inf, ttl_s).sum())
    if ttl_only_rows <= capacity:
        per = _hit_probability(rates, math.inf, ttl_s) if not math.isinf(ttl_s) else (rates > 0).astype(np.float64)
        return HitRatioPrediction(float(p @ per), math.inf, per)

    def cached_rows(t_c: float) -> float:
        return float(_hit_probability(rates, t_c, ttl_s).sum())

    # bracket T_C around capacity / rate (exact for an LRU of rows each asked once), then
    # bisect geometrically: it spans orders of magnitude with a long tail of rare entities
    lo = hi = capacity / float(rate_per_s)
    while cached_rows(lo) > capacity:
        lo /= 2.0
    while cached_rows(hi) < capacity:
        hi *= 2.0
    while hi > lo * (1.0 + 1e-7):  # T_C to 1e-7: the hit ratio far finer than any measurement
        mid = math.sqrt(lo * hi)
        if cached_rows(mid) < capacity:
            lo = mid
        else:
            hi = mid
    t_c = 0.5 * (lo + hi)
    per = _hit_probability(rates, t_c, ttl_s)
    return HitRatioPrediction(float(p @ per), t_c, per)
