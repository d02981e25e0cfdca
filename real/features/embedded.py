"""The embedded online store: the feature rows in the replica's own memory, no server to run.

The default store, so `servelab` still runs with two commands and nothing else installed. Each
replica materialises the offline table into a dict at start; a lookup is then a dict read. It
answers the same `FeatureStore` calls as a networked store (real.features), so a replica's
cache, batching and timeout logic run unchanged against it. `latency_s` adds a fixed delay per
call (one round trip, however many ids), for tests of timeouts and of the one-trip-per-batch rule.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np
import pandas as pd

from real.features.offline import ENTITY_COLUMN, FEATURE_COLUMNS, LABEL_COLUMN
from sim.policy.features import FeatureRow


class EmbeddedStore:
    """An in-process `FeatureStore`: rows by entity id, filled by `materialise`."""

    def __init__(self, latency_s: float = 0.0) -> None:
        if not latency_s >= 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency_s}")
        self.latency_s = float(latency_s)
        self.round_trips = 0  # mget calls answered: what batching should keep to one per batch
        self._rows: dict[int, FeatureRow] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._rows)

    def materialise(self, table: pd.DataFrame) -> int:
        """Load (or overwrite) the rows of an offline table (real.features.offline.read_table's
        columns); returns how many rows it holds afterwards."""
        ids = table[ENTITY_COLUMN].to_numpy(dtype=np.int64)
        features = np.ascontiguousarray(table[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32))
        labels = table[LABEL_COLUMN].to_numpy(dtype=np.int64)
        features.setflags(write=False)  # rows are shared with every request: nobody edits one
        for i, entity_id in enumerate(ids.tolist()):
            self._rows[entity_id] = FeatureRow(entity_id, features[i], int(labels[i]))
        return len(self._rows)

    async def mget(self, ids: Sequence[int]) -> list[FeatureRow | None]:
        if self._closed:
            raise RuntimeError("the embedded feature store is closed")
        self.round_trips += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        rows = self._rows
        return [rows.get(int(entity_id)) for entity_id in ids]

    async def close(self) -> None:
        self._closed = True
        self._rows = {}
