"""The twin's control plane on SimPy's clock: health probes and controller ticks.

The decisions are `sim.policy.health.HealthPolicy`'s and the controller's own; this module only
times them: a probe round every `health.probe_interval_s` (a replica that is down fails its
probe, as its `/v2/health/ready` would), a controller tick every `controller.tick_s`, each action
applied at the instant of its tick. Both stop with the arrivals (`duration_s`), so the run can
drain. Every change is logged with its time, for events.json and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import simpy

from sim.policy.controller import Action, Controller, Fault, apply, view_of
from sim.policy.health import HealthPolicy, Outcome
from sim.policy.split import Router
from sim.policy.windows import VersionWindows

if TYPE_CHECKING:
    from sim.replica import SimReplica


@dataclass
class Event:
    time_s: float
    kind: str  # action | eject | restore
    detail: dict[str, Any]


def apply_action(action: Action, router: Router, health: HealthPolicy, replicas: list[SimReplica], now: float,
                 events: list[Event]) -> None:
    if isinstance(action, Fault):
        replica = replicas[action.replica]
        replica.down, replica.slowdown = action.down, action.slowdown
    else:
        apply(action, router, health)
    events.append(Event(now, "action", {"action": type(action).__name__, **vars(action)}))


def probe_rounds(env: simpy.Environment, interval_s: float, end_s: float, health: HealthPolicy, router: Router,
                 replicas: list[SimReplica], events: list[Event]) -> Any:
    membership = router.membership
    while env.now + interval_s < end_s:
        yield env.timeout(interval_s)
        for rep in replicas:
            if membership.removed[rep.index]:
                continue
            change = health.on_probe(rep.index, Outcome.FAILED if rep.down else Outcome.OK)
            if change is not None:
                membership.set_healthy(change.replica, change.healthy)
                events.append(Event(env.now, "restore" if change.healthy else "eject",
                                    {"replica": change.replica, "reason": change.reason}))


def controller_ticks(env: simpy.Environment, controller: Controller, end_s: float, router: Router, health: HealthPolicy,
                     replicas: list[SimReplica], windows: VersionWindows, events: list[Event],
                     on_done: Callable[[float], None] | None = None) -> Any:
    """Ticks until the arrivals end, or until the controller is done (a rollout promoted or
    aborted), when `on_done` hears of it."""
    while env.now < end_s:
        now = env.now
        actions = controller.on_tick(now, view_of(router, now, windows.windows(now)))
        for action in actions:
            apply_action(action, router, health, replicas, now, events)
        if on_done is not None and getattr(controller, "done", False):
            on_done(now)
            return
        yield env.timeout(controller.tick_s)
