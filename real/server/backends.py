"""Model backends: what an instance thread does with one batch.

`plan` runs on the event-loop thread at dispatch, in dispatch order, so the emulated device's
service times are drawn from one stream in the same order as the twin draws them; `run` runs
in the instance's own thread and may block (a precise sleep, or numpy with the GIL released).
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from real.server.protocol import FEATURES, TensorSpec
from sim.config import ScenarioConfig, version_specs
from sim.service import ServiceTime

LABEL = TensorSpec("label", "INT64", (-1,))
PROBABILITIES = TensorSpec("probabilities", "FP32", (-1, 10))


class Backend(Protocol):
    platform: str
    outputs: dict[str, TensorSpec]

    def load(self) -> None:
        """Blocking model load and warm-up; the replica is not ready before it returns."""

    def plan(self, batch_size: int) -> float:
        """Per-batch value chosen at dispatch (the emulated device time; 0 otherwise)."""

    def run(self, x: np.ndarray, planned: float) -> dict[str, np.ndarray]:
        """Outputs for a (B, 64) float32 batch, each with leading dimension B."""


class EmulatedBackend:
    """An accelerator whose device time follows the twin's service model; the CPU only waits.

    The wait is a `time.sleep` in the instance thread (clock_nanosleep: ~0.1 ms overshoot)
    rather than an asyncio timer, whose ~1 ms granularity would bias every batch by more than the
    few-% fidelity the twin is held to.
    """

    platform = "servelab_emulated"
    outputs = {LABEL.name: LABEL}

    def __init__(self, cfg: ScenarioConfig, replica: int, service_factor: float = 1.0) -> None:
        self._service = ServiceTime(cfg.service, np.random.default_rng([cfg.seed, replica]))
        self._factor = service_factor  # the version's own speed (model.versions[...].service_factor)

    def load(self) -> None:
        # ServiceTime fills its 64k-draw buffer on first use (a few ms); do it now rather than
        # inside the first batch's queue time. The stream is this replica's own (not the
        # twin's), so discarding one draw changes no distribution and stays deterministic.
        self._service.draw(1)

    def plan(self, batch_size: int) -> float:
        return self._service.draw(batch_size) * self._factor

    def run(self, x: np.ndarray, planned: float) -> dict[str, np.ndarray]:
        if planned > 0:
            time.sleep(planned)
        return {LABEL.name: np.zeros(x.shape[0], dtype=np.int64)}


class NumpyBackend:
    """A real digits classifier (real.models); inference is plain numpy, which drops the GIL."""

    platform = "servelab_numpy"
    outputs = {PROBABILITIES.name: PROBABILITIES, LABEL.name: LABEL}
    # tens of microseconds per batch: cheaper on the event loop than handed to a thread
    inline = True

    def __init__(self, version: str) -> None:
        self.version = version
        self._model: object | None = None

    def load(self) -> None:
        from real.models import load_model

        model = load_model(self.version)
        warm = np.zeros((4, FEATURES), dtype=np.float32)
        for _ in range(3):
            model.predict_proba(warm)
        self._model = model

    def plan(self, batch_size: int) -> float:
        return 0.0

    def run(self, x: np.ndarray, planned: float) -> dict[str, np.ndarray]:
        assert self._model is not None, "NumpyBackend.run before load"
        proba = self._model.predict_proba(x)  # type: ignore[attr-defined]
        return {PROBABILITIES.name: proba, LABEL.name: proba.argmax(axis=1).astype(np.int64)}


def make_backend(cfg: ScenarioConfig, replica: int, version: str) -> Backend:
    if cfg.model.backend == "emulated":
        factor = {v.name: v.service_factor for v in version_specs(cfg.model)}[version]
        return EmulatedBackend(cfg, replica, factor)
    if cfg.model.backend == "numpy":
        return NumpyBackend(version)
    raise ValueError(f"unknown model.backend {cfg.model.backend!r}")
