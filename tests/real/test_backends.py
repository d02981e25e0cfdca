"""The emulated accelerator serves each version at that version's own speed, as the twin does."""

from __future__ import annotations

import pytest

from real.server.backends import make_backend
from sim.config import ModelConfig, ScenarioConfig, ServiceConfig


def test_a_versions_service_factor_scales_its_emulated_device_time() -> None:
    cfg = ScenarioConfig(service=ServiceConfig(kind="deterministic", base_s=0.004, per_item_s=0.001),
                         model=ModelConfig(versions=["1", {"name": "2", "service_factor": 2.5}]))
    assert make_backend(cfg, 0, "1").plan(2) == pytest.approx(0.006)
    assert make_backend(cfg, 1, "2").plan(2) == pytest.approx(0.015)
