"""The Redis feature store and its private server: same answers as the embedded store, one MGET
per lookup, a password that is enforced, loopback only, and a dead or frozen Redis that fails a
lookup within its timeout instead of hanging. Each test starts its own redis-server (Debian's
package); without it these tests skip, saying what to install."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import pytest
import redis

from real.features.embedded import EmbeddedStore
from real.features.offline import FEATURE_COLUMNS, generate_table
from real.features.redis_server import (
    INSTALL_HINT,
    RedisServer,
    RedisServerError,
    redis_server_binary,
    start_redis_server,
)
from real.features.redis_store import (
    FeatureStoreUnavailable,
    RedisStore,
    entity_key,
    pack_row,
    redact,
    unpack_row,
    unpack_rows,
)
from sim.config import ConfigError

needs_redis = pytest.mark.skipif(
    redis_server_binary() is None, reason=f"redis-server is not installed: {INSTALL_HINT}"
)

N_ENTITIES = 300


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_redis_server() as running:
        yield running


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, password=server.password, socket_timeout=2.0)


def _mget_calls(server: RedisServer) -> int:
    client = _client(server)
    try:
        return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    finally:
        client.close()


# ---- the value format (no server) ----


def test_packed_row_round_trips_features_and_label() -> None:
    features = np.arange(64, dtype=np.float32) / 7
    row = unpack_row(3, pack_row(features, 9))
    assert row.entity_id == 3 and row.label == 9 and not row.fallback
    assert row.features.dtype == np.float32 and np.array_equal(row.features, features)
    assert unpack_row(3, pack_row(features, None)).label is None


def test_value_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="entity 5 is 258 bytes"):
        unpack_row(5, pack_row(np.zeros(64, np.float32), 1)[:-2])


def test_keys_and_printed_urls() -> None:
    assert entity_key(42) == b"feat:42"
    assert redact("redis://:s3cret@127.0.0.1:6400/0") == "redis://:***@127.0.0.1:6400/0"
    assert redact("redis://127.0.0.1:6400/0") == "redis://127.0.0.1:6400/0"


def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^features\.redis_url: .* is not a Redis URL"):
        RedisStore("http://127.0.0.1:1/0", "pw")


def test_missing_redis_server_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisServerError, match="apt-get install -y redis-server"):
        start_redis_server()


# ---- against a private server ----


@needs_redis
def test_materialised_rows_read_back_as_the_embedded_store_gives_them(server: RedisServer) -> None:
    table = generate_table(N_ENTITIES, seed=3)
    store = RedisStore(server.url, server.password, timeout_s=2.0)
    assert store.materialise(table, chunk_rows=64) == N_ENTITIES  # several chunks and flushes
    embedded = EmbeddedStore()
    embedded.materialise(table)
    ids = [0, 17, N_ENTITIES - 1, N_ENTITIES, 10**9, 17, -4]  # unknowns and a duplicate

    async def both() -> tuple[list, list]:
        try:
            return await store.mget(ids), await embedded.mget(ids)
        finally:
            await store.close()

    got, want = asyncio.run(both())
    assert [r is None for r in got] == [r is None for r in want] == [False, False, False, True, True, False, True]
    for g, w in zip(got, want):
        if w is not None:
            assert (g.entity_id, g.label, g.fallback) == (w.entity_id, w.label, w.fallback)
            assert g.features.dtype == np.float32 and np.array_equal(g.features, w.features)


@needs_redis
def test_each_lookup_is_exactly_one_mget(server: RedisServer) -> None:
    store = RedisStore(server.url, server.password, timeout_s=2.0)
    store.materialise(generate_table(64, seed=1))
    before = _mget_calls(server)

    async def lookups() -> None:
        try:
            for size in (1, 8, 32):
                await store.mget(list(range(size)))
            await store.mget([])  # nothing to fetch: no round trip
        finally:
            await store.close()

    asyncio.run(lookups())
    assert _mget_calls(server) - before == 3
    assert store.round_trips == 3


@needs_redis
def test_a_wrong_or_missing_password_is_refused_naming_the_url(server: RedisServer) -> None:
    for password in ("not-the-password", None):
        store = RedisStore(server.url, password, timeout_s=2.0)
        with pytest.raises(ConfigError, match=rf"^features\.redis_url: Redis at {server.url} refused the password"):
            store.check()
        with pytest.raises(ConfigError, match="refused the password"):
            store.materialise(generate_table(4, seed=1))
        with pytest.raises(FeatureStoreUnavailable):
            asyncio.run(store.mget([1]))
    assert _mget_calls(server) == 0


@needs_redis
def test_a_redis_that_is_not_there_at_start_names_the_url(server: RedisServer) -> None:
    url = server.url
    server.stop()
    with pytest.raises(ConfigError, match=rf"^features\.redis_url: Redis at {url} cannot be reached"):
        RedisStore(url, server.password).check()

    async def connect() -> None:
        await RedisStore(url, server.password, timeout_s=0.2, key="features.redis").connect()

    with pytest.raises(ConfigError, match=r"^features\.redis: .*cannot be reached"):
        asyncio.run(connect())


@needs_redis
def test_lookups_fail_within_the_timeout_when_redis_dies_or_freezes(server: RedisServer) -> None:
    """Frozen (SIGSTOP: the socket stays open, nothing answers) and then dead: both raise the
    error the caller turns into the fallback; the bound is loose, it only catches a hang. In
    between, a thawed Redis answers the next lookup with that lookup's rows."""
    timeout_s = 0.2
    store = RedisStore(server.url, server.password, timeout_s=timeout_s)
    table = generate_table(8, seed=1)
    store.materialise(table)

    async def run() -> list[float]:
        assert (await store.mget([1]))[0] is not None  # a live connection first
        elapsed = []
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(FeatureStoreUnavailable):
                await store.mget([1, 2])
            elapsed.append(time.monotonic() - start)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # thawed, the late answer to the timed-out MGET must not be taken for the next one's
        row = (await store.mget([5]))[0]
        assert row is not None and np.array_equal(row.features, table.loc[5, list(FEATURE_COLUMNS)].to_numpy(np.float32))
        server.stop()
        start = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable):
            await store.mget([1, 2])
        elapsed.append(time.monotonic() - start)
        await store.close()
        return elapsed

    for took in asyncio.run(run()):
        assert took < timeout_s + 2.0


