"""A measured service profile: per batch size, the device/model times mode=profile observed,
plus the per-hop overheads of the stack it came from. JSON, never pickle.

Batch sizes that were not measured are served by the nearest measured size, scaled by the
linearly interpolated mean, so a profile of sizes 1, 2, 4, 8, 16 still answers size 5.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.config import ConfigError


@dataclass
class Profile:
    times_s: dict[int, list[float]]  # batch size -> measured times, sorted
    # overhead name (before_s, after_s, ...) -> measured samples in seconds
    overheads_s: dict[str, list[float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # machine, backend, config it came from
    # the stack's own per-request overhead measured under load: [{"rate": req/s, "total_s": [...]}]
    # (on a shared host it grows with the request rate: every hop competes for the same cores)
    overhead_by_rate: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.times_s or any(not v for v in self.times_s.values()):
            raise ValueError("a profile needs at least one measured time per listed batch size")
        if any(not v for v in self.overheads_s.values()) or any(not p["total_s"] for p in self.overhead_by_rate):
            raise ValueError("a profile's overheads need at least one sample each")
        self.times_s = {int(b): sorted(float(x) for x in v) for b, v in self.times_s.items()}
        self._sizes = sorted(self.times_s)
        self._means = [float(np.mean(self.times_s[b])) for b in self._sizes]

    def mean_s(self, batch_size: int) -> float:
        return float(np.interp(batch_size, self._sizes, self._means))

    def sample_s(self, batch_size: int, u: float) -> float:
        """The measured time at quantile u of the nearest measured size, rescaled to this size."""
        k = bisect.bisect_left(self._sizes, batch_size)
        if k == len(self._sizes) or (k > 0 and batch_size - self._sizes[k - 1] < self._sizes[k] - batch_size):
            k -= 1
        size = self._sizes[k]
        samples = self.times_s[size]
        x = samples[min(int(u * len(samples)), len(samples) - 1)]
        if size == batch_size:
            return x
        return x * self.mean_s(batch_size) / self._means[k]

    def overhead_samples(self, rate: float, n: int = 4096) -> dict[str, list[float]]:
        """Overhead samples to replay around the queue at this offered rate, split evenly before
        and after the queue (one clock per process cannot split a round trip).

        Under load: the quantiles of the two measured rates that bracket `rate`, interpolated
        linearly in rate (clamped at the ends); else the idle per-request measurement."""
        if not self.overhead_by_rate:
            return {k: v for k, v in self.overheads_s.items() if k in ("before_s", "after_s")}
        points = sorted(self.overhead_by_rate, key=lambda point: float(point["rate"]))
        rates = [float(point["rate"]) for point in points]
        k = bisect.bisect_left(rates, rate)
        lo, hi = points[max(k - 1, 0)], points[min(k, len(points) - 1)]
        span = float(hi["rate"]) - float(lo["rate"])
        w = 0.0 if span <= 0 else min(max((rate - float(lo["rate"])) / span, 0.0), 1.0)
        q = (np.arange(n) + 0.5) / n
        total = (1 - w) * np.quantile(lo["total_s"], q) + w * np.quantile(hi["total_s"], q)
        half = (total / 2).tolist()
        return {"before_s": half, "after_s": half}

    def to_json(self) -> dict[str, Any]:
        return {"times_s": {str(b): v for b, v in self.times_s.items()}, "overheads_s": self.overheads_s,
                "overhead_by_rate": self.overhead_by_rate, "meta": self.meta}


def load_profile(path: str) -> Profile:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("service.profile", f"profile file not found: {path}")
    try:
        raw = json.loads(p.read_text())
        return Profile(
            times_s={int(b): list(v) for b, v in raw["times_s"].items()},
            overheads_s={str(k): [float(x) for x in v] for k, v in raw.get("overheads_s", {}).items()},
            meta=dict(raw.get("meta", {})),
            overhead_by_rate=[{"rate": float(p["rate"]), "total_s": [float(x) for x in p["total_s"]]}
                              for p in raw.get("overhead_by_rate", [])],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError("service.profile", f"cannot read profile {path}: {exc}") from exc
