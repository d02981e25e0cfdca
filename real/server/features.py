"""The replica's feature lookup stage: one lookup per batch, on the model instance, before the model.

Where on the request's path (the contract the twin models, sim/): the batcher forms a batch as
it always does (`sim.policy.replica_queue`, unchanged), an instance takes it, and only then does
the instance fetch the batch's feature rows, holding the instance meanwhile:
- `LookupPlan.make(ids, cache, now)` against the replica's `FeatureCache(features.cache_size,
  features.cache_ttl_s)`: the rows the cache holds, fresh, are hits;
- the distinct misses in ONE `store.mget` (one Redis MGET), bounded by `features.timeout_s`; an
  all-hit batch makes no round trip; fetched rows go into the cache;
- the rows joined back to the batch's requests in order; an entity the store lacks (missing) or
  a lookup that failed or timed out goes to the `FallbackPolicy` (`features.fallback`): the
  declared default row, marked fallback and never judged, or a failure with its status (404
  missing, 503 timeout; never 500).

Per batch rather than per request because a batch's one round trip is the point of batching the
lookups: N requests share one MGET, and the instance would otherwise wait for N. The lookup's
duration is each of the batch's requests' `feature_lookup_s`; the batch's start (the records'
`start_s`) is when the lookup began, and `service_s` is the model's time after it.

No clock, no store of its own: both are handed in, so tests drive it with a fake store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Sequence

from real.features import FeatureStore
from sim.policy.features import FALLBACK_REASONS, FallbackPolicy, FeatureCache, FeatureRow, LookupOutcome, LookupPlan

Clock = Callable[[], float]


@dataclass
class LookupCounters:
    """Cumulative counts since the replica started: what /metrics and the stats document show."""

    lookups: int = 0  # requests looked up (each one entity)
    hits: int = 0
    misses: int = 0
    round_trips: int = 0  # store calls made (at most one per batch)
    batches: int = 0  # batches looked up
    lookup_ns: int = 0  # the batches' lookup time, summed
    fallbacks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FALLBACK_REASONS, 0))

    def document(self) -> dict[str, object]:
        return {"lookups": self.lookups, "hits": self.hits, "misses": self.misses, "round_trips": self.round_trips,
                "batches": self.batches, "lookup_ns": self.lookup_ns, "fallbacks": dict(self.fallbacks)}


@dataclass(frozen=True, slots=True)
class BatchLookup:
    """A batch's lookup: each request's outcome and whether its row came from the cache, in
    batch order, and how long the lookup took (the same for every request of the batch)."""

    outcomes: list[LookupOutcome]
    hits: list[bool]
    reasons: list[str | None]  # why a request got no row of its own (missing | timeout), else None
    lookup_s: float
    round_trips: int


# (batch lookup) -> None: the replica's metrics, told once per batch
Observer = Callable[[BatchLookup], None]


class FeatureStage:
    """One replica's lookups: its cache, its store, the timeout and the fallback."""

    def __init__(self, store: FeatureStore, cache: FeatureCache[FeatureRow], fallback: FallbackPolicy,
                 timeout_s: float, clock: Clock, name: str = "embedded", observe: Observer | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"lookup timeout must be > 0 seconds, got {timeout_s}")
        self.store = store
        self.cache = cache
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self.clock = clock
        self.name = name  # which store (features.store): the stats document says
        self.counters = LookupCounters()
        self.observe = observe

    async def lookup(self, ids: Sequence[int]) -> BatchLookup:
        """The rows of a batch's entities (one per request, in batch order), through the cache
        and at most one store round trip within `timeout_s`. Never raises for a slow, failing or
        absent store: those are outcomes (fallback rows or failures)."""
        plan, start = self.begin(ids)
        fetched = await self.fetch(plan) if plan.fetch else []
        return self.finish(plan, fetched, start)

    def begin(self, ids: Sequence[int]) -> tuple[LookupPlan[FeatureRow], float]:
        """The cache's part, at once: the plan (hits, and the misses to fetch) and its start.
        With nothing to fetch, `finish(plan, [], start)` follows at once: an all-hit batch never
        waits for the event loop (the batcher then runs it without a task)."""
        start = self.clock()
        return LookupPlan.make(ids, self.cache, start), start

    async def fetch(self, plan: LookupPlan[FeatureRow]) -> Sequence[FeatureRow | None] | None:
        """The plan's one round trip, its rows aligned with `plan.fetch`; None when the store
        failed or did not answer within `timeout_s` (every miss is then a timeout)."""
        try:
            fetched = await asyncio.wait_for(self.store.mget(plan.fetch), self.timeout_s)
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            return None  # FeatureStoreUnavailable is a ConnectionError
        return fetched if len(fetched) == len(plan.fetch) else None  # never join one entity's row to another

    def finish(self, plan: LookupPlan[FeatureRow], fetched: Sequence[FeatureRow | None] | None, start: float) -> BatchLookup:
        """The fetched rows into the cache, joined to the batch's requests; counted."""
        found: dict[int, FeatureRow] = {}
        if plan.fetch and fetched is not None:
            found = plan.found(fetched)
            self.cache.put_many(found, self.clock())
        outcomes = plan.join(fetched, self.fallback)
        lookup_s = self.clock() - start
        hits = [entity_id in plan.hits for entity_id in plan.ids]
        failed = "timeout" if fetched is None else "missing"
        reasons = [None if hit or entity_id in found else failed for entity_id, hit in zip(plan.ids, hits)]
        result = BatchLookup(outcomes, hits, reasons, lookup_s, plan.round_trips)
        self._count(result)
        return result

    def _count(self, result: BatchLookup) -> None:
        c = self.counters
        n_hits = sum(result.hits)
        c.lookups += len(result.hits)
        c.hits += n_hits
        c.misses += len(result.hits) - n_hits
        c.round_trips += result.round_trips
        c.batches += 1
        c.lookup_ns += int(result.lookup_s * 1e9)
        for reason in result.reasons:
            if reason is not None:
                c.fallbacks[reason] += 1
        if self.observe is not None:
            self.observe(result)

    def document(self) -> dict[str, object]:
        """The stats document's `feature_store` entry."""
        return {"store": self.name, "cache_rows": len(self.cache), "cache_size": self.cache.capacity,
                "fallback": self.fallback.mode, **self.counters.document()}

    async def close(self) -> None:
        await self.store.close()

