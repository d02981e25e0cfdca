"""Shadow (mirror) traffic: which requests the gateway copies to the shadow version, and where.

Istio's mirroring and Flagger's traffic mirroring send a copy of live requests to a version no
user sees: its answers are measured (latency, errors, accuracy) and thrown away. A copy costs
the shadow replica's capacity like any request, which is why the twin models it; it must never
delay or change the primary answer, which is the transport's job (the twin enqueues the copy
beside the primary; the gateway fires it as a task and does not wait for it).

The decision is one draw per primary request from its own stream (`Streams.shadow`), never
from routing's: with the same seed, the routing stream draws exactly alike whether shadowing
is on or off. The copy's replica is the router's choice among the routable replicas of the
shadow version (its balancer, drawing from the shadow stream). A request whose primary
already went to the shadow version (a controller gave it weight, or the client pinned it) is
not copied: the copy would measure nothing new and double that request's cost. So the copy
never lands on the primary's replica: a replica serves one version.
"""

from __future__ import annotations

from typing import Sequence

from sim.config import ScenarioConfig
from sim.policy.lb import UniformSource
from sim.policy.split import NoReplica, Router

NOT_MIRRORED = -1  # target(): no copy for this request
NO_REPLICA = -2  # target(): a copy was due but no replica of the shadow version is routable


class Mirror:
    """The gateway's mirroring rule over a `Router`'s membership; holds no I/O and no clock."""

    def __init__(self, router: Router, version: int, percent: float, rng: UniformSource, max_in_flight: int) -> None:
        if not 0 <= version < len(router.membership.versions):
            raise ValueError(f"shadow version index must be in 0..{len(router.membership.versions) - 1}, got {version}")
        if not 0 <= percent <= 100:
            raise ValueError(f"shadow percent must be in [0, 100], got {percent}")
        self.router = router
        self.version = version
        self.share = percent / 100.0
        self.rng = rng
        self.max_in_flight = max_in_flight

    @classmethod
    def from_config(cls, cfg: ScenarioConfig, router: Router, rng: UniformSource) -> Mirror | None:
        """The configured mirror, or None when gateway.shadow_version is empty."""
        g = cfg.gateway
        if not g.shadow_version:
            return None
        version = router.membership.versions.index(g.shadow_version)
        return cls(router, version, g.shadow_percent, rng, g.shadow_max_in_flight)

    @property
    def version_name(self) -> str:
        return self.router.membership.versions[self.version]

    def target(self, primary_version: int, outstanding: Sequence[int], now: float, rng: UniformSource | None = None) -> int:
        """The replica that takes a copy of a request whose primary went to `primary_version`
        (-1: no replica could take the primary, which is then not copied either), or
        NOT_MIRRORED / NO_REPLICA.

        One decision draw per call whatever the outcome (then the balancer's draws, if a copy
        is made), so the twin and the gateway, calling it once per primary request, draw alike.
        The in-flight bound is the caller's to check (`admits`): only the transport knows when a
        copy is done. `rng` replaces the mirror's stream for one request that is no part of the
        run (the real stack's warm-up), so the run's requests draw as the twin's do."""
        rng = rng or self.rng
        if rng.random() >= self.share or primary_version < 0 or primary_version == self.version:
            return NOT_MIRRORED
        try:
            return self.router.route(None, outstanding, now, rng, version=self.version)
        except NoReplica:
            return NO_REPLICA

    def admits(self, in_flight: int) -> bool:
        """Room for one more copy: beyond `max_in_flight` copies are dropped, never queued, so a
        slow shadow version cannot pile work onto the gateway."""
        return in_flight < self.max_in_flight
