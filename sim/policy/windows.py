"""Each version's answers over the last `window_s`: what a controller's metrics query returns.

One implementation for both worlds (the twin's controller ticks and the gateway's
`GET /v2/gateway/state`), so a canary analysis reads the same figures from the same answers.
An answer is `ok` (HTTP 2xx), an `error` (5xx: shed, expired, failed) or neither (the client's
own fault, or an answer that came too late for its client); latency percentiles are over the ok
answers, so a version that fails fast does not look fast. Flagger asks Prometheus the same over
its analysis interval.

A sliding window, exact and cheap: each answer appends one tuple, and records older than the
window are dropped as new ones arrive, so memory is the window's answers at most. No clock:
the caller passes `now`.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sim.policy.controller import VersionWindow


class VersionWindows:
    def __init__(self, n_versions: int, window_s: float) -> None:
        self.window_s = window_s
        # (answered at, latency, ok, error, correct: 1 right, 0 wrong, -1 unknown)
        self._records: list[deque[tuple[float, float, bool, bool, int]]] = [deque() for _ in range(n_versions)]

    def add(self, version: int, now: float, latency_s: float, ok: bool, error: bool, correct: int = -1) -> None:
        """`correct`: whether an ok answer was right (1) or wrong (0), -1 when unknown."""
        records = self._records[version]
        records.append((now, latency_s, ok, error, correct))
        self._forget(records, now)

    def window(self, version: int, now: float) -> VersionWindow:
        records = self._records[version]
        self._forget(records, now)
        latencies = [latency for _, latency, ok, _, _ in records if ok]
        errors = sum(1 for _, _, _, error, _ in records if error)
        judged = [correct for _, _, ok, _, correct in records if ok and correct >= 0]
        p50: float | None = None
        p99: float | None = None
        if latencies:
            p50, p99 = (float(x) for x in np.percentile(latencies, [50, 99]))
        return VersionWindow(requests=len(records), ok=len(latencies), errors=errors, latency_p50_s=p50, latency_p99_s=p99,
                             judged=len(judged), correct=sum(judged), latency_sum_s=float(sum(latencies)),
                             latency_sumsq_s2=float(sum(x * x for x in latencies)))

    def windows(self, now: float) -> dict[int, VersionWindow]:
        """The versions that answered anything in the window (a controller's View holds no others)."""
        out = {v: self.window(v, now) for v in range(len(self._records))}
        return {v: w for v, w in out.items() if w.requests}

    def _forget(self, records: deque[tuple[float, float, bool, bool, int]], now: float) -> None:
        horizon = now - self.window_s
        while records and records[0][0] < horizon:
            records.popleft()
