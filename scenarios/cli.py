"""The `servelab` console script: a Hydra app with a pre-flight check.

Hydra reports a bad override as a multi-line traceback-ish message with exit status 1, and a
bad value only once the run has started. Users and CI want one line naming the key and what is
allowed, exit status 2, before anything runs: so every override combination (sweeps included)
is composed and validated first (schema ranges, the files the config names, out_dir, memory),
then Hydra runs the real thing. `--help` lists every key with its help, from the schema.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import conf as _conf_package
from scenarios.config import (InputFiles, ServelabConfig, absolute_paths, check_inputs, key_lines, register,
                               validate_servelab)
from sim.config import ConfigError, validate_explicit

CONF_DIR = str(Path(_conf_package.__file__).resolve().parent)
EXIT_CONFIG = 2
MAX_PREFLIGHT_COMBINATIONS = 512

# Hydra flags that take a value: the value is not an override
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}

MODE_RUNNERS: dict[str, str] = {
    "sim": "scenarios.run_sim:run",
    "real": "scenarios.run_real:run",
    "compare": "scenarios.compare:run",
    "serve": "scenarios.serve:run",
    "profile": "scenarios.profile:run",
    "rehearse": "scenarios.rehearse:run",
    "batch": "scenarios.batch:run",
}
# a preset that runs several scenarios side by side in mode=sim or mode=compare, when its key says so
PRESET_RUNNERS: dict[str, str] = {
    "patterns": "scenarios.patterns:run",  # patterns.run non-empty
}


def _user_overrides(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE and arg not in ("--info", "-i")
            continue
        if arg.startswith(("hydra.", "hydra/", "+hydra", "~hydra")):
            continue
        out.append(arg)
    return out


def _allowed_keys(key: str) -> list[str]:
    """The keys valid beside `key` (same parent), for a did-you-mean."""
    node: Any = ServelabConfig
    for part in key.split(".")[:-1]:
        match = [f for f in fields(node) if f.name == part] if is_dataclass(node) else []
        if not match:
            return []
        node = match[0].default_factory() if callable(match[0].default_factory) else match[0].default  # type: ignore[misc]
        node = type(node)
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _explain(exc: BaseException, overrides: list[str]) -> str:
    """One line: the key and what is allowed."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        group = (exc.missing_cfg_file or "").split("/")[0] or "config"
        allowed = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        value = (exc.missing_cfg_file or "").split("/")[-1]
        return f"{group}: {value!r} is not allowed; use one of {', '.join(allowed)}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        key = getattr(cause, "full_key", None) or ""
        msg = str(cause).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            allowed = _allowed_keys(key)
            near = difflib.get_close_matches(key.split(".")[-1], allowed, n=1)
            hint = f"; did you mean {'.'.join(key.split('.')[:-1] + [near[0]])!r}?" if near else ""
            return f"{key}: unknown key{hint} (allowed here: {', '.join(allowed)})"
        return f"{key}: {msg}" if key else msg
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _explicit_keys(combo: list[str]) -> set[str]:
    """The config keys one combination of the user's overrides sets (not presets, not defaults)."""
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(combo)}


def _check(combo: list[str], files: InputFiles) -> ServelabConfig:
    """One combination composed, its paths made absolute as the run will see them, validated."""
    cfg = to_config(compose(config_name="config", overrides=combo))
    absolute_paths(cfg, Path.cwd())
    validate_servelab(cfg)
    validate_explicit(cfg, _explicit_keys(combo))
    check_inputs(cfg, files)
    return cfg


def _combinations(overrides: list[str]) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    combos = itertools.islice(itertools.product(*choices), MAX_PREFLIGHT_COMBINATIONS)
    return [list(c) for c in combos]


