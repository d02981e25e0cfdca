"""The Redis online store: the feature rows behind one `MGET` per batch, over loopback.

The same `FeatureStore` calls as the embedded store (real.features), so a replica's cache,
batching and fallback run unchanged; what differs is that every replica (and every process)
shares one copy of the rows, and a lookup is a network round trip that can be slow or fail.

- Keys `feat:{entity_id}`; each value is the row packed without pickle (nothing read from the
  network is ever executed): the features as little-endian float32, then the label as one
  little-endian int32, -1 for a row without a label. 64 features: 260 bytes a row.
- `materialise(table)` is the materialisation step: the offline table (real.features.offline)
  into Redis with MSET in chunks, sent as one pipeline per group of chunks. It is synchronous,
  run once before the replicas start, with a generous timeout of its own.
- `mget(ids)`: exactly one MGET, bounded by `timeout_s` as a whole (connect, send and read
  together, asyncio.timeout) with no retries, so a Redis that stops answering costs a request at
  most `timeout_s`; the failure is raised as `FeatureStoreUnavailable` for the caller to turn
  into the declared fallback (sim.policy.features.LookupPlan.join with None).
- `check()` / `connect()`: an unreachable or refusing Redis at start is a ConfigError naming the
  config key and the URL (without its password), before anything runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from real.features.embedded import EmbeddedStore
from real.features.offline import ENTITY_COLUMN, FEATURE_COLUMNS, LABEL_COLUMN
from sim.config import ConfigError
from sim.policy.features import FeatureRow

KEY_PREFIX = b"feat:"
NO_LABEL = -1
_LABEL = np.dtype("<i4")
_FEATURE = np.dtype("<f4")
MATERIALISE_CHUNK_ROWS = 1000  # rows per MSET: ~260 KB, far below Redis's 512 MB request limit
MATERIALISE_CHUNKS_PER_FLUSH = 8  # MSETs per pipeline round trip
MATERIALISE_TIMEOUT_S = 30.0


class FeatureStoreUnavailable(ConnectionError):
    """The store did not answer a lookup in time, or the connection failed: the caller decides
    the lookup as a timeout (fallback or 503), never as a server error."""


def entity_key(entity_id: int) -> bytes:
    return KEY_PREFIX + str(int(entity_id)).encode()


def pack_row(features: np.ndarray, label: int | None) -> bytes:
    """A row's value: float32 features, then the int32 label (NO_LABEL for None)."""
    return np.asarray(features, dtype=_FEATURE).tobytes() + np.array([NO_LABEL if label is None else label], _LABEL).tobytes()


