"""Writing a run's files: the only place a run's results touch the disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sim.files import atomic_write, write_config, write_json, write_parquet, write_text

__all__ = ["atomic_write", "write_config", "write_json", "write_parquet", "write_run", "write_text"]


def write_run(out_dir: Path, cfg: Any, requests: pd.DataFrame, summary: dict[str, Any], series: pd.DataFrame) -> None:
    """The four files of every run, sim or real (DESIGN.md, "Outputs")."""
    write_config(out_dir / "config.yaml", cfg)
    write_parquet(out_dir / "requests.parquet", requests)
    write_parquet(out_dir / "timeseries.parquet", series)
    write_json(out_dir / "summary.json", summary)
