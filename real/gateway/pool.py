"""The replicas as the gateway sees them: where they are, how busy, whether in rotation.

One `aiohttp.ClientSession` with a keep-alive connector, bounded per replica, carries all infer
traffic, so a request normally reuses a warm connection (a fresh TCP handshake per request would
double the gateway's overhead). Health probes use a second, tiny session: a pool saturated by
slow infers must not make a healthy replica look dead.

Every decision is a shared policy object, driven here from asyncio as the twin drives it from
SimPy: the `Router` (over the run-time `Membership`) picks, with the twin's own routing stream
(`make_streams(seed).routing`), so the same seed routes the same way in both worlds; the
`HealthPolicy` turns probe results (every `health.probe_interval_s`) and failed upstream calls
into ejections and restorations, which `Membership` carries; the `RetryPolicy` says whether a
failed attempt is tried again.

The pool grows while traffic flows (`add`): a replica that joins gets its URL, its outstanding
count, its metric series and its probes; one that leaves (Membership.remove) keeps its index, so
records stay unambiguous, and is no longer probed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Sequence

import aiohttp
from yarl import URL

from real.gateway.metrics import GatewayMetrics
from sim.config import ScenarioConfig
from sim.policy.health import Change, HealthPolicy, Outcome, RetryPolicy
from sim.policy.split import Router
from sim.rng import make_streams

log = logging.getLogger("servelab.gateway")

READY_PATH = "/v2/health/ready"
NO_DEADLINE_TIMEOUT_S = 60.0  # the upstream timeout when neither it nor the client deadline is set


def upstream_timeout_s(cfg: ScenarioConfig) -> float:
    """gateway.upstream_timeout_s, else the client deadline (an answer after it is useless to the
    client), else a minute."""
    return cfg.gateway.upstream_timeout_s or cfg.timeout_s or NO_DEADLINE_TIMEOUT_S


def request_outcome(exc: BaseException) -> Outcome:
    """What a failed upstream call says about the replica, for the health and retry policies."""
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):  # before ClientOSError: it is one
        return Outcome.REFUSED
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return Outcome.DISCONNECTED
    return Outcome.FAILED  # an answer that was not HTTP


class ReplicaPool:
    def __init__(self, cfg: ScenarioConfig, urls: Sequence[str], router: Router) -> None:
        if len(urls) != len(router.membership):
            raise ValueError(f"{len(urls)} upstream URLs for {len(router.membership)} replicas")
        self.urls = [u.rstrip("/") for u in urls]
        self.router = router
        self.membership = router.membership
        h = cfg.health
        self.health = HealthPolicy(len(self.urls), h.failure_threshold, h.success_threshold)
        self.retry = RetryPolicy(h.retries)
        self.probe_interval_s = h.probe_interval_s
        self.probe_timeout_s = h.probe_timeout_s
        self.connections_per_replica = cfg.gateway.connections_per_replica
        self.upstream_timeout_s = upstream_timeout_s(cfg)
        # the twin's routing stream: the same seed draws the same routing decisions
        self.rng = make_streams(cfg.seed).routing
        # requests marked as no part of the run (WARMUP_HEADER) route with this one instead
        self.warmup_rng = random.Random(0x3A2B)
        # a plain list, not objects: the router reads it on every request
        self.outstanding: list[int] = [0] * len(self.urls)
        self.metrics = GatewayMetrics(len(self.urls), self.outstanding, self.membership)
        self.session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.timeout = aiohttp.ClientTimeout(total=self.upstream_timeout_s)
        self._url_cache: dict[tuple[int, str], URL] = {}

    async def start(self) -> None:
        # no total limit: the per-replica bound holds however many replicas join later
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.connections_per_replica,
            keepalive_timeout=30.0,
            ttl_dns_cache=None,
        )
        # no Content-Type of aiohttp's own: a body is forwarded with the client's (tritonclient
        # sends none; aiohttp's default application/octet-stream would change the request)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Content-Type"))
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s),
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

    def add(self, url: str) -> int:
        """The pool's side of a replica that just joined the membership (after AddReplica): its
        URL, outstanding count and metric series; the probe rounds take it from now on."""
        r = len(self.urls)
        if r != len(self.membership) - 1:
            raise ValueError(f"replica {r} is not the one that just joined ({len(self.membership)} members)")
        self.urls.append(url.rstrip("/"))
        self.outstanding.append(0)
        self.metrics.add_replica()
        return r

    # -- routing ---------------------------------------------------------------------------

    def pick(self, user_id: int | None, version: int | None, now: float, exclude: int = -1, warmup: bool = False) -> int:
        """The Router's choice among routable replicas; raises NoReplica when none is left.
        `warmup`: a request that is no part of the run draws from a throwaway stream."""
        rng = self.warmup_rng if warmup else self.rng
        return self.router.route(user_id, self.outstanding, now, rng, version=version, exclude=exclude)

    def url(self, r: int, path: str) -> URL:
        """The upstream URL, parsed once per (replica, path): yarl parsing is per-request cost otherwise."""
        key = (r, path)
        url = self._url_cache.get(key)
        if url is None:
            if len(self._url_cache) > 4096:  # paths come from clients: keep the cache bounded
                self._url_cache.clear()
            url = self._url_cache[key] = URL(self.urls[r] + path)
        return url

    async def ask_each(self, replicas: Sequence[int], method: str, path: str,
                       body: bytes = b"") -> list[tuple[int, int, bytes]]:
        """(replica, status, body) from each of `replicas` for one request, asked at once; a
        replica that does not answer within the probe timeout is left out (an index or
        statistics read is best-effort: it must not wait on a dead replica)."""
        session = self._probe_session
        assert session is not None

        async def one(r: int) -> tuple[int, int, bytes] | None:
            try:
                async with session.request(method, self.urls[r] + path, data=body if method == "POST" else None) as resp:
                    return r, resp.status, await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None

        answers = await asyncio.gather(*(one(r) for r in replicas))
        return [a for a in answers if a is not None]

    def any_routable(self) -> bool:
        m = self.membership
        return any(m.routable(r) for r in range(len(m)))

    # -- health ----------------------------------------------------------------------------

    def on_request(self, r: int, outcome: Outcome) -> None:
        """A proxied call's transport outcome (passive health checking)."""
        self._carry_out(self.health.on_request(r, outcome))

    def _carry_out(self, change: Change | None) -> None:
        """The health policy's verdict into Membership, which the router reads at every request."""
        if change is None:
            return
        self.membership.set_healthy(change.replica, change.healthy)
        if change.healthy:
            log.warning("replica %d (%s) back in rotation: %s", change.replica, self.urls[change.replica], change.reason)
        else:
            self.metrics.ejections[change.replica].inc()
            log.warning("replica %d (%s) ejected: %s", change.replica, self.urls[change.replica], change.reason)

    async def probe(self, r: int) -> None:
        self._carry_out(self.health.on_probe(r, await self._probe_outcome(r)))

    async def _probe_outcome(self, r: int) -> Outcome:
        assert self._probe_session is not None
        try:
            async with self._probe_session.get(self.urls[r] + READY_PATH) as resp:
                await resp.read()
                return Outcome.OK if resp.status == 200 else Outcome.FAILED
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return request_outcome(exc)

    async def probe_all(self) -> None:
        m = self.membership
        await asyncio.gather(*(self.probe(r) for r in range(len(m)) if not m.removed[r]))

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self.probe_all()
            except Exception:  # a probe bug must not stop health checking for good
                log.exception("health probe round failed")
