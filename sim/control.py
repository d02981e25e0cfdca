"""The twin's control plane on SimPy's clock: health probes, controller ticks, runtime replicas.

The decisions are `sim.policy.health.HealthPolicy`'s and the controller's own; this module only
times them, as the real stack's loop does on the wall clock:
- a probe round every `health.probe_interval_s` (a replica that is down, or still starting,
  fails its probe, as its `/v2/health/ready` would; a removed one is not probed);
- a controller tick every `controller.tick_s`, each action applied at the instant of its tick;
- a replica a controller adds (`AddReplica`) starts at once and is ready `replica_start_s`
  later (process start and model load); the next probe round after that brings it into
  rotation. So a new replica takes traffic after the tick that asked for it, its start time,
  and up to a probe interval more: the control loop's own delays, as the real stack has them.
- a replica a controller removes (`RemoveReplica`) takes no new request from that instant and
  finishes what it holds (the twin's replica keeps serving its queue; nothing is lost); once the
  gateway counts nothing in flight to it, it stops (a `stopped` event, as the real driver logs
  when the launcher has stopped the process, which it does at that moment too).
Both loops stop with the arrivals (`duration_s`), so the run can drain. Every change is logged
with its time (events.json), and so is the count of ready and live replicas per version after
it (`replica_counts`: the rollout's capacity, window by window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import simpy

from sim.policy.controller import Action, AddReplica, Controller, Fault, RemoveReplica, apply, view_of
from sim.policy.health import HealthPolicy, Outcome
from sim.policy.split import Router
from sim.policy.windows import VersionWindows

if TYPE_CHECKING:
    from sim.replica import SimReplica


@dataclass
class Event:
    time_s: float
    kind: str  # action | eject | restore | started | stopped (the real driver adds command)
    detail: dict[str, Any]


@dataclass(frozen=True)
class ReplicaCount:
    """Per version, after a change: replicas ready (routable) and live (not removed, maybe not ready)."""

    time_s: float
    ready: tuple[int, ...]
    live: tuple[int, ...]


@dataclass
class ControlPlane:
    env: simpy.Environment
    router: Router
    health: HealthPolicy
    replicas: list[SimReplica]  # the twin's list: it grows as replicas are added
    start_replica: Callable[[int], None]  # the twin starts the replica of a new membership index
    events: list[Event] = field(default_factory=list)
    replica_counts: list[ReplicaCount] = field(default_factory=list)
    # the twin's requests in flight per replica (the gateway's count): a removed replica stops at 0
    outstanding: list[int] = field(default_factory=list)
    _stopped: set[int] = field(default_factory=set)

    def count(self, now: float) -> None:
        m = self.router.membership
        ready, live = [0] * len(m.versions), [0] * len(m.versions)
        for r, v in enumerate(m.version_of):
            if not m.removed[r]:
                live[v] += 1
                ready[v] += m.routable(r)
        counted = ReplicaCount(now, tuple(ready), tuple(live))
        if not self.replica_counts or (self.replica_counts[-1].ready, self.replica_counts[-1].live) != (counted.ready, counted.live):
            self.replica_counts.append(counted)

    def apply(self, action: Action, now: float) -> None:
        detail: dict[str, Any] = {"action": type(action).__name__, **vars(action)}
        if isinstance(action, Fault):
            replica = self.replicas[action.replica]
            replica.down, replica.slowdown = action.down, action.slowdown
        else:
            apply(action, self.router, self.health)
        if isinstance(action, AddReplica):
            index = len(self.router.membership) - 1
            detail["replica"] = index
            self.start_replica(index)
        self.events.append(Event(now, "action", detail))
        if isinstance(action, RemoveReplica):
            self.emptied(action.replica, now)
        self.count(now)

    def emptied(self, replica: int, now: float) -> None:
        """Replica `replica` may hold nothing more: if it is removed and nothing is in flight to
        it, it stops (logged once)."""
        if self.router.membership.removed[replica] and self.outstanding[replica] == 0 and replica not in self._stopped:
            self._stopped.add(replica)
            self.events.append(Event(now, "stopped", {"replica": replica}))

    def probe_rounds(self, interval_s: float, end_s: float) -> Any:
        env, membership, health = self.env, self.router.membership, self.health
        while env.now + interval_s < end_s:
            yield env.timeout(interval_s)
            for rep in self.replicas:
                if membership.removed[rep.index]:
                    continue
                change = health.on_probe(rep.index, Outcome.FAILED if rep.down else Outcome.OK)
                if change is not None:
                    membership.set_healthy(change.replica, change.healthy)
                    self.events.append(Event(env.now, "restore" if change.healthy else "eject",
                                             {"replica": change.replica, "reason": change.reason}))
                    self.count(env.now)

    def controller_ticks(self, controller: Controller, end_s: float, windows: VersionWindows,
                         on_done: Callable[[float], None] | None = None) -> Any:
        """Ticks at 0, tick_s, 2 tick_s, ... while before the arrivals' end, as the real driver
        does (`real.controller.ControllerDriver.run`: each tick due at k x tick_s, no summed
        drift, none at end_s itself), or until the controller is done (a rollout promoted or
        aborted), when `on_done` hears of it."""
        env = self.env
        start, k = env.now, 0
        while (due := start + k * controller.tick_s) < end_s:
            yield env.timeout(max(due - env.now, 0.0))
            # the tick reads the state at the end of its instant: a readiness probe due at the
            # same time has passed by then (the real driver's ticks and the gateway's probes
            # keep no common phase, so a tie in the twin must not always cost a whole tick)
            yield env.timeout(0)
            now = env.now
            for action in controller.on_tick(now, view_of(self.router, now, windows.windows(now))):
                self.apply(action, now)
            if on_done is not None and getattr(controller, "done", False):
                on_done(now)
                return
            k += 1
