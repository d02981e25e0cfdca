"""The gateway's metrics: Prometheus series, and the per-version window a controller reads.

A registry per app (not the global default) lets tests build many gateways in one process.
Per-replica series are bound once at start: `.labels()` on the hot path costs a dict lookup
and a lock per request. In-flight and health are read from the pool at scrape time, so the hot
path pays nothing for them.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sim.policy.controller import VersionWindow
from sim.policy.membership import Membership

# sub-millisecond buckets: the gateway's own overhead lives there
BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class _PoolCollector(Collector):
    def __init__(self, outstanding: list[int], membership: Membership) -> None:
        self.outstanding = outstanding
        self.membership = membership

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.membership
        inflight = GaugeMetricFamily("servelab_gateway_in_flight", "Requests sent to a replica and not yet answered", labels=["replica"])
        up = GaugeMetricFamily("servelab_gateway_replica_healthy", "1 while health checks pass, 0 while ejected", labels=["replica"])
        routable = GaugeMetricFamily("servelab_gateway_replica_routable", "1 while a replica takes new requests (healthy and not drained)", labels=["replica"])
        for r, n in enumerate(self.outstanding):
            inflight.add_metric([str(r)], n)
            up.add_metric([str(r)], 1.0 if m.healthy[r] else 0.0)
            routable.add_metric([str(r)], 1.0 if m.routable(r) else 0.0)
        yield inflight
        yield up
        yield routable


class GatewayMetrics:
    def __init__(self, n_replicas: int, outstanding: list[int], membership: Membership) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "servelab_gateway_request_seconds", "Time from request received to answer, as the gateway sees it",
            registry=self.registry, buckets=BUCKETS,
        )
        self.gateway_seconds = Histogram(
            "servelab_gateway_overhead_seconds", "Time spent in the gateway itself, upstream excluded",
            registry=self.registry, buckets=BUCKETS,
        )
        upstream = Histogram(
            "servelab_gateway_upstream_seconds", "Time waiting for a replica's answer",
            ["replica"], registry=self.registry, buckets=BUCKETS,
        )
        self.upstream_seconds = [upstream.labels(str(r)) for r in range(n_replicas)]
        self.retries = Counter("servelab_gateway_retries", "Requests retried on another replica after a connection failure", registry=self.registry)
        ejections = Counter("servelab_gateway_ejections", "Times a replica was taken out of rotation", ["replica"], registry=self.registry)
        self.ejections = [ejections.labels(str(r)) for r in range(n_replicas)]
        self._responses = Counter("servelab_gateway_responses", "Answers by HTTP status code", ["code"], registry=self.registry)
        self._by_code: dict[int, Counter] = {}
        self.registry.register(_PoolCollector(outstanding, membership))

    def count(self, status: int) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._responses.labels(str(status))
        child.inc()




class VersionWindows:
    """Each version's answers over the last `window_s` seconds: what a controller's metrics
    query returns (Flagger asks Prometheus the same over its analysis interval).

    A sliding window, kept exact and cheap: each infer appends one tuple, and records older
    than the window are dropped as new ones arrive, so memory is the window's requests at most
    and a read sorts only those. As in the twin, `ok` is a 2xx answer, `errors` a 5xx (4xx are
    the client's), and the latency percentiles are over the ok answers (a version that fails
    fast must not look fast).
    """

    def __init__(self, n_versions: int, window_s: float) -> None:
        self.window_s = window_s
        self._records: list[deque[tuple[float, float, int]]] = [deque() for _ in range(n_versions)]

    def add(self, version: int, status: int, latency_s: float, now: float) -> None:
        records = self._records[version]
        records.append((now, latency_s, status))
        self._forget(records, now)

    def window(self, version: int, now: float) -> VersionWindow:
        records = self._records[version]
        self._forget(records, now)
        latencies = [lat for _, lat, status in records if 200 <= status < 300]
        errors = sum(1 for _, _, status in records if status >= 500)
        p50: float | None = None
        p99: float | None = None
        if latencies:
            p50, p99 = (float(x) for x in np.percentile(latencies, [50, 99]))
        return VersionWindow(requests=len(records), ok=len(latencies), errors=errors, latency_p50_s=p50, latency_p99_s=p99)

    def windows(self, now: float) -> list[VersionWindow]:
        return [self.window(v, now) for v in range(len(self._records))]

    def _forget(self, records: deque[tuple[float, float, int]], now: float) -> None:
        horizon = now - self.window_s
        while records and records[0][0] < horizon:
            records.popleft()
