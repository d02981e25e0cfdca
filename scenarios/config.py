"""The CLI's config: the twin's scenario plus what a run needs around it (mode, out_dir)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from sim.config import MODES, ConfigError, ScenarioConfig, validate


@dataclass
class ServelabConfig(ScenarioConfig):
    mode: str = "sim"
    out_dir: str = ""  # empty: Hydra's run directory
    progress: bool = True  # a progress bar when stderr is a terminal


def validate_servelab(cfg: ServelabConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"{cfg.mode!r} is not allowed; use one of {', '.join(MODES)}")
    validate(cfg)


def register() -> None:
    ConfigStore.instance().store(name="servelab_schema", node=ServelabConfig)
