"""The experiment's answer: which variant wins on which metric, by how much, and what the guardrails did.

Data first (`Verdict`, built by `decide` from the tests' `Comparison`s and the guardrail
breaches the controller saw), wording in one place (`format_verdict`), so experiment.json, the
report and the console say the same thing. A metric's winner is decided by its test's p-value
(<= alpha), the direction by the sign of B - A and whether higher is better for that metric; a
metric whose test did not reject says "no detectable difference", never "no difference": the
interval says how large a difference the data still allow. A guardrail breached by the
treatment overrides the metrics: whatever B gains, it is not shipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.stats.fixed import Comparison

TREATMENT_BETTER = "treatment_better"
CONTROL_BETTER = "control_better"
TRADE_OFF = "trade_off"  # better on one metric, worse on another
NO_DIFFERENCE = "no_detectable_difference"
GUARDRAIL_BREACHED = "guardrail_breached"


@dataclass(frozen=True)
class MetricOutcome:
    """One metric's comparison of B (treatment) with A (control), and which way is better."""

    metric: str  # "accuracy", "latency mean", ...
    comparison: Comparison
    higher_is_better: bool = True
    unit: str = ""  # "s" for latency; "" for proportions

    @property
    def winner(self) -> str | None:
        """"treatment", "control" or None (no detectable difference)."""
        c = self.comparison
        if not c.significant or c.estimate == 0 or math.isnan(c.estimate):
            return None
        return "treatment" if (c.estimate > 0) == self.higher_is_better else "control"


@dataclass(frozen=True)
class GuardrailBreach:
    guardrail: str  # "p99", "error rate"
    variant: str  # the variant that breached it
    detail: str  # "p99 0.231 s > 0.150 s in window 12"


@dataclass(frozen=True)
class Verdict:
    control: str
    treatment: str
    outcomes: tuple[MetricOutcome, ...]
    breaches: tuple[GuardrailBreach, ...] = ()
    guardrails: tuple[str, ...] = ()  # the guardrails that were watched
    stopped_early: bool = False
    decision: str = field(default=NO_DIFFERENCE)


def decide(outcomes: list[MetricOutcome] | tuple[MetricOutcome, ...], breaches: list[GuardrailBreach] | tuple[GuardrailBreach, ...] = (),
           guardrails: list[str] | tuple[str, ...] = (), stopped_early: bool = False, control: str = "A",
           treatment: str = "B") -> Verdict:
    winners = {o.winner for o in outcomes} - {None}
    if any(b.variant == treatment for b in breaches):
        decision = GUARDRAIL_BREACHED
    elif winners == {"treatment"}:
        decision = TREATMENT_BETTER
    elif winners == {"control"}:
        decision = CONTROL_BETTER
    elif winners:
        decision = TRADE_OFF
    else:
        decision = NO_DIFFERENCE
    return Verdict(control, treatment, tuple(outcomes), tuple(breaches), tuple(guardrails), stopped_early, decision)


def _number(x: float, unit: str, signed: bool = False) -> str:
    text = f"{x:+.4g}" if signed else f"{x:.4g}"
    return f"{text} {unit}" if unit else text


def format_outcome(outcome: MetricOutcome, control: str = "A", treatment: str = "B") -> str:
    c = outcome.comparison
    if math.isinf(c.ci_low) and math.isinf(c.ci_high):  # a sequential test still in its burn-in
        return (f"too few observations to tell on {outcome.metric} ({treatment} - {control} = "
                f"{_number(c.estimate, outcome.unit, signed=True)} so far; {c.test} not yet informative)")
    lift = c.relative_lift
    lift_text = f", {lift:+.1%}" if lift is not None else ""
    interval = (f"{treatment} - {control} = {_number(c.estimate, outcome.unit, signed=True)}{lift_text}, "
                f"{1 - c.alpha:.0%} CI {_number(c.ci_low, outcome.unit, signed=True)}..{_number(c.ci_high, outcome.unit, signed=True)}; "
                f"{c.test}, p = {c.p_value:.3g}")
    winner = outcome.winner
    if winner is None:
        return f"no detectable difference on {outcome.metric} ({interval})"
    name = treatment if winner == "treatment" else control
    return f"{name} better on {outcome.metric} by {_number(abs(c.estimate), outcome.unit)} ({interval})"


def headline(v: Verdict) -> str:
    treatment_breaches = [b for b in v.breaches if b.variant == v.treatment]
    if v.decision == GUARDRAIL_BREACHED:
        names = ", ".join(dict.fromkeys(b.guardrail for b in treatment_breaches))
        return f"{'stopped early: ' if v.stopped_early else ''}guardrail {names} breached by {v.treatment}"
    prefix = "stopped early on a decision: " if v.stopped_early else ""
    if v.decision == TREATMENT_BETTER:
        return prefix + f"{v.treatment} better than {v.control}"
    if v.decision == CONTROL_BETTER:
        return prefix + f"{v.control} better than {v.treatment}"
    if v.decision == TRADE_OFF:
        gains = [o.metric for o in v.outcomes if o.winner == "treatment"]
        losses = [o.metric for o in v.outcomes if o.winner == "control"]
        return prefix + f"trade-off: {v.treatment} better on {', '.join(gains)}, worse on {', '.join(losses)}"
    return "no detectable difference between " + f"{v.control} and {v.treatment}"


def format_verdict(v: Verdict) -> str:
    """The verdict as lines of text: the headline, one line per metric, one about the guardrails."""
    lines = [headline(v)]
    lines += [f"  {format_outcome(o, v.control, v.treatment)}" for o in v.outcomes]
    if v.breaches:
        lines += [f"  guardrail {b.guardrail} breached by {b.variant}: {b.detail}" for b in v.breaches]
    elif v.guardrails:
        lines.append(f"  guardrails held: {', '.join(v.guardrails)}")
    return "\n".join(lines)
