"""The replicas as the gateway sees them: where they are, how busy, whether alive.

One `aiohttp.ClientSession` with a sized keep-alive connector carries all infer traffic, so a
request normally reuses a warm connection (a fresh TCP handshake per request would double the
gateway's overhead). Health probes use a second, tiny session: a pool saturated by slow infers
must not make a healthy replica look dead.

Ejection is passive (a refused connection takes the replica out at once) and active (a
probe of `/v2/health/ready` every `interval_s`); only a passing probe brings a replica back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Sequence

import aiohttp
from yarl import URL

from real.gateway.metrics import GatewayMetrics
from sim.policy.split import Router

log = logging.getLogger("servelab.gateway")

READY_PATH = "/v2/health/ready"


@dataclass
class PoolOptions:
    health_interval_s: float = 0.5
    health_timeout_s: float = 1.0
    # a probe that times out may only mean a busy replica: eject after this many in a row
    timeouts_to_eject: int = 2
    connections_per_replica: int = 256
    upstream_timeout_s: float = 60.0


class ReplicaPool:
    def __init__(self, urls: Sequence[str], router: Router, seed: int, options: PoolOptions) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.router = router
        self.options = options
        n = len(self.urls)
        # plain lists, not objects: the router reads them on every request
        self.outstanding: list[int] = [0] * n
        self.healthy: list[bool] = [True] * n
        self.all_healthy = True
        self.rng = random.Random(seed)
        self._timeouts = [0] * n
        self.metrics = GatewayMetrics(n, self.outstanding, self.healthy)
        self.session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.timeout = aiohttp.ClientTimeout(total=options.upstream_timeout_s)
        self._url_cache: dict[tuple[int, str], URL] = {}

    async def start(self) -> None:
        n = len(self.urls)
        connector = aiohttp.TCPConnector(
            limit=self.options.connections_per_replica * n,
            limit_per_host=self.options.connections_per_replica,
            keepalive_timeout=30.0,
            ttl_dns_cache=None,
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * n, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=self.options.health_timeout_s),
        )
        await self.probe_all()
        self._task = asyncio.create_task(self._probe_loop(), name="gateway-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for s in (self.session, self._probe_session):
            if s is not None:
                await s.close()

    # -- routing ---------------------------------------------------------------------------

    def pick(self, user_id: int | None, version: int | None, now: float, exclude: int = -1) -> int:
        """The Router's choice among healthy replicas; raises NoReplica when none is left."""
        if self.all_healthy and exclude < 0:
            return self.router.route(user_id, self.outstanding, now, self.rng, version=version)
        mask = list(self.healthy)
        if exclude >= 0:
            mask[exclude] = False
        return self.router.route(user_id, self.outstanding, now, self.rng, healthy=mask, version=version)

    def url(self, r: int, path: str) -> URL:
        """The upstream URL, parsed once per (replica, path): yarl parsing is per-request cost otherwise."""
        key = (r, path)
        url = self._url_cache.get(key)
        if url is None:
            if len(self._url_cache) > 4096:  # paths come from clients: keep the cache bounded
                self._url_cache.clear()
            url = self._url_cache[key] = URL(self.urls[r] + path)
        return url

    def any_healthy(self) -> bool:
        return any(self.healthy)

    # -- health ----------------------------------------------------------------------------

    def mark_down(self, r: int, reason: str) -> None:
        if self.healthy[r]:
            self.healthy[r] = False
            self.all_healthy = False
            self.metrics.ejections[r].inc()
            log.warning("replica %d (%s) ejected: %s", r, self.urls[r], reason)

    def mark_up(self, r: int) -> None:
        self._timeouts[r] = 0
        if not self.healthy[r]:
            self.healthy[r] = True
            self.all_healthy = all(self.healthy)
            log.warning("replica %d (%s) back in rotation", r, self.urls[r])

    async def probe(self, r: int) -> None:
        assert self._probe_session is not None
        try:
            async with self._probe_session.get(self.urls[r] + READY_PATH) as resp:
                await resp.read()
                ok = resp.status == 200
                reason = f"{READY_PATH} answered {resp.status}"
        except TimeoutError:
            self._timeouts[r] += 1
            if self._timeouts[r] >= self.options.timeouts_to_eject:
                self.mark_down(r, f"{self._timeouts[r]} health probes timed out")
            return
        except (aiohttp.ClientError, OSError) as exc:
            ok, reason = False, f"health probe failed: {exc.__class__.__name__}: {exc}"
        if ok:
            self.mark_up(r)
        else:
            self.mark_down(r, reason)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(r) for r in range(len(self.urls))))

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                await self.probe_all()
            except Exception:  # a probe bug must not stop health checking for good
                log.exception("health probe round failed")
