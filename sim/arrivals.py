"""Open-loop arrival schedules: when each request is sent, and by which user.

A schedule is computed up front from the config and seed, so the twin and the real load
generator replay the very same one. Closed-loop arrivals (`closed`) have no schedule: they
depend on answers, and the twin and the load generator run them as users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import ArrivalConfig, ConfigError


@dataclass(frozen=True)
class ArrivalSchedule:
    times_s: np.ndarray  # float64, sorted, in [0, duration_s)
    user_ids: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.times_s)


def _poisson_times(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    if rate <= 0:
        return np.empty(0)
    expected = rate * duration_s
    chunks: list[np.ndarray] = []
    t0 = 0.0
    size = int(expected + 6 * math.sqrt(expected) + 16)
    while True:
        times = t0 + np.cumsum(rng.exponential(1.0 / rate, size))
        chunks.append(times)
        if times[-1] >= duration_s:
            break
        t0 = float(times[-1])
    all_times = np.concatenate(chunks)
    return all_times[all_times < duration_s]


def _bursty_times(a: ArrivalConfig, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Two-state MMPP, starting in its stationary state distribution."""
    p_high = a.high_dwell_s / (a.high_dwell_s + a.low_dwell_s)
    high = bool(rng.random() < p_high)
    t = 0.0
    pieces: list[np.ndarray] = []
    while t < duration_s:
        dwell = rng.exponential(a.high_dwell_s if high else a.low_dwell_s)
        end = min(t + dwell, duration_s)
        pieces.append(t + _poisson_times(a.high_rate if high else a.low_rate, end - t, rng))
        t, high = end, not high
    return np.concatenate(pieces) if pieces else np.empty(0)


def diurnal_rate(a: ArrivalConfig, t: np.ndarray | float) -> np.ndarray | float:
    return a.rate * (1.0 + a.amplitude * np.sin(2.0 * np.pi * np.asarray(t) / a.period_s))


def _diurnal_times(a: ArrivalConfig, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Non-homogeneous Poisson by thinning (Lewis and Shedler)."""
    peak = a.rate * (1.0 + a.amplitude)
    candidates = _poisson_times(peak, duration_s, rng)
    keep = rng.random(len(candidates)) * peak < diurnal_rate(a, candidates)
    return candidates[keep]


def read_trace(path: str, time_scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrival times (and user ids when present) from a CSV or Parquet trace, validated."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("arrival.path", f"trace file not found: {path}")
    try:
        frame = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    except Exception as exc:  # a corrupt file: say which and why, do not crash later
        raise ConfigError("arrival.path", f"cannot read trace {path}: {exc}") from exc
    if "arrival_s" not in frame.columns:
        raise ConfigError("arrival.path", f"trace {path} needs a column 'arrival_s' (has: {', '.join(map(str, frame.columns))})")
    times = pd.to_numeric(frame["arrival_s"], errors="coerce").to_numpy(dtype=float)
    if len(times) == 0:
        raise ConfigError("arrival.path", f"trace {path} has no rows")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ConfigError("arrival.path", f"trace {path}: arrival_s must be finite numbers >= 0")
    if np.any(np.diff(times) < 0):
        raise ConfigError("arrival.path", f"trace {path}: arrival_s must be sorted")
    users = None
    if "user_id" in frame.columns:
        u = pd.to_numeric(frame["user_id"], errors="coerce")
        if u.isna().any():
            raise ConfigError("arrival.path", f"trace {path}: user_id must be integers")
        users = u.to_numpy(dtype=np.int64)
    return times * time_scale, users


def make_schedule(a: ArrivalConfig, duration_s: float, arrivals_rng: np.random.Generator, users_rng: np.random.Generator) -> ArrivalSchedule:
    if a.kind == "closed":
        raise ValueError("closed-loop arrivals have no schedule; they are run as users")
    users: np.ndarray | None = None
    if a.kind == "poisson":
        times = _poisson_times(a.rate, duration_s, arrivals_rng)
    elif a.kind == "constant":
        times = np.arange(0.0, duration_s, 1.0 / a.rate)
    elif a.kind == "bursty":
        times = _bursty_times(a, duration_s, arrivals_rng)
    elif a.kind == "diurnal":
        times = _diurnal_times(a, duration_s, arrivals_rng)
    elif a.kind == "trace":
        times, users = read_trace(a.path, a.time_scale)
        keep = times < duration_s
        times = times[keep]
        users = users[keep] if users is not None else None
    else:
        raise ConfigError("arrival.kind", f"unknown kind {a.kind!r}")
    if users is None:
        users = users_rng.integers(0, a.users, size=len(times), dtype=np.int64)
    return ArrivalSchedule(np.ascontiguousarray(times, dtype=np.float64), users)
