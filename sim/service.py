"""Service (model or device) time of a batch: the one cost model the twin samples and the
emulated accelerator sleeps.

Mean time of a batch of B is `base_s + per_item_s * B`; `empirical` replays times measured by
mode=profile. Draws come from pre-filled buffers: one numpy call per 64k draws, not per batch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from sim.config import ServiceConfig
from sim.profile import Profile, load_profile

_BUFFER = 65536


class ServiceTime:
    def __init__(self, cfg: ServiceConfig, rng: np.random.Generator, profile: Profile | None = None) -> None:
        self.cfg = cfg
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0
        self._profile = profile
        if cfg.kind == "empirical":
            self._profile = profile or load_profile(cfg.profile)
            self._fill: Callable[[], np.ndarray] = lambda: rng.random(_BUFFER)
        elif cfg.kind == "deterministic":
            self._fill = lambda: np.ones(_BUFFER)
        elif cfg.kind == "exponential":
            self._fill = lambda: rng.exponential(1.0, _BUFFER)
        elif cfg.kind == "lognormal":
            sigma = math.sqrt(math.log1p(cfg.cv * cfg.cv))
            self._fill = lambda: rng.lognormal(-0.5 * sigma * sigma, sigma, _BUFFER)  # mean 1
        else:
            raise ValueError(f"unknown service.kind {cfg.kind!r}")

    def mean(self, batch_size: int) -> float:
        if self._profile is not None:
            return self._profile.mean_s(batch_size)
        return self.cfg.base_s + self.cfg.per_item_s * batch_size

    def _next_unit(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._fill().tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u

    def draw(self, batch_size: int) -> float:
        u = self._next_unit()
        if self._profile is not None:
            return self._profile.sample_s(batch_size, u)
        return (self.cfg.base_s + self.cfg.per_item_s * batch_size) * u


class Overhead:
    """Per-request time outside queue and model, before enqueue and after service: constants
    from the config, or samples replayed from a measured profile."""

    def __init__(self, before_s: float, after_s: float, rng: np.random.Generator, samples: dict[str, list[float]] | None = None) -> None:
        self._rng = rng
        samples = samples or {}
        self._before = np.asarray(samples.get("before_s", [before_s]), dtype=float)
        self._after = np.asarray(samples.get("after_s", [after_s]), dtype=float)
        self.active = bool(self._before.max() > 0 or self._after.max() > 0)
        self.mean_before_s = float(self._before.mean())
        self.mean_after_s = float(self._after.mean())
        self._buf_before: list[float] = []
        self._buf_after: list[float] = []

    def _draw(self, pool: np.ndarray, buf: list[float]) -> float:
        if len(pool) == 1:
            return float(pool[0])
        if not buf:
            buf.extend(pool[self._rng.integers(0, len(pool), _BUFFER)].tolist())
        return buf.pop()

    def before(self) -> float:
        return self._draw(self._before, self._buf_before)

    def after(self) -> float:
        return self._draw(self._after, self._buf_after)


def capacity_rps(replicas: int, concurrency: int, max_batch_size: int, mean_s: Callable[[int], float], shared_cores: int = 0) -> float:
    """Most requests per second the replicas can answer: every instance busy with full batches
    (or, with shared cores, every core busy). Load fractions are quoted against this."""
    per_instance = max_batch_size / mean_s(max_batch_size)
    instances = replicas * concurrency
    if shared_cores:
        instances = min(instances, shared_cores)
    return instances * per_instance
