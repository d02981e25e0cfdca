"""Canary rollout with background analysis, as Argo Rollouts does it: the first rollout controller.

A rollout is data (`CanarySpec`: steps of set-weight and pause, an analysis with success
conditions) and the controller a small state machine over it, ticked every analysis interval by
the twin or by the real stack's controller driver. At each tick the analysis compares the
canary's last window with the stable version's: too many errors, or a p99 too far above
stable's, is a failed measurement; fewer than `min_requests` answers is inconclusive (neither
passes nor fails, as Argo's inconclusive result). More than `failure_limit` failed measurements
abort the rollout: all traffic goes back to stable at that tick. A step's pause of `math.inf`
waits for a manual `promote()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from sim.config import ScenarioConfig, rollout_versions, version_names
from sim.policy.controller import Action, SetWeights, View, VersionWindow


@dataclass(frozen=True)
class CanaryStep:
    set_weight: float | None = None  # canary share in percent, 0..100
    pause_s: float | None = None  # math.inf: until promoted


@dataclass(frozen=True)
class Analysis:
    max_error_rate: float = 0.01  # errors / requests of the canary in the window
    max_p99_ratio: float = 1.5  # canary p99 / stable p99
    failure_limit: int = 0  # failed measurements tolerated; one more aborts
    min_requests: int = 20  # fewer canary answers in a window: inconclusive


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[CanaryStep, ...]
    analysis: Analysis = field(default_factory=Analysis)
    interval_s: float = 1.0
    stable: int = 0  # version indices
    canary: int = 1

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a canary needs at least one step")
        for i, step in enumerate(self.steps):
            if (step.set_weight is None) == (step.pause_s is None):
                raise ValueError(f"step {i}: give set_weight or pause_s, not both or neither")
            if step.set_weight is not None and not 0 <= step.set_weight <= 100:
                raise ValueError(f"step {i}: set_weight must be in [0, 100], got {step.set_weight}")
            if step.pause_s is not None and not step.pause_s >= 0:
                raise ValueError(f"step {i}: pause_s must be >= 0 (inf: until promoted), got {step.pause_s}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


@dataclass(frozen=True)
class Decision:
    time_s: float
    kind: str  # step | measurement | promoted | aborted
    reason: str


class CanaryController:
    def __init__(self, spec: CanarySpec, n_versions: int = 2) -> None:
        if not (0 <= spec.stable < n_versions and 0 <= spec.canary < n_versions and spec.stable != spec.canary):
            raise ValueError(f"stable and canary must be two of the {n_versions} version indices")
        self.spec = spec
        self.tick_s = spec.interval_s
        self.n_versions = n_versions
        self.state = "progressing"  # | paused | promoted | aborted
        self.failures = 0
        self.decisions: list[Decision] = []
        self._step = 0
        self._pause_until: float | None = None
        self._promote_requested = False

    @property
    def done(self) -> bool:
        return self.state in ("promoted", "aborted")

    # -- manual control (the gateway's token-guarded API calls these) ----------------------

    def promote(self) -> None:
        self._promote_requested = True

    def abort(self) -> None:
        self.state = "aborting"

    # -- the state machine -----------------------------------------------------------------

    def on_tick(self, now: float, view: View) -> list[Action]:
        if self.state in ("promoted", "aborted"):
            return []
        if self.state == "aborting":
            return self._abort(now, "aborted by hand")
        if not self._analysis_passes(now, view):
            return self._abort(now, f"{self.failures} failed measurements > failure_limit {self.spec.analysis.failure_limit}")
        if self._promote_requested:
            return self._promote(now, "promoted by hand")
        return self._advance(now)

    def _weights(self, canary_percent: float) -> SetWeights:
        weights = [0.0] * self.n_versions
        weights[self.spec.canary] = canary_percent / 100.0
        weights[self.spec.stable] = 1.0 - canary_percent / 100.0
        return SetWeights(tuple(weights))

    def _advance(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self.decisions and self.spec.steps[0].set_weight is None:
            actions.append(self._weights(0.0))  # a rollout starts with all traffic on stable
        while self._step < len(self.spec.steps):
            step = self.spec.steps[self._step]
            if step.set_weight is not None:
                actions.append(self._weights(step.set_weight))
                self.decisions.append(Decision(now, "step", f"set_weight {step.set_weight:g}%"))
                self._step += 1
                continue
            assert step.pause_s is not None
            if self._pause_until is None:
                self._pause_until = now + step.pause_s
                self.state = "paused"
                self.decisions.append(Decision(now, "step", "pause until promoted" if math.isinf(step.pause_s) else f"pause {step.pause_s:g} s"))
            if now < self._pause_until:
                return actions
            self._pause_until = None
            self.state = "progressing"
            self._step += 1
        return actions + self._promote(now, "all steps done")

    def _promote(self, now: float, reason: str) -> list[Action]:
        self.state = "promoted"
        self.decisions.append(Decision(now, "promoted", reason))
        return [self._weights(100.0)]

    def _abort(self, now: float, reason: str) -> list[Action]:
        self.state = "aborted"
        self.decisions.append(Decision(now, "aborted", reason))
        return [self._weights(0.0)]

    def _analysis_passes(self, now: float, view: View) -> bool:
        """One measurement per tick; False once failures exceed the limit."""
        a = self.spec.analysis
        canary = view.windows.get(self.spec.canary, VersionWindow())
        stable = view.windows.get(self.spec.stable, VersionWindow())
        if canary.requests < a.min_requests:
            return True  # inconclusive: neither counts
        problems: list[str] = []
        error_rate = canary.errors / canary.requests
        if error_rate > a.max_error_rate:
            problems.append(f"error rate {error_rate:.3f} > {a.max_error_rate:g}")
        if canary.latency_p99_s is not None and stable.latency_p99_s:
            ratio = canary.latency_p99_s / stable.latency_p99_s
            if ratio > a.max_p99_ratio:
                problems.append(f"p99 {ratio:.2f}x stable > {a.max_p99_ratio:g}x")
        if problems:
            self.failures += 1
            self.decisions.append(Decision(now, "measurement", "failed: " + "; ".join(problems)))
        return self.failures <= a.failure_limit


def canary(steps: Sequence[tuple[str, float]], **spec: object) -> CanarySpec:
    """A spec from `[("set_weight", 20), ("pause_s", 5), ...]`: the shape a config file takes."""
    built = tuple(CanaryStep(**{name: value}) for name, value in steps)  # type: ignore[arg-type]
    return CanarySpec(built, **spec)  # type: ignore[arg-type]


def controller_from_config(cfg: ScenarioConfig) -> CanaryController | None:
    """The rollout controller `rollout.*` describes (validated by sim.config), or None."""
    r = cfg.rollout
    if r.strategy == "none":
        return None
    names = version_names(cfg.model)
    stable, canary = rollout_versions(cfg)
    spec = CanarySpec(
        tuple(CanaryStep(**{str(k): float(v) for k, v in step.items()}) for step in r.steps),
        Analysis(r.max_error_rate, r.max_p99_ratio, r.failure_limit, r.min_requests),
        r.interval_s,
        stable=names.index(stable),
        canary=names.index(canary),
    )
    return CanaryController(spec, len(names))
