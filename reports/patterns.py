"""The patterns preset's report: one demand served as sync, async and batch, side by side.

A pure function of patterns.json (what scenarios.patterns writes) and each pattern's latencies:
the table (p50, p99, throughput, replicas run and needed, cost per 1,000 predictions), with
mode=compare the twin against the real stack per pattern on the fidelity targets, and
`patterns.png`: the latency CDFs on a log axis (twin solid, real dashed), and bars of
throughput, replicas needed and cost per 1,000 per pattern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reports.compare import fixed_width, format_value
from sim.files import atomic_write

# reports.report and reports.figures (matplotlib, the statistics) are imported where they draw:
# the CLI's pre-flight imports this module for PATTERNS, and must stay quick

PATTERNS = ("sync", "async", "batch")
SIDES = ("twin", "real")
PATTERNS_PNG = "patterns.png"
READY = "async ready"  # async's latencies to the result being ready (before the client polls for it), drawn dotted
PATTERN_COLORS = {"sync": "#1f77b4", "async": "#ff7f0e", "batch": "#2ca02c"}
TABLE_HEADER = ["pattern", "side", "p50", "p99", "throughput", "replicas run", "replicas needed", "cost / 1,000", "notes"]
COMPARE_HEADER = ["pattern", "metric", "twin", "real", "error", "target", "verdict"]
METRIC_LABELS = {"p50_s": ("latency p50", "s"), "p99_s": ("latency p99", "s"), "throughput_rps": ("throughput", "req/s")}


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms" if value < 1 else f"{value:,.2f} s"


def _cost(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _notes(pattern: str, figures: Mapping[str, Any]) -> str:
    if pattern == "async" and figures.get("ready_p50_s") is not None:
        return (f"ready p50 {_ms(figures['ready_p50_s'])}, p99 {_ms(figures['ready_p99_s'])}; "
                f"{figures['polls_per_request']:.2f} polls/request")
    if pattern == "batch":
        return f"job {figures['completion_s']:.2f} s (start {figures['startup_s']:.2f} s)"
    return ""


def table_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """One row per pattern and side, in PATTERNS order."""
    rows = []
    for pattern in PATTERNS:
        entry = doc["patterns"].get(pattern)
        if entry is None:
            continue
        for side in SIDES:
            f = entry.get(side)
            if f is None:
                continue
            needed = entry.get("replicas_needed")
            rows.append([pattern, side, _ms(f["p50_s"]), _ms(f["p99_s"]), f"{f['throughput_rps']:,.1f}/s", str(f["replicas"]),
                         "-" if needed is None else str(needed), _cost(f["cost_per_1000"]), _notes(pattern, f)])
    return rows


def compare_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """mode=compare: per pattern, p50, p99 and throughput, twin against real, against the targets."""
    rows = []
    for pattern in PATTERNS:
        comparison = (doc["patterns"].get(pattern) or {}).get("comparison")
        if not comparison:
            continue
        for key, entry in comparison["metrics"].items():
            label, unit = METRIC_LABELS[key]
            err = entry["rel_error"]
            verdict = "-" if entry["within_target"] is None else ("ok" if entry["within_target"] else "MISS")
            shown = _ms if unit == "s" else (lambda v: format_value(v, unit).replace("req/s", "rows/s") if pattern == "batch"
                                             else format_value(v, unit))
            rows.append([pattern, label, shown(entry["predicted"]), shown(entry["measured"]),
                         "-" if err is None else f"{err:+.1%}", f"<= {entry['target']:.0%}", verdict])
    return rows


def format_patterns_table(doc: Mapping[str, Any]) -> str:
    """The console's table: every pattern's figures, then (compare) twin against real."""
    d = doc["demand"]
    lines = [f"serving patterns: one demand of {d['requests']:,} requests over {d['duration_s']:g} s ({d['rate']:.1f} req/s), "
             f"price {doc['price_per_replica_hour']:g} per replica-hour"]
    lines += ["  " + line for line in fixed_width(TABLE_HEADER, table_rows(doc))]
    compared = compare_rows(doc)
    if compared:
        lines += ["", "twin against the real stack, per pattern:"]
        lines += ["  " + line for line in fixed_width(COMPARE_HEADER, compared)]
        missed = sorted({row[0] for row in compared if row[-1] != "ok"}, key=PATTERNS.index)
        lines.append("all within the fidelity targets" if not missed else f"outside a fidelity target: {', '.join(missed)}")
    return "\n".join(lines)


def draw_patterns(path: Path, doc: Mapping[str, Any], latencies: Mapping[tuple[str, str], np.ndarray]) -> Path:
    """Latency CDFs per pattern (log axis; twin solid, real dashed) and bars of throughput,
    replicas needed and cost per 1,000 (twin, and real beside it when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figures import color_for, step_cdf

    fig = plt.figure(figsize=(14, 4.4))
    grid = fig.add_gridspec(1, 4, width_ratios=[2.2, 1, 1, 1])
    cdf = fig.add_subplot(grid[0])
    for i, pattern in enumerate(PATTERNS):
        for side, style in (("twin", "-"), ("real", "--")):
            lat = latencies.get((pattern, side))
            if lat is None or len(lat) == 0:
                continue
            step_cdf(cdf, lat, ls=style, lw=1.7, color=PATTERN_COLORS.get(pattern, color_for(pattern, i)), label=f"{pattern} ({side})")
    for side, style in (("twin", ":"), ("real", (0, (1, 3)))):
        lat = latencies.get((READY, side))
        if lat is not None and len(lat):
            step_cdf(cdf, lat, ls=style, lw=1.4, color=PATTERN_COLORS["async"], label=f"{READY} ({side})")
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms, log scale)")
    cdf.set_ylabel("fraction of requests <= latency")
    cdf.set_ylim(0, 1.02)
    cdf.set_title("latency CDF per pattern")
    cdf.grid(alpha=0.3, which="both")
    cdf.legend(fontsize=8, loc="center")  # between real-time latencies (left) and batch's (right)
    shown = [p for p in PATTERNS if p in doc["patterns"]]
    sides = [s for s in SIDES if any(doc["patterns"][p].get(s) for p in shown)]
    bars = (("throughput_rps", "throughput (req/s; batch: rows/s)"), ("replicas_needed", "replicas needed"),
            ("cost_per_1000", "cost per 1,000 predictions"))
    for k, (key, title) in enumerate(bars):
        ax = fig.add_subplot(grid[k + 1])
        for j, side in enumerate(sides if key != "replicas_needed" else ["twin"]):  # needed: a twin decision, one bar
            values = []
            for p in shown:
                entry = doc["patterns"][p]
                value = entry.get("replicas_needed") if key == "replicas_needed" else (entry.get(side) or {}).get(key)
                values.append(np.nan if value is None else float(value))
            n_bars = len(sides) if key != "replicas_needed" else 1
            bar_width = 0.8 / n_bars
            x = np.arange(len(shown)) + (j - (n_bars - 1) / 2) * bar_width
            ax.bar(x, values, bar_width, color=[PATTERN_COLORS.get(p, "0.5") for p in shown], alpha=1.0 if side == "twin" else 0.5,
                   hatch=None if side == "twin" else "//", edgecolor="0.2", label=side)
        ax.set_xticks(np.arange(len(shown)), shown)
        if key == "replicas_needed":
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        if key != "replicas_needed" and len(sides) > 1:
            ax.legend(fontsize=8)
    d = doc["demand"]
    fig.suptitle(f"one demand ({d['requests']:,} requests, {d['rate']:.0f} req/s for {d['duration_s']:g} s) served three ways",
                 fontsize=12)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_patterns_report(out_dir: Path, doc: Mapping[str, Any], latencies: Mapping[tuple[str, str], np.ndarray],
                          config: Mapping[str, Any], warnings: Sequence[str] = ()) -> tuple[Path, Path]:
    """report.html and report.md of the patterns preset, beside patterns.json."""
    from reports.report import FIGURES_DIR, write_tables_report

    tables: list[tuple[str, list[str], list[list[str]]]] = [("The patterns side by side", TABLE_HEADER, table_rows(doc))]
    compared = compare_rows(doc)
    if compared:
        tables.append(("Twin against the real stack (fidelity targets)", COMPARE_HEADER, compared))
    definitions = doc["definitions"]
    rules = definitions["replicas_needed"]
    tables.append(("What the figures mean", ["figure", "definition"],
                   [["batch latency", definitions["batch_latency"]], ["throughput", definitions["throughput"]],
                    ["cost / 1,000", definitions["cost_per_1000"]]]
                   + [[f"replicas needed, {p}", rules[p]] for p in PATTERNS if p in rules]))
    figure = draw_patterns(Path(out_dir) / FIGURES_DIR / PATTERNS_PNG, doc, latencies)
    d = doc["demand"]
    return write_tables_report(
        out_dir,
        title=f"servelab patterns: {', '.join(p for p in PATTERNS if p in doc['patterns'])} on one demand ({doc['mode']})",
        subtitle=f"{d['requests']:,} requests over {d['duration_s']:g} s ({d['rate']:.1f} req/s, {d['arrival_kind']}, seed {d['seed']}), "
                 f"{doc['backend']} backend",
        tables=tables,
        figures={"patterns": figure},
        config=config,
        warnings=[*doc.get("warnings", []), *warnings],
    )


__all__ = ["PATTERNS", "PATTERNS_PNG", "READY", "compare_rows", "draw_patterns", "format_patterns_table", "table_rows",
           "write_patterns_report"]
