"""Run directories for the report tests: two short twin runs (seeds 0 and 1) standing in for
the predicted and measured sides, written and read back exactly as a compare run would."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from reports.compare import Run, load_run
from scenarios.outputs import write_run
from scenarios.run_sim import simulate
from tests.conftest import scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(seed: int, rate: float = 100.0) -> Any:
    return scenario(seed=seed, duration_s=2.0, warmup_s=0.5, window_s=0.25, arrival=dict(rate=rate))


def twin_runs(root: Path) -> tuple[Run, Run]:
    runs = []
    for seed, name in ((0, "sim"), (1, "real")):
        cfg = tiny(seed)
        frame, summary, series = simulate(cfg)
        write_run(root / name, cfg, frame, summary, series)
        runs.append(load_run(root / name))
    return runs[0], runs[1]


@lru_cache(maxsize=None)
def load_points() -> tuple[tuple[float, dict[str, Any], dict[str, Any]], ...]:
    """A three-rate sweep, both sides from the twin."""
    return tuple((rate, simulate(tiny(0, rate))[1], simulate(tiny(1, rate))[1]) for rate in (50.0, 150.0, 300.0))
