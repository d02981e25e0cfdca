"""The verdict: the winner follows the test and the metric's direction, a treatment guardrail
breach overrides the metrics, and the words say so."""

from __future__ import annotations

import pytest

from sim.stats.fixed import Comparison
from sim.stats.verdict import (CONTROL_BETTER, GUARDRAIL_BREACHED, NO_DIFFERENCE, TRADE_OFF, TREATMENT_BETTER,
                               GuardrailBreach, MetricOutcome, decide, format_verdict)


def comparison(estimate: float, p: float, low: float | None = None, high: float | None = None) -> Comparison:
    return Comparison("two-proportion z", estimate, estimate - 0.01 if low is None else low,
                      estimate + 0.01 if high is None else high, p, 0.05, 0.9, 2.0)


ACCURACY_UP = MetricOutcome("accuracy", comparison(0.03, 0.001))
LATENCY_UP = MetricOutcome("latency mean", comparison(0.004, 0.0001), higher_is_better=False, unit="s")
LATENCY_FLAT = MetricOutcome("latency mean", comparison(0.001, 0.4, -0.002, 0.004), higher_is_better=False, unit="s")


@pytest.mark.parametrize("outcome, winner", [
    (ACCURACY_UP, "treatment"), (LATENCY_UP, "control"), (LATENCY_FLAT, None),
    (MetricOutcome("error rate", comparison(-0.01, 0.01), higher_is_better=False), "treatment"),
])
def test_the_winner_follows_significance_and_the_metrics_direction(outcome: MetricOutcome, winner: str | None) -> None:
    assert outcome.winner == winner


@pytest.mark.parametrize("outcomes, decision", [
    ([ACCURACY_UP], TREATMENT_BETTER), ([LATENCY_UP], CONTROL_BETTER), ([ACCURACY_UP, LATENCY_UP], TRADE_OFF),
    ([LATENCY_FLAT], NO_DIFFERENCE), ([ACCURACY_UP, LATENCY_FLAT], TREATMENT_BETTER),
])
def test_decision_from_the_metrics(outcomes: list[MetricOutcome], decision: str) -> None:
    assert decide(outcomes).decision == decision


def test_a_treatment_guardrail_breach_overrides_a_win() -> None:
    v = decide([ACCURACY_UP], [GuardrailBreach("p99", "B", "p99 0.231 s > 0.150 s in window 12")], ["p99"], stopped_early=True)
    assert v.decision == GUARDRAIL_BREACHED
    text = format_verdict(v)
    assert text.splitlines()[0] == "stopped early: guardrail p99 breached by B"
    assert "p99 0.231 s > 0.150 s in window 12" in text


def test_a_control_breach_does_not_decide_against_the_treatment() -> None:
    assert decide([ACCURACY_UP], [GuardrailBreach("p99", "A", "p99 high")]).decision == TREATMENT_BETTER


def test_wording_names_winner_metric_size_and_interval() -> None:
    text = format_verdict(decide([ACCURACY_UP, LATENCY_FLAT], guardrails=["p99", "error rate"]))
    lines = text.splitlines()
    assert lines[0] == "B better than A"
    assert lines[1].strip().startswith("B better on accuracy by 0.03 (B - A = +0.03, +3.3%, 95% CI +0.02..+0.04;")
    assert lines[2].strip().startswith("no detectable difference on latency mean (B - A = +0.001 s")
    assert lines[3].strip() == "guardrails held: p99, error rate"


def test_a_trade_off_names_both_sides() -> None:
    assert format_verdict(decide([ACCURACY_UP, LATENCY_UP])).splitlines()[0] == (
        "trade-off: B better on accuracy, worse on latency mean")
