"""The per-request record schema and the metrics derived from it.

Both halves produce the same flat columns, one row per offered request; summary and time
series are pure functions of that table, so a twin run and a measured run are summarised by
the very same code and differ only in what happened.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

STATUSES = ("ok", "shed", "timeout", "error")
OK, SHED, TIMEOUT, ERROR = range(4)

COLUMNS: dict[str, str] = {
    "request_id": "int64",
    "user_id": "int64",
    "arrival_s": "float64",  # intended send time
    "start_s": "float64",  # service start (NaN if never served)
    "finish_s": "float64",  # when the client had its outcome
    "latency_s": "float64",
    "queue_s": "float64",
    "service_s": "float64",
    "replica": "int64",  # -1: never reached a replica
    "version": "string",
    "batch_size": "int64",  # 0: not served
    "status": "string",
}

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


def requests_frame(columns: Mapping[str, Sequence[Any] | np.ndarray]) -> pd.DataFrame:
    """One DataFrame in the schema's column order and types; `status` may be codes or names."""
    missing = set(COLUMNS) - set(columns)
    if missing:
        raise ValueError(f"request records miss columns: {sorted(missing)}")
    data: dict[str, Any] = {}
    for name, dtype in COLUMNS.items():
        values = columns[name]
        if name == "status" and len(values) and not isinstance(values[0], str):
            values = np.asarray(STATUSES, dtype=object)[np.asarray(values, dtype=np.int64)]
        data[name] = pd.array(np.asarray(values) if dtype != "string" else list(values), dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.sort_values("request_id", kind="stable").reset_index(drop=True)


def _latency_stats(latency: np.ndarray) -> dict[str, float | None]:
    if len(latency) == 0:
        return {**{k: None for k in PERCENTILES}, "mean": None, "max": None}
    q = np.percentile(latency, list(PERCENTILES.values()))
    out: dict[str, float | None] = {k: float(v) for k, v in zip(PERCENTILES, q)}
    out["mean"] = float(latency.mean())
    out["max"] = float(latency.max())
    return out


def summarize(
    frame: pd.DataFrame,
    *,
    warmup_s: float,
    duration_s: float,
    replicas: int,
    concurrency: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: rates, latency of answered requests, status counts, batching, utilisation.

    Only requests sent in the measurement window [warmup_s, duration_s) count, so a warm-up's
    cold caches and empty queues do not dilute the figures.
    """
    window = duration_s - warmup_s
    measured = frame[(frame["arrival_s"] >= warmup_s) & (frame["arrival_s"] < duration_s)]
    status = measured["status"].to_numpy(dtype=object)
    ok = measured[status == "ok"]
    counts = {s: int((status == s).sum()) for s in STATUSES}
    served = measured[measured["batch_size"].to_numpy() > 0]
    # a batch is identified by (replica, start, service time): its members share all three
    batches = frame[frame["batch_size"].to_numpy() > 0].drop_duplicates(["replica", "start_s", "service_s"])
    in_window = batches[(batches["start_s"] >= warmup_s) & (batches["start_s"] < duration_s)]
    busy = in_window.groupby("replica")["service_s"].sum()
    utilisation = {str(r): float(busy.get(r, 0.0)) / (window * concurrency) for r in range(replicas)}
    summary: dict[str, Any] = {
        "requests_total": int(len(frame)),
        "requests_measured": int(len(measured)),
        "window_s": window,
        "offered_rate": len(measured) / window,
        "achieved_rate": len(ok) / window,
        "latency_s": _latency_stats(ok["latency_s"].to_numpy(dtype=float)),
        "queue_s_mean": float(ok["queue_s"].mean()) if len(ok) else None,
        "service_s_mean": float(ok["service_s"].mean()) if len(ok) else None,
        "status_counts": counts,
        "shed_fraction": counts["shed"] / len(measured) if len(measured) else 0.0,
        "mean_batch_size": float(served["batch_size"].mean()) if len(served) else None,
        "utilisation": utilisation,
    }
    if extra:
        summary.update(extra)
    return summary


def timeseries(frame: pd.DataFrame, window_s: float, end_s: float | None = None) -> pd.DataFrame:
    """Per-window offered/achieved rate, latency percentiles, and queue length and in-flight
    sampled at each window's end, all derived from the per-request table."""
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    finish = frame["finish_s"].to_numpy(dtype=float)
    start = frame["start_s"].to_numpy(dtype=float)
    if end_s is None:
        end_s = float(np.nanmax(finish)) if len(frame) else window_s
    n_windows = max(1, int(math.ceil(end_s / window_s)))
    edges = np.arange(n_windows + 1) * window_s
    ok = (frame["status"].to_numpy(dtype=object) == "ok")
    sent = np.histogram(arrival, edges)[0]
    done = np.histogram(finish[ok], edges)[0]
    lat = frame["latency_s"].to_numpy(dtype=float)[ok]
    idx = np.clip(np.searchsorted(edges, finish[ok], side="right") - 1, 0, n_windows - 1)
    rows: dict[str, list[float]] = {f"latency_{k}_s": [] for k in ("p50", "p99")}
    for w in range(n_windows):
        sel = lat[idx == w]
        rows["latency_p50_s"].append(float(np.percentile(sel, 50)) if len(sel) else math.nan)
        rows["latency_p99_s"].append(float(np.percentile(sel, 99)) if len(sel) else math.nan)
    ends = edges[1:]
    arr_sorted = np.sort(arrival)
    # a request leaves the queue when served, or at its outcome if never served (shed, timeout)
    left_queue = np.where(np.isnan(start), finish, start)
    left_sorted = np.sort(np.where(np.isnan(left_queue), np.inf, left_queue))
    fin_sorted = np.sort(np.where(np.isnan(finish), np.inf, finish))
    arrived = np.searchsorted(arr_sorted, ends, side="right")
    return pd.DataFrame(
        {
            "window_start_s": edges[:-1],
            "offered_rate": sent / window_s,
            "achieved_rate": done / window_s,
            **rows,
            "queue_len": arrived - np.searchsorted(left_sorted, ends, side="right"),
            "in_flight": arrived - np.searchsorted(fin_sorted, ends, side="right"),
        }
    )
