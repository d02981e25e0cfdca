"""Predicted against measured: the numbers behind `comparison.json` and the fidelity table.

A comparison is a plain dict (JSON as written) so CI, notebooks and the HTML report all read the
very same object; nothing here knows whether the twin or the real stack produced a summary.
The error convention is the one the fidelity targets use: relative to the *measured* value,
signed so that a positive error means the twin over-predicts.

A run with a rollout adds three rows with targets of their own kind (`target_kind`): the same
decision on both sides (`same`), the decision's time within one analysis interval (`abs`, in
seconds), and the requests the candidate version served before it within 20% (`rel`, as the
others). They count in the verdict like every other target. An A/B experiment adds its own
(reports.experiment.add_experiment_comparison): the same verdict (`same`), and per metric the
real effect inside the twin's interval (`interval`: target [low, high]).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from sim.records import COLUMNS

Summary = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """One row of the fidelity table: where it lives in summary.json and how to print it."""

    key: str
    label: str
    unit: str  # "s" (printed in ms), "req/s", "req" (batch size), "fraction" (printed in %)
    read: Callable[[Summary], Any]


def _latency(name: str) -> Callable[[Summary], Any]:
    return lambda s: (s.get("latency_s") or {}).get(name)


METRICS: tuple[Metric, ...] = (
    Metric("latency_p50", "latency p50", "s", _latency("p50")),
    Metric("latency_p90", "latency p90", "s", _latency("p90")),
    Metric("latency_p99", "latency p99", "s", _latency("p99")),
    Metric("latency_mean", "latency mean", "s", _latency("mean")),
    # completions in the window per second: at overload it is the capacity each side reached,
    # so its error says how well the twin predicts saturation, not how well both echo the load
    Metric("throughput", "throughput", "req/s", lambda s: s.get("throughput")),
    # per batch: what the server's batch-size histogram shows; per request: what a request rode in
    Metric("batch_size_mean_per_batch", "batch size, mean per batch", "req", lambda s: s.get("batch_size_mean_per_batch")),
    Metric("batch_size_mean_per_request", "batch size, mean per request", "req",
           lambda s: s.get("batch_size_mean_per_request")),
    Metric("queue_mean", "queue time mean", "s", lambda s: s.get("queue_s_mean")),
    Metric("shed_fraction", "shed fraction", "fraction", lambda s: s.get("shed_fraction")),
)
# With a feature store (summary.json's `features`, sim.records.feature_figures): the replica
# caches' hit ratio and the lookup time per batch, rows only when a side looked features up.
FEATURE_METRICS: tuple[Metric, ...] = (
    Metric("feature_hit_ratio", "feature cache hit ratio", "fraction", lambda s: (s.get("features") or {}).get("hit_ratio")),
    Metric("feature_lookup_p50", "feature lookup p50, per batch", "s",
           lambda s: ((s.get("features") or {}).get("lookup_s") or {}).get("p50")),
)
METRIC_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS + FEATURE_METRICS}

# The fidelity targets of issue 4: |relative error| at most this, per metric.
DEFAULT_TARGETS: dict[str, float] = {"latency_p50": 0.05, "latency_p99": 0.10, "throughput": 0.02}
# Issue 10's target for a rollout's exposure: the candidate's requests before the decision, relative.
ROLLOUT_EXPOSURE_TARGET = 0.20


def _number(value: Any) -> float | None:
    """A finite float or None: summaries may hold None, NaN or ints, JSON wants neither NaN nor inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# 10.5 ms against 10 ms is +5% exactly; in floats it is 5.0000000000000004%, which no reader
# of a table showing "+5.0%  <= 5%" would call a miss.
_TOLERANCE = 1e-9


def compare_metric(predicted: Any, measured: Any, target: float | None = None) -> dict[str, Any]:
    """One metric's entry. A measured 0 has no relative error: two zeros agree exactly (error 0);
    anything else against 0 keeps its absolute difference and is flagged, and misses any target,
    since no tolerance relative to nothing can be met."""
    x, y = _number(predicted), _number(measured)
    entry: dict[str, Any] = {"predicted": x, "measured": y, "abs_error": None, "rel_error": None,
                             "rel_error_undefined": False, "target": target, "within_target": None,
                             "missed_by": None}
    if x is None or y is None:
        return entry
    entry["abs_error"] = x - y
    if y != 0:
        entry["rel_error"] = (x - y) / y
    elif x == 0:
        entry["rel_error"] = 0.0
    else:
        entry["rel_error_undefined"] = True
    if target is not None:
        err = entry["rel_error"]
        ok = err is not None and abs(err) <= target + _TOLERANCE
        entry["within_target"] = ok
        if not ok and err is not None:
            entry["missed_by"] = abs(err) - target
    return entry


