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

    def __post_init__(self) -> None:
        if not self.times_s or any(not v for v in self.times_s.values()):
            raise ValueError("a profile needs at least one measured time per listed batch size")
        if any(not v for v in self.overheads_s.values()):
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

    def to_json(self) -> dict[str, Any]:
        return {"times_s": {str(b): v for b, v in self.times_s.items()}, "overheads_s": self.overheads_s, "meta": self.meta}


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
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError("service.profile", f"cannot read profile {path}: {exc}") from exc
