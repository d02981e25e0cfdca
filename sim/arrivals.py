"""Open-loop arrival schedules: when each request is sent, and by which user.

A schedule is computed up front from the config and seed, so the twin and the real load
generator replay the very same one. Closed-loop arrivals (`closed`) have no schedule: they
depend on answers, and the twin and the load generator run them as users.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import VERSION_PATTERN, ArrivalConfig, ConfigError


@dataclass(frozen=True)
class ArrivalSchedule:
    times_s: np.ndarray  # float64, sorted, in [0, duration_s)
    user_ids: np.ndarray  # int64
    # trace only: the version each request pins (as x-model-version does), "" = the version split
    versions: np.ndarray | None = None  # str

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


TRACE_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _read_frame(path: str) -> pd.DataFrame:
    """The trace as a table; every way a file can fail to be one becomes a ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("arrival.path", f"trace {path} is a directory; give a CSV or Parquet file")
    if not p.exists():
        raise ConfigError("arrival.path", f"trace file not found: {path}")
    if not p.is_file():
        raise ConfigError("arrival.path", f"trace {path} is not a regular file; give a CSV or Parquet file")
    if p.stat().st_size == 0:
        raise ConfigError("arrival.path", f"trace {path} is empty (0 bytes); it needs a header with arrival_s and one row per request")
    parquet = p.suffix in (".parquet", ".pq")
    try:
        # a version is a name: "2" must not become the number 2.0
        return pd.read_parquet(p) if parquet else pd.read_csv(p, dtype={"version": str})
    except Exception as exc:  # a corrupt file: say which and why, do not crash later
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError("arrival.path", f"cannot read trace {path} as {'Parquet' if parquet else 'CSV'}: {detail}") from exc


def _missing_column(frame: pd.DataFrame, path: str) -> ConfigError:
    """No arrival_s column: most often a CSV written with another separator, so say that."""
    header = ",".join(map(str, frame.columns))
    for sep, name in TRACE_SEPARATORS.items():
        if sep in header and "arrival_s" in header.split(sep):
            return ConfigError("arrival.path", f"trace {path} looks {name}-separated (header {header!r}); "
                                               "write it comma-separated with a column 'arrival_s'")
    return ConfigError("arrival.path", f"trace {path} needs a column 'arrival_s' (has: {', '.join(map(str, frame.columns))})")


def _cell(raw: pd.Series, row: int) -> str:
    """A trace cell as the user wrote it (no numpy type names)."""
    value = raw.iloc[row]
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_times(raw: pd.Series, path: str) -> np.ndarray:
    times = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    if len(times) == 0:
        raise ConfigError("arrival.path", f"trace {path} has no rows")
    bad = np.flatnonzero(~np.isfinite(times) | (times < 0))
    if len(bad):
        raise ConfigError("arrival.path", f"trace {path}: arrival_s must be finite numbers >= 0; row {bad[0] + 1} is {_cell(raw, int(bad[0]))}")
    back = np.flatnonzero(np.diff(times) < 0)
    if len(back):
        k = int(back[0])
        raise ConfigError("arrival.path", f"trace {path}: arrival_s must be sorted; row {k + 2} ({times[k + 1]:g}) comes after row {k + 1} ({times[k]:g})")
    return times


def _check_users(raw: pd.Series, path: str) -> np.ndarray:
    """User ids hash to versions and index per-user state: whole numbers >= 0, never truncated."""
    u = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(u) | (u < 0) | (u != np.floor(u)) | (u >= 2.0**63))
    if len(bad):
        raise ConfigError("arrival.path", f"trace {path}: user_id must be integers >= 0; row {bad[0] + 1} is {_cell(raw, int(bad[0]))}")
    return u.astype(np.int64)


def _check_versions(raw: pd.Series, path: str) -> np.ndarray:
    """Version names as written (an empty cell: unpinned). Whether each is deployed is the
    config's business (`unknown_trace_versions`), not the file's."""
    names = raw.astype(object).where(raw.notna(), "").astype(str).str.strip().to_numpy(dtype=str)
    invalid = [v for v in np.unique(names) if v and re.fullmatch(VERSION_PATTERN, v) is None]  # few names, many rows
    bad = np.flatnonzero(np.isin(names, invalid))
    if len(bad):
        raise ConfigError("arrival.path", f"trace {path}: version must be a version name ({VERSION_PATTERN}) or empty; "
                                          f"row {bad[0] + 1} is {_cell(raw, int(bad[0]))}")
    return names


