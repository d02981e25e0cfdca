"""mode=batch's report: the twin against the measured job, and the twin's search as a figure.

A pure function of batch.json (what scenarios.batch writes): the table of predicted against
measured start, scoring, completion, rows/s and cost, the search's fastest and cheapest
points, and `batch_search.png`: predicted rows/s against parallelism, one line per batch size,
the measured job marked, so a reader sees where more workers stop paying (the cores) and
which batch size the model wants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from reports.report import FIGURES_DIR, write_tables_report
from sim.files import atomic_write

BATCH_SEARCH_PNG = "batch_search.png"
# (key in the twin's and the real job's figures, label, format)
COMPARED = (("startup_s", "start (s)", "{:.3f}"), ("scoring_s", "scoring (s)", "{:.3f}"), ("completion_s", "completion (s)", "{:.3f}"),
            ("rows_per_s", "rows/s", "{:,.0f}"), ("cost_per_1000", "cost / 1,000", "{:.3g}"))


def comparison_rows(twin: Mapping[str, Any], real: Mapping[str, Any]) -> list[list[str]]:
    """One row per figure: twin, real, and the error (twin - real) / real."""
    rows = []
    for key, label, fmt in COMPARED:
        t, r = twin[key], real[key]
        rows.append([label, fmt.format(t), fmt.format(r), f"{(t - r) / r:+.1%}" if r else "-"])
    return rows


def draw_search(path: Path, doc: Mapping[str, Any]) -> Path | None:
    """Predicted rows/s against parallelism per batch size, the measured job marked; None
    without a search."""
    grid = (doc.get("search") or {}).get("grid") or []
    if not grid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for size in sorted({p["batch_size"] for p in grid}):
        points = sorted((p["parallelism"], p["rows_per_s"]) for p in grid if p["batch_size"] == size)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", ms=3, label=f"batch {size}")
    real = doc.get("real")
    if real:
        ax.plot([doc["parallelism"]], [real["rows_per_s"]], "k*", ms=12, label=f"measured (batch {doc['batch_size']})")
    if doc.get("cores"):
        ax.axvline(doc["cores"], color="grey", ls=":", lw=1, label=f"{doc['cores']} cores")
    ax.set_xlabel("parallelism (worker processes)")
    ax.set_ylabel("rows/s (whole job, with start)")
    ax.set_title("the twin's search: throughput by batch size and parallelism")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_batch_report(out_dir: Path, doc: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Path, Path]:
    """report.html and report.md of a batch job, beside batch.json."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    if doc.get("twin") and doc.get("real"):
        tables.append(("Twin against the measured job", ["", "twin", "real", "error"], comparison_rows(doc["twin"], doc["real"])))
    search = doc.get("search")
    if search:
        tables.append(("The twin's search", ["point", "batch_size", "parallelism", "completion (s)", "rows/s", "cost / 1,000"],
                       [[name, str(p["batch_size"]), str(p["parallelism"]), f"{p['completion_s']:.2f}", f"{p['rows_per_s']:,.0f}",
                         f"{p['cost_per_1000']:.3g}"] for name, p in (("fastest", search["fastest"]), ("cheapest", search["cheapest"]))]))
    chunks = doc["chunks"]
    tables.append(("The job", ["rows", "chunks", "skipped (already written)", "scored", "accuracy"],
                   [[f"{doc['rows']:,}", str(chunks["total"]), str(chunks["skipped"]), str(chunks["scored"]),
                     "-" if doc.get("accuracy") is None else f"{doc['accuracy']:.3f}"]]))
    figure = draw_search(Path(out_dir) / FIGURES_DIR / BATCH_SEARCH_PNG, doc)
    return write_tables_report(
        out_dir,
        title=f"servelab batch: {doc['backend']} backend, version {doc['version']}",
        subtitle=f"{doc['rows']:,} rows, batch_size {doc['batch_size']}, parallelism {doc['parallelism']}, {doc.get('cores')} core(s)",
        tables=tables,
        figures={"batch_search": figure} if figure is not None else {},
        config=config,
    )
