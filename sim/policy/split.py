"""Routing to a model version, then to a replica of it: the gateway's whole decision.

Replica r serves version `r % n_versions`. The version split is by weight (A/B, canary), or,
when sticky, by a fixed hash of the user id so a user always sees the same version. A request
with no user (user_id None: the real gateway got no x-user-id) has nothing to stick to and
follows the weighted random split: hashing a stand-in id would send all of them to one version.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Sequence

from sim.policy.lb import LoadBalancer, UniformSource, make_lb

_MASK64 = (1 << 64) - 1


def user_hash_unit(user_id: int) -> float:
    """SplitMix64 of the user id mapped to [0, 1): stable across processes and Python versions."""
    z = (user_id + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


class VersionSplit:
    def __init__(self, weights: Sequence[float], sticky: bool = False) -> None:
        total = float(sum(weights))
        if not weights or total <= 0 or any(w < 0 for w in weights):
            raise ValueError("version weights must be >= 0 with a positive sum")
        self._cumulative = list(itertools.accumulate(w / total for w in weights))
        self.sticky = sticky

    def choose(self, user_id: int | None, rng: UniformSource) -> int:
        u = user_hash_unit(user_id) if self.sticky and user_id is not None else rng.random()
        return min(bisect.bisect_right(self._cumulative, u), len(self._cumulative) - 1)


class Router:
    """Version split then load balancing within that version's replicas."""

    def __init__(
        self,
        n_replicas: int,
        n_versions: int,
        lb_policy: str,
        lb_weights: Sequence[float] = (),
        version_weights: Sequence[float] = (),
        sticky: bool = False,
    ) -> None:
        self.n_replicas = n_replicas
        self.replicas_of_version = [list(range(v, n_replicas, n_versions)) for v in range(n_versions)]
        if not version_weights:
            version_weights = [len(r) for r in self.replicas_of_version]
        self.split = VersionSplit(version_weights, sticky) if n_versions > 1 else None
        # one balancer per version: round robin and rotating tie-breaks keep their own cursor
        self.balancers: list[LoadBalancer] = []
        for members in self.replicas_of_version:
            w = [lb_weights[r] for r in members] if lb_policy == "weighted" else ()
            self.balancers.append(make_lb(lb_policy, w))

    def version_of(self, replica: int) -> int:
        return replica % len(self.replicas_of_version)

    def set_version_weights(self, weights: Sequence[float]) -> None:
        """New version shares at run time (a rollout step, the gateway's control endpoint)."""
        if len(weights) != len(self.replicas_of_version):
            raise ValueError(f"needs one weight per version ({len(self.replicas_of_version)}), got {len(weights)}")
        if self.split is not None:
            self.split = VersionSplit(weights, self.split.sticky)

    def route(
        self,
        user_id: int | None,
        outstanding: Sequence[int],
        now: float,
        rng: UniformSource,
        healthy: Sequence[bool] | None = None,
        version: int | None = None,
    ) -> int:
        """Replica index for a request, given the outstanding count of every replica.

        `user_id` None: an anonymous request, split by weight even when sticky.

        `healthy` (one flag per replica; None = all) keeps ejected replicas out, so the real
        gateway can drop a dead replica without a second routing implementation; a version
        with no healthy replica hands its users to the next version that has one. `version`
        pins the version (a versioned infer URL). Raises `NoReplica` when nothing is left.
        """
        if healthy is None and version is None:
            if self.split is None:
                return self.balancers[0].choose(outstanding, now, rng)
            v = self.split.choose(user_id, rng)
            members = self.replicas_of_version[v]
            k = self.balancers[v].choose([outstanding[r] for r in members], now, rng)
            return members[k]
        n_versions = len(self.replicas_of_version)
        if version is not None:
            v = version
        elif self.split is None:
            v = 0
        else:
            v = self.split.choose(user_id, rng)
            if healthy is not None:
                for step in range(n_versions):
                    w = (v + step) % n_versions
                    if any(healthy[r] for r in self.replicas_of_version[w]):
                        v = w
                        break
        members = self.replicas_of_version[v]
        if healthy is not None:
            members = [r for r in members if healthy[r]]
        if not members:
            raise NoReplica(f"no healthy replica of version index {v}")
        k = self.balancers[v].choose([outstanding[r] for r in members], now, rng)
        return members[k]


class NoReplica(LookupError):
    """Every candidate replica is ejected: the gateway answers 503."""
