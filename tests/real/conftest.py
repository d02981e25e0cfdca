"""Shared real-stack fixtures: a small config factory and in-process servers."""

from __future__ import annotations

import dataclasses
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


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed child may linger as one until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
