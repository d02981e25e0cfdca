"""Reports of run outputs: one self-contained HTML file and one Markdown file per run.

The HTML embeds its figures as data URIs so it survives being mailed, attached to a CI job or
moved out of its directory; the Markdown links PNG files written beside it, so it renders on a
code host and diffs as text. Both show the same tables, built once here from the comparison
dict and the summaries, and both put warnings (an invalid load-generator run, a config that
differs between the two sides) before any number, so nobody quotes a figure they should not.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from reports.compare import (HEADER, Run, capacity_name, comparison_rows, comparison_verdict, deployed_capacity_rps,
                             format_comparison_table, format_stack_capacity, invalid_measurements, load_curve_rows)
from reports.experiment import Section, experiment_compare_section, experiment_section
from reports.figures import LoadPoint, write_compare_figures, write_run_figures
from sim.config import KeyHelp, ScenarioConfig, schema_help
from sim.files import write_text

FIGURES_DIR = "figures"
HTML_NAME, MD_NAME = "report.html", "report.md"

# The scenario table's keys come from the schema (sim.config), in its order, by one rule:
# - every key of the groups that define the workload and the system under test (CORE_GROUPS;
#   "" = the top-level keys: seed, duration_s, replicas, ...) is shown;
# - any other scenario key (overhead, gateway, health, server, loadgen, and groups added later)
#   is shown when a run set it away from its schema default;
# - where processes listen, and secrets, never are (NOT_SHOWN): they change nothing measured;
# - a key that only one choice reads is shown only with that choice (READ_ONLY_WITH).
SCENARIO_KEYS: tuple[KeyHelp, ...] = tuple(schema_help(ScenarioConfig))
CORE_GROUPS = frozenset({"", "arrival", "service", "lb", "batching", "model"})
NOT_SHOWN = frozenset({"gateway.host", "gateway.port", "server.host", "server.token", "loadgen.master_bind_host"})
_BURSTY, _DIURNAL, _TRACE = ("bursty",), ("diurnal",), ("trace",)
READ_ONLY_WITH: dict[str, tuple[str, tuple[str, ...]]] = {
    "arrival.rate": ("arrival.kind", ("poisson", "constant", "diurnal")),
    "arrival.high_rate": ("arrival.kind", _BURSTY), "arrival.low_rate": ("arrival.kind", _BURSTY),
    "arrival.high_dwell_s": ("arrival.kind", _BURSTY), "arrival.low_dwell_s": ("arrival.kind", _BURSTY),
    "arrival.amplitude": ("arrival.kind", _DIURNAL), "arrival.period_s": ("arrival.kind", _DIURNAL),
    "arrival.path": ("arrival.kind", _TRACE), "arrival.time_scale": ("arrival.kind", _TRACE),
    "arrival.think_s": ("arrival.kind", ("closed",)),
    "service.cv": ("service.kind", ("lognormal",)),
    "service.profile": ("service.kind", ("empirical",)),
    "lb.weights": ("lb.policy", ("weighted",)),
}
# Keys on which a calibrated twin differs from the real run by design: it replays the profile.
CALIBRATION_KEYS = frozenset({"service.kind", "service.profile", "overhead.profile"})

FIGURE_CAPTIONS = {
    "latency_cdf": "Latency CDF and tail of answered requests after warm-up; dashed p50, dotted p99.",
    "timeseries": "Per-window throughput (completions) against offered load, latency and queue; warm-up and drain shaded.",
    "rollout": "Rollout timeline: traffic weight, p99, error rate (and accuracy) and replicas ready / live per version and window; "
               "the decision dashed (green promoted, red rolled back, blue an experiment concluded).",
    "load_curve": "p50 and p99 against offered rate, and throughput against offered rate: the knee where it "
                  "flattens at capacity (dash-dot) is saturation. A measured point flagged invalid is hollow, ringed in red.",
    "rollout_compare": "The rollout in the twin (left) and on the real stack (right), on one time axis and one scale per "
                       "panel: weights, p99, errors, replicas, and each side's decision dashed.",
    "batch_search": "The twin's search over batch size and parallelism: predicted rows/s of the whole job (worker start "
                    "included) per batch size; the star is the measured job, the dotted line the cores.",
    "rehearsal": "Rehearsals: when each rollout decided (filled: rolled back, outline: promoted), and how many requests "
                 "the candidate served before the decision, per scenario.",
    "patterns": "One demand served three ways: latency CDFs (log axis; twin solid, real dashed; batch: arrival to the "
                "job's completion), throughput (batch: the job's rows/s), replicas the load needs, cost per 1,000 predictions.",
}


# ---------------------------------------------------------------- table content


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _group(key: str) -> str:
    return key.rpartition(".")[0]


def shown_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scenario keys the table shows for these runs' configs (the rule above SCENARIO_KEYS)."""
    keys = []
    for k in SCENARIO_KEYS:
        if k.key in NOT_SHOWN:
            continue
        if k.key in READ_ONLY_WITH:
            selector, choices = READ_ONLY_WITH[k.key]
            if all(_get(c, selector) not in choices for c in configs):
                continue
        values = [_get(c, k.key) for c in configs]
        if all(v is None for v in values):  # a config written before the key existed
            continue
        if _group(k.key) in CORE_GROUPS or any(v is not None and _fmt(v) != _fmt(k.default) for v in values):
            keys.append(k.key)
    return keys


