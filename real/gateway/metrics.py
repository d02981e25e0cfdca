"""The gateway's metrics: Prometheus series (the per-version window a controller reads is
`sim.policy.windows.VersionWindows`, shared with the twin).

A registry per app (not the global default) lets tests build many gateways in one process.
Per-replica series are bound once per replica (at start, and when one joins at run time):
`.labels()` on the hot path costs a dict lookup and a lock per request. In-flight and health
are read from the pool at scrape time, so the hot path pays nothing for them.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
        self._upstream = upstream = Histogram(
            "servelab_gateway_upstream_seconds", "Time waiting for a replica's answer",
            ["replica"], registry=self.registry, buckets=BUCKETS,
        )
        self.upstream_seconds = [upstream.labels(str(r)) for r in range(n_replicas)]
        self.retries = Counter("servelab_gateway_retries", "Requests retried on another replica after a connection failure", registry=self.registry)
        self._ejections = ejections = Counter("servelab_gateway_ejections", "Times a replica was taken out of rotation",
                                              ["replica"], registry=self.registry)
        self.ejections = [ejections.labels(str(r)) for r in range(n_replicas)]
        self._responses = Counter("servelab_gateway_responses", "Answers by HTTP status code", ["code"], registry=self.registry)
        self._by_code: dict[int, Counter] = {}
        self.registry.register(_PoolCollector(outstanding, membership))

    def add_replica(self) -> None:
        """The series of a replica that joined at run time (index: the next one)."""
        r = str(len(self.upstream_seconds))
        self.upstream_seconds.append(self._upstream.labels(r))
        self.ejections.append(self._ejections.labels(r))

    def count(self, status: int) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._responses.labels(str(status))
        child.inc()
