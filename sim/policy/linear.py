"""Linear (progressive) rollout, as Flagger's canary analysis does it.

Every `interval_s` the analysis checks the canary's last window against stable's. A passing
check moves `step_weight` more percent onto the canary, up to `max_weight`; a passing check at
`max_weight` promotes (all traffic on the canary, as Flagger's promotion routes everything to
the updated primary). A failed check holds the weight and counts; `threshold` failed checks in
the rollout roll back (all traffic to stable): Flagger's threshold, which is Argo's
`failure_limit + 1`. A thin (inconclusive) window holds the weight without counting, as Flagger
halts advancement when a metric has no data. Without analysis the weight advances every
interval. Like a canary, it moves traffic between the replicas that exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sim.policy.analysis import PASSED, Analysis
from sim.policy.controller import Action, View
from sim.policy.strategy import ABORTED, PROMOTED, RolloutController


@dataclass(frozen=True)
class LinearSpec:
    step_weight: float = 10.0  # percent added per passing check
    max_weight: float = 50.0  # percent at which a passing check promotes
    threshold: int = 2  # failed checks that roll back
    analysis: Analysis | None = field(default_factory=Analysis)  # its failure_limit is replaced by threshold - 1
    interval_s: float = 1.0
    stable: int = 0
    canary: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.max_weight <= 100:
            raise ValueError(f"max_weight must be in (0, 100], got {self.max_weight}")
        if not 0 < self.step_weight <= self.max_weight:
            raise ValueError(f"step_weight must be in (0, max_weight={self.max_weight:g}], got {self.step_weight}")
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")


class LinearController(RolloutController):
    strategy = "linear"

    def __init__(self, spec: LinearSpec, n_versions: int = 2) -> None:
        analysis = dataclasses.replace(spec.analysis, failure_limit=spec.threshold - 1) if spec.analysis is not None else None
        super().__init__(spec.stable, spec.canary, n_versions, spec.interval_s, analysis)
        self.spec = spec
        self.weight: float | None = None  # the canary's percent; None before the first tick

    def _tick(self, now: float, view: View) -> list[Action]:
        if self._abort_requested:
            return self._rollback(now, "aborted by hand")
        if self.weight is None:
            return self._set(now, self.spec.step_weight)
        m = self._measure(now, view)
        if self.analysis is not None and self.analysis.failed:
            return self._rollback(now, f"{self.analysis.failures} failed checks reached threshold {self.spec.threshold}")
        if self._promote_requested:
            return self._promote(now, "promoted by hand")
        if m is not None and m.result != PASSED:
            return []  # hold the weight: a failed check counts, an inconclusive one does not
        if self.weight >= self.spec.max_weight:
            return self._promote(now, f"max_weight {self.spec.max_weight:g}% reached and the analysis passed"
                                 if m is not None else f"max_weight {self.spec.max_weight:g}% reached")
        return self._set(now, min(self.weight + self.spec.step_weight, self.spec.max_weight))

    def _set(self, now: float, weight: float) -> list[Action]:
        self.weight = weight
        self._decide(now, "step", f"set_weight {weight:g}%")
        return [self._weights(weight / 100.0)]

    def _promote(self, now: float, reason: str) -> list[Action]:
        self._decide(now, PROMOTED, reason)
        return [self._weights(1.0)]

    def _rollback(self, now: float, reason: str) -> list[Action]:
        self._decide(now, ABORTED, reason)
        return [self._weights(0.0)]

