"""The CLI's config: the twin's scenario plus what a run needs around it (mode, out_dir).

Also what the CLI checks before anything runs beyond the schema's ranges (`check_inputs`: the
files a config names, where it writes, whether it fits in memory), and the key reference that
`servelab --help` and README's table are generated from (`python -m scenarios.config`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hydra.core.config_store import ConfigStore

from sim.arrivals import peak_rate, read_trace, trace_in_window, unknown_trace_versions
from sim.config import (MODES, BatchJobConfig, ConfigError, KeyHelp, ScenarioConfig, format_value, schema_help, setting,
                        validate, validate_batch_job, version_names)
from sim.profile import Profile, check_overheads, load_profile
from sim.records import series_window_s
from sim.service import capacity_rps


@dataclass
class RehearseConfig:
    runs: int = setting(100, "mode=rehearse: rollouts per scenario (bad as configured, good = canary like stable), seeds seed, seed+1, ...")
    workers: int = setting(2, "mode=rehearse: processes running the twin in parallel")


@dataclass
class CompareConfig:
    load_fractions: list[float] = setting([0.3, 0.6, 0.85], "extra load points for the latency-versus-load curve, fractions of capacity ([] = none)")
    point_duration_s: float = setting(8.0, "measured seconds per extra load point (after warmup_s)")
    profile_samples: int = setting(40, "device-time samples per batch size when profiling (>= 5)")
    overhead_fractions: list[float] = setting([0.15, 0.45, 0.75, 0.95], "where profiling measures the stack's overhead under load, fractions of capacity")
    profile_device_warmup: int = setting(3, "profiling: requests sent and discarded before the device-time samples (first calls pay for lazy initialisation)")
    profile_idle_samples: int = setting(300, "profiling: per-hop overhead samples at batch 1 through the idle gateway (>= 5)")
    profile_idle_warmup: int = setting(20, "profiling: requests sent and discarded before the idle overhead samples")
    profile_point_warmup_s: float = setting(3.0, "profiling: seconds discarded at the start of each overhead-under-load point (a fresh stack runs slower), s")
    profile_point_duration_s: float = setting(5.0, "profiling: measured seconds per overhead-under-load point (its samples: rate x this)")


@dataclass
class PatternsConfig:
    """scenario=patterns (scenarios/patterns.py): one demand served as real-time sync, async with polling and offline batch."""

    run: list[str] = setting([], "the serving patterns to serve one demand side by side (sync, async, batch; scenario=patterns sets all three); non-empty: mode=sim runs each in the twin, mode=compare in the twin and the real stack, into one table and figure ([] = an ordinary run of `pattern`)")
    p99_target_s: float = setting(0.1, "patterns: sync's replicas needed are the fewest whose predicted p99 is at most this, none shed or timed out, s")
    max_utilisation: float = setting(0.8, "patterns: async's workers needed are the fewest whose load (offered rate / their capacity at async_jobs.batch_size) is at most this")
    max_replicas: int = setting(16, "patterns: the most replicas, workers or batch parallelism the replicas-needed search tries")


@dataclass
class ServelabConfig(ScenarioConfig):
    mode: str = setting("sim", f"what to run: {' | '.join(MODES)}")
    out_dir: str = setting("", "where the run's files go (empty: Hydra's run dir, runs/DATE/TIME); relative to where servelab starts")
    progress: bool = setting(True, "a progress bar when stderr is a terminal")
    compare: CompareConfig = field(default_factory=CompareConfig)
    rehearse: RehearseConfig = field(default_factory=RehearseConfig)
    batch: BatchJobConfig = field(default_factory=BatchJobConfig)
    patterns: PatternsConfig = field(default_factory=PatternsConfig)


KEYS: list[KeyHelp] = schema_help(ServelabConfig)
# config keys that hold paths: made absolute once, at the entry (children run in other directories)
PATH_KEYS = ("out_dir", "arrival.path", "service.profile", "overhead.profile", "batch.input")
# modes that send (or simulate) the arrival schedule, and so hold it in memory
MODES_WITH_LOAD = ("sim", "real", "compare")
# modes that run a rollout controller (the twin's, the real stack's driver, or both)
MODES_WITH_ROLLOUT = ("sim", "rehearse", "real", "compare")

# Memory a run needs, measured once on this project's machine (numpy 2.4, pandas 3.1) as the peak
# RSS (ru_maxrss) of simulate() + write_run() at two sizes, in fresh processes:
# - per request: 200k -> 800k Poisson requests (8 replicas) added 206 MiB, ~360 B per request;
#   rounded up to 512 B (shed/timeout paths, the real load generator's own records).
# - per time-series window: 200k -> 800k windows (a one-row trace, window_s=1) added 94 MiB,
#   ~164 B per window; rounded up to 256 B.
BYTES_PER_REQUEST = 512
BYTES_PER_WINDOW = 256
MEMORY_SHARE = 0.5  # of the memory available when the run starts: the rest is the host's


def _fractions(values: list[float], key: str) -> None:
    if not all(0 < f < 1.5 for f in values):
        raise ConfigError(key, f"fractions of capacity must be in (0, 1.5), got {list(values)}")


def validate_servelab(cfg: ServelabConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"{cfg.mode!r} is not allowed; use one of {', '.join(MODES)}")
    validate(cfg)
    if cfg.rollout.strategy != "none" and cfg.mode not in MODES_WITH_ROLLOUT:
        raise ConfigError("rollout.strategy", f"mode={cfg.mode} runs no rollout; rollouts run in mode={', '.join(MODES_WITH_ROLLOUT)}")
    if cfg.experiment.variants and cfg.mode not in MODES_WITH_LOAD:
        raise ConfigError("experiment.variants", f"mode={cfg.mode} runs no experiment; experiments run in mode={', '.join(MODES_WITH_LOAD)}")
    if cfg.mode == "rehearse" and cfg.rollout.strategy == "none":
        raise ConfigError("rollout.strategy", "mode=rehearse rehearses a rollout: set rollout.strategy "
                                              "(canary, with rollout.steps; linear; blue_green; rolling; recreate)")
    if cfg.mode == "batch":
        validate_batch_job(cfg.batch)
    if cfg.patterns.run:
        from scenarios.patterns import validate_patterns  # the preset's own checks, beside its runner

        validate_patterns(cfg)
    if cfg.rehearse.runs < 1:
        raise ConfigError("rehearse.runs", f"must be >= 1, got {cfg.rehearse.runs}")
    if not 1 <= cfg.rehearse.workers <= 64:
        raise ConfigError("rehearse.workers", f"must be in [1, 64], got {cfg.rehearse.workers}")
    c = cfg.compare
    _fractions(c.load_fractions, "compare.load_fractions")
    if not (math.isfinite(c.point_duration_s) and c.point_duration_s > 0):
        raise ConfigError("compare.point_duration_s", f"must be a finite number > 0, got {c.point_duration_s}")
    _fractions(c.overhead_fractions, "compare.overhead_fractions")
    for key, value, low in (("profile_samples", c.profile_samples, 5), ("profile_idle_samples", c.profile_idle_samples, 5),
                            ("profile_device_warmup", c.profile_device_warmup, 0), ("profile_idle_warmup", c.profile_idle_warmup, 0)):
        if value < low:
            raise ConfigError(f"compare.{key}", f"must be >= {low}, got {value}")
    if not (math.isfinite(c.profile_point_warmup_s) and c.profile_point_warmup_s >= 0):
        raise ConfigError("compare.profile_point_warmup_s", f"must be a finite number >= 0, got {c.profile_point_warmup_s}")
    if not (math.isfinite(c.profile_point_duration_s) and c.profile_point_duration_s > 0):
        raise ConfigError("compare.profile_point_duration_s", f"must be a finite number > 0, got {c.profile_point_duration_s}")


def register() -> None:
    ConfigStore.instance().store(name="servelab_schema", node=ServelabConfig)


# --- paths -------------------------------------------------------------------------------------

def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def absolute_paths(cfg: ServelabConfig, start_dir: str | Path) -> None:
    """Relative paths in cfg made absolute against the directory servelab was started from.

    Done once at the entry: the real stack's children run in directories of their own, and a
    relative trace or profile path would name another file there (or none)."""
    for key in PATH_KEYS:
        value = _get(cfg, key)
        if value and not os.path.isabs(value):
            _set(cfg, key, os.path.abspath(os.path.join(start_dir, value)))


def check_writable(path: str, key: str = "out_dir") -> None:
    """Whether a directory can be created (or written) at path, without creating anything: the
    nearest existing ancestor must be a writable directory."""
    p = Path(path)
    existing = next(q for q in (p, *p.parents) if q.exists() or q.is_symlink())
    if not existing.is_dir():
        where = "is a file" if existing == p else f"is under a file ({existing})"
        raise ConfigError(key, f"{path} {where}; give a directory that can be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{path} cannot be written: {existing} is not writable; give a writable directory")


# --- input files, read once per path ---------------------------------------------------------

@dataclass
class InputFiles:
    """Trace and profile files by path, read once across the pre-flight's combinations."""

    traces: dict[str, np.ndarray] = field(default_factory=dict)  # unscaled arrival times
    trace_versions: dict[str, np.ndarray | None] = field(default_factory=dict)  # a trace's version column
    profiles: dict[str, Profile] = field(default_factory=dict)

    def trace(self, path: str) -> np.ndarray:
        if path not in self.traces:
            self.traces[path], _, self.trace_versions[path] = read_trace(path, 1.0)
        return self.traces[path]

    def profile(self, path: str, key: str) -> Profile:
        if path not in self.profiles:
            self.profiles[path] = load_profile(path, key)
        return self.profiles[path]


