"""An A/B experiment as a controller: looks at every window, stops on a decision or a guardrail.

The experiment's split is the router's (`sim.config.traffic_split`: the allocation as version
weights, sticky by user hash when the unit is the user); what this module decides is when the
experiment is over. Every `tick_s` (the run's window_s) the controller reads each variant's last
window (`View.windows`, the same `VersionWindow` the twin and the gateway compute for rollouts)
and feeds it to `ExperimentLooks`:
- each metric's running per-variant summary (`ProportionCounts` for accuracy and error rate,
  `WindowMeans` for the mean latency: its variance from the windows' means, as requests in one
  window share a queue), and a mixture SPRT per metric whose always-valid p-value
  may be looked at after every window (`sim.stats.sequential`);
- the guardrails, judged on the window alone: a variant's p99 or error rate above its limit, in
  a window with at least `min_requests` requests of that variant.
With `stop_early` (a sequential design) the controller stops the experiment the first time the
primary metric's test rejects (`concluded`) or the treatment breaches a guardrail (`aborted`),
and in both cases sends all traffic back to control: the experiment ends, shipping the winner is
a decision for people (or a rollout) with the verdict in hand. Without it, it only watches.

The record analysis (`sim.experiment`) builds the same windows from the run's requests and feeds
the same `ExperimentLooks`, so the looks in experiment.parquet are the controller's, recomputed
from what the client saw. No clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sim.config import ExperimentMetric, Guardrail, metric_unit
from sim.policy.controller import Action, VersionWindow, View
from sim.policy.strategy import ABORTED, CONCLUDED, RolloutController
from sim.stats.sequential import MixtureSPRT, SequentialLook
from sim.stats.summaries import ProportionCounts, WindowMeans

Summary = ProportionCounts | WindowMeans


def metric_summary(metric: str, window: VersionWindow) -> Summary:
    """One window's observations of `metric` for one variant."""
    if metric == "accuracy":  # the ok answers whose correctness is known
        return ProportionCounts(window.judged, window.correct)
    if metric == "error_rate":  # every request that was not answered ok
        return ProportionCounts(window.requests, window.requests - window.ok)
    if metric == "latency_s":  # the ok answers' latencies, a window at a time (they are not independent within one)
        return WindowMeans.window(window.ok, window.latency_sum_s, window.latency_sumsq_s2)
    raise ValueError(f"unknown metric {metric!r}")


def guardrail_value(metric: str, window: VersionWindow) -> float | None:
    """A window's value of a guardrail metric (None when the window cannot say)."""
    if metric == "p99_s":
        return window.latency_p99_s
    if metric == "error_rate":
        return (window.requests - window.ok) / window.requests if window.requests else None
    raise ValueError(f"unknown guardrail metric {metric!r}")


@dataclass(frozen=True)
class ExperimentSpec:
    control: int  # version indices
    treatment: int
    names: tuple[str, str]  # (control, treatment) version names
    metrics: tuple[ExperimentMetric, ...]  # the first is primary
    guardrails: tuple[Guardrail, ...] = ()
    alpha: float = 0.05
    stop_early: bool = True
    start_s: float = 0.0  # windows ending before start_s + tick_s are not looked at (the warm-up)
    tick_s: float = 1.0
    min_requests: int = 20
    min_samples: int = 100  # per variant, before a sequential test may decide (sim.stats.sequential)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("an experiment needs at least one metric")
        if self.control == self.treatment:
            raise ValueError("control and treatment must be two versions")
        if not self.tick_s > 0:
            raise ValueError(f"tick_s must be > 0, got {self.tick_s}")


@dataclass(frozen=True)
class Breach:
    """A variant's window over a guardrail's limit."""

    time_s: float  # the look's time: the end of the window
    variant: str
    metric: str
    value: float
    limit: float

    @property
    def detail(self) -> str:
        unit = " s" if metric_unit(self.metric) == "s" else ""
        return f"{self.metric} {self.value:.4g}{unit} > {self.limit:g}{unit} in the window to {self.time_s:.1f} s"


