"""Writing a run's files: the only place a run's results touch the disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from reports.compare import Run
from reports.report import write_run_report
from reports.sweep import write_sweep_report
from sim.config import to_plain
from sim.files import atomic_write, write_config, write_json, write_parquet, write_text

__all__ = ["atomic_write", "format_report_paths", "report_run", "report_sweep", "write_config", "write_json",
           "write_parquet", "write_run", "write_text"]

# The job directories (cfg.out_dir) runs of this process wrote into. Hydra keeps no record of a
# multirun's sweep directory once it returns; each job's is its parent.
_JOB_DIRS: list[Path] = []


def write_run(out_dir: Path, cfg: Any, requests: pd.DataFrame, summary: dict[str, Any], series: pd.DataFrame) -> None:
    """The four files of every run, sim or real (DESIGN.md, "Outputs")."""
    write_config(out_dir / "config.yaml", cfg)
    write_parquet(out_dir / "requests.parquet", requests)
    write_parquet(out_dir / "timeseries.parquet", series)
    write_json(out_dir / "summary.json", summary)
    job = Path(getattr(cfg, "out_dir", "") or out_dir)
    if job not in _JOB_DIRS:
        _JOB_DIRS.append(job)


def report_run(out_dir: Path, cfg: Any, requests: pd.DataFrame, summary: dict[str, Any], series: pd.DataFrame,
               *, title: str) -> tuple[Path, Path]:
    """A single run's report (report.html, report.md, figures/) from the tables in memory, the
    same ones just written: no reading a 1M-row requests.parquet back. Returns (html, md)."""
    run = Run(path=out_dir, requests=requests, summary=summary, timeseries=series, config=to_plain(cfg))
    return write_run_report(out_dir, run, title=title)


def format_report_paths(out_dir: Path, paths: tuple[Path, Path]) -> str:
    """The last lines of every run: where its report and its files are."""
    html, md = paths
    return f"report: {html}\n        {md}\noutputs: {out_dir}"


def sweep_dir(job_dirs: list[Path]) -> Path | None:
    """The directory holding every job of a sweep: their common parent (Hydra puts job N in
    `<hydra.sweep.dir>/N`, and out_dir=PATH in a sweep is hydra.sweep.dir)."""
    if not job_dirs:
        return None
    return Path(os.path.commonpath([str(Path(j).absolute().parent) for j in job_dirs]))


def report_sweep(directory: Path | None = None) -> dict[str, Path]:
    """After a multirun: the sweep table (sweep.csv, sweep.md) and load curve in the sweep
    directory (default: the one holding the jobs this process ran), its path printed."""
    root = directory or sweep_dir(_JOB_DIRS)
    paths = write_sweep_report(root) if root is not None else {}
    if paths:
        print(f"sweep table: {paths['md']}\n             {paths['csv']}")
        if "load_curve" in paths:
            print(f"load curve:  {paths['load_curve']}")
    return paths