@needs_redis
def test_the_private_server_listens_on_loopback_only_with_a_hidden_password(server: RedisServer) -> None:
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    client = _client(server)
    try:
        config = {k: v for d in (client.config_get(k) for k in ("bind", "protected-mode", "save", "appendonly")) for k, v in d.items()}
    finally:
        client.close()
    assert config == {"bind": "127.0.0.1", "protected-mode": "yes", "save": "", "appendonly": "no"}
    assert server.password not in " ".join(psutil.Process(server.process.pid).cmdline())


@needs_redis
def test_stopping_leaves_no_process_and_no_files() -> None:
    with start_redis_server() as running:
        pid, workdir = running.process.pid, running.workdir
        assert workdir.is_dir()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists()
    running.stop()  # twice is harmless


@needs_redis
def test_a_server_that_cannot_start_is_a_one_line_error_naming_the_address(server: RedisServer) -> None:
    with pytest.raises(RedisServerError, match=rf"^redis-server at 127\.0\.0\.1:{server.port} exited; log: .*") as info:
        start_redis_server(port=server.port, startup_timeout_s=5.0)  # the port is taken
    assert "\n" not in str(info.value)


def test_a_whole_answer_decodes_as_each_row_alone() -> None:
    rng = np.random.default_rng(0)
    rows = {e: (rng.random(64).astype(np.float32), None if e == 2 else e % 10) for e in range(5)}
    ids = [0, 9, 2, 4, 0]
    values = [None if e not in rows else pack_row(*rows[e]) for e in ids]
    got = unpack_rows(ids, values)
    assert got[1] is None
    for e, g in zip(ids, got):
        if e in rows:
            alone = unpack_row(e, pack_row(*rows[e]))
            assert (g.entity_id, g.label) == (alone.entity_id, alone.label)
            assert np.array_equal(g.features, alone.features) and g.features.shape == (64,)
    mixed = unpack_rows([1, 2], [pack_row(np.zeros(3, np.float32), 1), pack_row(np.zeros(64, np.float32), 2)])
    assert [len(r.features) for r in mixed] == [3, 64]
    assert unpack_rows([1, 2], [None, None]) == [None, None]


@needs_redis
def test_the_server_dies_with_a_run_that_crashes(tmp_path: Path) -> None:
    """A run killed without cleanup (os._exit: no context manager, no atexit) takes its
    redis-server with it, so no orphan keeps a port and the rows."""
    script = (
        "import os, sys; from real.features.redis_server import start_redis_server\n"
        "s = start_redis_server(); print(s.process.pid, s.workdir, flush=True); os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    pid_text, workdir = done.stdout.split()
    shutil.rmtree(workdir, ignore_errors=True)  # what os._exit skipped
    pid = int(pid_text)
    try:
        psutil.wait_procs([psutil.Process(pid)], timeout=10)
        gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        gone = True
    assert gone
