"""Service (model or device) time of a batch: the one cost model the twin samples and the
emulated accelerator sleeps.

Mean time of a batch of B is `base_s + per_item_s * B`; `empirical` replays times measured by
mode=profile. Draws come from pre-filled buffers: one numpy call per 64k draws, not per batch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from sim.config import ScenarioConfig, ServiceConfig
from sim.profile import Profile, load_profile

_BUFFER = 65536


class ServiceTime:
    def __init__(self, cfg: ServiceConfig, rng: np.random.Generator, profile: Profile | None = None, extra_s: float = 0.0) -> None:
        self.cfg = cfg
        self.extra_s = extra_s  # added to every draw: a device's measured lateness (sim.host.HostCosts.device_wake_s)
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
            return self._profile.mean_s(batch_size) + self.extra_s
        return self.cfg.base_s + self.cfg.per_item_s * batch_size + self.extra_s

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
            return self._profile.sample_s(batch_size, u) + self.extra_s
        return (self.cfg.base_s + self.cfg.per_item_s * batch_size) * u + self.extra_s


class VersionService:
    """A replica's device time from the times its current version measured (`Profile.for_version`):
    a CPU model's versions differ in their own compute, not by a configured factor. The version is
    read at each draw, so a replica whose version changes draws from its new one."""

    def __init__(self, services: list[ServiceTime], version_of: list[int], replica: int) -> None:
        self._services = services
        self._version_of = version_of  # the membership's live list
        self._replica = replica

    def mean(self, batch_size: int) -> float:
        return self._services[self._version_of[self._replica]].mean(batch_size)

    def draw(self, batch_size: int) -> float:
        return self._services[self._version_of[self._replica]].draw(batch_size)


class Overhead:
    """Per-request time outside queue and model, before enqueue and after service: constants
    from the config, or measured samples replayed. Samples given as equally long `before_s`
    and `after_s` lists are pairs (one request's two halves) and are drawn together, so the
    replayed total has the measured distribution, not a thinner-tailed convolution."""

    def __init__(self, before_s: float, after_s: float, rng: np.random.Generator, samples: dict[str, list[float]] | None = None) -> None:
        samples = samples or {}
        before = np.asarray(samples.get("before_s", [before_s]), dtype=float)
        after = np.asarray(samples.get("after_s", [after_s]), dtype=float)
        if len(before) == 1 and len(after) > 1:  # a constant on one side pairs with every sample
            before = np.full(len(after), before[0])
        elif len(after) == 1 and len(before) > 1:
            after = np.full(len(before), after[0])
        elif len(before) != len(after):  # unpaired samples: draw each side on its own
            before = before[rng.integers(0, len(before), _BUFFER)]
            after = after[rng.integers(0, len(after), _BUFFER)]
        self._rng = rng
        self._pairs = np.stack([before, after], axis=1)
        self.active = bool(self._pairs.max() > 0)
        self._buf: list[list[float]] = []

    def draw(self) -> tuple[float, float]:
        """(before, after) for one request."""
        if len(self._pairs) == 1:
            return float(self._pairs[0, 0]), float(self._pairs[0, 1])
        if not self._buf:
            self._buf = self._pairs[self._rng.integers(0, len(self._pairs), _BUFFER)].tolist()
        before, after = self._buf.pop()
        return before, after


def capacity_rps(cfg: ScenarioConfig, profile: Profile | None = None) -> float:
    """Most requests per second the replicas can answer: every instance busy with full batches
    (or, with shared cores, every core busy), at the profile's measured times when given, else
    the service model's means. Load fractions are quoted against this."""
    service = cfg.service
    if profile is None and service.kind == "empirical":
        profile = load_profile(service.profile)
    b = cfg.batching.max_batch_size
    mean_s = profile.mean_s(b) if profile is not None else service.base_s + service.per_item_s * b
    instances = cfg.replicas * cfg.concurrency
    if service.shared_cores:
        instances = min(instances, service.shared_cores)
    if cfg.features.store != "none":  # the feature lookup holds the instance before the model runs
        from sim.features import mean_batch_lookup_s

        device_rps = instances * b / mean_s
        measured = profile.feature_lookups if profile is not None else None
        mean_s += mean_batch_lookup_s(cfg, measured, b, device_rps / cfg.replicas)
    return instances * b / mean_s
