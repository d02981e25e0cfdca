"""Routing to a model version, then to a replica of it: the gateway's whole decision.

Which replica serves which version, and which may take traffic, is `Membership`'s. The version split is by weight (A/B, canary), or,
when sticky, by a fixed hash of the user id so a user always sees the same version. A request
with no user (user_id None: the real gateway got no x-user-id) has nothing to stick to and
follows the weighted random split: hashing a stand-in id would send all of them to one version.
A request may pin its version (a versioned URL, or the `x-model-version` header: `pinned_version`);
copies to a shadow version are `sim.policy.shadow.Mirror`'s.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Sequence

from sim.config import ScenarioConfig, traffic_split
from sim.policy.lb import LoadBalancer, UniformSource, make_lb
from sim.policy.membership import Membership

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
    """Version split, then load balancing among the routable replicas of that version.

    Reads `Membership` at every request, so weights, versions, drains and ejections set while
    traffic flows apply from the next request on. Built from config in one place
    (`from_config`); the twin and the gateway hold one each.
    """

    def __init__(
        self,
        membership: Membership,
        lb_policy: str,
        lb_weights: Sequence[float] = (),
        version_weights: Sequence[float] = (),
        sticky: bool = False,
    ) -> None:
        self.membership = membership
        self.lb_policy = lb_policy
        self.lb_weights = list(lb_weights)
        n_versions = len(membership.versions)
        if not version_weights:
            version_weights = [len(membership.replicas_of(v)) for v in range(n_versions)]
        self.sticky = sticky
        self.split = VersionSplit(version_weights, sticky) if n_versions > 1 else None
        self.version_weights = list(version_weights)
        # one balancer per version: round robin and rotating tie-breaks keep their own cursor
        self.balancers: list[LoadBalancer] = [self._balancer(v) for v in range(n_versions)]
        self._epoch = membership.epoch

    @classmethod
    def from_config(cls, cfg: ScenarioConfig, membership: Membership | None = None) -> Router:
        membership = membership or Membership.from_config(cfg)
        weights, sticky = traffic_split(cfg)  # an experiment's allocation, else gateway.*
        return cls(membership, cfg.lb.policy, cfg.lb.weights, weights, sticky)

    def _balancer(self, version: int) -> LoadBalancer:
        if self.lb_policy != "weighted":
            return make_lb(self.lb_policy)
        members = self.membership.members(version)
        return make_lb("weighted", [self.lb_weights[r] for r in members] if members else [1.0])

    def set_version_weights(self, weights: Sequence[float]) -> None:
        """New version shares at run time (a rollout step, the gateway's control endpoint)."""
        n_versions = len(self.membership.versions)
        if len(weights) != n_versions:
            raise ValueError(f"needs one weight per version ({n_versions}), got {len(weights)}")
        self.version_weights = list(weights)
        if self.split is not None:
            self.split = VersionSplit(weights, self.sticky)

    def route(
        self,
        user_id: int | None,
        outstanding: Sequence[int],
        now: float,
        rng: UniformSource,
        version: int | None = None,
        exclude: int = -1,
    ) -> int:
        """Replica index for a request, given the outstanding count of every replica.

        A version with no routable replica hands its users to the next version that has one.
        `version` pins the version (a versioned infer URL); `exclude` keeps one replica out (a
        retry goes elsewhere). Raises `NoReplica` when nothing is left.
        """
        membership = self.membership
        if membership.uniform and version is None and exclude < 0:
            return self.balancers[0].choose(outstanding, now, rng)
        if self._epoch != membership.epoch and self.lb_policy == "weighted":
            self.balancers = [self._balancer(v) for v in range(len(membership.versions))]
        self._epoch = membership.epoch
        if version is not None:
            v = version
        elif self.split is None:
            v = 0
        else:
            v = self.split.choose(user_id, rng)
            n_versions = len(membership.versions)
            for step in range(n_versions):
                w = (v + step) % n_versions
                if any(r != exclude for r in membership.members(w)):
                    v = w
                    break
        members = membership.members(v)
        if exclude >= 0:
            members = [r for r in members if r != exclude]
        if not members:
            raise NoReplica(f"no routable replica of version {membership.versions[v]!r}")
        k = self.balancers[v].choose([outstanding[r] for r in members], now, rng)
        return members[k]


class NoReplica(LookupError):
    """Every candidate replica is ejected: the gateway answers 503."""


VERSION_HEADER = "x-model-version"
# a request that is no part of the run (the warm-up before the load): the gateway routes it (and
# decides its shadow copy) with a throwaway stream, so the run's first request takes the routing
# stream's first draw, as the twin's first request does
WARMUP_HEADER = "x-servelab-warmup"


class BadPin(ValueError):
    """A version pin the gateway refuses: `status` is its HTTP answer (404 unknown, 400 conflict)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def pinned_version(versions: Sequence[str], path_version: str | None, header_version: str | None, model: str = "") -> int | None:
    """The version a request pins, or None for the version split.

    A versioned infer URL (/v2/models/M/versions/V/infer) and the `x-model-version` header
    (KServe/Istio header routing) pin alike; both naming the same version is fine, naming two
    is a 400 (which one did the client mean?), naming one that is not deployed a 404 that
    lists the deployed ones. The twin pins a trace's `version` column through here too.
    """
    if not header_version:  # absent, or sent empty (a trace row with no version): no pin
        header_version = None
    if path_version is not None and header_version is not None and path_version != header_version:
        raise BadPin(400, f"the URL names version {path_version!r} but {VERSION_HEADER} names {header_version!r}; "
                          "give one, or the same in both")
    name = path_version if path_version is not None else header_version
    if name is None:
        return None
    try:
        return versions.index(name)
    except ValueError:
        of = f" of {model!r}" if model else ""
        source = "" if path_version is not None else f" ({VERSION_HEADER})"
        raise BadPin(404, f"unknown version {name!r}{of}{source}; known: {', '.join(versions)}") from None