def unpack_row(entity_id: int, value: bytes) -> FeatureRow:
    """The row packed by `pack_row`; a value of the wrong length is refused (ValueError)."""
    if len(value) < _LABEL.itemsize or (len(value) - _LABEL.itemsize) % _FEATURE.itemsize:
        raise ValueError(f"feature value for entity {entity_id} is {len(value)} bytes, not float32s and an int32 label")
    features = np.frombuffer(value, dtype=_FEATURE, count=(len(value) - _LABEL.itemsize) // _FEATURE.itemsize)
    label = int(np.frombuffer(value, dtype=_LABEL, offset=len(value) - _LABEL.itemsize)[0])
    return FeatureRow(int(entity_id), features, None if label == NO_LABEL else label)


def unpack_rows(ids: Sequence[int], values: Sequence[bytes | None]) -> list[FeatureRow | None]:
    """An MGET's answer as rows, aligned with `ids`. Rows of one width (the usual case) are
    decoded in one numpy call over their joined bytes, each row a read-only view of it: a third
    of the per-row cost of `unpack_row` at a batch of 32."""
    present = [v for v in values if v is not None]
    if not present:
        return [None] * len(values)
    size = len(present[0])
    if size < _LABEL.itemsize or (size - _LABEL.itemsize) % _FEATURE.itemsize or any(len(v) != size for v in present):
        return [None if v is None else unpack_row(e, v) for e, v in zip(ids, values)]
    block = np.frombuffer(b"".join(present), dtype=_FEATURE).reshape(len(present), size // _FEATURE.itemsize)
    labels = block[:, -1].view(_LABEL).tolist()
    out: list[FeatureRow | None] = []
    k = 0
    for entity_id, value in zip(ids, values):
        if value is None:
            out.append(None)
            continue
        label = labels[k]
        out.append(FeatureRow(int(entity_id), block[k, :-1], None if label == NO_LABEL else label))
        k += 1
    return out


def redact(url: str) -> str:
    """The URL as it may be printed: any password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RedisStore:
    """A `FeatureStore` over a Redis server: one MGET per `mget`, bounded by `timeout_s`.

    `url` is a redis:// URL (a password in it works, but pass `password` apart so it is never
    printed); `key` is the config key named by errors about the server. The asyncio client is
    made on first use, in the event loop of the replica that uses it.
    """

    def __init__(self, url: str, password: str | None = None, timeout_s: float = 0.05,
                 key: str = "features.redis_url") -> None:
        if not timeout_s > 0:
            raise ValueError(f"lookup timeout must be > 0 seconds, got {timeout_s}")
        try:
            urlsplit(url).port  # noqa: B018 (a bad port raises here, not at the first lookup)
            redis.connection.parse_url(url)
        except ValueError as exc:
            raise ConfigError(key, f"{redact(url)} is not a Redis URL ({_first_line(exc)}); give redis://127.0.0.1:PORT/0") from exc
        self.url = url
        self.password = password
        self.timeout_s = float(timeout_s)
        self.key = key
        self.round_trips = 0  # MGETs sent: what batching should keep to one per batch
        self._client: aioredis.Redis | None = None

    def _sync_client(self, timeout_s: float) -> redis.Redis:
        return redis.Redis.from_url(self.url, password=self.password, socket_timeout=timeout_s,
                                    socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))

    def _refused(self, exc: BaseException) -> ConfigError:
        if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            why = "refused the password (give the server's password)"
        else:
            why = f"cannot be reached ({_first_line(exc)}); is redis-server running there?"
        return ConfigError(self.key, f"Redis at {redact(self.url)} {why}")

    def check(self, timeout_s: float = 2.0) -> None:
        """PING the server once (authenticated); an unreachable or refusing server is a
        ConfigError naming the URL. For the launcher, before any replica starts."""
        client = self._sync_client(timeout_s)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._refused(exc) from None
        finally:
            client.close()

    def materialise(self, table: pd.DataFrame, chunk_rows: int = MATERIALISE_CHUNK_ROWS) -> int:
        """Write (or overwrite) the offline table's rows, MSET per chunk, several chunks per
        pipelined round trip; returns the rows written. Synchronous: the materialisation step,
        run before serving starts. An unreachable server is a ConfigError naming the URL."""
        if chunk_rows < 1:
            raise ValueError(f"chunk must hold at least one row, got {chunk_rows}")
        ids = table[ENTITY_COLUMN].to_numpy(dtype=np.int64)
        features = np.ascontiguousarray(table[list(FEATURE_COLUMNS)].to_numpy(dtype=_FEATURE))
        labels = table[LABEL_COLUMN].to_numpy(dtype=np.int64)
        client = self._sync_client(MATERIALISE_TIMEOUT_S)
        try:
            pipe = client.pipeline(transaction=False)
            for n, start in enumerate(range(0, len(ids), chunk_rows), start=1):
                stop = start + chunk_rows
                pipe.mset({entity_key(e): pack_row(f, int(lab)) for e, f, lab in
                           zip(ids[start:stop].tolist(), features[start:stop], labels[start:stop].tolist())})
                if n % MATERIALISE_CHUNKS_PER_FLUSH == 0:
                    pipe.execute()
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError) as exc:
            raise self._refused(exc) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise self._refused(exc) from None
            raise
        finally:
            client.close()
        return len(ids)

    def _async_client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, password=self.password, socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s, retry=AsyncRetry(NoBackoff(), 0))
        return self._client

    async def connect(self) -> RedisStore:
        """PING once from this event loop; an unreachable or refusing server is a ConfigError."""
        try:
            async with asyncio.timeout(max(self.timeout_s, 2.0)):
                await self._async_client().ping()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise self._refused(exc) from None
        return self

    async def mget(self, ids: Sequence[int]) -> list[FeatureRow | None]:
        """One MGET for `ids`, aligned with them, None where Redis has no row. Raises
        FeatureStoreUnavailable within timeout_s if Redis is slow, down or refuses."""
        if not ids:
            return []
        keys = [entity_key(e) for e in ids]
        self.round_trips += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await self._async_client().mget(keys)
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError, TimeoutError) as exc:
            raise FeatureStoreUnavailable(f"Redis at {redact(self.url)}: {_first_line(exc) or 'timed out'}") from exc
        except redis.ResponseError as exc:  # e.g. NOAUTH after a restart with another password
            raise FeatureStoreUnavailable(f"Redis at {redact(self.url)}: {_first_line(exc)}") from exc
        if len(values) != len(keys):  # never join one request's features to another's
            raise FeatureStoreUnavailable(f"Redis at {redact(self.url)} answered {len(values)} values for {len(keys)} keys")
        return unpack_rows(ids, values)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def lookup_latencies_s(store: RedisStore | EmbeddedStore, batch_size: int, n: int,
                             n_entities: int, seed: int = 0) -> np.ndarray:
    """`n` timed `mget` calls of `batch_size` ids drawn uniformly from the table (all hits in
    the store), one after another; the latency of each, seconds. For the benchmark below and
    for anything profiling the lookup stage."""
    rng = np.random.default_rng(seed)
    batches = rng.integers(0, n_entities, size=(n, batch_size)).tolist()
    out = np.empty(n)
    clock = time.perf_counter
    for i, ids in enumerate(batches):
        start = clock()
        await store.mget(ids)
        out[i] = clock() - start
    return out


def _benchmark(batch_sizes: tuple[int, ...] = (1, 8, 32), n: int = 2000, n_entities: int = 10_000) -> None:
    """Lookup latency, embedded against Redis over loopback, one process, same table and ids."""
    from real.features.offline import generate_table
    from real.features.redis_server import start_redis_server

    table = generate_table(n_entities, seed=0)
    embedded = EmbeddedStore()
    embedded.materialise(table)
    with start_redis_server() as server:
        store = RedisStore(server.url, server.password, timeout_s=1.0)
        store.materialise(table)

        async def run() -> None:
            await store.connect()
            print(f"lookup latency, {n} sequential mget calls per row, {n_entities} entities, us")
            print(f"{'batch':>5} {'store':>8} {'p50':>8} {'p99':>8} {'mean':>8}")
            for size in batch_sizes:
                for name, s in (("embedded", embedded), ("redis", store)):
                    await lookup_latencies_s(s, size, n // 10, n_entities, seed=1)  # warm up
                    lat = await lookup_latencies_s(s, size, n, n_entities, seed=2) * 1e6
                    print(f"{size:>5} {name:>8} {np.percentile(lat, 50):8.1f} {np.percentile(lat, 99):8.1f} {lat.mean():8.1f}")
            await store.close()

        asyncio.run(run())


if __name__ == "__main__":
    _benchmark()
