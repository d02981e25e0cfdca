"""Health checking: probe results and request failures in, eject/restore decisions out.

The gateway feeds it its real probes of `/v2/health/ready` and its failed upstream calls; the
twin feeds it simulated probes of its modelled replicas every `probe_interval_s`. Both then eject
and restore at the same points of the same sequence of outcomes, and `Membership` (which the
router reads at every request) carries the verdict.

Rules (Envoy's outlier detection and Kubernetes readiness, simplified):
- a refused connection ejects at once (the process is gone);
- a failed probe or failed request counts towards `failure_threshold` in a row; a probe that
  only timed out may mean a busy replica, so it counts the same way and no faster;
- a request that timed out or lost its connection counts neither way: a slow answer is load,
  not death (ejecting the busiest replica moves its load onto the others and cascades), and a
  dropped keep-alive connection says nothing about the process; the probes decide;
- only a passing probe brings an ejected replica back, after `success_threshold` in a row;
- a controller's Eject or Restore is a verdict like any other (`override`): the probes move
  the replica on from it, so the policy and `Membership` never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    OK = "ok"
    FAILED = "failed"  # answered, but not ready / an error status
    TIMEOUT = "timeout"  # no answer in time
    REFUSED = "refused"  # nothing listening: the process is gone
    DISCONNECTED = "disconnected"  # the connection dropped before an answer (a stale keep-alive?)


@dataclass(frozen=True)
class Change:
    replica: int
    healthy: bool
    reason: str


class HealthPolicy:
    def __init__(self, n_replicas: int, failure_threshold: int = 2, success_threshold: int = 1) -> None:
        if failure_threshold < 1 or success_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.healthy = [True] * n_replicas
        self._failures = [0] * n_replicas
        self._successes = [0] * n_replicas

    def add_replica(self, healthy: bool = True) -> int:
        """A new replica; a starting one is not healthy until `success_threshold` probes pass."""
        self.healthy.append(healthy)
        self._failures.append(0)
        self._successes.append(0)
        return len(self.healthy) - 1

    def on_probe(self, replica: int, outcome: Outcome) -> Change | None:
        """A probe's result; the change to make, if any."""
        if outcome is Outcome.OK:
            self._failures[replica] = 0
            if self.healthy[replica]:
                return None
            self._successes[replica] += 1
            if self._successes[replica] < self.success_threshold:
                return None
            self.healthy[replica] = True
            self._successes[replica] = 0
            return Change(replica, True, f"{self.success_threshold} probe(s) passed")
        return self._failed(replica, outcome, "probe")

    def on_request(self, replica: int, outcome: Outcome) -> Change | None:
        """A proxied request's transport outcome: failures count, a success only resets the
        count (being back in rotation takes a probe); a timeout or a dropped connection counts
        neither way (see the rules above)."""
        if outcome is Outcome.OK:
            self._failures[replica] = 0
            return None
        if outcome is Outcome.TIMEOUT or outcome is Outcome.DISCONNECTED:
            return None
        return self._failed(replica, outcome, "request")

    def override(self, replica: int, healthy: bool) -> None:
        """A controller's verdict (Eject, Restore): the counts start afresh from it, so a
        restored replica that keeps failing is ejected again, and an ejected one comes back
        through passing probes, as after any ejection."""
        self.healthy[replica] = healthy
        self._failures[replica] = 0
        self._successes[replica] = 0

    def _failed(self, replica: int, outcome: Outcome, what: str) -> Change | None:
        self._successes[replica] = 0
        if not self.healthy[replica]:
            return None
        self._failures[replica] += 1
        if outcome is not Outcome.REFUSED and self._failures[replica] < self.failure_threshold:
            return None
        self.healthy[replica] = False
        count = self._failures[replica]
        self._failures[replica] = 0
        reason = "connection refused" if outcome is Outcome.REFUSED else f"{count} {what}s {outcome.value} in a row"
        return Change(replica, False, reason)


@dataclass(frozen=True)
class RetryPolicy:
    """Whether a failed attempt is tried again on another replica. Only a transport failure
    (refused, or the connection dropped before an answer) is retried: infer is idempotent and
    nothing came back. An answer is never retried, a 503 included: the client sees the shed and
    its Retry-After, and retrying an answer that timed out could run the model twice."""

    max_retries: int = 1

    def should_retry(self, attempt: int, outcome: Outcome) -> bool:
        """`attempt` counts the retries already made for this request."""
        return attempt < self.max_retries and outcome in (Outcome.REFUSED, Outcome.DISCONNECTED)

    def may_reuse(self, outcome: Outcome) -> bool:
        """May the retry go back to the replica that failed when no other is left? After a
        dropped connection yes (a stale keep-alive: a fresh connection may well work), after a
        refused one never (nothing listens there)."""
        return outcome is Outcome.DISCONNECTED
