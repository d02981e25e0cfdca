"""The twin's per-request log: one slot per request in plain lists, indexed by request id.

Lists, not objects: at a million requests an attribute store per field is what the twin can
afford. The gateway part of the twin and its replicas write into the same log, and
`columns()` turns it into the record schema (sim.records.COLUMNS) once, at the end.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

PENDING = -1


class RequestLog:
    __slots__ = ("user", "arrival", "enqueued", "after_s", "start", "finish", "service_s", "replica",
                 "version", "batch_id", "batch_size", "status", "correct", "shadow", "lookup_s", "hit", "fallback")

    def __init__(self) -> None:
        self.user: list[int] = []
        self.arrival: list[float] = []
        self.enqueued: list[float] = []  # reached the replica's queue
        self.after_s: list[float] = []  # answer leaves the replica -> client has it
        self.start: list[float] = []
        self.finish: list[float] = []
        self.service_s: list[float] = []
        self.replica: list[int] = []
        self.version: list[int] = []  # index into the run's versions; -1: never routed
        self.batch_id: list[int] = []
        self.batch_size: list[int] = []
        self.status: list[int] = []
        self.correct: list[int] = []  # 1 right, 0 wrong, -1 unknown (unlabelled, or not answered)
        self.shadow: list[bool] = []  # a mirrored copy (sim.records: never offered load)
        # the feature lookup of the request's batch (sim.features): its time, NaN none
        self.lookup_s: list[float] = []
        self.hit: list[int] = []  # 1 the row came from the replica's cache, 0 fetched (or missing), -1 no lookup
        self.fallback: list[bool] = []  # served on the declared default row

    def __len__(self) -> int:
        return len(self.arrival)

    def append(self, user_id: int, arrival_s: float, after_s: float, shadow: bool = False) -> int:
        """A request sent at `arrival_s` (closed loop: one at a time, or a shadow copy); its id."""
        i = len(self.arrival)
        self.user.append(user_id)
        self.arrival.append(arrival_s)
        self.enqueued.append(math.nan)
        self.after_s.append(after_s)
        self.start.append(math.nan)
        self.finish.append(math.nan)
        self.service_s.append(math.nan)
        self.replica.append(-1)
        self.version.append(-1)
        self.batch_id.append(-1)
        self.batch_size.append(0)
        self.status.append(PENDING)
        self.correct.append(-1)
        self.shadow.append(shadow)
        self.lookup_s.append(math.nan)
        self.hit.append(-1)
        self.fallback.append(False)
        return i

    def fill(self, users: list[int], times: list[float], after_s: float) -> None:
        """Every request of an open-loop schedule at once."""
        n = len(times)
        nan = math.nan
        self.user = users
        self.arrival = times
        self.enqueued = [nan] * n
        self.after_s = [after_s] * n
        self.start = [nan] * n
        self.finish = [nan] * n
        self.service_s = [nan] * n
        self.replica = [-1] * n
        self.version = [-1] * n
        self.batch_id = [-1] * n
        self.batch_size = [0] * n
        self.status = [PENDING] * n
        self.correct = [-1] * n
        self.shadow = [False] * n
        self.lookup_s = [nan] * n
        self.hit = [-1] * n
        self.fallback = [False] * n

    def truncate(self, n: int) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name)[:n])

    def columns(self, status: list[int], version_names: Sequence[str], features: bool = False) -> dict[str, Any]:
        """The record columns; with `features` (the run had a feature store) its lookup columns,
        else they are left to sim.records.DEFAULTS."""
        arrival = np.asarray(self.arrival, dtype=float)
        start = np.asarray(self.start, dtype=float)
        finish = np.asarray(self.finish, dtype=float)
        names = np.asarray(list(version_names) + [""], dtype=object)
        return {
            "request_id": np.arange(len(arrival), dtype=np.int64),
            "user_id": np.asarray(self.user, dtype=np.int64),
            "arrival_s": arrival,
            "start_s": start,
            "finish_s": finish,
            "latency_s": finish - arrival,
            "queue_s": start - np.asarray(self.enqueued, dtype=float),
            "service_s": np.asarray(self.service_s, dtype=float),
            "replica": np.asarray(self.replica, dtype=np.int64),
            "version": names[np.asarray(self.version, dtype=np.int64)],  # -1 picks the trailing ""
            "batch_id": np.asarray(self.batch_id, dtype=np.int64),
            "batch_size": np.asarray(self.batch_size, dtype=np.int64),
            "status": np.asarray(status, dtype=np.int64),
            "correct": np.asarray(self.correct, dtype=np.int64),
            "shadow": np.asarray(self.shadow, dtype=bool),
            **(self._feature_columns() if features else {}),
        }

    def _feature_columns(self) -> dict[str, Any]:
        hit = np.asarray(self.hit, dtype=np.int64)
        return {
            "feature_lookup_s": np.asarray(self.lookup_s, dtype=float),
            "feature_hit": pd.arrays.BooleanArray(hit == 1, hit < 0),
            "feature_fallback": np.asarray(self.fallback, dtype=bool),
        }
