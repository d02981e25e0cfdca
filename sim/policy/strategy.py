"""What every rollout strategy shares: its state, its decisions, manual control, and for the
strategies that replace replicas, the book of which replicas it asked for.

A rollout controller (canary, linear, blue_green, rolling, recreate) is a small state machine
ticked every `tick_s` with the deployment and the last windows (`View`); it answers actions.
It never reads a clock or does I/O: the twin ticks it on SimPy's clock, the real stack's
controller driver on the wall clock, against the gateway's state document.

States: `progressing`, `paused` (a canary step waiting), `rolling_back` (a rolling or recreate
update going back to stable, replica by replica), then `promoted` or `aborted` (done). Every
decision is logged with its time and reason (events.json); `decision` is the first promote or
abort, the moment a rehearsal measures.

Manual control (the gateway's token-guarded `POST /v2/gateway/rollout` calls these between
ticks): `promote()` skips what the rollout still waits for (a pause, the rest of the steps, the
analysis, blue-green's scale-down delay) and `abort()` rolls back, at the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from sim.policy.analysis import FAILED, Analysis, AnalysisRun, Measurement
from sim.policy.controller import Action, AddReplica, RemoveReplica, SetWeights, View

PROGRESSING = "progressing"
PAUSED = "paused"
ROLLING_BACK = "rolling_back"
PROMOTED = "promoted"
ABORTED = "aborted"
CONCLUDED = "concluded"  # an experiment decided: the split ends, all traffic back on control
FINAL_STATES = (PROMOTED, ABORTED, CONCLUDED)


@dataclass(frozen=True)
class Decision:
    time_s: float
    kind: str  # step | measurement | promoted | aborted
    reason: str


class RolloutController:
    """The shared part of every strategy; a subclass implements `_tick`."""

    strategy: ClassVar[str] = ""

    def __init__(self, stable: int, candidate: int, n_versions: int, tick_s: float, analysis: Analysis | None) -> None:
        if not (0 <= stable < n_versions and 0 <= candidate < n_versions and stable != candidate):
            raise ValueError(f"stable and candidate must be two of the {n_versions} version indices")
        if not tick_s > 0:
            raise ValueError(f"interval_s must be > 0, got {tick_s}")
        self.stable = stable
        self.candidate = candidate
        self.n_versions = n_versions
        self.tick_s = tick_s
        self.analysis = AnalysisRun(analysis, candidate, stable) if analysis is not None else None
        self.state = PROGRESSING
        self.decisions: list[Decision] = []
        self._promote_requested = False
        self._abort_requested = False

    # -- what callers read -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def failures(self) -> int:
        """Failed measurements so far."""
        return self.analysis.failures if self.analysis is not None else 0

    @property
    def decision(self) -> Decision | None:
        """The rollout's verdict: its first promote or abort (a rollback may take longer to carry
        out; the verdict is when it was decided)."""
        return next((d for d in self.decisions if d.kind in FINAL_STATES), None)

    # -- manual control ----------------------------------------------------------------------

    def promote(self) -> None:
        self._promote_requested = True

    def abort(self) -> None:
        self._abort_requested = True

    # -- the tick ------------------------------------------------------------------------------

    def on_tick(self, now: float, view: View) -> list[Action]:
        if self.done:
            return []
        return self._tick(now, view)

    def _tick(self, now: float, view: View) -> list[Action]:
        raise NotImplementedError

    # -- helpers for subclasses --------------------------------------------------------------

    def _decide(self, now: float, kind: str, reason: str) -> None:
        self.decisions.append(Decision(now, kind, reason))
        if kind in FINAL_STATES:
            self.state = kind

    def _weights(self, candidate_share: float) -> SetWeights:
        """All traffic on stable and the candidate, `candidate_share` (0..1) on the candidate."""
        weights = [0.0] * self.n_versions
        weights[self.candidate] = candidate_share
        weights[self.stable] = 1.0 - candidate_share
        return SetWeights(tuple(weights))

    def _measure(self, now: float, view: View) -> Measurement | None:
        """One analysis measurement (None without analysis); a failed one is logged."""
        if self.analysis is None:
            return None
        m = self.analysis.measure(now, view)
        if m.result == FAILED:
            self.decisions.append(Decision(now, "measurement", f"failed: {m.reason}"))
        return m

    def _failure_reason(self) -> str:
        assert self.analysis is not None
        return f"{self.analysis.failures} failed measurements > failure_limit {self.analysis.spec.failure_limit}"


@dataclass(frozen=True)
class VersionReplicas:
    """One version's replicas as a controller sees them at a tick."""

    alive: tuple[int, ...]  # neither removed nor being removed
    ready: tuple[int, ...]  # alive and routable (started, and its readiness probes passed)


class ReplicaBook:
    """What a replica-replacing controller (blue_green, rolling, recreate) asked for, against
    what the view shows. In the real stack an action may take effect after the next state
    read (a replica process takes a while to start): replicas asked for but not yet in the view
    are `pending`, and replicas it removed count as gone at once, so the controller never asks
    twice for the same change. Replica indices are never reused, so the count of indices past
    the first view's tells how many of the added replicas exist."""

    def __init__(self, n_versions: int) -> None:
        self._base: int | None = None  # replicas in the first view
        self._asked = [0] * n_versions  # AddReplica issued, per version
        self._removed: set[int] = set()

    def observe(self, view: View) -> None:
        if self._base is None:
            self._base = len(view.replica_versions)

    def of(self, view: View, version: int) -> VersionReplicas:
        removed = view.removed
        alive = tuple(r for r, v in enumerate(view.replica_versions)
                      if v == version and r not in self._removed and not (r < len(removed) and removed[r]))
        return VersionReplicas(alive, tuple(r for r in alive if view.routable[r]))

    def pending(self, view: View, version: int) -> int:
        """Replicas of `version` asked for that the view does not show yet."""
        assert self._base is not None, "observe() the view first"
        seen = sum(1 for v in view.replica_versions[self._base:] if v == version)
        return max(0, self._asked[version] - seen)

    def add(self, version: int, count: int) -> list[Action]:
        self._asked[version] += max(0, count)
        return [AddReplica(version) for _ in range(max(0, count))]

    def remove(self, replicas: Sequence[int]) -> list[Action]:
        self._removed.update(replicas)
        return [RemoveReplica(r) for r in replicas]
