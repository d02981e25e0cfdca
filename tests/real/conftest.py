"""Shared real-stack fixtures: a small config factory and in-process servers."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from real.server.app import create_app
from real.server.asgi_client import AsgiClient
from sim.config import BatchingConfig, ModelConfig, ScenarioConfig, ServerConfig, ServiceConfig

_GROUPS = {"batching": BatchingConfig, "model": ModelConfig, "server": ServerConfig, "service": ServiceConfig}


def real_cfg(**overrides: Any) -> ScenarioConfig:
    """A ScenarioConfig for real-stack tests: real_cfg(batching=dict(max_batch_size=4))."""
    base = ScenarioConfig(replicas=2, service=ServiceConfig(kind="deterministic", base_s=0.002, per_item_s=0.0))
    for key, value in overrides.items():
        if key in _GROUPS and isinstance(value, dict):
            value = dataclasses.replace(getattr(base, key), **value)
        base = dataclasses.replace(base, **{key: value})
    return base


@pytest.fixture
def serve() -> Iterator[Callable[..., AsgiClient]]:
    """serve(cfg, replica=0) -> a started in-process server; all are stopped at teardown."""
    clients: list[AsgiClient] = []

    def start(cfg: ScenarioConfig, replica: int = 0) -> AsgiClient:
        client = AsgiClient(create_app(cfg, replica)).__enter__()
        clients.append(client)
        return client

    yield start
    for c in clients:
        c.__exit__(None, None, None)


def interruptible() -> None:
    """`preexec_fn` for a child a test interrupts with SIGINT: the signal at its default, as under a
    terminal. A suite started in the background (`make test &`) hands its children SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler, so the Ctrl-C under test never arrives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed child may linger as one until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live pids (not this one) whose command line or environment contains `text`, a run dir
    unique to a test: what a failed start or an interrupted run may leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            env = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # unreadable environment: the command line still counts
            env = ""
        if (text in cmdline or text in env) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
