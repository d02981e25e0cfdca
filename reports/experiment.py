"""An A/B experiment read back: its figures, its report section and its rows in a comparison.

A pure function of the two files an experiment writes into its run directory (DESIGN.md
"Outputs"): `experiment.json` (the design, the estimates and tests at the end, the sample-ratio
check, the guardrails and the verdict) and `experiment.parquet` (one row per look, metric and
variant: the cumulative estimate with its interval, the always-valid effect interval, z against
its boundary, the assignment counts). Nothing here computes a statistic: the numbers are the
engine's (sim.stats), so the report, the console and experiment.json cannot disagree.

Every figure is a `draw_*` into axes it is given, as reports.rollout's timeline is, so a compare
report draws the twin's experiment and the real one side by side in two columns of one figure,
on one scale per panel. A run without experiment.parquet still gets its tables; the figures are
skipped and the section says so.

In a comparison (`add_experiment_comparison`) an experiment adds rows with targets of their own
kind: the same decision on both sides (`same`), and per metric whether the effect the real stack
measured lies in the twin's interval for it (`interval`), each from the test the verdict rests on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from reports.compare import _number  # a finite float or None
from sim.config import metric_unit
from sim.experiment import EXPERIMENT_JSON, EXPERIMENT_PARQUET
from sim.files import atomic_write

METRICS_PNG, SEQUENTIAL_PNG, SPLIT_PNG = "experiment_metrics.png", "experiment_sequential.png", "experiment_split.png"
DPI = 110
P_FLOOR = 1e-12  # the p-value panel's floor: a decided test's p underflows far below anything worth a log decade

Doc = Mapping[str, Any]  # experiment.json as read

# How a metric is printed and plotted (its unit: sim.config.metric_unit): proportions in %
# (effects in percentage points), seconds in ms, anything else as a plain number.


def _plot_scale(metric: str) -> tuple[float, str]:
    unit = metric_unit(metric)
    return (100.0, "%") if unit == "fraction" else (1e3, "ms") if unit == "s" else (1.0, "")


def _bound(value: Any, default: float) -> float:
    """An interval's end: a number, +-inf when unbounded (JSON null, Infinity), `default` when absent."""
    if value is None:
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(x) else x


def format_value(metric: str, value: Any) -> str:
    """A metric's value as people read it: 96.10%, 3.100 ms."""
    x = _number(value)
    if x is None:
        return "-"
    unit = metric_unit(metric)
    if unit == "fraction":
        return f"{x:.2%}"
    if unit == "s":
        return f"{x * 1e3:.3f} ms"
    return f"{x:.4g}"


def format_effect(metric: str, value: Any) -> str:
    """A difference (treatment - control), signed: +2.10 pp, -0.350 ms; an unbounded end as -inf / +inf."""
    if value is None:
        return "-"
    x = float(value)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    unit = metric_unit(metric)
    if unit == "fraction":
        return f"{x * 100:+.2f} pp"
    if unit == "s":
        return f"{x * 1e3:+.3f} ms"
    return f"{x:+.4g}"


def format_interval(metric: str, low: Any, high: Any) -> str:
    """An effect's interval, signed: [+0.40 pp, +3.80 pp]."""
    return f"[{format_effect(metric, _bound(low, -math.inf))}, {format_effect(metric, _bound(high, math.inf))}]"


def format_value_interval(metric: str, low: Any, high: Any) -> str:
    """A variant's interval, in the value's own terms: [94.01%, 96.70%]."""
    return f"[{format_value(metric, low)}, {format_value(metric, high)}]"


# ---------------------------------------------------------------- reading


