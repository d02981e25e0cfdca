"""The online feature store on the real stack: replicas that look entity rows up per batch,
the load generator naming each request's entity (its user id), records that carry the lookup,
and the replicas' /metrics counting exactly what the records say.

With the embedded store (each replica its own copy) and with Redis (the launcher's materialised
copy, shared), the latter also losing its Redis mid-run: requests fall back, every one is
accounted, nothing hangs. A Redis that is down at start is one line naming its URL.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from real.features.redis_server import INSTALL_HINT, redis_server_binary, start_redis_server
from real.launcher import REDIS_PASSWORD_ENV, launch
from real.loadgen.plan import started_path
from real.loadgen.runner import run_load
from sim.config import ConfigError, FeatureConfig, ScenarioConfig
from tests.real.conftest import real_cfg

needs_redis = pytest.mark.skipif(redis_server_binary() is None, reason=f"redis-server is not installed: {INSTALL_HINT}")


def feature_cfg(store: str, **features: object) -> ScenarioConfig:
    cfg = real_cfg(replicas=2, duration_s=2.0, warmup_s=0.5, model=dict(backend="numpy"),
                   batching=dict(max_batch_size=8, max_queue_delay_s=0.002))
    arrival = dataclasses.replace(cfg.arrival, rate=150.0, users=20, user_zipf_s=1.1)  # every user an entity
    return dataclasses.replace(cfg, arrival=arrival, features=FeatureConfig(store=store, entities=20, **features))  # type: ignore[arg-type]


def replica_counts(urls: list[str]) -> dict[str, float]:
    """The feature counters summed over the replicas' /metrics."""
    totals: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for name, value in re.findall(r"^(servelab_feature_\w+_total(?:\{[^}]*\})?) (\S+)$", text, re.M):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def at_load_time(out: Path, at_s: float, action: Callable[[], None]) -> threading.Thread:
    """A thread that runs `action` at `at_s` on the load's clock (its time 0, which the load
    generator's worker writes when it starts), or never if the load never starts (20 s)."""

    def wait_then_act() -> None:
        deadline = time.time() + 20.0
        while time.time() < deadline:
            try:
                t0_wall = float(json.loads(started_path(out / "loadgen", 0).read_text())["t0_wall"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.01)
                continue
            time.sleep(max(t0_wall + at_s - time.time(), 0.0))
            action()
            return

    thread = threading.Thread(target=wait_then_act, daemon=True)
    return thread


def run(cfg: ScenarioConfig, out: Path, during: threading.Thread | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """The load against a fresh stack (no warm-up: every lookup is the load's); the records and
    the replicas' counters once the load is done."""
    with launch(cfg, run_dir=out) as stack:
        if during is not None:
            during.start()
        result = run_load(cfg, stack.gateway_url, out / "loadgen")
        if during is not None:
            during.join(timeout=5.0)
        return result.merged.requests, replica_counts(stack.replica_urls)


def assert_counts_match(frame: pd.DataFrame, counts: dict[str, float], served_fallbacks: bool = True) -> None:
    """The replicas counted the lookups the records hold: hits and misses of the answered
    requests, plus (fallback=error) one miss for each request its failed lookup refused."""
    looked = frame[frame["feature_hit"].notna()]
    hits = int(looked["feature_hit"].sum())
    refused = 0 if served_fallbacks else int((frame["status"] == "error").sum())
    assert counts['servelab_feature_lookups_total{result="hit"}'] == hits
    assert counts['servelab_feature_lookups_total{result="miss"}'] == len(looked) - hits + refused
    fallbacks = counts['servelab_feature_fallbacks_total{reason="missing"}'] + counts['servelab_feature_fallbacks_total{reason="timeout"}']
    assert fallbacks == (int(frame["feature_fallback"].sum()) if served_fallbacks else refused)
    # one round trip at most per batch: a batch with an answer, or one whose every member its failed lookup refused
    assert counts["servelab_feature_round_trips_total"] <= frame.loc[frame["status"] == "ok", "batch_id"].nunique() + refused


@pytest.mark.real
@pytest.mark.slow
def test_embedded_store_records_the_lookups_the_replicas_count(tmp_path: Path) -> None:
    frame, counts = run(feature_cfg("embedded"), tmp_path / "run")
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == len(frame) > 0
    assert np.isfinite(ok["feature_lookup_s"]).all() and ok["feature_hit"].notna().all()
    assert ok["feature_hit"].mean() > 0  # 20 entities, two caches of 256 rows: repeats hit
    assert not ok["feature_fallback"].any() and ok["correct"].notna().all()  # judged by the table's labels
    assert_counts_match(frame, counts)


@pytest.mark.real
@pytest.mark.slow
@needs_redis
@pytest.mark.parametrize("fallback", ["default", "error"])
def test_redis_store_and_a_redis_that_dies_mid_run(fallback: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_redis_server() as redis_server:
        monkeypatch.setenv(REDIS_PASSWORD_ENV, redis_server.password)
        cfg = feature_cfg("redis", timeout_s=0.02, cache_ttl_s=0.2, fallback=fallback)
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, redis_url=redis_server.url))
        out = tmp_path / "run"
        frame, counts = run(cfg, out, during=at_load_time(out, 1.2, redis_server.stop))
    assert len(frame) == frame["request_id"].nunique() > 0  # every request once
    before = frame[frame["arrival_s"] < 0.8]
    after = frame[frame["arrival_s"] > 1.8]
    assert (before["status"] == "ok").all() and before["feature_hit"].mean() > 0 and not before["feature_fallback"].any()
    if fallback == "default":  # served, on the declared default row when the lookup failed, never judged
        assert (frame["status"] == "ok").all() and after["feature_fallback"].any()
        assert after.loc[after["feature_fallback"], "correct"].isna().all()
    else:  # the misses fail (503, told apart from a full queue's: errors, not sheds); the hits still serve
        assert set(frame["status"]) <= {"ok", "error"} and (after["status"] == "error").any()
        assert not frame["feature_fallback"].any()
    assert_counts_match(frame, counts, served_fallbacks=fallback == "default")
    assert counts['servelab_feature_fallbacks_total{reason="timeout"}'] > 0


@pytest.mark.real
def test_a_redis_down_at_start_is_one_line_naming_its_url(tmp_path: Path) -> None:
    cfg = feature_cfg("redis")
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(ConfigError) as refused:
        with launch(cfg, run_dir=tmp_path / "run"):
            pass
    message = str(refused.value)
    assert "redis://127.0.0.1:1/0" in message and "\n" not in message