def config_rows(configs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """(key, value per run, differs) for the scenario's settings (`shown_keys`); `differs` marks
    a compare whose two sides did not run the same scenario, which voids the error figures."""
    rows = []
    for key in shown_keys(configs):
        values = [_fmt(_get(c, key)) for c in configs]
        rows.append((key, values, len(set(values)) > 1))
    return rows


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1e3:.2f} ms"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} req/s"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2%}"


def _round(value: Any) -> str:
    return "-" if value is None else _fmt(round(float(value), 3))


SHOWN_KEYS = {"requests_total", "requests_measured", "window_s", "timeseries_window_s", "offered_rate", "throughput", "capacity_rps",
              "offered_load", "latency_s", "queue_s_mean", "service_s_mean", "status_counts", "shed_fraction",
              "batches", "batch_size_mean_per_batch", "batch_size_mean_per_request", "utilisation",
              "utilisation_mean", "warnings", "features"}


def summary_rows(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Both summaries side by side: the standard fields first, then whatever extra a side
    reports (send lag, wall time, ...), so a new field shows up without a change here."""
    def row(label: str, fn: Any) -> tuple[str, list[str]]:
        return label, [fn(s) for s in summaries]

    rows = [
        row("source", lambda s: _fmt(s.get("source"))),
        row("backend", lambda s: _fmt(s.get("backend"))),
        row("requests (measured / total)", lambda s: f"{s.get('requests_measured', '-')} / {s.get('requests_total', '-')}"),
        row("measurement window", lambda s: "-" if s.get("window_s") is None else f"{s['window_s']:.1f} s"),
        row("time-series window", lambda s: "-" if s.get("timeseries_window_s") is None else f"{s['timeseries_window_s']:g} s"),
        row("offered rate", lambda s: _rate(s.get("offered_rate"))),
        row("throughput (completions in window)", lambda s: _rate(s.get("throughput"))),
        row("capacity", lambda s: _rate(s.get("capacity_rps"))),
        row("offered load (offered / capacity)", lambda s: _pct(s.get("offered_load"))),
    ]
    for q in ("p50", "p90", "p95", "p99", "p99.9", "mean", "max"):
        rows.append(row(f"latency {q}", lambda s, q=q: _ms((s.get("latency_s") or {}).get(q))))
    rows += [
        row("queue time mean", lambda s: _ms(s.get("queue_s_mean"))),
        row("service time mean", lambda s: _ms(s.get("service_s_mean"))),
        row("status ok / shed / timeout / error", lambda s: " / ".join(
            str((s.get("status_counts") or {}).get(k, "-")) for k in ("ok", "shed", "timeout", "error"))),
        row("shed fraction", lambda s: _pct(s.get("shed_fraction"))),
        row("batches started in window", lambda s: _fmt(s.get("batches"))),
        row("batch size, mean per batch", lambda s: _round(s.get("batch_size_mean_per_batch"))),
        row("batch size, mean per request", lambda s: _round(s.get("batch_size_mean_per_request"))),
        row("utilisation mean", lambda s: _pct(s.get("utilisation_mean"))),
        row("utilisation per replica", lambda s: ", ".join(
            f"{r}: {float(u):.0%}" for r, u in (s.get("utilisation") or {}).items()) or "-"),
    ]
    if any(s.get("features") for s in summaries):  # the feature store (sim.records.feature_figures)
        def feature(s: Mapping[str, Any]) -> Mapping[str, Any]:
            return s.get("features") or {}

        rows += [
            row("feature cache hit ratio (measured / predicted)", lambda s: f"{_pct(feature(s).get('hit_ratio'))} / "
                f"{_pct(feature(s).get('predicted_hit_ratio'))}"),
            row("feature lookups / misses / fallbacks", lambda s: " / ".join(
                str(feature(s).get(k, "-")) for k in ("lookups", "misses", "fallbacks"))),
            row("feature lookup per batch p50 / p99", lambda s: f"{_ms((feature(s).get('lookup_s') or {}).get('p50'))} / "
                f"{_ms((feature(s).get('lookup_s') or {}).get('p99'))}"),
        ]
    extra: list[str] = []
    for s in summaries:
        extra += [k for k in s if k not in SHOWN_KEYS and k not in ("source", "backend") and k not in extra]
    for key in extra:
        values = [s.get(key) for s in summaries]
        if all(isinstance(v, Mapping) or v is None for v in values):
            subkeys: list[str] = []
            for v in values:
                subkeys += [k for k in (v or {}) if k not in subkeys]
            for sub in subkeys:
                rows.append((f"{key}.{sub}", [_fmt((v or {}).get(sub)) for v in values]))
        else:
            rows.append((key, [_fmt(v) for v in values]))
    return rows


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Doc:
    """What both renderings show; built once so HTML and Markdown cannot drift apart."""

    title: str
    subtitle: str
    verdict: str | None
    verdict_ok: bool
    warnings: list[str]
    comparison: Mapping[str, Any] | None
    labels: list[str]
    config: list[tuple[str, list[str], bool]]
    summaries: list[tuple[str, list[str]]]
    figures: dict[str, Path]
    tables: Sequence[tuple[str, list[str], list[list[str]]]] = ()  # (heading, header, rows): an experiment's results
    notes: Sequence[str] = ()  # lines under the fidelity table: the stack's capacity, the main run's validity
    load_curve: tuple[list[str], list[list[str]]] | None = None  # measured load points (header, rows), last cell validity
    sections: Sequence[Section] = ()  # sections of their own: an A/B experiment's (reports.experiment)


CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
     max-width:1180px;margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{margin-bottom:.1em} .sub{color:#666;margin-top:0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.93em}
th,td{border:1px solid #ddd;padding:.35em .7em;text-align:left}
th{background:#f5f6f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.met td.verdict{background:#e3f4e1;color:#1b5e20;font-weight:600}
tr.missed td.verdict{background:#fde2e1;color:#b71c1c;font-weight:600}
tr.nodata td.verdict{background:#fff4d6;color:#7a5b00;font-weight:600}
tr.differs td{background:#fff4d6}
tr.invalid td{background:#fde2e1;color:#b71c1c} tr.invalid td.validity{font-weight:600}
.banner{padding:.7em 1em;border-radius:6px;font-weight:600;margin:1em 0}
.ok{background:#e3f4e1;color:#1b5e20;border:1px solid #a5d6a7}
.bad{background:#fde2e1;color:#b71c1c;border:1px solid #ef9a9a}
.warn{background:#fff4d6;color:#6d4c00;border:2px solid #f0b400;padding:.7em 1em;border-radius:6px;margin:1em 0}
.warn ul{margin:.3em 0 0 1.2em;padding:0}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.cols{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
"""


def _verdict_class(entry: Mapping[str, Any]) -> str:
    if entry.get("target") is None:
        return ""
    ok = entry.get("within_target")
    return "nodata" if ok is None else ("met" if ok else "missed")


def _section_html(section: Section) -> list[str]:
    """A section of its own (an A/B experiment's): headline, bullets, lines, tables, figures."""
    e = html.escape
    out = [f"<h2 id=\"{e(section.anchor)}\">{e(section.heading)}</h2>",
           f"<div class=\"banner {'bad' if section.alarm else 'ok'}\">{e(section.headline)}</div>"]
    if section.bullets:
        out.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in section.bullets) + "</ul>")
    out += [f"<p>{e(line)}</p>" for line in section.paragraphs]
    for heading, header, rows in section.tables:
        out.append(f"<h3>{e(heading)}</h3><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</tbody></table>")
    for name, (path, caption) in section.figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        out.append(f"<figure><img alt=\"{e(name)}\" src=\"data:image/png;base64,{data}\"><figcaption>{e(caption)}</figcaption></figure>")
    return out


