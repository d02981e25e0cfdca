"""Shared fixtures: a tiny scenario and a runner that returns the twin's requests table."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pandas as pd
import pytest

from sim.config import ArrivalConfig, BatchingConfig, LbConfig, ScenarioConfig, ServiceConfig
from sim.records import requests_frame
from sim.twin import Twin


def scenario(**overrides: Any) -> ScenarioConfig:
    """A ScenarioConfig from dotted-free keyword groups: scenario(replicas=2, arrival=dict(rate=50))."""
    base = ScenarioConfig(duration_s=5.0, warmup_s=0.5, timeout_s=0.0)
    groups = {"arrival": ArrivalConfig, "service": ServiceConfig, "lb": LbConfig, "batching": BatchingConfig}
    for key, value in overrides.items():
        if key in groups and isinstance(value, dict):
            value = dataclasses.replace(getattr(base, key), **value)
        base = dataclasses.replace(base, **{key: value})
    return base


def twin_requests(cfg: ScenarioConfig) -> pd.DataFrame:
    return requests_frame(Twin(cfg).run().columns)


@pytest.fixture
def run_twin() -> Callable[[ScenarioConfig], pd.DataFrame]:
    return twin_requests