def _entry(label: str, unit: str, predicted: Any, measured: Any, target: Any, kind: str, within: bool | None,
           missed_by: float | None = None, abs_error: float | None = None) -> dict[str, Any]:
    return {"label": label, "unit": unit, "predicted": predicted, "measured": measured, "abs_error": abs_error,
            "rel_error": None, "rel_error_undefined": False, "target": target, "target_kind": kind,
            "within_target": within, "missed_by": missed_by}


def compare_rollouts(predicted: Summary, measured: Summary, interval_s: float,
                     exposure_target: float = ROLLOUT_EXPOSURE_TARGET) -> dict[str, dict[str, Any]]:
    """The rollout rows of a comparison, from the two summaries' `rollout` (outcome, decided_s,
    candidate_requests): the same decision; its time within `interval_s` (one analysis
    window: scenarios.compare.analysis_window_s);
    the candidate's requests before the decision within `exposure_target`, relative. A
    decision only one side made misses the time target; none on either side has no time to compare."""
    p_out, m_out = predicted.get("outcome"), measured.get("outcome")
    # an experiment's controller reports as a rollout's: its decision is when it stopped
    experiment = predicted.get("strategy") == "experiment"
    what, candidate = ("experiment stop", "treatment") if experiment else ("rollout decision", "candidate")
    rows = {"rollout_decision": _entry(what, "decision", p_out, m_out, "same", "same",
                                       None if p_out is None or m_out is None else p_out == m_out)}
    x, y = _number(predicted.get("decided_s")), _number(measured.get("decided_s"))
    time_row = _entry(f"{what} time", "time", x, y, interval_s, "abs", None)
    if x is not None and y is not None:
        diff = x - y
        ok = abs(diff) <= interval_s + _TOLERANCE
        time_row.update(abs_error=diff, within_target=ok, missed_by=None if ok else abs(diff) - interval_s)
    elif (x is None) != (y is None):
        time_row["within_target"] = False  # one side decided, the other did not
    if not (experiment and x is None and y is None):  # an experiment neither side stopped ran its course: no time to compare
        rows["rollout_decision_time"] = time_row
    exposure = compare_metric(predicted.get("candidate_requests"), measured.get("candidate_requests"), exposure_target)
    rows["rollout_candidate_requests"] = {"label": f"{candidate} requests before the {'stop' if experiment else 'decision'}", "unit": "count",
                                          **exposure, "target_kind": "rel"}
    return rows


def add_rollout_comparison(comparison: dict[str, Any], predicted: Summary, measured: Summary, interval_s: float,
                           exposure_target: float = ROLLOUT_EXPOSURE_TARGET) -> dict[str, Any]:
    """`comparison` (from compare_summaries) with the rollout rows and their targets added, the
    verdict over all targets; both sides' rollout outcome kept under `rollout`."""
    rows = compare_rollouts(predicted, measured, interval_s, exposure_target)
    comparison["metrics"].update(rows)
    for key, row in rows.items():
        comparison["targets"][key] = row["target"]
        comparison["within_target"][key] = row["within_target"]
        if row["within_target"] is None:
            comparison["warnings"].append(f"{row['label']}: no value to compare against its target")
    within = comparison["within_target"]
    comparison["all_within_target"] = bool(within) and all(ok is True for ok in within.values())
    keep = ("strategy", "outcome", "decided_s", "reason", "candidate_requests", "candidate_users", "error")
    comparison["rollout"] = {"interval_s": interval_s,
                             **{side: {k: s[k] for k in keep if k in s} for side, s in (("predicted", predicted), ("measured", measured))}}
    return comparison


def run_warnings(summary: Summary, who: str = "") -> list[str]:
    """Everything a summary says should make a reader distrust it: its own `warnings`, and a
    load generator that flagged itself invalid (it fell behind its schedule)."""
    prefix = f"{who}: " if who else ""
    notes = [f"{prefix}{w}" for w in summary.get("warnings", []) or []]
    loadgen = summary.get("loadgen")
    flags = [summary.get("valid"), loadgen.get("valid") if isinstance(loadgen, Mapping) else None]
    if any(flag is False for flag in flags) and not notes:
        notes.append(f"{prefix}the load generator flagged this run invalid (it fell behind its schedule)")
    return notes


