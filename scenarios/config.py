"""The CLI's config: the twin's scenario plus what a run needs around it (mode, out_dir)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from sim.config import MODES, ConfigError, ScenarioConfig, validate


@dataclass
class CompareConfig:
    # extra points for the latency-versus-load curve, as fractions of capacity; [] = none
    load_fractions: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.85])
    point_duration_s: float = 8.0  # measured seconds per extra point (after warmup_s)
    profile_samples: int = 40  # device-time samples per batch size when profiling
    # where profiling measures the stack's overhead under load, as fractions of capacity
    overhead_fractions: list[float] = field(default_factory=lambda: [0.15, 0.45, 0.75, 0.95])


@dataclass
class ServelabConfig(ScenarioConfig):
    mode: str = "sim"
    out_dir: str = ""  # empty: Hydra's run directory
    progress: bool = True  # a progress bar when stderr is a terminal
    compare: CompareConfig = field(default_factory=CompareConfig)


def validate_servelab(cfg: ServelabConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"{cfg.mode!r} is not allowed; use one of {', '.join(MODES)}")
    validate(cfg)
    c = cfg.compare
    if not all(0 < f < 1.5 for f in c.load_fractions):
        raise ConfigError("compare.load_fractions", f"fractions of capacity must be in (0, 1.5), got {list(c.load_fractions)}")
    if not c.point_duration_s > 0:
        raise ConfigError("compare.point_duration_s", f"must be > 0, got {c.point_duration_s}")
    if not all(0 < f < 1.5 for f in c.overhead_fractions):
        raise ConfigError("compare.overhead_fractions", f"fractions of capacity must be in (0, 1.5), got {list(c.overhead_fractions)}")
    if c.profile_samples < 5:
        raise ConfigError("compare.profile_samples", f"must be >= 5, got {c.profile_samples}")


def register() -> None:
    ConfigStore.instance().store(name="servelab_schema", node=ServelabConfig)