@dataclass(frozen=True)
class Look:
    """Everything known at one look: each metric's sequential test, the running summaries per
    variant (control first), the assignment so far, and the guardrail breaches of this window."""

    index: int  # 1 for the first
    time_s: float
    sequential: Mapping[str, SequentialLook]
    totals: Mapping[str, tuple[Summary, Summary]]
    requests: tuple[int, int]  # requests of each variant so far
    breaches: tuple[Breach, ...] = ()


class ExperimentLooks:
    """The looks of one experiment, window by window: shared by the controller and the analysis
    of the records, so both reach the same decision on the same windows."""

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self.tests: dict[str, MixtureSPRT[Summary]] = {
            m.name: MixtureSPRT.for_design(m.mde, spec.alpha, spec.min_samples) for m in spec.metrics}
        self.looks: list[Look] = []
        self._requests = (0, 0)

    def due(self, now: float) -> bool:
        """Whether the window ending at `now` lies after the warm-up (a look counts it)."""
        return now - self.spec.tick_s >= self.spec.start_s - 1e-9

    def observe(self, now: float, windows: Mapping[int, VersionWindow]) -> Look:
        s = self.spec
        pair = (windows.get(s.control, VersionWindow()), windows.get(s.treatment, VersionWindow()))
        sequential = {m.name: self.tests[m.name].update(metric_summary(m.name, pair[0]), metric_summary(m.name, pair[1]))
                      for m in s.metrics}
        totals = {name: (test.a, test.b) for name, test in self.tests.items()}
        self._requests = (self._requests[0] + pair[0].requests, self._requests[1] + pair[1].requests)
        breaches = []
        for g in s.guardrails:
            for name, window in zip(s.names, pair):
                value = guardrail_value(g.metric, window)
                if window.requests >= s.min_requests and value is not None and value > g.max:
                    breaches.append(Breach(now, name, g.metric, value, g.max))
        look = Look(len(self.looks) + 1, now, sequential, totals, self._requests, tuple(breaches))  # type: ignore[arg-type]
        self.looks.append(look)
        return look

    @property
    def primary(self) -> str:
        return self.spec.metrics[0].name


def stop_reason(look: Look, spec: ExperimentSpec) -> tuple[str, str] | None:
    """(final state, reason) if this look stops a sequential experiment: a guardrail breached by
    the treatment (aborted), else the primary metric's test rejecting (concluded)."""
    breached = [b for b in look.breaches if b.variant == spec.names[1]]
    if breached:
        return ABORTED, f"guardrail breached by {spec.names[1]}: {breached[0].detail}"
    primary = look.sequential[spec.metrics[0].name]
    if primary.rejected:
        return CONCLUDED, (f"{spec.metrics[0].name}: always-valid p {primary.p_value:.3g} <= alpha {primary.alpha:g} "
                           f"at look {look.index}")
    return None


class ExperimentController(RolloutController):
    """Ticks the looks on the controller clock; with `stop_early`, ends the split at a decision."""

    strategy = "experiment"

    def __init__(self, spec: ExperimentSpec, n_versions: int) -> None:
        super().__init__(spec.control, spec.treatment, n_versions, spec.tick_s, None)
        self.spec = spec
        self.looks = ExperimentLooks(spec)
        self.breaches: list[Breach] = []

    def _tick(self, now: float, view: View) -> list[Action]:
        if self._abort_requested:
            return self._stop(now, ABORTED, "stopped by hand")
        if self._promote_requested:
            return self._stop(now, CONCLUDED, "concluded by hand")
        if not self.looks.due(now):
            return []
        look = self.looks.observe(now, view.windows)
        for b in look.breaches:
            self.breaches.append(b)
            self._decide(now, "measurement", f"guardrail: {b.variant} {b.detail}")
        stop = stop_reason(look, self.spec) if self.spec.stop_early else None
        if stop is not None:
            return self._stop(now, *stop)
        return []

    def _stop(self, now: float, state: str, reason: str) -> list[Action]:
        self._decide(now, state, reason)
        return [self._weights(0.0)]
