"""The analysis every rollout strategy runs: the candidate version's last window against the baseline's.

Argo Rollouts' AnalysisRun and Flagger's canary analysis ask the same questions of a metrics
store every interval; here the answers come from the per-version windows (`View.windows`) that
the twin and the gateway both compute (`sim.policy.windows`). One measurement per tick:
- the candidate's error fraction above `max_error_rate` fails;
- its p99 above `max_p99_ratio` times the baseline's fails;
- its accuracy below the baseline's by more than `max_accuracy_drop` fails, when both windows
  hold at least `min_requests` judged answers (labelled requests; none: not checked);
- fewer than `min_requests` candidate answers is *inconclusive*: neither passes nor fails.

The baseline compared against is the stable version's window when it is conclusive, else the
last conclusive one seen: after a blue-green switch, or at the end of a rolling update, stable
serves nothing any more, and the new version is still judged against what stable did. Before
any conclusive baseline, a window can fail on errors but not pass (inconclusive): the strategies
that replace stable wait for a baseline first (`has_baseline`).

The run counts failed measurements; what a count means is the strategy's: Argo's canary
tolerates `failure_limit` failures (one more aborts), Flagger's `threshold` is the number of
failed checks that rolls back (`failure_limit = threshold - 1` here). No clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.policy.controller import VersionWindow, View

PASSED = "passed"
FAILED = "failed"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Analysis:
    """Success conditions of a window of the candidate, and how many failures are tolerated."""

    max_error_rate: float = 0.01  # errors / requests of the candidate in the window
    max_p99_ratio: float = 1.5  # candidate p99 / baseline p99
    failure_limit: int = 0  # failed measurements tolerated; one more rolls back
    min_requests: int = 20  # fewer candidate answers in a window: inconclusive
    max_accuracy_drop: float = 0.05  # baseline accuracy - candidate accuracy

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if not self.max_p99_ratio > 0:
            raise ValueError(f"max_p99_ratio must be > 0, got {self.max_p99_ratio}")
        if self.failure_limit < 0:
            raise ValueError(f"failure_limit must be >= 0, got {self.failure_limit}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {self.min_requests}")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")


@dataclass(frozen=True)
class Measurement:
    time_s: float
    result: str  # passed | failed | inconclusive
    reason: str  # what failed, or why it could not tell


class AnalysisRun:
    """One rollout's analysis of `candidate` against `baseline` (version indices): a measurement
    per call, the failures counted, the last conclusive baseline window remembered."""

    def __init__(self, spec: Analysis, candidate: int, baseline: int) -> None:
        self.spec = spec
        self.candidate = candidate
        self.baseline = baseline
        self.failures = 0
        self.measurements: list[Measurement] = []
        self._reference: VersionWindow | None = None

    @property
    def has_baseline(self) -> bool:
        """Whether a conclusive baseline window was seen: what the relative checks need."""
        return self._reference is not None

    @property
    def failed(self) -> bool:
        """More failures than the limit tolerates: the rollout must roll back."""
        return self.failures > self.spec.failure_limit

    def measure(self, now: float, view: View) -> Measurement:
        a = self.spec
        candidate = view.windows.get(self.candidate, VersionWindow())
        baseline = view.windows.get(self.baseline, VersionWindow())
        if baseline.requests >= a.min_requests:
            self._reference = baseline
        reference = self._reference
        if candidate.requests < a.min_requests:
            return self._record(Measurement(now, INCONCLUSIVE, f"{candidate.requests} answers < min_requests {a.min_requests}"))
        problems: list[str] = []
        error_rate = candidate.errors / candidate.requests
        if error_rate > a.max_error_rate:
            problems.append(f"error rate {error_rate:.3f} > {a.max_error_rate:g}")
        if reference is not None and candidate.latency_p99_s is not None and reference.latency_p99_s:
            ratio = candidate.latency_p99_s / reference.latency_p99_s
            if ratio > a.max_p99_ratio:
                problems.append(f"p99 {ratio:.2f}x stable > {a.max_p99_ratio:g}x")
        if reference is not None and candidate.judged >= a.min_requests and reference.judged >= a.min_requests:
            assert candidate.accuracy is not None and reference.accuracy is not None
            drop = reference.accuracy - candidate.accuracy
            if drop > a.max_accuracy_drop:
                problems.append(f"accuracy {candidate.accuracy:.3f} is {drop:.3f} below stable's > {a.max_accuracy_drop:g}")
        if problems:
            self.failures += 1
            return self._record(Measurement(now, FAILED, "; ".join(problems)))
        if reference is None:  # latency and accuracy could not be compared: no verdict on them
            return self._record(Measurement(now, INCONCLUSIVE, "no conclusive stable window to compare with yet"))
        return self._record(Measurement(now, PASSED, ""))

    def _record(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        return m
