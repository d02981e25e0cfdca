"""Blue-green rollout, as Argo Rollouts' blueGreen strategy does it.

The run starts with every replica on stable (the blue set). At the first tick the controller
starts a green set of the new version, as many replicas as blue has, and waits until every one
of them is ready (started, and its readiness probes passed): that is the smoke check. Then all
traffic switches to green at once (with analysis: once it has seen a conclusive window of blue
to compare green with). Blue is kept for `scale_down_delay_s`, during which the analysis
watches green's windows against blue's last ones: a rollback within the delay is instant
(weights back to blue, which never stopped; then the green set is removed). When the delay has
passed, blue is removed (its in-flight requests finish first) and the rollout is promoted. A
shadow share mirrored to green (gateway.shadow_version) lets the analysis judge green before
the switch too: a failure then removes green before any user saw it.

After blue is scaled down there is no instant way back: going back would mean starting a new
set of the old version, i.e. another rollout. So the rollout is done at the scale-down, and a
later `abort()` changes nothing (as in Argo, an abort after full promotion does not roll back).
`promote()` skips the rest of the delay; `abort()` before the switch removes the green set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.policy.analysis import Analysis
from sim.policy.controller import Action, View
from sim.policy.strategy import ABORTED, PROMOTED, ReplicaBook, RolloutController


@dataclass(frozen=True)
class BlueGreenSpec:
    scale_down_delay_s: float = 30.0
    analysis: Analysis | None = field(default_factory=Analysis)
    interval_s: float = 1.0
    stable: int = 0
    canary: int = 1

    def __post_init__(self) -> None:
        if not self.scale_down_delay_s >= 0:
            raise ValueError(f"scale_down_delay_s must be >= 0, got {self.scale_down_delay_s}")


class BlueGreenController(RolloutController):
    strategy = "blue_green"

    def __init__(self, spec: BlueGreenSpec, n_versions: int = 2) -> None:
        super().__init__(spec.stable, spec.canary, n_versions, spec.interval_s, spec.analysis)
        self.spec = spec
        self.book = ReplicaBook(n_versions)
        self.blue: tuple[int, ...] = ()
        self.switched_at: float | None = None

    def _tick(self, now: float, view: View) -> list[Action]:
        self.book.observe(view)
        if not self.decisions:
            self.blue = self.book.of(view, self.stable).alive
            self._decide(now, "step", f"start the green set: {len(self.blue)} replica(s) of the new version")
            return [self._weights(0.0), *self.book.add(self.candidate, len(self.blue))]
        self._measure(now, view)  # before the switch: inconclusive for green, but blue's window is remembered
        if self.switched_at is None:
            if self._abort_requested:
                return self._rollback(now, view, "aborted by hand before the switch")
            if self.analysis is not None and self.analysis.failed:  # green took traffic already: mirrored copies
                return self._rollback(now, view, f"{self._failure_reason()} before the switch")
            green = self.book.of(view, self.candidate)
            if self.book.pending(view, self.candidate) or len(green.ready) < len(self.blue):
                return []
            if self.analysis is not None and not self.analysis.has_baseline and not self._promote_requested:
                return []  # green would have nothing to be compared with after the switch
            self.switched_at = now
            self._decide(now, "step", f"switch: the green set is ready ({len(green.ready)}/{len(self.blue)}); all traffic to it")
            return [self._weights(1.0)]
        if self._abort_requested:
            return self._rollback(now, view, "aborted by hand; traffic back to the blue set")
        if self.analysis is not None and self.analysis.failed:
            return self._rollback(now, view, f"{self._failure_reason()}; traffic back to the blue set")
        if self._promote_requested or now >= self.switched_at + self.spec.scale_down_delay_s:
            why = "promoted by hand" if self._promote_requested else f"scale_down_delay_s {self.spec.scale_down_delay_s:g} passed"
            self._decide(now, PROMOTED, f"{why}; the blue set is removed")
            return self.book.remove(self.book.of(view, self.stable).alive)
        return []

    def _rollback(self, now: float, view: View, reason: str) -> list[Action]:
        """Traffic back to blue at once (it never stopped), then the green set goes."""
        self._decide(now, ABORTED, reason)
        return [self._weights(0.0), *self.book.remove(self.book.of(view, self.candidate).alive)]
