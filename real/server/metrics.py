"""Prometheus metrics of one replica.

Each app gets its own CollectorRegistry: tests build several apps in one process, and the
default global registry would refuse the second set of metric names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sim.policy.features import FALLBACK_REASONS

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from real.server.features import BatchLookup


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram(
            "servelab_request_latency_seconds",
            "Infer request time in the server, received to response ready",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_len = Gauge("servelab_queue_length", "Requests waiting in the batcher queue", registry=r)
        self.batch_size = Histogram(
            "servelab_batch_size", "Rows per dispatched batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.service = Histogram(
            "servelab_batch_service_seconds", "Model/device time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("servelab_in_flight", "Infer requests received and not yet answered", registry=r)
        self.requests = Counter("servelab_requests", "Infer requests answered, by status", ["status"], registry=r)
        self.shed = Counter("servelab_shed", "Requests refused with 503 because the queue was full", registry=r)
        self.timeouts = Counter("servelab_timeouts", "Requests whose parameters.timeout ran out while queued", registry=r)
        self.errors = Counter("servelab_errors", "Requests answered with an error, by HTTP status", ["code"], registry=r)
        self.ok = self.requests.labels("ok")  # bound once: .labels() is a locked dict lookup per call
        # the online feature store (features.store != none): one lookup per batch
        self.feature_lookups = Counter("servelab_feature_lookups", "Entity rows looked up, by where they came from "
                                       "(hit: the replica's cache; miss: fetched, or not had)", ["result"], registry=r)
        self.feature_round_trips = Counter("servelab_feature_round_trips", "Store calls made (at most one per batch)", registry=r)
        self.feature_lookup_seconds = Histogram("servelab_feature_lookup_seconds", "Feature lookup time per batch "
                                                "(cache and the one round trip)", buckets=LATENCY_BUCKETS, registry=r)
        self.feature_fallbacks = Counter("servelab_feature_fallbacks", "Requests that got no row of their own, by reason "
                                         "(missing: the store has none; timeout: the lookup failed or timed out); "
                                         "served the default row or failed, as features.fallback says", ["reason"], registry=r)
        self._hits = self.feature_lookups.labels("hit")
        self._misses = self.feature_lookups.labels("miss")
        for reason in FALLBACK_REASONS:
            self.feature_fallbacks.labels(reason)  # shown as 0 before the first

    def on_lookup(self, result: BatchLookup) -> None:
        hits = sum(result.hits)
        self._hits.inc(hits)
        self._misses.inc(len(result.hits) - hits)
        self.feature_round_trips.inc(result.round_trips)
        self.feature_lookup_seconds.observe(result.lookup_s)
        for reason in result.reasons:
            if reason is not None:
                self.feature_fallbacks.labels(reason).inc()

    def on_batch(self, size: int, service_s: float) -> None:
        self.batch_size.observe(size)
        self.service.observe(service_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