def measurement_validity(measured: Summary | None) -> dict[str, Any]:
    """`{"valid": bool, "invalid_reasons": [...]}` of one measured point: invalid when its
    summary or its load generator says `valid: false` (mode=real's `_validity`: send lag,
    requests never sent, a failed rollout, replicas not told time 0); the reasons are the
    summary's own warnings, which name the cause. A point with no measurement (twin-only) is
    valid: nothing was measured that could mislead."""
    if measured is None:
        return {"valid": True, "invalid_reasons": []}
    loadgen = measured.get("loadgen")
    flags = [measured.get("valid"), loadgen.get("valid") if isinstance(loadgen, Mapping) else None]
    valid = not any(flag is False for flag in flags)
    return {"valid": valid, "invalid_reasons": [] if valid else run_warnings(measured)}


def compare_summaries(
    predicted: Summary,
    measured: Summary,
    *,
    targets: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """comparison.json: each metric predicted vs measured with its error, the targets, and
    whether each was met; `warnings` carries the inputs' own doubts so no table hides them."""
    targets = dict(DEFAULT_TARGETS if targets is None else targets)
    unknown = set(targets) - set(METRIC_BY_KEY)
    if unknown:
        raise ValueError(f"targets for unknown metrics {sorted(unknown)}; known: {', '.join(METRIC_BY_KEY)}")
    rows = METRICS + (FEATURE_METRICS if predicted.get("features") or measured.get("features") else ())
    metrics = {
        m.key: {"label": m.label, "unit": m.unit, **compare_metric(m.read(predicted), m.read(measured), targets.get(m.key))}
        for m in rows
    }
    within = {k: metrics[k]["within_target"] for k in targets}
    warnings = run_warnings(predicted, "predicted") + run_warnings(measured, "measured")
    for key, ok in within.items():
        if ok is None:
            warnings.append(f"{METRIC_BY_KEY[key].label}: no value to compare against its target")
    return {
        "predicted_backend": predicted.get("backend"),
        "measured_backend": measured.get("backend"),
        "metrics": metrics,
        "targets": targets,
        "within_target": within,
        "all_within_target": bool(within) and all(ok is True for ok in within.values()),
        "warnings": warnings,
        **measurement_validity(measured),  # of the measured side: "valid", "invalid_reasons"
    }


# ---------------------------------------------------------------- tables


def format_value(value: float | str | None, unit: str) -> str:
    """A metric in the unit people think in: latency in ms, fractions in %, decision times in s."""
    if value is None:
        return "-"
    if isinstance(value, str):  # a decision: promoted, aborted, ...
        return value
    if unit == "time":
        return f"{value:.2f} s"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "s":
        return f"{value * 1e3:.2f} ms"
    if unit == "req/s":
        return f"{value:.1f} req/s"
    if unit == "fraction":
        return f"{value:.2%}"
    return f"{value:.2f}"


def _error_text(entry: Mapping[str, Any]) -> str:
    kind = entry.get("target_kind", "rel")
    if kind == "same":
        ok = entry.get("within_target")
        return "-" if ok is None else ("same" if ok else "differs")
    if kind == "abs":
        diff = entry.get("abs_error")
        return "-" if diff is None else f"{diff:+.2f} s"
    if kind == "interval":  # twin - real, in the metric's unit
        diff = entry.get("abs_error")
        return "-" if diff is None else ("+" if diff >= 0 else "-") + format_value(abs(diff), entry["unit"])
    if entry.get("rel_error_undefined"):
        return f"n/a (measured 0, diff {format_value(entry['abs_error'], entry['unit'])})"
    err = entry.get("rel_error")
    return "-" if err is None else f"{err:+.1%}"


def _verdict(entry: Mapping[str, Any]) -> str:
    ok = entry.get("within_target")
    if entry.get("target") is None:
        return ""
    if ok is None:
        return "no data"
    if ok:
        return "met"
    missed = entry.get("missed_by")
    if missed is None:
        return "MISSED"
    if entry.get("target_kind") == "interval":
        return f"MISSED by {format_value(missed, entry['unit'])}"
    return f"MISSED by {missed:.2f} s" if entry.get("target_kind") == "abs" else f"MISSED by {missed * 100:.1f} pp"


def _target_text(entry: Mapping[str, Any]) -> str:
    target, kind = entry.get("target"), entry.get("target_kind", "rel")
    if target is None:
        return ""
    if kind == "same":
        return "same"
    if kind == "abs":
        return f"<= {target:g} s"
    if kind == "interval":  # [low, high] of the twin's interval, null for an unbounded end
        if not isinstance(target, (list, tuple)):
            return str(target)
        low, high = target
        return (f"in [{'-inf' if low is None else format_value(low, entry['unit'])}, "
                f"{'+inf' if high is None else format_value(high, entry['unit'])}]")
    return f"<= {target:.0%}"


def comparison_rows(comparison: Mapping[str, Any]) -> list[list[str]]:
    """The table's cells, shared by the terminal, Markdown and HTML renderings."""
    rows = []
    for key, e in comparison["metrics"].items():
        rows.append([
            e.get("label", key),
            format_value(e["predicted"], e["unit"]),
            format_value(e["measured"], e["unit"]),
            _error_text(e),
            _target_text(e),
            _verdict(e),
        ])
    return rows


HEADER = ["metric", "predicted (twin)", "measured (real)", "error", "target", "verdict"]


def format_comparison_table(comparison: Mapping[str, Any], *, markdown: bool = False) -> str:
    """The fidelity table: fixed-width for a terminal, or a Markdown pipe table; after a blank
    line, the verdict, the predicted capacity of the stack as deployed, the measured load
    points (each marked valid or INVALID), one line per invalid measured point saying why, and
    the warnings."""
    rows = comparison_rows(comparison)
    numeric = [False, True, True, True, True, False]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    else:
        lines = fixed_width(HEADER, rows, numeric)
    verdict = comparison_verdict(comparison)
    capacity = format_stack_capacity(comparison)
    lines += ["", verdict] + ([capacity] if capacity else [])
    header, curve = load_curve_rows(comparison)
    if curve:
        lines += ["", f"load curve ({len(curve)} measured point{'s' if len(curve) > 1 else ''}; "
                      f"load = offered / {capacity_name(comparison)}):"]
        lines += fixed_width(header, curve, [True, True, True, True, True, False, False])
    invalid = invalid_measurements(comparison)
    lines += ([""] if invalid else []) + invalid
    lines += [f"WARNING: {w}" for w in comparison.get("warnings", [])]
    return "\n".join(lines)


def fixed_width(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> list[str]:
    """A console table: the header, a rule, the rows; `numeric` columns right-aligned (None: none)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = numeric or [False] * len(header)

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


# ---------------------------------------------------------------- capacity, load points, validity


def deployed_capacity_rps(comparison: Mapping[str, Any]) -> float | None:
    """What load fractions are fractions of: the predicted capacity of the stack as deployed
    (`stack_capacity.rps`, the lesser of the device and host limits) when the comparison has
    it, else the device capacity (`capacity_rps`) of comparisons written before it existed."""
    stack = comparison.get("stack_capacity")
    rps = _number(stack.get("rps")) if isinstance(stack, Mapping) else None
    return rps if rps is not None and rps > 0 else _number(comparison.get("capacity_rps"))


def capacity_name(comparison: Mapping[str, Any]) -> str:
    stack = comparison.get("stack_capacity")
    return "stack capacity" if isinstance(stack, Mapping) and _number(stack.get("rps")) else "capacity"


def _rps(value: Any) -> str:
    x = _number(value)
    return "unknown" if x is None else f"{x:,.0f} req/s"


def format_stack_capacity(comparison: Mapping[str, Any]) -> str | None:
    """"predicted capacity of the stack as deployed: 1,050 req/s (host binds; device limit
    2,453 req/s, host limit 1,050 req/s)", or None for a comparison without `stack_capacity`.
    A host limit that is null or infinite was not measured: "unknown"."""
    stack = comparison.get("stack_capacity")
    if not isinstance(stack, Mapping) or _number(stack.get("rps")) is None:
        return None
    binds = f"{stack['binds']} binds; " if stack.get("binds") else ""
    by = f" by its {stack['host_limit']}" if stack.get("host_limit") and _number(stack.get("host_rps")) else ""
    return (f"predicted capacity of the stack as deployed: {_rps(stack.get('rps'))} "
            f"({binds}device limit {_rps(stack.get('device_rps'))}, host limit {_rps(stack.get('host_rps'))}{by})")


def point_load(entry: Mapping[str, Any], comparison: Mapping[str, Any]) -> float | None:
    """A load-curve entry's offered load, as a fraction of `deployed_capacity_rps`."""
    rate, capacity = _number(entry.get("offered_rate")), deployed_capacity_rps(comparison)
    if isinstance(comparison.get("stack_capacity"), Mapping) and rate is not None and capacity:
        return rate / capacity
    load = _number(entry.get("load"))
    return load if load is not None or rate is None or not capacity else rate / capacity


def point_label(entry: Mapping[str, Any], comparison: Mapping[str, Any]) -> str:
    """"load point 85% (680 req/s)": how a table line and the exit message name a point."""
    load, rate = point_load(entry, comparison), _number(entry.get("offered_rate"))
    share = "" if load is None else f" {load:.0%}"
    return f"load point{share} ({_rps(rate)})"


def invalid_measurements(comparison: Mapping[str, Any]) -> list[str]:
    """One line per measured point flagged invalid (the main run, then the load points), naming
    it and why: "load point 85% (680 req/s): INVALID: load generator fell behind: ..."."""
    points = [("main run", comparison)] + [(point_label(e, comparison), e) for e in comparison.get("load_curve") or []]
    return [f"{name}: INVALID: {'; '.join(p.get('invalid_reasons') or ['flagged invalid'])}"
            for name, p in points if p.get("valid") is False]


def invalid_point_names(comparison: Mapping[str, Any]) -> list[str]:
    return [line.split(": INVALID: ", 1)[0] for line in invalid_measurements(comparison)]


def _targets_text(comparison: Mapping[str, Any]) -> str:
    within = comparison.get("within_target") or {}
    metrics = comparison.get("metrics") or {}
    if not within:
        within = {k: e.get("within_target") for k, e in metrics.items() if e.get("target") is not None}
    missed = [metrics.get(k, {}).get("label", k) for k, ok in within.items() if ok is not True]
    if not within:
        return "-"
    return "met" if not missed else "MISSED: " + ", ".join(missed)


LOAD_CURVE_HEADER = ["load point", "offered", "p50 error", "p99 error", "throughput error", "targets", "measurement"]


def load_curve_rows(comparison: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the measured load points (`comparison.load_curve`), for the terminal
    and the report: each point's errors on the targeted metrics, whether it met them, and
    whether its measurement is valid ("INVALID" here; why, in `invalid_measurements`)."""
    rows = []
    for entry in comparison.get("load_curve") or []:
        inner = entry.get("comparison") or {}
        metrics = inner.get("metrics") or {}
        load = point_load(entry, comparison)

        def error(key: str) -> str:
            return _error_text(metrics[key]) if key in metrics else "-"

        rows.append(["-" if load is None else f"{load:.0%}", _rps(entry.get("offered_rate")),
                     error("latency_p50"), error("latency_p99"), error("throughput"), _targets_text(inner),
                     "INVALID" if entry.get("valid") is False else "valid"])
    return LOAD_CURVE_HEADER, rows


def format_comparison_markdown(comparison: Mapping[str, Any]) -> str:
    return format_comparison_table(comparison, markdown=True)


def comparison_verdict(comparison: Mapping[str, Any]) -> str:
    """One line a CI log or a README can quote."""
    within = comparison.get("within_target", {})
    metrics = comparison.get("metrics", {})
    missed = [metrics.get(k, {}).get("label") or (METRIC_BY_KEY[k].label if k in METRIC_BY_KEY else k)
              for k, ok in within.items() if ok is not True]
    if not within:
        return "no fidelity targets set"
    if not missed:
        return f"fidelity: all {len(within)} targets met"
    return f"fidelity: {len(within) - len(missed)} of {len(within)} targets met; missed: {', '.join(missed)}"


# ---------------------------------------------------------------- run directories


@dataclass
class Run:
    """A run directory read back: the four files of DESIGN.md "Outputs"."""

    path: Path
    requests: pd.DataFrame
    summary: dict[str, Any]
    timeseries: pd.DataFrame
    config: dict[str, Any]
    missing: list[str] = field(default_factory=list)  # files a partial run did not write

    @property
    def label(self) -> str:
        return str(self.summary.get("source") or self.path.name)

    @property
    def backend(self) -> str:
        return str(self.summary.get("backend") or (self.config.get("model") or {}).get("backend") or "unknown")

    @property
    def warnings(self) -> list[str]:
        return run_warnings(self.summary) + [f"{name} missing from {self.path}" for name in self.missing]


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory. summary.json must exist (without it there is nothing to report);
    the other files may be missing from a run that failed part-way, and are then empty, so a
    report of what did happen can still be written."""
    path = Path(run_dir)
    summary_path = path / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{path} is not a run directory: no summary.json")
    summary = json.loads(summary_path.read_text())
    missing: list[str] = []

    def parquet(name: str, empty: pd.DataFrame) -> pd.DataFrame:
        if (path / name).exists():
            return pd.read_parquet(path / name)
        missing.append(name)
        return empty

    requests = parquet("requests.parquet", pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()}))
    series = parquet("timeseries.parquet", pd.DataFrame())
    config: dict[str, Any] = {}
    if (path / "config.yaml").exists():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    else:
        missing.append("config.yaml")
    return Run(path=path, requests=requests, summary=summary, timeseries=series, config=config, missing=missing)
