"""A measured service profile: per batch size, the device/model times mode=profile observed,
plus the per-hop overheads of the stack it came from. JSON, never pickle.

Batch sizes that were not measured are served by the nearest measured size, scaled by the
linearly interpolated mean, so a profile of sizes 1, 2, 4, 8, 16 still answers size 5.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sim.config import ConfigError
from sim.features import LookupTimes
from sim.host import HostCosts


@dataclass
class Profile:
    times_s: dict[int, list[float]]  # batch size -> measured times, sorted
    # overhead name (before_s, after_s, ...) -> measured samples in seconds
    overheads_s: dict[str, list[float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # machine, backend, config it came from
    # the stack's own per-request overhead measured under load: [{"rate": req/s, "total_s": [...]}]
    # (on a shared host it grows with the request rate: every hop competes for the same cores)
    overhead_by_rate: list[dict[str, Any]] = field(default_factory=list)
    # the host's cores and each process's CPU per request (sim.host): None in profiles older
    # than the host model, which the twin then replays by rate
    host: HostCosts | None = None
    # a CPU model's other versions (the numpy backend's MLP against its softmax): their own device
    # times per batch size, measured as `times_s` is for the first version (meta["version"])
    version_times_s: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    # the feature store's lookup times (features.store != none when profiled; sim.features)
    feature_lookups: LookupTimes | None = None

    def __post_init__(self) -> None:
        if not self.times_s or any(not v for v in self.times_s.values()):
            raise ValueError("a profile needs at least one measured time per listed batch size")
        if any(not v for v in self.overheads_s.values()) or any(not p["total_s"] for p in self.overhead_by_rate):
            raise ValueError("a profile's overheads need at least one sample each")
        self.times_s = {int(b): sorted(float(x) for x in v) for b, v in self.times_s.items()}
        self.version_times_s = {str(name): {int(b): sorted(float(x) for x in v) for b, v in times.items()}
                                for name, times in self.version_times_s.items()}
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

    def for_version(self, name: str) -> Profile:
        """The profile with `name`'s own device times, when it measured them (else as it is:
        the first version's times stand for every version, as service_factor scales them)."""
        times = self.version_times_s.get(name)
        return self if times is None else replace(self, times_s=times, version_times_s={})

    def to_json(self) -> dict[str, Any]:
        doc = {"times_s": {str(b): v for b, v in self.times_s.items()}, "overheads_s": self.overheads_s,
               "overhead_by_rate": self.overhead_by_rate, "meta": self.meta}
        if self.version_times_s:
            doc["version_times_s"] = {name: {str(b): v for b, v in times.items()} for name, times in self.version_times_s.items()}
        if self.host is not None:
            doc["host"] = self.host.to_json()
        if self.feature_lookups is not None:
            doc["feature_lookups"] = self.feature_lookups.to_json()
        return doc


PROFILE_HINT = "write one with mode=profile"


def _samples(value: Any, where: str, path: str, key: str, low: float = 0.0) -> list[float]:
    """A non-empty list of finite seconds >= low, or a ConfigError saying which field is wrong.

    Overhead hops are differences of clocks and may dip below 0 (low=-inf); device times may not."""
    ok = isinstance(value, list) and len(value) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= low for x in value)
    if not ok:
        bound = "finite seconds" if low == -math.inf else f"seconds >= {low:g}"
        raise ConfigError(key, f"profile {path}: {where} must be a non-empty list of {bound}")
    return [float(x) for x in value]


def _batch_size(b: str, path: str, key: str) -> int:
    if not (isinstance(b, str) and b.isdigit() and int(b) >= 1):
        raise ConfigError(key, f"profile {path}: times_s keys must be batch sizes >= 1, got {b!r}")
    return int(b)


def _read_json(path: str, key: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(key, f"profile {path} is a directory; give the JSON file mode=profile wrote")
    if not p.exists():
        raise ConfigError(key, f"profile file not found: {path}")
    if not p.is_file():
        raise ConfigError(key, f"profile {path} is not a regular file; give the JSON file mode=profile wrote")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read profile {path}: {exc}") from exc
    if not text.strip():
        raise ConfigError(key, f"profile {path} is empty; {PROFILE_HINT}")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(key, f"profile {path} is not JSON ({exc}); {PROFILE_HINT}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(key, f"profile {path} must be a JSON object, got {type(raw).__name__}; {PROFILE_HINT}")
    return raw


def _parse(raw: dict[str, Any], path: str, key: str) -> Profile:
    """The fields the twin reads, checked one by one (a bare KeyError names no file)."""
    times = raw.get("times_s")
    if not isinstance(times, dict) or not times:
        raise ConfigError(key, f"profile {path} needs 'times_s': batch size -> measured seconds; {PROFILE_HINT}")
    overheads = raw.get("overheads_s", {})
    by_rate = raw.get("overhead_by_rate", [])
    meta = raw.get("meta", {})
    if not isinstance(overheads, dict) or not isinstance(by_rate, list) or not isinstance(meta, dict):
        raise ConfigError(key, f"profile {path}: overheads_s and meta must be objects, overhead_by_rate a list")
    if not all(isinstance(p, dict) and isinstance(p.get("rate"), (int, float)) and math.isfinite(p["rate"]) for p in by_rate):
        raise ConfigError(key, f"profile {path}: each overhead_by_rate entry needs a finite 'rate' and 'total_s' samples")
    versions = raw.get("version_times_s", {})
    if not isinstance(versions, dict) or not all(isinstance(v, dict) and v for v in versions.values()):
        raise ConfigError(key, f"profile {path}: version_times_s must map a version to batch size -> measured seconds")
    host = None
    if "host" in raw:
        try:
            host = HostCosts.from_json(raw["host"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(key, f"profile {path}: 'host' is not a host model mode=profile wrote ({exc}); {PROFILE_HINT}") from exc
    lookups = LookupTimes.from_json(raw["feature_lookups"], path, key) if "feature_lookups" in raw else None
    return Profile(
        host=host,
        feature_lookups=lookups,
        times_s={_batch_size(b, path, key): _samples(v, f"times_s[{b}]", path, key) for b, v in times.items()},
        version_times_s={str(name): {_batch_size(b, path, key): _samples(v, f"version_times_s[{name}][{b}]", path, key)
                                     for b, v in by_size.items()} for name, by_size in versions.items()},
        overheads_s={str(k): _samples(v, f"overheads_s[{k}]", path, key, -math.inf) for k, v in overheads.items()},
        meta=dict(meta),
        # a point's CPU figures and validity ride along: they are what the host model was fitted to
        overhead_by_rate=[p | {"rate": float(p["rate"]), "total_s": _samples(p.get("total_s"), "overhead_by_rate total_s", path, key, -math.inf)}
                          for p in by_rate],
    )


def load_profile(path: str, key: str = "service.profile") -> Profile:
    """A profile file, validated; `key` is the config key that named it, for the error."""
    return _parse(_read_json(path, key), path, key)


def check_overheads(profile: Profile, path: str, key: str = "overhead.profile") -> None:
    """A profile named for overheads must hold a host model or overheads to replay, else the
    twin would silently run with the constant overhead.before_s/after_s."""
    if profile.host is None and not profile.overhead_by_rate and not {"before_s", "after_s"} & set(profile.overheads_s):
        raise ConfigError(key, f"profile {path} has no overhead samples (overhead_by_rate, or overheads_s "
                               f"before_s/after_s) to replay; {PROFILE_HINT}")