def read_experiment_doc(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's experiment.json; None for a run that had no experiment."""
    path = Path(run_dir) / EXPERIMENT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def read_experiment(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame | None] | None:
    """A run's experiment.json and experiment.parquet (None when the parquet is missing);
    None for a run that had no experiment."""
    doc = read_experiment_doc(run_dir)
    if doc is None:
        return None
    looks_path = Path(run_dir) / EXPERIMENT_PARQUET
    return doc, pd.read_parquet(looks_path) if looks_path.is_file() else None


def experiment_metrics(doc: Doc, looks: pd.DataFrame | None = None) -> list[str]:
    """The metrics an experiment compared, in the order its design lists them (then any the
    tests, estimates or looks add)."""
    names: list[str] = []
    sources = [(doc.get("design") or {}).get("metrics") or [], doc.get("tests") or [], doc.get("estimates") or []]
    for rows in sources:
        names += [str(r["metric"]) for r in rows if isinstance(r, Mapping) and "metric" in r]
    if looks is not None and "metric" in looks.columns:
        names += [str(m) for m in looks["metric"].unique()]
    return list(dict.fromkeys(names))


def verdict_test(doc: Doc, metric: str) -> dict[str, Any] | None:
    """The test row (experiment.json `tests`) a metric's verdict rests on: the one the verdict's
    entry for the metric names, else the metric's test among `verdict_tests`; None when the
    experiment did not test that metric."""
    tests = [t for t in doc.get("tests") or [] if t.get("metric") == metric]
    named = [m.get("test") for m in (doc.get("verdict") or {}).get("metrics") or [] if m.get("metric") == metric]
    for name in named + list(doc.get("verdict_tests") or []):
        for t in tests:
            if t.get("test") == name:
                return dict(t)
    return None


def _headline(doc: Doc) -> str:
    verdict = doc.get("verdict") or {}
    return str(verdict.get("headline") or verdict.get("decision") or "no verdict recorded")


def _variant_label(doc: Doc, variant: str) -> str:
    role = "control" if variant == str(doc.get("control")) else "treatment" if variant == str(doc.get("treatment")) else ""
    return f"{variant} ({role})" if role else variant


def _variants(doc: Doc, looks: pd.DataFrame | None) -> list[str]:
    names = [str(v) for v in doc.get("variants") or []]
    if looks is not None and "variant" in looks.columns:
        names += [str(v) for v in looks["variant"].unique()]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- figures


def _metric_rows(looks: pd.DataFrame, metric: str) -> pd.DataFrame:
    return looks[looks["metric"].astype(str) == metric].sort_values("look")


def _per_look(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per look of a metric (the sequential columns repeat on both variants' rows)."""
    return rows.drop_duplicates("look").sort_values("look")


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777")


def _mark_stop(ax: Axes, doc: Doc, label: bool) -> None:
    """The stop dashed when the experiment stopped early; the time axis spans the planned
    experiment (its start to its planned end), so an early stop shows as such."""
    end = _number(doc.get("end_s"))
    if doc.get("stopped_early") and end is not None:
        ax.axvline(end, color="black", ls="--", lw=1.1, label=f"stopped at {end:.1f} s" if label else None)
    start, planned = _number(doc.get("start_s")), _number(doc.get("planned_end_s"))
    if start is not None and planned is not None and planned > start:
        pad = 0.03 * (planned - start)
        ax.set_xlim(start - pad, planned + pad)


def metrics_axes(fig: Figure | SubFigure, n_metrics: int) -> list[Axes]:
    """One panel per metric, stacked, sharing the time axis."""
    return list(fig.subplots(max(n_metrics, 1), 1, sharex=True, squeeze=False)[:, 0])


def draw_metrics(axes: Sequence[Axes], doc: Doc, looks: pd.DataFrame, metrics: Sequence[str], title: str = "") -> None:
    """Each variant's cumulative value with its 1-alpha band over the looks, one panel per
    metric (axes[i] for metrics[i]); the stop dashed when the experiment stopped early."""
    variants = _variants(doc, looks)
    alpha = _number(doc.get("alpha"))
    dodge = 0.12 * (_number(doc.get("window_s")) or 0.0)
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        scale, unit = _plot_scale(metric)
        rows = _metric_rows(looks, metric)
        if rows.empty:
            _no_data(ax, f"{metric}: not measured")
        for j, variant in enumerate(variants):
            v = rows[rows["variant"].astype(str) == variant]
            if v.empty:
                continue
            x = v["window_end_s"].to_numpy(dtype=float)
            y = v["value"].to_numpy(dtype=float) * scale
            low, high = v["ci_low"].to_numpy(dtype=float) * scale, v["ci_high"].to_numpy(dtype=float) * scale
            ax.plot(x, y, ".-", color=f"C{j}", label=_variant_label(doc, variant))
            ax.fill_between(x, low, high, color=f"C{j}", alpha=0.18, lw=0)
            # bars too, a little apart per variant: a band of one look (an experiment stopped at its first) has no area
            ax.errorbar(x + dodge * (j - (len(variants) - 1) / 2), y, yerr=[np.clip(y - low, 0, None), np.clip(high - y, 0, None)],
                        fmt="none", ecolor=f"C{j}", elinewidth=1.0, capsize=2, alpha=0.7, zorder=3)
        _mark_stop(ax, doc, label=True)
        band = f", {1 - alpha:.0%} CI shaded" if alpha is not None else ""
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.set_title((f"{title}: " if title and i == 0 else "") + f"{metric}, cumulative{band}", fontsize=9)
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("look time (s)")


def sequential_axes(fig: Figure | SubFigure, n_metrics: int) -> list[Axes]:
    """One z panel per metric, then one panel of the always-valid p-values, sharing the time axis."""
    return list(fig.subplots(max(n_metrics, 1) + 1, 1, sharex=True, squeeze=False)[:, 0])


def draw_sequential(axes: Sequence[Axes], doc: Doc, looks: pd.DataFrame, metrics: Sequence[str], title: str = "") -> None:
    """The mixture SPRT per metric: z over the looks against +-z_boundary (drawn where finite,
    i.e. after the burn-in), the first rejecting look starred; on the last panel every metric's
    always-valid p-value on a log scale against alpha."""
    p_ax = axes[-1]
    alpha = _number(doc.get("alpha"))
    for i, (ax, metric) in enumerate(zip(axes[:-1], metrics)):
        color = f"C{i}"
        rows = _metric_rows(looks, metric)
        if rows.empty:
            _no_data(ax, f"{metric}: not measured")
        else:
            per_look = _per_look(rows)
            x = per_look["window_end_s"].to_numpy(dtype=float)
            z = per_look["z"].to_numpy(dtype=float)
            boundary = per_look["z_boundary"].to_numpy(dtype=float)
            boundary = np.where(np.isfinite(boundary), boundary, np.nan)
            ax.plot(x, z, ".-", color=color, label="z" if np.isfinite(z).any() else None)
            ax.plot(x, boundary, color="gray", ls="--", lw=1, label="reject at |z| >= boundary" if np.isfinite(boundary).any() else None)
            ax.plot(x, -boundary, color="gray", ls="--", lw=1)
            ax.axhline(0, color="#999", lw=0.6)
            rejected = per_look[per_look["rejected"].astype(bool)]
            if not rejected.empty:
                first = rejected.iloc[0]
                ax.plot([first["window_end_s"]], [first["z"]], "*", ms=13, color="red",
                        label=f"rejected at look {int(first['look'])} ({float(first['window_end_s']):.1f} s)")
            if np.isnan(z).all():
                _no_data(ax, f"{metric}: no look past the burn-in")
            p = per_look["p_value"].to_numpy(dtype=float)
            p_ax.plot(x, np.clip(p, P_FLOOR, 1.0), ".-", color=color, label=metric)
        _mark_stop(ax, doc, label=False)
        ax.set_ylabel(f"{metric}: z")
        head = f"{title}: " if title and i == 0 else ""
        monitoring = " (monitoring only: the verdict rests on the fixed test)" if doc.get("design_kind") == "fixed" else ""
        ax.set_title(f"{head}{metric}: mixture SPRT z against its boundary{monitoring}", fontsize=9)
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if alpha is not None:
        p_ax.axhline(alpha, color="red", ls=":", lw=1.2, label=f"alpha {alpha:g}")
    _mark_stop(p_ax, doc, label=True)
    p_ax.set_yscale("log")
    p_ax.set(ylabel="always-valid p", xlabel="look time (s)")
    p_ax.set_title(f"always-valid p-value (reject when <= alpha; below {P_FLOOR:g} drawn at it)", fontsize=9)
    _style(p_ax)
    if p_ax.get_legend_handles_labels()[0]:
        p_ax.legend(fontsize=7, loc="lower left")


def split_axes(fig: Figure | SubFigure, n_metrics: int = 1) -> list[Axes]:
    return [fig.subplots(1, 1)]


def draw_split(axes: Sequence[Axes], doc: Doc, looks: pd.DataFrame, metrics: Sequence[str] = (), title: str = "") -> None:
    """Each variant's share of the units assigned so far, over the looks, against its planned
    share (dashed); the sample-ratio check's p-value in the title."""
    ax = axes[0]
    shares = looks.drop_duplicates(["look", "variant"]).sort_values("look")
    totals = shares.groupby("look")["assigned"].sum()
    for j, variant in enumerate(_variants(doc, looks)):
        v = shares[shares["variant"].astype(str) == variant]
        if v.empty:
            continue
        total = totals.reindex(v["look"]).to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, v["assigned"].to_numpy(dtype=float) / total, np.nan)
        ax.plot(v["window_end_s"].to_numpy(dtype=float), share * 100, ".-", color=f"C{j}", label=_variant_label(doc, variant))
        expected = _number(v["expected_share"].iloc[0])
        if expected is not None:
            ax.axhline(expected * 100, color=f"C{j}", ls="--", lw=1, label=f"{variant} planned {expected:.0%}")
    _mark_stop(ax, doc, label=True)
    srm = doc.get("srm") or {}
    p = _number(srm.get("p_value"))
    verdict = "MISMATCH" if srm.get("mismatch") else "no mismatch"
    check = f"SRM chi-square p = {p:.3g}: {verdict}" if p is not None else "no SRM check recorded"
    unit = srm.get("unit") or doc.get("unit") or "unit"
    ax.set_title(f"{title + ': ' if title else ''}assignment split by {unit}; {check}", fontsize=9)
    ax.set(ylabel=f"share of {unit}s assigned (%)", xlabel="look time (s)")
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


@dataclass(frozen=True)
class ExperimentFigure:
    """One figure: its file, how to lay out its axes, how to draw into them, its caption."""

    name: str
    file: str
    axes: Callable[[Figure | SubFigure, int], list[Axes]]
    draw: Callable[..., None]
    caption: str
    height_per_metric: float
    height_base: float


FIGURES: tuple[ExperimentFigure, ...] = (
    ExperimentFigure("experiment_metrics", METRICS_PNG, metrics_axes, draw_metrics,
                     "Each variant's cumulative estimate per metric over the looks, its confidence interval shaded; "
                     "the early stop dashed.", 2.6, 0.6),
    ExperimentFigure("experiment_sequential", SEQUENTIAL_PNG, sequential_axes, draw_sequential,
                     "The sequential test per metric: z against the mixture SPRT's boundary (dashed, after the burn-in), "
                     "the rejecting look starred; below, the always-valid p-values against alpha (log scale).", 2.3, 2.9),
    ExperimentFigure("experiment_split", SPLIT_PNG, split_axes, draw_split,
                     "Each variant's share of the assigned units over the looks against its planned share (dashed); "
                     "the sample-ratio check in the title.", 0.0, 3.6),
)
CAPTIONS: dict[str, str] = {f.name: f.caption for f in FIGURES}


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def write_experiment_figures(out_dir: str | Path, doc: Doc, looks: pd.DataFrame | None) -> dict[str, Path]:
    """The three figures of one experiment (name -> path); none without its looks."""
    if looks is None or looks.empty:
        return {}
    out = Path(out_dir)
    metrics = experiment_metrics(doc, looks)
    written = {}
    for spec in FIGURES:
        fig = Figure(figsize=(9, spec.height_base + spec.height_per_metric * len(metrics)), layout="constrained")
        spec.draw(spec.axes(fig, len(metrics)), doc, looks, metrics)
        written[spec.name] = _save(fig, out / spec.file)
    return written


def compare_file(name: str) -> str:
    return name.replace(".png", "_compare.png")


def write_experiment_compare_figures(out_dir: str | Path, sides: Mapping[str, tuple[Doc, pd.DataFrame | None]]) -> dict[str, Path]:
    """The three figures with one column per side (twin left, real right, in `sides`' order),
    one time axis and one scale per panel across the columns; none unless every side has its looks."""
    if not sides or any(looks is None or looks.empty for _, looks in sides.values()):
        return {}
    out = Path(out_dir)
    metrics = list(dict.fromkeys(m for doc, looks in sides.values() for m in experiment_metrics(doc, looks)))
    written = {}
    for spec in FIGURES:
        height = spec.height_base + spec.height_per_metric * len(metrics)
        fig = Figure(figsize=(6.5 * len(sides), height + 0.4), layout="constrained")
        columns = fig.subfigures(1, len(sides), squeeze=False)[0]
        panels = []
        for column, (label, (doc, looks)) in zip(columns, sides.items()):
            axes = spec.axes(column, len(metrics))
            spec.draw(axes, doc, looks, metrics, title=label)
            panels.append(axes)
        for row in zip(*panels):  # the same panel of every column: one scale
            xs, ys = [ax.get_xlim() for ax in row], [ax.get_ylim() for ax in row]
            for ax in row:
                ax.set_xlim(min(x[0] for x in xs), max(x[1] for x in xs))
                ax.set_ylim(min(y[0] for y in ys), max(y[1] for y in ys))
        fig.suptitle(f"{spec.name.replace('_', ' ')}: " + " against ".join(sides))
        written[f"{spec.name}_compare"] = _save(fig, out / compare_file(spec.file))
    return written


# ---------------------------------------------------------------- the report section


Table = tuple[str, list[str], list[list[str]]]  # (heading, header, rows)


@dataclass(frozen=True)
class Section:
    """A report section of its own (reports.report renders it in HTML and Markdown alike):
    a headline, bullets under it, paragraphs, tables and captioned figures."""

    heading: str
    anchor: str  # the HTML id
    headline: str
    alarm: bool  # the headline is bad news (a guardrail breached, a sample-ratio mismatch)
    bullets: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (path, caption)
    warnings: list[str] = field(default_factory=list)  # for the report's warnings box, before any number


def _n_pair(plan: Any) -> str:
    if not isinstance(plan, Mapping):
        return "-"
    a, b = plan.get("n_control"), plan.get("n_treatment")
    if a is None and b is None:
        return "-"
    return f"{a:,} / {b:,}" if isinstance(a, int) and isinstance(b, int) else f"{a} / {b}"


def _seconds(value: Any) -> str:
    x = _number(value)
    return "-" if x is None else f"{x:.1f} s"


DESIGN_HEADER = ["metric", "baseline", "sd", "MDE", "fixed: n control / treatment", "fixed: duration",
                 "sequential: n control / treatment", "sequential: duration"]


def design_rows(doc: Doc) -> list[list[str]]:
    """Per metric: its baseline (and sd, for a mean), the MDE, and the samples and time each
    kind of design needs."""
    rows = []
    for m in (doc.get("design") or {}).get("metrics") or []:
        metric = str(m.get("metric"))
        fixed, sequential = m.get("fixed") or {}, m.get("sequential") or {}
        mde = _number(m.get("mde"))
        rows.append([metric, format_value(metric, m.get("baseline")), format_value(metric, m.get("sd")),
                     "-" if mde is None else format_effect(metric, mde).lstrip("+"),
                     _n_pair(fixed), _seconds(fixed.get("duration_s")), _n_pair(sequential), _seconds(sequential.get("duration_s"))])
    return rows


def design_line(doc: Doc) -> str:
    """The duration the design needs against the run's, at the rate it was planned for."""
    design = doc.get("design") or {}
    kind = doc.get("design_kind") or "fixed"
    needed, run = _number(design.get("duration_needed_s")), _number(design.get("run_s"))
    rate = _number(design.get("rate_rps"))
    at = f" at {rate:,.0f} req/s" if rate is not None else ""
    source = f" ({design['source']})" if design.get("source") else ""
    levels = ", ".join(f"{k} {doc[k]:g}" for k in ("alpha", "power") if _number(doc.get(k)) is not None)
    text = f"design ({kind}{', ' + levels if levels else ''}): needs {_seconds(needed)}{at}{source}; the run lasts {_seconds(run)}"
    enough: Any = design.get("enough")
    if enough is None and needed is not None and run is not None:
        enough = needed <= run
    if enough is None:
        return text
    return text + (": long enough" if enough else ": TOO SHORT, the tests are underpowered for the MDE")


def design_notes(doc: Doc) -> list[str]:
    """What the design could not plan for a metric (no baseline from the pilot, ...), one line each."""
    return [f"design, {m.get('metric')}: {m['note']}" for m in (doc.get("design") or {}).get("metrics") or [] if m.get("note")]


ESTIMATES_HEADER = ["metric", "variant", "n", "value", "CI"]


def estimate_rows(doc: Doc) -> list[list[str]]:
    rows = []
    for e in doc.get("estimates") or []:
        metric = str(e.get("metric"))
        n = e.get("n")
        rows.append([metric, _variant_label(doc, str(e.get("variant"))), f"{n:,}" if isinstance(n, int) else str(n),
                     format_value(metric, e.get("value")), format_value_interval(metric, e.get("ci_low"), e.get("ci_high"))])
    return rows


TESTS_HEADER = ["metric", "test", "effect (treatment - control)", "CI", "relative", "p", "significant"]


def statistical_test_rows(doc: Doc) -> list[list[str]]:
    """Every test of every metric; the one the metric's verdict rests on marked "(verdict)"."""
    rows = []
    for t in doc.get("tests") or []:
        metric = str(t.get("metric"))
        chosen = verdict_test(doc, metric)
        mark = " (verdict)" if chosen is not None and chosen.get("test") == t.get("test") else ""
        lift, p = _number(t.get("relative_lift")), _number(t.get("p_value"))
        rows.append([metric, f"{t.get('test')}{mark}", format_effect(metric, t.get("estimate")),
                     format_interval(metric, t.get("ci_low"), t.get("ci_high")),
                     "-" if lift is None else f"{lift:+.1%}", "-" if p is None else f"{p:.3g}",
                     "yes" if t.get("significant") else "no"])
    return rows


def srm_line(doc: Doc) -> str:
    srm = doc.get("srm")
    if not isinstance(srm, Mapping):
        return "sample ratio: no check recorded"
    counts = " / ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in srm.get("counts") or [])
    expected = " / ".join(f"{float(e):,.0f}" for e in srm.get("expected") or [])
    p = _number(srm.get("p_value"))
    p_text = "-" if p is None else f"{p:.3g}"
    head = "SAMPLE RATIO MISMATCH" if srm.get("mismatch") else "sample ratio as planned"
    tail = ": the assignment is biased, distrust every comparison" if srm.get("mismatch") else ""
    return (f"{head}: {counts} {srm.get('unit') or doc.get('unit') or 'unit'}s assigned against {expected} expected; "
            f"chi-square p = {p_text} (mismatch below {srm.get('threshold')}){tail}")


def guardrails_line(doc: Doc) -> str:
    guardrails = doc.get("guardrails") or []
    if not guardrails:
        return "guardrails: none watched"
    held, breached = [], []
    for g in guardrails:
        metric = str(g.get("metric"))
        limit = f"{metric} <= {format_value(metric, g.get('max'))}"
        breaches = g.get("breaches") or []
        if not breaches:
            held.append(limit)
            continue
        first = breaches[0]
        by = ", ".join(dict.fromkeys(str(b.get("variant")) for b in breaches))
        breached.append(f"{limit} breached by {by} in {len(breaches)} window{'s' if len(breaches) != 1 else ''}, first at "
                        f"{_seconds(first.get('window_end_s'))} ({format_value(metric, first.get('value'))})")
    parts = ([f"BREACHED: {'; '.join(breached)}"] if breached else []) + ([f"held: {', '.join(held)}"] if held else [])
    return "guardrails " + "; ".join(parts)


def stop_line(doc: Doc) -> str:
    end, planned = _seconds(doc.get("end_s")), _seconds(doc.get("planned_end_s"))
    if doc.get("stopped_early"):
        return f"stopped early at {end} of a planned {planned}: {doc.get('stop_reason') or 'no reason recorded'}"
    return f"ran to its planned end at {planned}, looks every {_seconds(doc.get('window_s'))} from {_seconds(doc.get('start_s'))}"


def _alarm(doc: Doc) -> bool:
    return (doc.get("verdict") or {}).get("decision") == "guardrail_breached" or bool((doc.get("srm") or {}).get("mismatch"))


def _srm_warning(doc: Doc, who: str = "") -> list[str]:
    return [f"{who}{srm_line(doc)}"] if (doc.get("srm") or {}).get("mismatch") else []


def experiment_section(fig_dir: str | Path, run_dir: str | Path) -> Section | None:
    """The A/B section of a run's report, its figures written to `fig_dir`; None for a run
    without experiment.json."""
    read = read_experiment(run_dir)
    if read is None:
        return None
    doc, looks = read
    lines = [str(line).strip() for line in (doc.get("verdict") or {}).get("lines") or []]
    headline = _headline(doc)
    paragraphs = [stop_line(doc), design_line(doc), *design_notes(doc), srm_line(doc), guardrails_line(doc)]
    if looks is None:
        paragraphs.append(f"{EXPERIMENT_PARQUET} missing from {run_dir}: the per-look figures are skipped")
    figures = {name: (path, CAPTIONS[name]) for name, path in write_experiment_figures(fig_dir, doc, looks).items()}
    alpha = _number(doc.get("alpha"))
    level = f"{1 - alpha:.0%} " if alpha is not None else ""
    return Section(
        heading=f"A/B experiment: {doc.get('treatment')} (treatment) against {doc.get('control')} (control)",
        anchor="ab", headline=headline, alarm=_alarm(doc),
        bullets=[line for line in lines if line and line != headline],
        paragraphs=paragraphs,
        tables=[("Design: samples and time needed", DESIGN_HEADER, design_rows(doc)),
                (f"Estimates at the end ({_seconds(doc.get('end_s'))}, {level}CI)", ESTIMATES_HEADER, estimate_rows(doc)),
                ("Tests", TESTS_HEADER, statistical_test_rows(doc))],
        figures=figures,
        warnings=_srm_warning(doc),
    )


COMPARE_HEADER = ["metric", "verdict test", "twin effect", "twin CI", "real effect", "real CI", "real effect in the twin's CI"]


def _within_interval(value: float, low: float, high: float) -> bool:
    return low - 1e-12 <= value <= high + 1e-12


def compare_rows(sim_doc: Doc, real_doc: Doc) -> list[list[str]]:
    rows = []
    for metric in dict.fromkeys(experiment_metrics(sim_doc) + experiment_metrics(real_doc)):
        twin, real = verdict_test(sim_doc, metric), verdict_test(real_doc, metric)
        within = "-"
        if twin is not None and real is not None and _number(real.get("estimate")) is not None:
            inside = _within_interval(float(real["estimate"]), _bound(twin.get("ci_low"), -math.inf), _bound(twin.get("ci_high"), math.inf))
            within = "yes" if inside else "NO"
        elif twin is None or real is None:
            within = f"no data: only the {'twin' if real is None else 'real stack'} tested it"
        rows.append([metric, " / ".join(dict.fromkeys(str(t.get("test")) for t in (twin, real) if t is not None)) or "-",
                     "-" if twin is None else format_effect(metric, twin.get("estimate")),
                     "-" if twin is None else format_interval(metric, twin.get("ci_low"), twin.get("ci_high")),
                     "-" if real is None else format_effect(metric, real.get("estimate")),
                     "-" if real is None else format_interval(metric, real.get("ci_low"), real.get("ci_high")), within])
    return rows


def experiment_compare_section(fig_dir: str | Path, sim_dir: str | Path, real_dir: str | Path) -> Section | None:
    """The A/B section of a compare report: both verdicts, the verdict tests side by side, and
    the figures with the twin's column left of the real one; None unless both sides ran it."""
    sim, real = read_experiment(sim_dir), read_experiment(real_dir)
    if sim is None or real is None:
        return None
    (sim_doc, sim_looks), (real_doc, real_looks) = sim, real
    same = (sim_doc.get("verdict") or {}).get("decision") == (real_doc.get("verdict") or {}).get("decision")
    headline = (f"same verdict on both sides: {_headline(real_doc)}" if same
                else f"the verdicts differ: twin '{_headline(sim_doc)}', real '{_headline(real_doc)}'")
    paragraphs = [f"{who}: {line(doc)}" for line in (stop_line, srm_line, guardrails_line) for who, doc in
                  (("twin", sim_doc), ("real", real_doc))]
    missing = [who for who, looks in (("twin", sim_looks), ("real", real_looks)) if looks is None]
    if missing:
        paragraphs.append(f"{EXPERIMENT_PARQUET} missing on the {' and '.join(missing)} side: the side-by-side figures are skipped")
    sides = {"twin (predicted)": (sim_doc, sim_looks), "real (measured)": (real_doc, real_looks)}
    figures = {name: (path, CAPTIONS[name.removesuffix("_compare")] + " Twin left, real right, one scale per panel.")
               for name, path in write_experiment_compare_figures(fig_dir, sides).items()}
    return Section(
        heading="A/B experiment: twin against real", anchor="ab", headline=headline,
        alarm=not same or _alarm(sim_doc) or _alarm(real_doc),
        bullets=[f"twin: {_headline(sim_doc)}", f"real: {_headline(real_doc)}"],
        paragraphs=paragraphs,
        tables=[("The tests the verdicts rest on", COMPARE_HEADER, compare_rows(sim_doc, real_doc))],
        figures=figures,
        warnings=_srm_warning(sim_doc, "predicted: ") + _srm_warning(real_doc, "measured: "),  # as the comparison's
    )


# ---------------------------------------------------------------- comparison rows


def compare_experiments(predicted: Doc, measured: Doc) -> dict[str, dict[str, Any]]:
    """The experiment rows of a comparison: the same decision on both sides (`same`), and per
    metric whether the real stack's effect lies in the twin's interval for it (`interval`,
    target [low, high], null for an unbounded end), both from each metric's verdict test.
    A metric only one side tested has no value to judge: within_target None, and its label says so."""
    p_decision = (predicted.get("verdict") or {}).get("decision")
    m_decision = (measured.get("verdict") or {}).get("decision")
    rows: dict[str, dict[str, Any]] = {"experiment_verdict": {
        "label": "experiment verdict", "unit": "decision", "predicted": p_decision, "measured": m_decision, "abs_error": None,
        "rel_error": None, "rel_error_undefined": False, "target": "same", "target_kind": "same",
        "within_target": None if p_decision is None or m_decision is None else p_decision == m_decision, "missed_by": None}}
    for metric in dict.fromkeys(experiment_metrics(predicted) + experiment_metrics(measured)):
        twin, real = verdict_test(predicted, metric), verdict_test(measured, metric)
        x = None if twin is None else _number(twin.get("estimate"))
        y = None if real is None else _number(real.get("estimate"))
        label = f"{metric} effect (real) in the twin's interval"
        if twin is None or real is None:
            label += f" (no {'real' if real is None else 'twin'} test of {metric})"
        row: dict[str, Any] = {"label": label, "unit": metric_unit(metric), "predicted": x, "measured": y,
                               "abs_error": None if x is None or y is None else x - y, "rel_error": None,
                               "rel_error_undefined": False, "target": "twin's interval", "target_kind": "interval",
                               "within_target": None, "missed_by": None}
        if twin is not None:
            low, high = _bound(twin.get("ci_low"), -math.inf), _bound(twin.get("ci_high"), math.inf)
            row["target"] = [low if math.isfinite(low) else None, high if math.isfinite(high) else None]
            if y is not None:
                inside = _within_interval(y, low, high)
                row["within_target"] = inside
                row["missed_by"] = None if inside else max(low - y, y - high)
        rows[f"experiment_effect_{metric}"] = row
    return rows


VERDICT_KEEP = ("control", "treatment", "design_kind", "stopped_early", "end_s", "planned_end_s", "stop_reason", "verdict",
                "verdict_tests", "srm")


def add_experiment_comparison(comparison: dict[str, Any], sim_doc: Doc, real_doc: Doc) -> dict[str, Any]:
    """`comparison` (from reports.compare.compare_summaries) with the experiment rows and their
    targets added, the overall verdict over all targets (as add_rollout_comparison does), and
    both sides' verdicts kept under `experiment`; a sample-ratio mismatch on either side is a warning."""
    rows = compare_experiments(sim_doc, real_doc)
    comparison["metrics"].update(rows)
    for key, row in rows.items():
        comparison["targets"][key] = row["target"]
        comparison["within_target"][key] = row["within_target"]
        if row["within_target"] is None:
            comparison["warnings"].append(f"{row['label']}: no value to compare against its target")
    for who, doc in (("predicted", sim_doc), ("measured", real_doc)):
        comparison["warnings"] += _srm_warning(doc, f"{who}: ")
    within = comparison["within_target"]
    comparison["all_within_target"] = bool(within) and all(ok is True for ok in within.values())
    comparison["experiment"] = {side: {k: doc[k] for k in VERDICT_KEEP if k in doc}
                                for side, doc in (("predicted", sim_doc), ("measured", real_doc))}
    return comparison