def _check_profiles(cfg: ServelabConfig, files: InputFiles) -> Profile | None:
    """The profiles the config names, validated; the service profile when the run replays one."""
    if cfg.overhead.profile:
        check_overheads(files.profile(cfg.overhead.profile, "overhead.profile"), cfg.overhead.profile)
    if cfg.service.kind == "empirical":
        return files.profile(cfg.service.profile, "service.profile")
    return None


def _trace_requests(cfg: ServelabConfig, files: InputFiles) -> int:
    """Requests the trace sends in [0, duration_s); refuses a trace with none."""
    a = cfg.arrival
    times = files.trace(a.path)
    unknown_trace_versions(files.trace_versions[a.path], version_names(cfg.model), a.path)
    return trace_in_window(times * a.time_scale, cfg.duration_s, a.path)


# --- memory -------------------------------------------------------------------------------------

def available_memory_bytes() -> int:
    """Memory this process could still get: MemAvailable (free + reclaimable cache), else the
    free pages sysconf reports, capped by a cgroup (container) limit when there is one."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(available), 0)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


# kind -> (the key to lower, how its peak rate is computed), for the memory check's message
RATE_FORMULA = {
    "bursty": ("arrival.high_rate", "max(arrival.high_rate, arrival.low_rate)"),
    "diurnal": ("arrival.rate", "arrival.rate x (1 + arrival.amplitude)"),
    "closed": ("arrival.users", "arrival.users / arrival.think_s"),
}


def expected_requests(cfg: ServelabConfig, trace_rows: int | None, profile: Profile | None) -> tuple[float, str, str]:
    """Requests a run will hold, an upper estimate: (count, how it was estimated, the key to lower).

    Generated schedules at their peak rate; a trace by its rows before duration_s; closed loop
    by users / think_s (with no think time, by what the replicas can answer)."""
    a, d = cfg.arrival, cfg.duration_s
    if a.kind == "trace":
        return float(trace_rows or 0), f"the rows of arrival.path before duration_s={d:g}", "arrival.path"
    if a.kind == "closed" and a.think_s <= 0:
        rate = capacity_rps(cfg, profile)
        return rate * d, f"capacity {rate:.3g} req/s x duration_s={d:g} (arrival.think_s=0)", "arrival.users"
    key, formula = RATE_FORMULA.get(a.kind, ("arrival.rate", "arrival.rate"))
    rate = peak_rate(a)
    return rate * d, f"{formula} = {rate:.3g} req/s x duration_s={d:g}", key


def check_memory(cfg: ServelabConfig, trace_rows: int | None = None, profile: Profile | None = None,
                 available: int | None = None) -> None:
    """Refuse a run that cannot fit in memory, before it allocates for minutes and dies."""
    available = available_memory_bytes() if available is None else available
    limit = MEMORY_SHARE * available
    requests, how, key = expected_requests(cfg, trace_rows, profile)
    # the time series at its own window (at most ~1,000 unless chosen); a rollout's rollout.parquet at window_s
    window, window_key = ((cfg.window_s, "window_s") if cfg.rollout.strategy != "none" else
                          (series_window_s(cfg.duration_s, cfg.window_s, cfg.timeseries_window_s), "timeseries_window_s"))
    windows = cfg.duration_s / window
    need_requests, need_windows = requests * BYTES_PER_REQUEST, windows * BYTES_PER_WINDOW
    if need_requests + need_windows <= limit:
        return
    over = f"more than the limit {_size(limit)} ({MEMORY_SHARE:.0%} of the {_size(available)} of memory available)"
    if need_requests >= need_windows:
        lower = "arrival.path or arrival.time_scale" if key == "arrival.path" else f"{key} or duration_s"
        raise ConfigError(key, f"~{requests:.3g} requests ({how}) would need ~{_size(need_requests)} "
                               f"at {BYTES_PER_REQUEST} B each, {over}; lower {lower}")
    raise ConfigError("duration_s", f"{windows:.3g} time-series windows (duration_s={cfg.duration_s:g} / {window_key}={window:g}) "
                                    f"would need ~{_size(need_windows)} at {BYTES_PER_WINDOW} B each, {over}; "
                                    f"lower duration_s or raise {window_key}")


def check_inputs(cfg: ServelabConfig, files: InputFiles | None = None) -> None:
    """What the schema cannot know: the files the config names are readable and make sense,
    out_dir can be written, and the run fits in memory. Reads files, creates nothing."""
    files = files or InputFiles()
    profile = _check_profiles(cfg, files)
    rows = _trace_requests(cfg, files) if cfg.arrival.kind == "trace" else None
    if cfg.out_dir:
        check_writable(cfg.out_dir)
    if cfg.mode in MODES_WITH_LOAD:
        check_memory(cfg, rows, profile)
    if cfg.mode == "batch":
        from scenarios.batch import check_batch_input  # pyarrow, only for this mode

        check_batch_input(cfg)


# --- key reference: --help and README ----------------------------------------------------------

def key_lines(value_of: Callable[[str], Any] | None = None, width: int = 36) -> list[str]:
    """One line per key, `key=value  help`, the value as this command line sets it."""
    lines = []
    for k in KEYS:
        setting_text = f"{k.key}={format_value(value_of(k.key) if value_of else k.default)}"
        lines.append(f"  {setting_text:<{width}} {k.help}" if len(setting_text) < width else f"  {setting_text}  {k.help}")
    return lines


def markdown_table() -> str:
    """README's key table (between its config-keys markers): regenerate with
    `python -m scenarios.config` when a key or its help changes."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k.key}` | `{cell(format_value(k.default))}` | {cell(k.help)} |" for k in KEYS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