def read_trace(path: str, time_scale: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Arrival times, and user ids and pinned versions when present, from a CSV or Parquet
    trace, validated."""
    frame = _read_frame(path)
    if "arrival_s" not in frame.columns:
        raise _missing_column(frame, path)
    times = _check_times(frame["arrival_s"], path)
    users = _check_users(frame["user_id"], path) if "user_id" in frame.columns else None
    versions = _check_versions(frame["version"], path) if "version" in frame.columns else None
    return times * time_scale, users, versions


def unknown_trace_versions(versions: np.ndarray | None, known: list[str], path: str) -> None:
    """A trace row pinning a version the run does not deploy: refused before the run (the real
    gateway would answer it 404; a typo in a trace is the user's to fix, not a result)."""
    if versions is None:
        return
    bad = np.flatnonzero((versions != "") & ~np.isin(versions, known))
    if len(bad):
        raise ConfigError("arrival.path", f"trace {path}: row {bad[0] + 1} pins version {str(versions[bad[0]])!r}, "
                                          f"not one of model.versions {known}")


def trace_in_window(times: np.ndarray, duration_s: float, path: str) -> int:
    """How many of a trace's (scaled) arrivals fall in [0, duration_s): the requests a run sends.

    None would be a run of zero requests that exits 0 and reports nothing: refused."""
    n = int(np.searchsorted(times, duration_s, side="left"))
    if n == 0:
        raise ConfigError("arrival.path", f"all {len(times)} arrivals of trace {path} fall at or after duration_s={duration_s:g} "
                                          f"(the first at {times[0]:g} s, after arrival.time_scale); raise duration_s or lower arrival.time_scale")
    return n


def peak_rate(a: ArrivalConfig) -> float:
    """The highest rate a generated schedule runs at, req/s: what sizes its arrays. Closed loop:
    users / think_s bounds it (inf without think time). Trace: count its rows instead."""
    if a.kind == "bursty":
        return max(a.high_rate, a.low_rate)
    if a.kind == "diurnal":
        return a.rate * (1.0 + a.amplitude)
    if a.kind == "closed":
        return a.users / a.think_s if a.think_s > 0 else math.inf
    if a.kind == "trace":
        raise ValueError("a trace's rate is its rows: count them (trace_in_window)")
    return a.rate


def draw_users(a: ArrivalConfig, n: int, users_rng: np.random.Generator) -> np.ndarray:
    """n user ids in [0, arrival.users): uniform, or by Zipf popularity (user 0 the most
    popular), the same draw the feature cache's predicted hit ratio assumes."""
    if a.user_zipf_s > 0:
        from sim.policy.features import ZipfPopularity

        return ZipfPopularity(a.users, a.user_zipf_s).draw(users_rng, n).astype(np.int64)
    return users_rng.integers(0, a.users, size=n, dtype=np.int64)


def make_schedule(a: ArrivalConfig, duration_s: float, arrivals_rng: np.random.Generator, users_rng: np.random.Generator) -> ArrivalSchedule:
    if a.kind == "closed":
        raise ValueError("closed-loop arrivals have no schedule; they are run as users")
    users: np.ndarray | None = None
    versions: np.ndarray | None = None
    if a.kind == "poisson":
        times = _poisson_times(a.rate, duration_s, arrivals_rng)
    elif a.kind == "constant":
        times = np.arange(0.0, duration_s, 1.0 / a.rate)
    elif a.kind == "bursty":
        times = _bursty_times(a, duration_s, arrivals_rng)
    elif a.kind == "diurnal":
        times = _diurnal_times(a, duration_s, arrivals_rng)
    elif a.kind == "trace":
        times, users, versions = read_trace(a.path, a.time_scale)
        n = trace_in_window(times, duration_s, a.path)
        times = times[:n]
        users = users[:n] if users is not None else None
        versions = versions[:n] if versions is not None and (versions[:n] != "").any() else None
    else:
        raise ConfigError("arrival.kind", f"unknown kind {a.kind!r}")
    if users is None:
        users = draw_users(a, len(times), users_rng)
    return ArrivalSchedule(np.ascontiguousarray(times, dtype=np.float64), users, versions)
