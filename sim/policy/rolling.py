"""Rolling update, as a Kubernetes Deployment's RollingUpdate strategy does it.

The run starts with every replica on stable; `n` is their number. The controller replaces them
with replicas of the new version, a few at a time, within two bounds (Kubernetes' rules):
- at most `n + max_surge` replicas exist (old, new, and new ones still starting);
- at least `n - max_unavailable` replicas are ready (taking traffic).
Each tick it first removes old replicas, unready ones first (they serve nothing), then ready
ones as far as the ready count allows; then it starts new ones as far as the replica budget
allows. A removed replica takes no new request and finishes those it holds (none is lost). A
new one takes traffic once it is ready (started and its readiness probes passed).

Traffic spreads over every ready replica as a Kubernetes Service spreads it over its ready
endpoints: the version split follows the ready replica counts, set at each tick (so a replica
that became ready waits for the next tick to take its share; the twin models that delay too).

With analysis configured, the new version's windows are checked against stable's every tick
while it rolls out; when the analysis fails (more than `failure_limit` failures), or on a
manual `abort()`, the update rolls back *by rolling the other way*: the same procedure, within
the same bounds, from the new version back to stable (Kubernetes' `rollout undo`). The verdict
(`aborted`) is taken at that tick; the state stays `rolling_back` until stable is whole again.
With analysis, the update starts once the analysis has seen a conclusive window of stable (the
baseline the new version is compared with), and is promoted when every replica is new and ready
and the new version's last window passed (a thin one waits for the next tick). `promote()`
stops waiting for the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.policy.analysis import PASSED, Analysis, Measurement
from sim.policy.controller import Action, SetWeights, View
from sim.policy.strategy import ABORTED, PROGRESSING, PROMOTED, ROLLING_BACK, Decision, ReplicaBook, RolloutController


@dataclass(frozen=True)
class RollingSpec:
    max_surge: int = 1  # replicas above n while updating
    max_unavailable: int = 0  # ready replicas below n allowed while updating
    analysis: Analysis | None = field(default_factory=Analysis)
    interval_s: float = 1.0
    stable: int = 0
    canary: int = 1

    def __post_init__(self) -> None:
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ValueError(f"max_surge and max_unavailable must be >= 0, got {self.max_surge} and {self.max_unavailable}")
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0: no replica could be replaced")


class RollingController(RolloutController):
    strategy = "rolling"

    def __init__(self, spec: RollingSpec, n_versions: int = 2) -> None:
        super().__init__(spec.stable, spec.canary, n_versions, spec.interval_s, spec.analysis)
        self.spec = spec
        self.book = ReplicaBook(n_versions)
        self.desired: int | None = None  # n: the stable replicas at the first tick
        self.source, self.target = spec.stable, spec.canary  # swapped by a rollback
        self._sent: SetWeights | None = None

    # -- the bounds a subclass may change ----------------------------------------------------

    def bounds(self, n: int) -> tuple[int, int]:
        """(max_surge, max_unavailable) for n replicas."""
        return self.spec.max_surge, min(self.spec.max_unavailable, n)

    def may_start(self, source_left: int, removed_now: int) -> bool:
        """Whether new replicas may start with `source_left` old ones left after removing
        `removed_now` this tick (rolling: always, within the bounds)."""
        return True

    rollback_words = "rolling back to stable"

    def describe(self, n: int) -> str:
        surge, unavailable = self.bounds(n)
        return f"rolling update of {n} replica(s): max_surge {surge}, max_unavailable {unavailable}"

    # -- the tick ------------------------------------------------------------------------------

    def _tick(self, now: float, view: View) -> list[Action]:
        self.book.observe(view)
        m: Measurement | None = None
        if self.state == PROGRESSING:
            m = self._measure(now, view)
            if self.desired is None and self._awaits_baseline():
                if not self.decisions:
                    self._decide(now, "step", "waiting for a conclusive window of stable to compare the new version with")
                return []
            if self.desired is None:
                self.desired = len(self.book.of(view, self.stable).alive)
                self._decide(now, "step", self.describe(self.desired))
            if self._abort_requested:
                self._roll_back(now, "aborted by hand")
            elif self.analysis is not None and self.analysis.failed:
                self._roll_back(now, self._failure_reason())
        actions, converged = self._converge(view)
        if converged and self.state == ROLLING_BACK:
            self.state = ABORTED
            self.decisions.append(Decision(now, "step", f"rolled back: {self.desired} replica(s) of stable ready"))
        elif converged and (self.analysis is None or self._promote_requested or (m is not None and m.result == PASSED)):
            why = "promoted by hand" if self._promote_requested else "every replica replaced and ready" + \
                  (", the analysis passed" if self.analysis is not None else "")
            self._decide(now, PROMOTED, why)
        return actions

    def _awaits_baseline(self) -> bool:
        """Replacing stable before the analysis saw a conclusive window of it would leave the new
        version nothing to be compared with: wait (unless told to go on by hand)."""
        return self.analysis is not None and not self.analysis.has_baseline \
            and not self._promote_requested and not self._abort_requested

    def _roll_back(self, now: float, reason: str) -> None:
        self._decide(now, ABORTED, f"{reason}; {self.rollback_words}")
        self.state = ROLLING_BACK
        self.source, self.target = self.target, self.source

    def _converge(self, view: View) -> tuple[list[Action], bool]:
        """One step from `source` towards `target` within the bounds; (actions, whether done)."""
        assert self.desired is not None
        n = self.desired
        surge, unavailable = self.bounds(n)
        old = self.book.of(view, self.source)
        new = self.book.of(view, self.target)
        pending = self.book.pending(view, self.target)
        unready_old = [r for r in old.alive if r not in old.ready]
        removable_ready = max(0, len(old.ready) + len(new.ready) - (n - unavailable))
        ready_old = sorted(old.ready, reverse=True)[:removable_ready]  # the newest first, as Kubernetes
        removed = unready_old + ready_old
        actions = self.book.remove(removed)
        old_left = len(old.alive) - len(removed)
        if self.may_start(old_left, len(removed)):
            total = old_left + len(new.alive) + pending
            actions += self.book.add(self.target, min(n + surge - total, n - len(new.alive) - pending))
        ready_left = len(old.ready) - len(ready_old)
        if ready_left + len(new.ready):
            share = len(new.ready) / (ready_left + len(new.ready))
            weights = self._weights(share if self.target == self.candidate else 1.0 - share)
            if weights != self._sent:
                self._sent = weights
                actions.insert(0, weights)
        return actions, old_left == 0 and pending == 0 and len(new.ready) >= n
