"""Canary rollout with background analysis, as Argo Rollouts does it.

A rollout is data (`CanarySpec`: steps of set-weight and pause, an analysis with success
conditions) and the controller a small state machine over it, ticked every analysis interval.
At each tick the analysis (`sim.policy.analysis`) measures the canary's last window against
stable's; more than `failure_limit` failed measurements abort the rollout: all traffic goes
back to stable at that tick. A thin window is inconclusive and counts neither way. A step's
pause of `math.inf` waits for a manual `promote()`; after the last step the canary is promoted
(all traffic on it). Traffic only moves between the replicas that exist: a canary starts no
replica and stops none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from sim.policy.analysis import Analysis
from sim.policy.controller import Action, View
from sim.policy.strategy import ABORTED, PAUSED, PROGRESSING, PROMOTED, RolloutController


@dataclass(frozen=True)
class CanaryStep:
    set_weight: float | None = None  # canary share in percent, 0..100
    pause_s: float | None = None  # math.inf: until promoted


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[CanaryStep, ...]
    analysis: Analysis | None = field(default_factory=Analysis)  # None: steps only, no analysis
    interval_s: float = 1.0
    stable: int = 0  # version indices
    canary: int = 1

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a canary needs at least one step")
        full_at: int | None = None
        for i, step in enumerate(self.steps):
            if (step.set_weight is None) == (step.pause_s is None):
                raise ValueError(f"step {i}: give set_weight or pause_s, not both or neither")
            if full_at is not None:
                raise ValueError(f"step {i} comes after step {full_at}'s set_weight 100, when the canary has all traffic: "
                                 "nothing is left to roll out; end the steps there")
            if step.set_weight is not None and not 0 <= step.set_weight <= 100:
                raise ValueError(f"step {i}: set_weight must be in [0, 100], got {step.set_weight}")
            if step.pause_s is not None and not step.pause_s >= 0:
                raise ValueError(f"step {i}: pause_s must be >= 0 (inf: until promoted), got {step.pause_s}")
            if step.set_weight == 100:
                full_at = i
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


class CanaryController(RolloutController):
    strategy = "canary"

    def __init__(self, spec: CanarySpec, n_versions: int = 2) -> None:
        super().__init__(spec.stable, spec.canary, n_versions, spec.interval_s, spec.analysis)
        self.spec = spec
        self._step = 0
        self._pause_until: float | None = None

    def _tick(self, now: float, view: View) -> list[Action]:
        if self._abort_requested:
            return self._abort(now, "aborted by hand")
        self._measure(now, view)
        if self.analysis is not None and self.analysis.failed:
            return self._abort(now, self._failure_reason())
        if self._promote_requested:
            return self._promote(now, "promoted by hand")
        return self._advance(now)

    def _advance(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self.decisions and self.spec.steps[0].set_weight is None:
            actions.append(self._weights(0.0))  # a rollout starts with all traffic on stable
        while self._step < len(self.spec.steps):
            step = self.spec.steps[self._step]
            if step.set_weight is not None:
                actions.append(self._weights(step.set_weight / 100.0))
                self._decide(now, "step", f"set_weight {step.set_weight:g}%")
                self._step += 1
                continue
            assert step.pause_s is not None
            if self._pause_until is None:
                self._pause_until = now + step.pause_s
                self.state = PAUSED
                self._decide(now, "step", "pause until promoted" if math.isinf(step.pause_s) else f"pause {step.pause_s:g} s")
            if now < self._pause_until:
                return actions
            self._pause_until = None
            self.state = PROGRESSING
            self._step += 1
        return actions + self._promote(now, "all steps done")

    def _promote(self, now: float, reason: str) -> list[Action]:
        self._decide(now, PROMOTED, reason)
        return [self._weights(1.0)]

    def _abort(self, now: float, reason: str) -> list[Action]:
        self._decide(now, ABORTED, reason)
        return [self._weights(0.0)]


def canary(steps: Sequence[tuple[str, float]], **spec: object) -> CanarySpec:
    """A spec from `[("set_weight", 20), ("pause_s", 5), ...]`: the shape a config file takes."""
    built = tuple(CanaryStep(**{name: value}) for name, value in steps)  # type: ignore[arg-type]
    return CanarySpec(built, **spec)  # type: ignore[arg-type]
