"""A sweep's jobs side by side: one table of every job's key figures and a load curve.

`servelab -m arrival.rate=100,200,400` leaves one run directory per job under the sweep
directory; a capacity planner wants them as one table (and, when the rate was swept, one
curve with its knee), not as N summaries to open one by one. Everything here is a pure
function of those directories: the table can be rebuilt from a sweep long after it ran.

The sweep keys are the config keys whose values differ between jobs, found from the jobs'
config.yaml rather than from Hydra's overrides, so a sweep run by hand or by another tool
reads the same. A compare job contributes two rows (source sim and real) keyed by the
measured side's config: the twin's calibration (it replays a profile) is not a sweep key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import yaml

from reports.figures import plot_load_curves
from reports.report import md_table
from sim.files import atomic_write, write_text

CSV_NAME, MD_NAME, LOAD_CURVE_NAME = "sweep.csv", "sweep.md", "load_curve.png"
RATE_KEY = "arrival.rate"
# keys that differ between jobs by construction, not because the user swept them
NOT_SWEPT = frozenset({"out_dir"})
SIDES = ("sim", "real")

# summary figure -> column, in the order a planner reads them
FIGURES: tuple[tuple[str, Any], ...] = (
    ("offered_rate", lambda s: s.get("offered_rate")),
    ("throughput", lambda s: s.get("throughput")),
    ("capacity_rps", lambda s: s.get("capacity_rps")),
    ("offered_load", lambda s: s.get("offered_load")),
    ("latency_p50_s", lambda s: (s.get("latency_s") or {}).get("p50")),
    ("latency_p99_s", lambda s: (s.get("latency_s") or {}).get("p99")),
    ("shed_fraction", lambda s: s.get("shed_fraction")),
    ("batches", lambda s: s.get("batches")),
    ("batch_size_mean_per_batch", lambda s: s.get("batch_size_mean_per_batch")),
    ("batch_size_mean_per_request", lambda s: s.get("batch_size_mean_per_request")),
    ("utilisation_mean", lambda s: s.get("utilisation_mean")),
    ("valid", lambda s: bool(s.get("valid", True))),  # the twin has no generator to fall behind
)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a job directory, or one side of a compare job."""

    job: str  # the job's directory relative to the sweep directory ("0", "1", ...)
    path: Path  # the run directory: the job itself, or its sim/ or real/
    summary: dict[str, Any]
    config: dict[str, Any]  # the job's config: for a compare, the measured side's


def _is_run(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "config.yaml").is_file()


def _natural(path: Path) -> tuple[Any, ...]:
    """Hydra numbers jobs 0, 1, ..., 10: sort "10" after "9", not after "1"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _job_dirs(root: Path) -> Iterator[tuple[Path, list[Path]]]:
    """(job directory, its run directories) under root, depth first in natural order; a run
    directory is not searched further, and neither is a compare job (its load points are not
    jobs of the sweep), nor Hydra's own `.hydra/`."""
    children = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: _natural(d.relative_to(root)))
    for d in children:
        if _is_run(d):
            yield d, [d]
            continue
        sides = [d / side for side in SIDES if _is_run(d / side)]
        if sides:
            yield d, sides
        else:
            yield from _job_dirs(d)


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def find_runs(sweep_dir: str | Path) -> list[SweepRun]:
    """Every run of the sweep in job order, with the summary and the job's config."""
    root = Path(sweep_dir)
    runs: list[SweepRun] = []
    if not root.is_dir():
        return runs
    for job, dirs in _job_dirs(root):
        config = _read_yaml(dirs[-1] / "config.yaml")  # real/ comes last: the config the user asked for
        for d in dirs:
            summary = json.loads((d / "summary.json").read_text())
            runs.append(SweepRun(job=job.relative_to(root).as_posix(), path=d, summary=summary, config=config))
    return runs


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"arrival": {"rate": 100}} -> {"arrival.rate": 100}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _as_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def sweep_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between the configs, in config order."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if k not in NOT_SWEPT and len({_as_key(f.get(k)) for f in flat}) > 1]


