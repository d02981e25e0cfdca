"""Controllers: what changes a deployment while traffic flows (rollouts, A/B stopping, scaling).

A controller is a small state machine ticked on a clock it does not own: `on_tick(now, view)`
returns actions. The twin ticks it from a SimPy timer; the real stack from an asyncio task that,
as Argo Rollouts and Flagger do, reads the gateway's window metrics and acts through its
token-guarded control API. Both apply the same actions through `apply`, so a controller's
decision means the same thing in both worlds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, Union

from sim.policy.health import HealthPolicy
from sim.policy.membership import Membership
from sim.policy.split import Router


@dataclass(frozen=True)
class SetWeights:
    """New traffic share per version (index order of model.versions)."""

    weights: tuple[float, ...]


@dataclass(frozen=True)
class SetVersion:
    """A replica serves another version from now on (an in-place model update)."""

    replica: int
    version: int


@dataclass(frozen=True)
class Activate:
    replica: int


@dataclass(frozen=True)
class Drain:
    """No new requests to this replica; queued and running ones finish."""

    replica: int


@dataclass(frozen=True)
class Eject:
    """Take a replica out of rotation as a failed health check would."""

    replica: int


@dataclass(frozen=True)
class Restore:
    replica: int


@dataclass(frozen=True)
class Fault:
    """Make a replica fail (`down`: every probe and request fails) or run `slowdown` times
    slower, from now on; `down=False, slowdown=1` clears it. The twin applies it to its model of
    the replica; the real stack through the replica's fault endpoint."""

    replica: int
    down: bool = False
    slowdown: float = 1.0


@dataclass(frozen=True)
class AddReplica:
    """Start a new replica of `version` (scale out, a blue-green set, a rolling update's surge).
    It joins the membership at once but not ready (unhealthy): the health probes bring it into
    rotation when it answers ready, after its start time, as a Kubernetes readiness probe does.
    Its index is the next one (`len(membership)`), known to the controller in advance."""

    version: int


@dataclass(frozen=True)
class RemoveReplica:
    """Stop a replica without losing a request: no new requests from now on (it leaves the
    membership), those already queued or running finish, then the process stops."""

    replica: int


Action = Union[SetWeights, SetVersion, Activate, Drain, Eject, Restore, Fault, AddReplica, RemoveReplica]


@dataclass(frozen=True)
class VersionWindow:
    """One version's figures over the last window: what a metrics query would return."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    judged: int = 0  # ok answers whose correctness is known (a labelled request)
    correct: int = 0  # of those, the right ones
    latency_sum_s: float = 0.0  # the ok answers' latencies summed, and their squares summed (s^2):
    latency_sumsq_s2: float = 0.0  # what an experiment's mean-latency test adds up across windows

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.judged if self.judged else None


@dataclass(frozen=True)
class View:
    """What a controller sees at a tick: the deployment and the last window's metrics."""

    now: float
    version_weights: tuple[float, ...]
    replica_versions: tuple[int, ...]
    routable: tuple[bool, ...]
    windows: Mapping[int, VersionWindow] = field(default_factory=dict)
    removed: tuple[bool, ...] = ()  # per replica: gone (stopped, or stopping once drained)


class Controller(Protocol):
    tick_s: float  # how often it is asked

    def on_tick(self, now: float, view: View) -> Sequence[Action]: ...


def view_of(router: Router, now: float, windows: Mapping[int, VersionWindow] | None = None) -> View:
    m = router.membership
    return View(now, tuple(router.version_weights), tuple(m.version_of),
                tuple(m.routable(r) for r in range(len(m))), dict(windows or {}), tuple(m.removed))


def apply(action: Action, router: Router, health: HealthPolicy | None = None) -> None:
    """Carry out a routing or membership action. `Fault` is about the replica itself, not
    routing: the caller (twin or launcher) applies it to the replica. `AddReplica` and
    `RemoveReplica` change the membership here; starting and stopping the replica itself (and
    waiting for its in-flight requests first) is the caller's.

    Pass the `health` policy that probes these replicas: Eject and Restore are then its verdicts
    too (`HealthPolicy.override`), else it would go on from a stale one (a replica restored
    after an ejection would never be ejected again, however it failed)."""
    m: Membership = router.membership
    if isinstance(action, SetWeights):
        router.set_version_weights(action.weights)
    elif isinstance(action, SetVersion):
        m.set_version(action.replica, action.version)
    elif isinstance(action, Activate):
        m.activate(action.replica)
    elif isinstance(action, Drain):
        m.drain(action.replica)
    elif isinstance(action, (Eject, Restore)):
        healthy = isinstance(action, Restore)
        m.set_healthy(action.replica, healthy)
        if health is not None:
            health.override(action.replica, healthy)
    elif isinstance(action, AddReplica):
        r = m.add_replica(action.version)
        m.set_healthy(r, False)  # not ready until its probes pass
        if health is not None:
            health.add_replica(healthy=False)
    elif isinstance(action, RemoveReplica):
        m.remove(action.replica)
    elif not isinstance(action, Fault):
        raise TypeError(f"unknown action {action!r}")


@dataclass
class Scheduled:
    """The trivial controller: given actions at given times (a scripted rollout step, a fault
    drill). Each fires at the first tick at or after its time."""

    plan: Sequence[tuple[float, Action]]
    tick_s: float = 0.1
    _next: int = 0

    def on_tick(self, now: float, view: View) -> list[Action]:
        due: list[Action] = []
        plan = sorted(self.plan, key=lambda item: item[0])
        while self._next < len(plan) and plan[self._next][0] <= now:
            due.append(plan[self._next][1])
            self._next += 1
        return due
