"""Worker records -> the twin's per-request table, plus what the load generator itself did.

Every scheduled request appears exactly once: a request no worker recorded (the run was cut
short before its time, or a worker died) is an `error` row with no finish, never dropped.

Outcomes, from the client's side:
  ok       HTTP 200 within the client deadline (timeout_s from the intended send)
  shed     HTTP 503 (a full queue, or no healthy replica at the gateway)
  timeout  the client deadline passed first, or the replica dropped it from its queue (504)
  error    anything else: other HTTP statuses, connection errors, cut short, never sent

`start_s` (service start on the client's clock) is not observable; it is derived as
    start = send + (finish - send - server_s) / 2 + queue_s
i.e. the time outside the replica (client, loopback, gateway) is split evenly between the way in
and the way out, the same convention mode=profile uses for the twin's overheads. Members of one
batch report the same `service_s` (the batch's device time) on the same replica; they get the
mean of their derived starts, so per-replica utilisation counts each batch once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from real.loadgen.recordfile import CLIENT_TIMEOUT, RECORD_FIELDS
from sim.records import ERROR, OK, SHED, TIMEOUT, requests_frame


@dataclass
class Merged:
    requests: pd.DataFrame  # the twin's schema (sim.records.COLUMNS), one row per request
    sends: pd.DataFrame  # request_id, intended_s, send_s, send_lag_s, http_status, worker, gateway_s, server_s
    duplicates: int  # records beyond the first for one request id (a bug if ever > 0)
    never_sent: int  # scheduled requests no worker sent


def read_records(path: Path) -> pd.DataFrame:
    with np.load(path, allow_pickle=False) as z:
        data = {name: z[name] for name in RECORD_FIELDS}
    frame = pd.DataFrame(data)
    frame["version"] = frame["version"].astype(str)
    return frame


def _collect(files: Sequence[Path]) -> pd.DataFrame:
    parts = []
    for f in files:
        part = read_records(f)
        part["worker"] = int(f.stem.rsplit("-", 1)[1])
        part["order"] = np.arange(len(part))
        parts.append(part)
    if not parts:
        empty = {name: np.empty(0, dtype=dtype if dtype != "U32" else object) for name, dtype in RECORD_FIELDS.items()}
        return pd.DataFrame({**empty, "worker": np.empty(0, np.int64), "order": np.empty(0, np.int64)})
    return pd.concat(parts, ignore_index=True)


def outcome(http_status: np.ndarray, latency_s: np.ndarray, timeout_s: float) -> np.ndarray:
    """Status codes (sim.records) from what the client saw."""
    status = np.full(len(http_status), ERROR, dtype=np.int64)
    status[http_status == 200] = OK
    if timeout_s > 0:
        late = (http_status == 200) & (latency_s > timeout_s)
        status[late] = TIMEOUT
    status[http_status == 503] = SHED
    status[(http_status == CLIENT_TIMEOUT) | (http_status == 504)] = TIMEOUT
    return status


def merge(
    files: Sequence[Path],
    *,
    schedule: tuple[np.ndarray, np.ndarray] | None,
    timeout_s: float,
) -> Merged:
    """One table from the workers' record files. `schedule` = (times_s, user_ids) for open loop;
    None for closed loop, where the requests are whatever the users sent, numbered by send order."""
    rec = _collect(files)
    if schedule is not None:
        times, users = schedule
        n = len(times)
        rec = rec[(rec["request_id"] >= 0) & (rec["request_id"] < n)]
        dup_mask = rec.duplicated("request_id", keep="first")
        duplicates = int(dup_mask.sum())
        rec = rec[~dup_mask]
        idx = rec["request_id"].to_numpy(dtype=np.int64)
        full = pd.DataFrame({"request_id": np.arange(n, dtype=np.int64), "user_id": users.astype(np.int64),
                             "intended_s": times.astype(float)})
        cols = [c for c in rec.columns if c not in ("request_id", "user_id", "intended_s")]
        for c in cols:
            values = rec[c].to_numpy()
            if values.dtype.kind == "f":
                column = np.full(n, np.nan)
            elif c == "version":
                column = np.full(n, "", dtype=object)
            elif c == "http_status":
                column = np.full(n, -3, dtype=np.int64)  # never sent
            elif c in ("replica", "worker"):
                column = np.full(n, -1, dtype=np.int64)
            else:
                column = np.zeros(n, dtype=np.int64)
            column[idx] = values
            full[c] = column
        never_sent = int(np.isnan(full["send_s"].to_numpy()).sum())
    else:
        duplicates = 0
        full = rec.sort_values(["intended_s", "worker", "order"], kind="stable").reset_index(drop=True)
        full["request_id"] = np.arange(len(full), dtype=np.int64)
        never_sent = 0

    intended = full["intended_s"].to_numpy(dtype=float)
    send = full["send_s"].to_numpy(dtype=float)
    finish = full["finish_s"].to_numpy(dtype=float)
    http = full["http_status"].to_numpy(dtype=np.int64)
    latency = finish - intended
    status = outcome(http, latency, timeout_s)
    served = status == OK
    queue = full["queue_s"].to_numpy(dtype=float)
    service = full["service_s"].to_numpy(dtype=float)
    server = full["server_s"].to_numpy(dtype=float)
    start = np.where(served, send + (finish - send - server) / 2 + queue, np.nan)
    replica = np.where(served, full["replica"].to_numpy(dtype=np.int64), -1)
    batch = np.where(served, full["batch_size"].to_numpy(dtype=np.int64), 0)
    start = _align_batches(start, replica, service, batch)
    version = np.where(served, full["version"].to_numpy(dtype=object), "")
    requests = requests_frame({
        "request_id": full["request_id"].to_numpy(dtype=np.int64),
        "user_id": full["user_id"].to_numpy(dtype=np.int64),
        "arrival_s": intended,
        "start_s": start,
        "finish_s": finish,
        "latency_s": latency,
        "queue_s": np.where(served, queue, np.nan),
        "service_s": np.where(served, service, np.nan),
        "replica": replica,
        "version": version,
        "batch_size": batch,
        "status": status,
    })
    sends = pd.DataFrame({
        "request_id": full["request_id"].to_numpy(dtype=np.int64),
        "intended_s": intended,
        "send_s": send,
        "send_lag_s": send - intended,
        "http_status": http,
        "worker": full["worker"].to_numpy(dtype=np.int64),
        "gateway_s": full["gateway_s"].to_numpy(dtype=float),
        "server_s": server,
    }).sort_values("request_id", kind="stable").reset_index(drop=True)
    return Merged(requests, sends, duplicates, never_sent)


def _align_batches(start: np.ndarray, replica: np.ndarray, service: np.ndarray, batch: np.ndarray) -> np.ndarray:
    multi = np.flatnonzero(batch > 1)
    if len(multi) == 0:
        return start
    groups = pd.DataFrame({"i": multi, "r": replica[multi], "s": service[multi], "start": start[multi]})
    mean = groups.groupby(["r", "s"])["start"].transform("mean").to_numpy()
    out = start.copy()
    out[multi] = mean
    return out


def send_lag_summary(sends: pd.DataFrame, *, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Send lag (actual - intended) over the measurement window, and the rate actually sent:
    requests whose actual send fell in [warmup_s, duration_s), per second of that window."""
    window = duration_s - warmup_s
    intended = sends["intended_s"].to_numpy(dtype=float)
    send = sends["send_s"].to_numpy(dtype=float)
    measured = (intended >= warmup_s) & (intended < duration_s) & np.isfinite(send)
    lag = send[measured] - intended[measured]
    stats: dict[str, float | None]
    if len(lag):
        p50, p99 = np.percentile(lag, [50, 99])
        stats = {"p50": float(p50), "p99": float(p99), "max": float(lag.max()), "mean": float(lag.mean())}
    else:
        stats = {"p50": None, "p99": None, "max": None, "mean": None}
    sent_in_window = int(((send >= warmup_s) & (send < duration_s)).sum())
    return {"send_lag_s": stats, "achieved_send_rate": sent_in_window / window if window > 0 else 0.0}