def _cell(value: Any) -> Any:
    """A config value as a table cell: lists as text, so CSV and Parquet both take them."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def sweep_table(runs: Sequence[SweepRun]) -> pd.DataFrame:
    """One row per run: job, the sweep keys, source, then the key figures of its summary."""
    keys = sweep_keys([r.config for r in {r.job: r for r in runs}.values()])
    rows = []
    for r in runs:
        flat = flatten(r.config)
        row: dict[str, Any] = {"job": r.job, **{k: _cell(flat.get(k)) for k in keys},
                               "source": _source(r)}
        row.update({name: read(r.summary) for name, read in FIGURES})
        rows.append(row)
    return pd.DataFrame(rows, columns=["job", *keys, "source", *(name for name, _ in FIGURES)])


def _fmt(column: str, value: Any) -> str:
    """A cell as people read it: latency in ms, fractions in %, rates to 0.1 req/s."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if column.endswith("_s") and column.startswith("latency"):
        return f"{float(value) * 1e3:.2f} ms"
    if column in ("shed_fraction", "offered_load", "utilisation_mean"):
        return f"{float(value):.1%}"
    if column in ("offered_rate", "throughput", "capacity_rps"):
        return f"{float(value):.1f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_sweep_markdown(table: pd.DataFrame, keys: Sequence[str], *, figure: str | None = None) -> str:
    """The sweep table in Markdown, with what it is and how to read it above it."""
    header = list(table.columns)
    rows = [[_fmt(c, None if pd.isna(v) else v) for c, v in zip(header, rec)] for rec in table.itertuples(index=False)]
    out = [f"# servelab sweep: {table['job'].nunique()} jobs", "",
           f"Swept: {', '.join(f'`{k}`' for k in keys) or '(no key differs between jobs)'}. "
           "Throughput is completions inside the measurement window per second (it stays at capacity "
           "under overload); latency of answered requests sent in the window; rates in req/s.", ""]
    out += md_table(header, rows) + [""]
    if figure:
        out += [f"![latency and throughput against offered rate]({figure})", ""]
    return "\n".join(out)


def load_curves(runs: Sequence[SweepRun], keys: Sequence[str]) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """The load curve's lines: one per source and combination of the other sweep keys, each
    a list of (configured rate, summary); labelled by what tells them apart."""
    others = [k for k in keys if k != RATE_KEY]
    sources = {_source(r) for r in runs}
    curves: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for r in runs:
        flat = flatten(r.config)
        parts = ([_source(r)] if len(sources) > 1 else []) + [f"{k}={_cell(flat.get(k))}" for k in others]
        label = " ".join(parts) or _source(r)
        curves.setdefault(label, []).append((float(flat.get(RATE_KEY) or math.nan), r.summary))
    return curves


def _source(run: SweepRun) -> str:
    return str(run.summary.get("source") or run.path.name)


def write_sweep_report(sweep_dir: str | Path) -> dict[str, Path]:
    """sweep.csv, sweep.md and, when the rate was swept, load_curve.png in the sweep directory.
    Returns name -> path ("csv", "md", "load_curve"); empty when it holds no run."""
    root = Path(sweep_dir)
    runs = find_runs(root)
    if not runs:
        return {}
    table = sweep_table(runs)
    keys = [c for c in table.columns if c not in ("job", "source", *(name for name, _ in FIGURES))]
    paths: dict[str, Path] = {"csv": root / CSV_NAME, "md": root / MD_NAME}
    atomic_write(paths["csv"], lambda p: table.to_csv(p, index=False))
    figure = None
    if RATE_KEY in keys:
        paths["load_curve"] = plot_load_curves(root / LOAD_CURVE_NAME, load_curves(runs, keys),
                                               title=f"Sweep over {RATE_KEY}: latency and throughput against load")
        figure = LOAD_CURVE_NAME
    write_text(paths["md"], format_sweep_markdown(table, keys, figure=figure))
    return paths
