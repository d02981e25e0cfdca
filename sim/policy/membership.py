"""Which replicas exist, which version each serves, and which may take new requests.

The one place that answers "which version does replica r serve" (initially `initial_versions`:
`r % n_versions`, or all on stable for a rollout that replaces replicas; then whatever a rollout
sets) and "may the router send it traffic": a replica must be *active*
(a controller activated it and has not drained or removed it) and *healthy* (the health policy
has not ejected it). The router reads this at every request, so a drain, an ejection or a new
version takes effect at the instant it is made, in the twin and in the gateway alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from sim.config import ScenarioConfig


def initial_versions(cfg: ScenarioConfig) -> list[int]:
    """Which version each replica serves when a run starts: replica r serves version r % n,
    except under a rollout that replaces replicas (blue_green, rolling, recreate), where every
    replica starts on the stable version and the new version's replicas are started by the
    rollout. The twin, the gateway and each real replica all ask this, so they agree."""
    from sim.config import REPLICA_STRATEGIES, rollout_versions, version_names

    names = version_names(cfg.model)
    if cfg.rollout.strategy in REPLICA_STRATEGIES:
        return [names.index(rollout_versions(cfg)[0])] * cfg.replicas
    return [r % len(names) for r in range(cfg.replicas)]


class Membership:
    __slots__ = ("versions", "version_of", "active", "healthy", "removed", "_members", "uniform", "epoch")

    def __init__(self, versions: Sequence[str], replica_versions: Sequence[int]) -> None:
        if not versions:
            raise ValueError("needs at least one version")
        if any(not 0 <= v < len(versions) for v in replica_versions):
            raise ValueError(f"replica versions must index versions (0..{len(versions) - 1}), got {list(replica_versions)}")
        self.versions = list(versions)
        self.version_of = list(replica_versions)  # replica -> version index
        self.active = [True] * len(replica_versions)
        self.healthy = [True] * len(replica_versions)
        self.removed = [False] * len(replica_versions)
        self._members: list[list[int]] = []
        self.uniform = True  # one version, every replica routable: the router's fast path
        self.epoch = 0  # counts changes, so derived state (weighted balancers) knows when to rebuild
        self._refresh()

    @classmethod
    def initial(cls, versions: Sequence[str], n_replicas: int) -> Membership:
        """Replica r serving version r % len(versions) (a run's start without a rollout that
        replaces replicas; `from_config` knows about those)."""
        return cls(versions, [r % len(versions) for r in range(n_replicas)])

    @classmethod
    def from_config(cls, cfg: ScenarioConfig) -> Membership:
        """The deployment a run starts from (`initial_versions`)."""
        from sim.config import version_names

        return cls(version_names(cfg.model), initial_versions(cfg))

    def __len__(self) -> int:
        return len(self.version_of)

    def version_name(self, replica: int) -> str:
        return self.versions[self.version_of[replica]]

    def routable(self, replica: int) -> bool:
        return self.active[replica] and self.healthy[replica] and not self.removed[replica]

    def members(self, version: int) -> list[int]:
        """The routable replicas of a version, in replica order (cached until a change)."""
        return self._members[version]

    def replicas_of(self, version: int) -> list[int]:
        """Every replica (routable or not, not removed) that serves a version."""
        return [r for r, v in enumerate(self.version_of) if v == version and not self.removed[r]]

    # -- changes ---------------------------------------------------------------------------

    def set_healthy(self, replica: int, healthy: bool) -> None:
        if self.healthy[replica] != healthy:
            self.healthy[replica] = healthy
            self._refresh()

    def activate(self, replica: int) -> None:
        self._check(replica)
        self.active[replica] = True
        self._refresh()

    def drain(self, replica: int) -> None:
        """No new requests; those already queued or running finish."""
        self._check(replica)
        self.active[replica] = False
        self._refresh()

    def set_version(self, replica: int, version: int) -> None:
        self._check(replica)
        if not 0 <= version < len(self.versions):
            raise ValueError(f"version index must be in 0..{len(self.versions) - 1}, got {version}")
        self.version_of[replica] = version
        self._refresh()

    def add_replica(self, version: int, active: bool = True) -> int:
        """A new replica (scale out); its index is the next free one."""
        if not 0 <= version < len(self.versions):
            raise ValueError(f"version index must be in 0..{len(self.versions) - 1}, got {version}")
        self.version_of.append(version)
        self.active.append(active)
        self.healthy.append(True)
        self.removed.append(False)
        self._refresh()
        return len(self.version_of) - 1

    def remove(self, replica: int) -> None:
        """Gone for good (scale in); its index is never reused, so records stay unambiguous."""
        self._check(replica)
        self.removed[replica] = True
        self.active[replica] = False
        self._refresh()

    def _check(self, replica: int) -> None:
        if not 0 <= replica < len(self.version_of) or self.removed[replica]:
            raise ValueError(f"no replica {replica}")

    def _refresh(self) -> None:
        members: list[list[int]] = [[] for _ in self.versions]
        for r, v in enumerate(self.version_of):
            if self.routable(r):
                members[v].append(r)
        self._members = members
        self.epoch += 1
        self.uniform = len(self.versions) == 1 and len(members[0]) == len(self.version_of)
