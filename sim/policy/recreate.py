"""Recreate, as a Kubernetes Deployment's Recreate strategy does it: stop all, then start all.

At the first tick every stable replica is removed (no new request reaches them; those they
hold finish) and all traffic is pointed at the new version; at the next tick, once the old ones
are gone, as many new replicas start. Between the two, nothing can serve: the gateway answers
503 until the first new replica is ready. That downtime is the strategy's cost and is measured
(the run's capacity dip and its shed requests), not hidden.

It is the rolling procedure (`sim.policy.rolling`) with every replica allowed to be unavailable
and none to surge, and new replicas started only when no old one is left. A rollback (the
analysis failed once the new version took traffic, or `abort()`) recreates the other way:
another downtime, then stable again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.policy.analysis import Analysis
from sim.policy.rolling import RollingController, RollingSpec


@dataclass(frozen=True)
class RecreateSpec:
    analysis: Analysis | None = field(default_factory=Analysis)
    interval_s: float = 1.0
    stable: int = 0
    canary: int = 1


class RecreateController(RollingController):
    strategy = "recreate"

    def __init__(self, spec: RecreateSpec, n_versions: int = 2) -> None:
        # the surge and unavailable bounds below replace these; the spec only carries the rest
        super().__init__(RollingSpec(0, 1, spec.analysis, spec.interval_s, spec.stable, spec.canary), n_versions)

    def bounds(self, n: int) -> tuple[int, int]:
        return 0, n

    def may_start(self, source_left: int, removed_now: int) -> bool:
        return source_left == 0 and removed_now == 0

    rollback_words = "recreating stable (stop all, start all)"

    def describe(self, n: int) -> str:
        return f"recreate {n} replica(s): stop all, then start all"
