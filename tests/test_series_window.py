"""The time series' window: window_s on a short run, a wider nice multiple of it on a long horizon
(at most MAX_SERIES_WINDOWS windows), the user's timeseries_window_s when set; the controllers
and rollout.parquet keep window_s whatever the series uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scenarios.cli import preflight
from scenarios.run_sim import run, simulate
from sim.records import MAX_SERIES_WINDOWS, series_window_s


def _step(series: pd.DataFrame) -> float:
    return float(np.diff(series["window_start_s"].to_numpy(dtype=float))[0])


@pytest.mark.parametrize("end_s, window_s", [(10.0, 1.0), (1000.0, 1.0), (250.0, 0.25), (50.0, 0.05)])
def test_a_horizon_of_at_most_the_limit_keeps_window_s(end_s: float, window_s: float) -> None:
    assert series_window_s(end_s, window_s) == window_s


@pytest.mark.parametrize("end_s, window_s, expected", [
    (142_857.0, 1.0, 200.0),  # 100 s would give 1,429 windows, 200 s gives 715
    (1_400_000.0, 1.0, 2000.0),
    (1001.0, 1.0, 2.0),
    (200_000.0, 1.0, 200.0),  # exactly 1,000 windows still fits
    (200_001.0, 1.0, 500.0),
    (142_857.0, 2.0, 200.0),  # a multiple of window_s: 2 s x 100
    (142_857.0, 0.3, 150.0),  # 0.3 s x 500, not 200 s, which would split analysis windows
])
def test_a_long_horizon_gets_the_smallest_nice_multiple_within_the_limit(end_s: float, window_s: float,
                                                                        expected: float) -> None:
    width = series_window_s(end_s, window_s)
    assert width == expected
    assert math.ceil(end_s / width) <= MAX_SERIES_WINDOWS
    assert math.isclose(width / window_s, round(width / window_s))  # whole analysis windows per series window


def test_a_chosen_window_wins_even_past_the_limit() -> None:
    assert series_window_s(142_857.0, 1.0, chosen_s=1.0) == 1.0
    assert series_window_s(10.0, 1.0, chosen_s=0.5) == 0.5


def test_a_long_horizon_twin_run_has_a_readable_series_and_names_its_window(tmp_path: Path) -> None:
    cfg = preflight(["arrival.rate=0.01", "duration_s=150000", "warmup_s=0", "service.base_s=1.0",
                     "service.per_item_s=0", "batching.max_batch_size=1", f"out_dir={tmp_path}", "progress=false"])
    assert run(cfg, tmp_path) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    series = pd.read_parquet(tmp_path / "timeseries.parquet")
    assert summary["timeseries_window_s"] == 200.0 == _step(series)
    assert len(series) <= MAX_SERIES_WINDOWS
    assert "time-series window | 200 s" in (tmp_path / "report.md").read_text()


def test_a_short_run_keeps_one_second_windows() -> None:
    _, summary, series = simulate(preflight(["duration_s=10"]))
    assert summary["timeseries_window_s"] == 1.0 == _step(series)
    assert len(series) >= 10


CANARY = ["rollout.strategy=canary", "model.versions=[1,{name:2,service_factor:4}]", "replicas=4",
          "arrival.rate=300", "duration_s=30", "window_s=0.025", "rollout.failure_limit=1", "rollout.max_p99_ratio=2",
          "rollout.steps=[{pause_s:1},{set_weight:25},{pause_s:3},{set_weight:50},{pause_s:3}]"]


def test_rollout_windows_stay_window_s_when_the_series_widens(tmp_path: Path) -> None:
    """1,200 analysis windows of 25 ms: the series widens to 50 ms, the controller and
    rollout.parquet do not (the same decisions as with a 25 ms series asked for)."""
    auto, chosen = tmp_path / "auto", tmp_path / "chosen"
    assert run(preflight([*CANARY, f"out_dir={auto}"]), auto) == 0
    assert run(preflight([*CANARY, "timeseries_window_s=0.025", f"out_dir={chosen}"]), chosen) == 0
    assert _step(pd.read_parquet(auto / "timeseries.parquet")) == 0.05
    assert _step(pd.read_parquet(chosen / "timeseries.parquet")) == 0.025
    rollout = pd.read_parquet(auto / "rollout.parquet")
    assert np.allclose(np.diff(np.unique(rollout["window_start_s"].to_numpy(dtype=float))), 0.025)
    events = [json.loads((d / "events.json").read_text())["decisions"] for d in (auto, chosen)]
    assert events[0] == events[1] and events[0]