def preflight(overrides: list[str]) -> ServelabConfig:
    """Compose and validate every combination; the first problem raises ConfigError.

    Files (traces, profiles) are read once however many combinations name them."""
    register()
    GlobalHydra.instance().clear()
    first: ServelabConfig | None = None
    files = InputFiles()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="servelab"):
        try:
            combos = _combinations(overrides)
        except HydraException as exc:
            raise ConfigError("overrides", str(exc).splitlines()[0]) from exc
        for combo in combos:
            try:
                cfg = _check(combo, files)
            except ConfigError:
                raise
            except (HydraException, OmegaConfBaseException, ValueError, OSError) as exc:
                raise ConfigError("config", _explain(exc, combo)) from exc
            first = first or cfg
    GlobalHydra.instance().clear()
    assert first is not None
    return first


def to_config(node: DictConfig) -> ServelabConfig:
    plain = OmegaConf.to_object(node)
    assert isinstance(plain, ServelabConfig)
    return plain


def _runner(cfg: ServelabConfig) -> Callable[[ServelabConfig, Path], int]:
    import importlib

    target = PRESET_RUNNERS["patterns"] if cfg.patterns.run else MODE_RUNNERS[cfg.mode]
    module_name, func = target.split(":")
    return getattr(importlib.import_module(module_name), func)  # type: ignore[no-any-return]


def _hydra_task(node: DictConfig) -> int:
    cfg = to_config(node)
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    # in a sweep each job writes into its own subdirectory of out_dir
    cfg.out_dir = hc.runtime.output_dir if (multirun or not cfg.out_dir) else cfg.out_dir
    absolute_paths(cfg, hc.runtime.cwd)  # the directory servelab was started from
    validate_servelab(cfg)
    runner = _runner(cfg)
    if cfg.mode == "sim":
        return runner(cfg, Path(cfg.out_dir))
    from real.launcher import LaunchError  # modes that launch the stack: no traceback when it cannot start
    from real.loadgen.runner import LoadgenError
    from scenarios.run_real import failed

    try:
        return runner(cfg, Path(cfg.out_dir))
    except (ConfigError, LaunchError, LoadgenError) as exc:
        return failed(cfg.mode, exc)


def one_line(message: str) -> str:
    """A message as the single stderr line the exit-2 contract promises (library errors wrap)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _help_values(*, _root_: DictConfig) -> str:
    """`servelab --help`'s key list: every schema key, as this command line sets it, with its help."""
    def value_of(key: str) -> object:
        node = OmegaConf.select(_root_, key)
        return OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node

    return "\n".join(key_lines(value_of)).replace("$", "$$")  # the help template is a string.Template


def _help_presets() -> str:
    names = sorted(p.stem for p in (Path(CONF_DIR) / "scenario").glob("*.yaml") if p.stem != "none")
    return f"scenario={' | '.join(names)} (conf/scenario/; default: none)"


def register_help() -> None:
    """Resolvers the help template (conf/config.yaml, hydra.help) calls."""
    OmegaConf.register_new_resolver("servelab_keys", _help_values, replace=True)
    OmegaConf.register_new_resolver("servelab_presets", _help_presets, replace=True)


def main() -> None:
    argv = sys.argv[1:]
    if not any(a in _NO_RUN_FLAGS for a in argv):
        try:
            preflight(_user_overrides(argv))
        except ConfigError as exc:
            message = one_line(str(exc))
            if message.startswith("config: "):
                message = message[len("config: "):]
            print(f"servelab: config error: {message}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
    # out_dir=PATH is also where Hydra keeps its own record of the run
    extra: list[str] = []
    for arg in _user_overrides(argv):
        if arg.startswith("out_dir=") and "," not in arg:
            target = "hydra.sweep.dir" if ("-m" in argv or "--multirun" in argv) else "hydra.run.dir"
            extra.append(f"{target}={arg.split('=', 1)[1]}")
    sys.argv = [sys.argv[0], *argv, *extra]
    register()
    register_help()
    status: list[int] = []

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def app(node: DictConfig) -> None:
        status.append(_hydra_task(node) or 0)

    app()
    if "-m" in argv or "--multirun" in argv:  # a sweep: one table of every job (reports.sweep)
        from scenarios.outputs import report_sweep  # here, not on top: it loads matplotlib

        report_sweep()
    sys.exit(max(status, default=0))