def _render_html(doc: _Doc) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>{e(doc.title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{e(doc.title)}</h1>", f"<p class=\"sub\">{e(doc.subtitle)}</p>"]
    if doc.warnings:
        items = "".join(f"<li>{e(w)}</li>" for w in doc.warnings)
        out.append(f"<div class=\"warn\" id=\"warnings\"><strong>&#9888; Warnings: read before quoting any "
                   f"number below</strong><ul>{items}</ul></div>")
    if doc.verdict:
        out.append(f"<div class=\"banner {'ok' if doc.verdict_ok else 'bad'}\">{e(doc.verdict)}</div>")
    if doc.comparison is not None:
        out.append("<h2>Fidelity: predicted against measured</h2>")
        out.append("<table id=\"fidelity\"><thead><tr>" + "".join(
            f"<th>{e(h)}</th>" for h in HEADER) + "</tr></thead><tbody>")
        for entry, cells in zip(doc.comparison["metrics"].values(), comparison_rows(doc.comparison)):
            cls = _verdict_class(entry)
            tds = [f"<td>{e(cells[0])}</td>"] + [f"<td class=\"num\">{e(c)}</td>" for c in cells[1:5]]
            tds.append(f"<td class=\"verdict\">{e(cells[5])}</td>")
            out.append(f"<tr class=\"{cls}\">{''.join(tds)}</tr>")
        out.append("</tbody></table><p class=\"sub\">error = (predicted - measured) / measured; "
                   "positive: the twin over-predicts.</p>")
        out += [f"<p>{e(note)}</p>" for note in doc.notes]
    if doc.load_curve is not None:
        header, rows = doc.load_curve
        out.append("<h2>Load curve: measured points</h2><table id=\"load-curve\"><thead><tr>"
                   + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        for row in rows:
            cls = " class=\"invalid\"" if row[-1].startswith("INVALID") else ""
            out.append(f"<tr{cls}>" + "".join(f"<td class=\"num\">{e(c)}</td>" for c in row[:-1])
                       + f"<td class=\"validity\">{e(row[-1])}</td></tr>")
        out.append("</tbody></table>")
    for section in doc.sections:
        out += _section_html(section)
    for heading, header, rows in doc.tables:
        out.append(f"<h2>{e(heading)}</h2><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</tbody></table>")
    if doc.figures:
        out.append("<h2>Figures</h2>")
        for name, path in doc.figures.items():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{e(name)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{e(FIGURE_CAPTIONS.get(name, name))}</figcaption></figure>")
    head = "".join(f"<th>{e(label)}</th>" for label in doc.labels)
    out.append(f"<h2>{'Summaries and scenario' if doc.summaries else 'Scenario'}</h2><div class=\"cols\">")
    if doc.summaries:
        out.append(f"<table id=\"summaries\"><thead><tr><th>field</th>{head}</tr></thead><tbody>")
        for label, values in doc.summaries:
            out.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td class=\"num\">{e(v)}</td>" for v in values) + "</tr>")
        out.append("</tbody></table>")
    out.append(f"<table id=\"config\"><thead><tr><th>scenario key</th>{head}</tr></thead><tbody>")
    for key, values, differs in doc.config:
        cls = " class=\"differs\"" if differs else ""
        out.append(f"<tr{cls}><td><code>{e(key)}</code></td>" + "".join(f"<td>{e(v)}</td>" for v in values) + "</tr>")
    out.append("</tbody></table></div></body></html>\n")
    return "\n".join(out)


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown pipe table, cells escaped; shared with the sweep table (reports.sweep)."""
    def cell(c: str) -> str:
        return c.replace("|", "\\|")
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(map(cell, r)) + " |" for r in rows]


def _section_md(section: Section, md_dir: Path) -> list[str]:
    out = [f"## {section.heading}", "", f"**{section.headline}**", ""]
    out += [f"- {b}" for b in section.bullets] + ([""] if section.bullets else [])
    out += [line for p in section.paragraphs for line in (p, "")]
    for heading, header, rows in section.tables:
        out += [f"### {heading}", ""] + md_table(header, rows) + [""]
    for path, caption in section.figures.values():
        out += [f"![{caption}]({Path(path).resolve().relative_to(md_dir.resolve()).as_posix()})", ""]
    return out


def _render_md(doc: _Doc, md_dir: Path) -> str:
    out = [f"# {doc.title}", "", f"_{doc.subtitle}_", ""]
    if doc.warnings:
        out += ["> **Warnings: read before quoting any number below**", ">"]
        out += [f"> - {w}" for w in doc.warnings] + [""]
    if doc.verdict:
        out += [f"**{doc.verdict}**", ""]
    if doc.comparison is not None:
        out += ["## Fidelity: predicted against measured", ""]
        table = format_comparison_table(doc.comparison, markdown=True)
        out += [table.split("\n\n")[0], "",
                "error = (predicted - measured) / measured; positive: the twin over-predicts.", ""]
        out += [line for note in doc.notes for line in (note, "")]
    if doc.load_curve is not None:
        header, rows = doc.load_curve
        out += ["## Load curve: measured points", ""] + md_table(
            header, [[*r[:-1], f"**{r[-1]}**" if r[-1].startswith("INVALID") else r[-1]] for r in rows]) + [""]
    for section in doc.sections:
        out += _section_md(section, md_dir)
    for heading, header, rows in doc.tables:
        out += [f"## {heading}", ""] + md_table(header, rows) + [""]
    if doc.figures:
        out += ["## Figures", ""]
        for name, path in doc.figures.items():
            rel = Path(path).resolve().relative_to(md_dir.resolve()).as_posix()
            out += [f"![{FIGURE_CAPTIONS.get(name, name)}]({rel})", ""]
    if doc.summaries:
        out += ["## Summaries", ""] + md_table(["field", *doc.labels], [[k, *v] for k, v in doc.summaries]) + [""]
    out += ["## Scenario", ""] + md_table(
        ["key", *doc.labels, *(["differs"] if len(doc.labels) > 1 else [])],
        [[f"`{k}`", *v, *(["**yes**" if d else ""] if len(doc.labels) > 1 else [])] for k, v, d in doc.config]) + [""]
    return "\n".join(out)


def _write(out_dir: Path, doc: _Doc) -> tuple[Path, Path]:
    html_path, md_path = out_dir / HTML_NAME, out_dir / MD_NAME
    write_text(html_path, _render_html(doc))
    write_text(md_path, _render_md(doc, out_dir))
    return html_path, md_path


# ---------------------------------------------------------------- entry points


def write_report(
    out_dir: str | Path,
    *,
    comparison: Mapping[str, Any],
    sim_run: Run,
    real_run: Run,
    load_curve: Sequence[LoadPoint | tuple[Any, ...]] | None = None,
    capacity: float | None = None,
    title: str = "servelab: twin against the real stack",
) -> tuple[Path, Path]:
    """A compare run's report: `report.html` (self-contained) and `report.md` with its figures
    in `figures/`. Returns (html_path, md_path)."""
    out = Path(out_dir)
    if "stack_capacity" in comparison:  # load fractions are of what the stack as deployed carries
        capacity = deployed_capacity_rps(comparison) or capacity
    figures = write_compare_figures(out / FIGURES_DIR, sim_run, real_run, load_curve=load_curve, capacity=capacity,
                                    capacity_name=capacity_name(comparison))
    experiment = experiment_compare_section(out / FIGURES_DIR, sim_run.path, real_run.path)
    config = config_rows([sim_run.config, real_run.config])
    invalid = invalid_measurements(comparison)  # first: a point's figures are not to be quoted
    warnings = invalid + list(comparison.get("warnings", []))
    warnings += [f"sim: {w}" for w in sim_run.warnings if f"predicted: {w}" not in warnings]
    warnings += [f"real: {w}" for w in real_run.warnings if f"measured: {w}" not in warnings]
    warnings += [w for w in (experiment.warnings if experiment else []) if w not in warnings]
    # the twin's calibration (it replays the measured profile) is meant to differ
    differing = [key for key, _, differs in config if differs and key not in CALIBRATION_KEYS]
    if differing:
        warnings.append(f"the two sides ran different scenarios ({', '.join(differing)}): errors compare unlike runs")
    doc = _Doc(
        title=title,
        subtitle=f"predicted by {sim_run.backend} ({sim_run.path}) · measured on {real_run.backend} ({real_run.path})",
        verdict=comparison_verdict(comparison),
        verdict_ok=bool(comparison.get("all_within_target")) and not invalid,
        warnings=warnings,
        comparison=comparison,
        labels=["sim (predicted)", "real (measured)"],
        config=config,
        summaries=summary_rows([sim_run.summary, real_run.summary]),
        figures=figures,
        notes=compare_notes(comparison),
        load_curve=_load_curve_table(comparison),
        sections=[experiment] if experiment else [],
    )
    return _write(out, doc)


def compare_notes(comparison: Mapping[str, Any]) -> list[str]:
    """Under the fidelity table: the predicted capacity of the stack as deployed (when the
    comparison has it) and whether the measurement the table compares against is valid."""
    capacity = format_stack_capacity(comparison)
    main = [line for line in invalid_measurements(comparison) if line.startswith("main run: ")]
    valid = ["main run: measurement valid"] if comparison.get("valid") is True else []  # older files do not say
    return ([capacity] if capacity else []) + (main or valid)


def _load_curve_table(comparison: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """The measured load points, the validity cell of an invalid one holding why."""
    header, rows = load_curve_rows(comparison)
    if not rows:
        return None
    why = [(e.get("invalid_reasons") or ["flagged invalid"]) for e in comparison.get("load_curve") or []]
    return header, [[*row[:-1], f"INVALID: {'; '.join(reasons)}" if row[-1] == "INVALID" else row[-1]]
                    for row, reasons in zip(rows, why)]


def write_run_report(out_dir: str | Path, run: Run, *, title: str | None = None) -> tuple[Path, Path]:
    """A single run's report (mode=sim or mode=real alone): figures, summary, scenario."""
    out = Path(out_dir)
    experiment = experiment_section(out / FIGURES_DIR, run.path)
    doc = _Doc(
        title=title or f"servelab {run.label} run",
        subtitle=f"backend {run.backend} ({run.path})",
        verdict=None,
        verdict_ok=True,
        warnings=run.warnings + (experiment.warnings if experiment else []),
        comparison=None,
        labels=[run.label],
        config=config_rows([run.config]),
        summaries=summary_rows([run.summary]),
        figures=write_run_figures(out / FIGURES_DIR, run),
        sections=[experiment] if experiment else [],
    )
    return _write(out, doc)


def write_tables_report(out_dir: str | Path, *, title: str, subtitle: str, tables: Sequence[tuple[str, list[str], list[list[str]]]],
                        figures: Mapping[str, Path], config: Mapping[str, Any], warnings: Sequence[str] = ()) -> tuple[Path, Path]:
    """An experiment's report (mode=rehearse): its result tables, its figures (already
    written, under out_dir), and the scenario it ran; the same HTML and Markdown as a run's."""
    doc = _Doc(
        title=title,
        subtitle=subtitle,
        verdict=None,
        verdict_ok=True,
        warnings=list(warnings),
        comparison=None,
        labels=["value"],
        config=config_rows([config]),
        summaries=[],
        figures=dict(figures),
        tables=tuple(tables),
    )
    return _write(Path(out_dir), doc)
