"""An A/B experiment read from a run's records: the design before it, the looks, the tests and the verdict after.

The same for the twin and the real stack: both hand over the flat requests frame (`version`,
`status`, `latency_s`, `correct`, `finish_s`, `user_id`) and the controller's outcome. The
looks are rebuilt from the records window by window (by answer time, the windows the controller
ticked on) and fed to the controller's own `ExperimentLooks`, up to the look that stopped the
experiment, or to the run's end. Then:
- per variant and metric, the estimate with its 1 - alpha interval (Wilson, t) at the end;
- the sequential test's last look (always-valid p and confidence sequence), and the fixed-horizon
  tests on the same data: two-proportion z, Welch t, and Mann-Whitney on the latencies;
- the sample-ratio check on the assignment units (requests, or distinct users);
- the verdict, resting on the sequential test in a sequential design (valid however often it was
  looked at) and on the fixed tests in a fixed-horizon one (valid once, at the planned end).

The design (`design`) sizes the experiment from baseline figures before it runs: the
two-proportion and Welch formulas for a fixed horizon, the mixture SPRT's power bound for a
sequential one, and the duration at the rate each metric gets observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sim.config import ExperimentMetric, metric_unit
from sim.policy.controller import VersionWindow
from sim.policy.experiment import Breach, ExperimentLooks, ExperimentSpec, Look
from sim.records import primary
from sim.stats.design import (allocation_ratio, duration_s, mean_sample_size, proportion_sample_size,
                              sequential_mean_sample_size, sequential_proportion_sample_size)
from sim.stats.estimates import estimate
from sim.stats.fixed import Comparison, mann_whitney, two_proportion_z, welch_t
from sim.stats.srm import sample_ratio_mismatch
from sim.stats.summaries import WindowMeans
from sim.stats.verdict import GuardrailBreach, MetricOutcome, decide, format_verdict, headline

EXPERIMENT_JSON = "experiment.json"  # a run's files (scenarios.experiment writes them, reports.experiment reads them)
EXPERIMENT_PARQUET = "experiment.parquet"
TABLE_COLUMNS = ["look", "window_start_s", "window_end_s", "metric", "variant", "role", "n", "value", "ci_low", "ci_high",
                 "effect", "effect_ci_low", "effect_ci_high", "p_value", "z", "z_boundary", "rejected", "assigned", "expected_share"]


# -- the design ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Baseline:
    """What the design assumes of the control before the experiment: a metric's value, its
    spread (means only), and how many observations of it a second of traffic brings."""

    metric: str
    value: float
    sd: float | None
    observations_per_s: float


def baselines(frame: pd.DataFrame, control: str, span_s: float, window_s: float) -> dict[str, Baseline]:
    """Baselines from a run's records (the twin's pilot run): the control's figures, and each
    metric's observations per second over both variants. The latency's spread is the one the
    tests will see: from the `window_s` windows' means (`WindowMeans`), as wide as one request's
    when requests are independent, wider when a queue makes neighbours alike."""
    rows = primary(frame)
    ok = rows["status"].to_numpy() == "ok"
    correct = rows["correct"].to_numpy(dtype=float, na_value=np.nan)
    latency = rows["latency_s"].to_numpy(dtype=float)
    mine = rows["version"].astype(str).to_numpy() == control
    judged = ok & ~np.isnan(correct)
    out: dict[str, Baseline] = {}
    if (judged & mine).any():
        out["accuracy"] = Baseline("accuracy", float(correct[judged & mine].mean()), None, judged.sum() / span_s)
    if mine.any():
        out["error_rate"] = Baseline("error_rate", float(1 - ok[mine].mean()), None, len(rows) / span_s)
    if (ok & mine).sum() >= 2:
        values = latency[ok & mine]
        windows = pd.Series(values).groupby(np.floor(rows["finish_s"].to_numpy(dtype=float)[ok & mine] / window_s))
        summed = sum((WindowMeans.window(len(w), float(w.sum()), float((w * w).sum())) for _, w in windows), WindowMeans())
        spread = math.sqrt(summed.variance_of_mean * summed.n) if summed.variance_of_mean >= 0 else float(values.std(ddof=1))
        out["latency_s"] = Baseline("latency_s", float(values.mean()), spread, ok.sum() / span_s)
    return out


def design(metrics: Sequence[ExperimentMetric], found: Mapping[str, Baseline], allocation: Sequence[float], alpha: float,
           power: float, sequential: bool, start_s: float, run_s: float, source: str) -> dict[str, Any]:
    """Sample sizes per variant and the duration they take, per metric, fixed and sequential;
    `enough` says whether the run is long enough for the design it uses."""
    ratio = allocation_ratio(allocation[0], allocation[1])
    rows = []
    for m in metrics:
        b = found.get(m.name)
        row: dict[str, Any] = {"metric": m.name, "mde": m.mde, "baseline": b.value if b else None, "sd": b.sd if b else None,
                               "fixed": None, "sequential": None, "note": None}
        rows.append(row)
        if b is None or not b.observations_per_s > 0:
            row["note"] = "the pilot saw no observation of it: cannot size"
            continue
        try:
            if m.kind == "proportion":
                # the direction the MDE is detectable in: up unless that leaves (0, 1)
                mde = m.mde if 0 < b.value + m.mde < 1 else -m.mde
                fixed = proportion_sample_size(b.value, mde, alpha, power, ratio)
                seq = sequential_proportion_sample_size(b.value, mde, alpha, power, ratio)
            else:
                assert b.sd is not None
                fixed = mean_sample_size(b.sd, m.mde, alpha, power, ratio)
                seq = sequential_mean_sample_size(b.sd, m.mde, alpha, power, ratio)
        except ValueError as exc:  # a baseline of 0 or 1 (no errors at all): no variance to size with
            row["note"] = f"cannot size: {exc}"
            continue
        for key, size in (("fixed", fixed), ("sequential", seq)):
            row[key] = {"n_control": size.n_a, "n_treatment": size.n_b,
                        "duration_s": start_s + duration_s([size.n_a, size.n_b], allocation, b.observations_per_s)}
    kind = "sequential" if sequential else "fixed"
    needed = [r[kind]["duration_s"] for r in rows if r[kind] is not None]
    return {"source": source, "metrics": rows, "duration_needed_s": max(needed) if needed else None, "run_s": run_s,
            "enough": bool(needed) and bool(max(needed) <= run_s)}


def format_design(doc: Mapping[str, Any], rate_rps: float, kind: str) -> str:
    """The design as lines for the console, before the run."""
    lines = [f"experiment design ({kind}, from {doc['source']}; {rate_rps:.4g} req/s offered):"]
    for r in doc["metrics"]:
        if r[kind] is None:
            lines.append(f"  {r['metric']:<10} MDE {r['mde']:g}: {r['note']}")
            continue
        f, s = r["fixed"], r["sequential"]
        sd = f", sd {r['sd']:.3g}" if r["sd"] is not None else ""
        lines.append(f"  {r['metric']:<10} baseline {r['baseline']:.4g}{sd}, MDE {r['mde']:g}: "
                     f"fixed {f['n_control']:,} + {f['n_treatment']:,} ({f['duration_s']:.1f} s), "
                     f"sequential {s['n_control']:,} + {s['n_treatment']:,} ({s['duration_s']:.1f} s)")
    needed = doc["duration_needed_s"]
    if needed is None:
        lines.append("  no metric could be sized")
    elif doc["enough"]:
        lines.append(f"  the {kind} design needs {needed:.1f} s; the run lasts {doc['run_s']:g} s: enough")
    else:
        lines.append(f"  UNDERPOWERED: the {kind} design needs {needed:.1f} s; the run lasts {doc['run_s']:g} s "
                     f"(raise duration_s, the rate, or the MDE)")
    return "\n".join(lines)


# -- the looks from the records ------------------------------------------------------------------

def _window(rows: pd.DataFrame) -> VersionWindow:
    ok = rows["status"].to_numpy() == "ok"
    latency = rows["latency_s"].to_numpy(dtype=float)[ok]
    correct = rows["correct"].to_numpy(dtype=float, na_value=np.nan)[ok]
    judged = correct[~np.isnan(correct)]
    p50, p99 = (float(x) for x in np.percentile(latency, [50, 99])) if len(latency) else (None, None)
    return VersionWindow(requests=len(rows), ok=int(ok.sum()), errors=int((rows["status"].to_numpy() != "ok").sum()),
                         latency_p50_s=p50, latency_p99_s=p99, judged=len(judged), correct=int(judged.sum()),
                         latency_sum_s=float(latency.sum()), latency_sumsq_s2=float((latency * latency).sum()))


def experiment_rows(frame: pd.DataFrame, spec: ExperimentSpec, end_s: float) -> pd.DataFrame:
    """The requests the experiment counts: primary traffic of its two variants, answered (or
    given up on) in a window after the warm-up and at or before its last look, with that look."""
    rows = primary(frame)
    rows = rows[rows["version"].astype(str).isin(spec.names)]
    finish = rows["finish_s"].to_numpy(dtype=float)
    look_time = (np.floor(finish / spec.tick_s) + 1) * spec.tick_s  # the tick whose window holds the answer
    keep = np.isfinite(finish) & (look_time - spec.tick_s >= spec.start_s - 1e-9) & (look_time <= end_s + 1e-9)
    rows = rows[keep].copy()
    rows["look_time_s"] = look_time[keep]
    return rows


def look_times(spec: ExperimentSpec, end_s: float, inclusive: bool) -> list[float]:
    """The controller's ticks after the warm-up: k x tick_s, as the twin and the real driver
    tick, up to `end_s` (a stop, `inclusive`), or before it (the arrivals' end: no tick there)."""
    first = math.ceil((spec.start_s + spec.tick_s) / spec.tick_s - 1e-9)
    times = []
    k = first
    while (due := k * spec.tick_s) < end_s or (inclusive and due <= end_s + 1e-9):
        times.append(due)
        k += 1
    return times


def replay_looks(rows: pd.DataFrame, spec: ExperimentSpec, times: Sequence[float]) -> ExperimentLooks:
    """The controller's looks rebuilt from `experiment_rows`, one per tick in `times` (a tick
    with no answer is still a look, as it was for the controller)."""
    looks = ExperimentLooks(spec)
    index = {name: i for i, name in zip((spec.control, spec.treatment), spec.names)}
    groups = {key: g for key, g in rows.groupby(["look_time_s", rows["version"].astype(str)], sort=True)}
    for now in times:
        windows = {index[name]: _window(groups[(now, name)]) for name in spec.names if (now, name) in groups}
        looks.observe(now, windows)
    return looks


# -- the analysis ---------------------------------------------------------------------------------

def replay(frame: pd.DataFrame, spec: ExperimentSpec, planned_end_s: float, stopped_s: float | None) -> tuple[ExperimentLooks, pd.DataFrame]:
    """The controller's looks from a run's records, to its stop (that look included) or to the
    arrivals' end (no tick there), and the requests they counted."""
    times = look_times(spec, stopped_s if stopped_s is not None else planned_end_s, inclusive=stopped_s is not None)
    rows = experiment_rows(frame, spec, times[-1] if times else -math.inf)
    return replay_looks(rows, spec, times), rows


def _fixed_tests(metric: ExperimentMetric, rows: pd.DataFrame, spec: ExperimentSpec, totals: tuple[Any, Any]) -> list[Comparison]:
    if metric.kind == "proportion":
        return [two_proportion_z(totals[0], totals[1], spec.alpha)]
    tests = [welch_t(totals[0], totals[1], spec.alpha)] if min(totals[0].n, totals[1].n) >= 2 else []
    ok = rows[rows["status"] == "ok"]
    samples = [ok.loc[ok["version"].astype(str) == name, "latency_s"].to_numpy(dtype=float) for name in spec.names]
    if min(len(s) for s in samples) >= 1:
        tests.append(mann_whitney(samples[0], samples[1], spec.alpha))
    return tests


def _test_doc(metric: str, c: Comparison) -> dict[str, Any]:
    return {"metric": metric, "test": c.test, "estimate": c.estimate, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
            "alpha": c.alpha, "baseline": c.baseline, "statistic": c.statistic, "relative_lift": c.relative_lift,
            "significant": c.significant}


def look_table(looks: Sequence[Look], spec: ExperimentSpec, allocation: Sequence[float], assigned: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """experiment.parquet: per look, metric and variant, the running estimate, and the
    sequential test's state (the same on both variants' rows)."""
    records = []
    for look, units in zip(looks, assigned):
        for m in spec.metrics:
            seq = look.sequential[m.name]
            for role, (name, total, share, unit_count) in zip(("control", "treatment"), zip(spec.names, look.totals[m.name], allocation, units)):
                e = estimate(total, spec.alpha)
                records.append((look.index, look.time_s - spec.tick_s, look.time_s, m.name, name, role, e.n, e.value, e.ci_low, e.ci_high,
                                seq.estimate, seq.ci_low, seq.ci_high, seq.p_value, seq.z, seq.z_boundary, seq.rejected,
                                unit_count, share))
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)


def _assigned(rows: pd.DataFrame, spec: ExperimentSpec, unit: str, times: Sequence[float]) -> list[tuple[int, int]]:
    """Per look, the units assigned to each variant so far (requests, or distinct users, each
    counted at its first look): one pass over the requests, then running sums over the looks."""
    version = rows["version"].astype(str)
    firsts = rows.assign(version=version)
    if unit == "user":
        firsts = firsts.groupby(["user_id", "version"], sort=False)["look_time_s"].min().reset_index()
    counts = firsts.groupby(["version", "look_time_s"]).size()
    out = np.zeros((len(times), 2), dtype=np.int64)
    position = {t: i for i, t in enumerate(times)}
    for (name, t), n in counts.items():
        if name in spec.names and t in position:
            out[position[t], spec.names.index(name)] += int(n)
    running = np.cumsum(out, axis=0)
    return [(int(a), int(b)) for a, b in running]


def analyse(frame: pd.DataFrame, spec: ExperimentSpec, *, allocation: Sequence[float], unit: str, planned_end_s: float,
            stopped_s: float | None, stop_reason: str | None) -> tuple[dict[str, Any], pd.DataFrame]:
    """experiment.json's results (without its design) and experiment.parquet, from a run's records.
    `stopped_s`: when the controller stopped the experiment (None: it ran to `planned_end_s`)."""
    end_s = stopped_s if stopped_s is not None else planned_end_s
    looks, rows = replay(frame, spec, planned_end_s, stopped_s)
    doc: dict[str, Any] = {
        "control": spec.names[0], "treatment": spec.names[1], "variants": list(spec.names), "allocation": list(allocation),
        "unit": unit, "alpha": spec.alpha, "design_kind": "sequential" if spec.stop_early else "fixed", "window_s": spec.tick_s,
        "start_s": spec.start_s, "planned_end_s": planned_end_s, "end_s": end_s, "stopped_early": stopped_s is not None,
        "stop_reason": stop_reason, "looks": len(looks.looks),
    }
    if not looks.looks:
        doc.update(estimates=[], tests=[], verdict_tests=[], srm=None, guardrails=[],
                   verdict={"decision": None, "headline": "no look: the run ended before the first window after the warm-up",
                            "lines": [], "metrics": []})
        return doc, pd.DataFrame(columns=TABLE_COLUMNS)
    last = looks.looks[-1]
    assigned = _assigned(rows, spec, unit, [look.time_s for look in looks.looks])
    estimates, tests, outcomes = [], [], []
    for m in spec.metrics:
        totals = last.totals[m.name]
        for name, total in zip(spec.names, totals):
            e = estimate(total, spec.alpha)
            estimates.append({"metric": m.name, "variant": name, "n": e.n, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high})
        sequential = last.sequential[m.name].comparison()
        fixed = _fixed_tests(m, rows, spec, totals)
        tests += [_test_doc(m.name, c) for c in [sequential, *fixed]]
        deciding = sequential if spec.stop_early else fixed[0] if fixed else sequential
        outcomes.append(MetricOutcome(m.name, deciding, m.higher_is_better, "s" if metric_unit(m.name) == "s" else ""))
    srm = sample_ratio_mismatch(list(assigned[-1]), list(allocation))
    breaches = [b for look in looks.looks for b in look.breaches]
    guardrails = [{"metric": g.metric, "max": g.max, "breaches": [{"variant": b.variant, "window_end_s": b.time_s, "value": b.value}
                                                                   for b in breaches if b.metric == g.metric]} for g in spec.guardrails]
    verdict = decide(outcomes, [GuardrailBreach(b.metric, b.variant, b.detail) for b in _first_per_variant(breaches)],
                     [f"{g.metric} <= {g.max:g}{' s' if metric_unit(g.metric) == 's' else ''}" for g in spec.guardrails],
                     stopped_s is not None, spec.names[0], spec.names[1])
    doc.update(
        estimates=estimates, tests=tests, verdict_tests=sorted({o.comparison.test for o in outcomes}),
        srm={"unit": unit, "counts": list(srm.counts), "expected": list(srm.expected), "chi2": srm.chi2, "p_value": srm.p_value,
             "threshold": srm.threshold, "mismatch": srm.mismatch},
        guardrails=guardrails,
        verdict={"decision": verdict.decision, "headline": headline(verdict), "lines": format_verdict(verdict).splitlines(),
                 "metrics": [{"metric": o.metric, "winner": o.winner, "test": o.comparison.test, "estimate": o.comparison.estimate,
                              "ci_low": o.comparison.ci_low, "ci_high": o.comparison.ci_high, "p_value": o.comparison.p_value}
                             for o in outcomes]},
    )
    return doc, look_table(looks.looks, spec, allocation, assigned)


def _first_per_variant(breaches: Sequence[Breach]) -> list[Breach]:
    """Each variant's first breach of each guardrail: what the verdict names."""
    seen: dict[tuple[str, str], Breach] = {}
    for b in breaches:
        seen.setdefault((b.variant, b.metric), b)
    return list(seen.values())
