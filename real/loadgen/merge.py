"""Worker records -> the twin's per-request table, plus what the load generator itself did.

Every scheduled request appears exactly once: a request no worker recorded (the run was cut
short before its time, or a worker died) is an `error` row with no finish, never dropped.

Outcomes, from the client's side:
  ok       HTTP 200 within the client deadline (timeout_s from the intended send)
  shed     HTTP 503 (a full queue, or no healthy replica at the gateway; async: at submit)
  timeout  the client deadline passed first, or the replica dropped it from its queue (504)
  error    anything else: other HTTP statuses, connection errors, cut short, never sent (async: a
           poll answered 404 or 503, real.loadgen.async_client)

Batches: the replica numbers its batches and answers each request with its batch's id; a batch
is (replica, that id), renumbered here in order of start so `batch_id` is unique in the run, as
the twin's. Timings cannot stand in for the id: two batches may report the same device time.
A request from a server that gives no batch id (not servelab's) counts as a batch of its own.

`start_s` (service start on the client's clock) is not observable; it is derived as
    start = send + (finish - send - server_s) / 2 + queue_s
i.e. the time outside the replica (client, loopback, gateway) is split evenly between the way in
and the way out, the same convention mode=profile uses for the twin's overheads. Members of one
batch get the mean of their derived starts, so per-replica utilisation counts each batch once,
kept inside what every member's own clock readings allow (see `_batch_starts`); every answered
row then has arrival_s <= start_s <= finish_s, which the merge checks.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from real.loadgen.recordfile import ASYNC_RECORD_DEFAULTS, ASYNC_RECORD_FIELDS, CLIENT_TIMEOUT, RECORD_DEFAULTS, RECORD_FIELDS
from sim.records import COLUMNS, ERROR, OK, SHED, TIMEOUT, requests_frame


@dataclass
class Merged:
    requests: pd.DataFrame  # the twin's schema (sim.records.COLUMNS), one row per request
    sends: pd.DataFrame  # request_id, intended_s, send_s, send_lag_s, http_status, worker, gateway_s, server_s
    duplicates: int  # records beyond the first for one request id (a bug if ever > 0)
    never_sent: int  # scheduled requests no worker sent


def read_records(path: Path) -> pd.DataFrame:
    with np.load(path, allow_pickle=False) as z:
        n = len(z["request_id"])
        data = {name: z[name] if name in z.files else np.full(n, RECORD_DEFAULTS[name], dtype=RECORD_FIELDS[name])
                for name in RECORD_FIELDS}
        data.update({name: z[name] if name in z.files else np.full(n, ASYNC_RECORD_DEFAULTS[name], dtype=dtype)
                     for name, dtype in ASYNC_RECORD_FIELDS.items()})
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
        empty = {name: np.empty(0, dtype=dtype if dtype != "U32" else object)
                 for name, dtype in {**RECORD_FIELDS, **ASYNC_RECORD_FIELDS}.items()}
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
            elif c in ("replica", "worker", "batch_id", "correct", "feature_hit"):
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
    polls = full["polls"].to_numpy(dtype=np.int64)
    status = outcome(http, latency, timeout_s)
    # a 503 because the feature store did not answer (fallback=error) is a failure, not a shed
    status[(http == 503) & (full["feature_failed"].to_numpy(dtype=np.int64) == 1)] = ERROR
    status[(http == 503) & (polls > 0)] = ERROR  # async: a poll's 503 (the queue's Redis down) fails a request it had accepted
    served = http == 200  # answered, maybe past the deadline (a timeout): as in the twin, it ran in a batch
    queue = full["queue_s"].to_numpy(dtype=float)
    service = full["service_s"].to_numpy(dtype=float)
    server = full["server_s"].to_numpy(dtype=float)
    derived = np.where(served, send + (finish - send - server) / 2 + queue, np.nan)
    ready = np.where(served, full["ready_s"].to_numpy(dtype=float), np.nan)
    derived = np.where(np.isnan(ready), derived, ready - service)  # async: the batch ran up to the result's ready time
    # a failure a replica answered (500, 503, 504) keeps its replica and version, as in the twin
    replica = full["replica"].to_numpy(dtype=np.int64)
    batch = np.where(served, full["batch_size"].to_numpy(dtype=np.int64), 0)
    group = _batch_groups(replica, full["batch_id"].to_numpy(dtype=np.int64), served)
    start = _batch_starts(group, derived, intended, send, finish, service)
    batch_id = _number_by_start(group, start, replica)
    _check_order(intended, start, finish, served)
    version = full["version"].to_numpy(dtype=object)
    # right or wrong only for an answer (HTTP 200), as the worker judged it; unknown otherwise
    correct = np.where(served, full["correct"].to_numpy(dtype=np.int64), -1)
    # the feature lookup of an answered request's batch, as its replica answered (NA/NaN otherwise)
    hit_code = np.where(served, full["feature_hit"].to_numpy(dtype=np.int64), -1)
    feature_hit = pd.array(hit_code == 1, dtype="boolean")
    feature_hit[hit_code < 0] = pd.NA
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
        "batch_id": batch_id,
        "batch_size": batch,
        "status": status,
        "correct": correct,
        "feature_lookup_s": np.where(served, full["feature_lookup_s"].to_numpy(dtype=float), np.nan),
        "feature_hit": feature_hit,
        "feature_fallback": served & (full["feature_fallback"].to_numpy(dtype=np.int64) == 1),
        "ready_s": ready,  # async: when the server had the result; NaN otherwise
        "polls": polls,
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


def _batch_groups(replica: np.ndarray, server_batch: np.ndarray, served: np.ndarray) -> np.ndarray:
    """0..G-1 per served row, one per (replica, the replica's batch id); -1 for the others."""
    group = np.full(len(served), -1, dtype=np.int64)
    rows = np.flatnonzero(served)
    if len(rows):
        ids = server_batch[rows]
        ids = np.where(ids >= 0, ids, -1 - rows)  # no id from the server: a batch of its own
        group[rows] = pd.factorize(pd.MultiIndex.from_arrays([replica[rows], ids]))[0]
    return group


def _batch_starts(group: np.ndarray, derived: np.ndarray, arrival: np.ndarray, send: np.ndarray,
                  finish: np.ndarray, service: np.ndarray) -> np.ndarray:
    """One start per batch: the mean of its members' derived starts, clamped into the interval
    every member's readings allow, [latest arrival or send, earliest finish - service_s].

    Each member's own estimate lies in its own interval (its outside time and queue_s are
    parts of finish - send), but the mean can leave a member's interval: the even split of the
    outside time is only a convention, and members whose ways in and out differed (one that
    waited in the gateway, one that was answered late) pull the mean apart. The true start lies
    in every member's interval, so clamping only moves the estimate closer to it. If the
    members' intervals do not even overlap (workers on hosts whose clocks disagree), the batch
    cannot have one start on the client's time axis: each member is then clamped into its own
    [arrival, finish], so that order still holds."""
    start = np.full(len(group), np.nan)
    rows = np.flatnonzero(group >= 0)
    if not len(rows):
        return start
    members = pd.DataFrame({
        "group": group[rows], "estimate": derived[rows], "earliest": np.fmax(arrival[rows], send[rows]),
        "latest": finish[rows] - service[rows], "finish": finish[rows],
    })
    per_batch = members.groupby("group", sort=True).agg(
        estimate=("estimate", "mean"), earliest=("earliest", "max"), latest=("latest", "min"), finish=("finish", "min"))
    estimate, earliest, latest, first_finish = (per_batch[c].to_numpy() for c in ("estimate", "earliest", "latest", "finish"))
    # fmin/fmax skip NaN: a server that reports no timings still gets a start (its latest send)
    batch_start = np.fmin(np.fmax(np.fmin(estimate, latest), earliest), first_finish)
    start[rows] = np.fmin(np.fmax(batch_start[group[rows]], arrival[rows]), finish[rows])
    return start


def _number_by_start(group: np.ndarray, start: np.ndarray, replica: np.ndarray) -> np.ndarray:
    """Run-wide batch ids in order of start (then replica), as the twin numbers them; -1 unserved."""
    batch_id = np.full(len(group), -1, dtype=np.int64)
    rows = np.flatnonzero(group >= 0)
    if not len(rows):
        return batch_id
    n_groups = int(group.max()) + 1
    first = np.full(n_groups, -1, dtype=np.int64)
    first[group[rows]] = rows  # any member will do: its start and replica are the batch's
    order = np.lexsort((replica[first], start[first]))
    rank = np.empty(n_groups, dtype=np.int64)
    rank[order] = np.arange(n_groups)
    batch_id[rows] = rank[group[rows]]
    return batch_id


def _check_order(arrival: np.ndarray, start: np.ndarray, finish: np.ndarray, served: np.ndarray) -> None:
    """arrival_s <= start_s <= finish_s for every answered row: the schema's promise, checked
    here (not with `assert`, which -O strips) because a violation is a merge bug."""
    with np.errstate(invalid="ignore"):
        bad = served & ~((arrival <= start) & (start <= finish))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"merge: {int(bad.sum())} answered rows break arrival_s <= start_s <= finish_s, e.g. row {i}: "
                             f"arrival {arrival[i]:.6f}, start {start[i]:.6f}, finish {finish[i]:.6f}")


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


# -- shadow copies --------------------------------------------------------------------------------

SHADOW_PATH = "/v2/gateway/shadow"
_LOAD_ID = re.compile(r"w(\d+)-(\d+)")  # the load generator's OIP request id: w<worker>-<request id>


def fetch_shadow(gateway_url: str, *, wait_s: float = 5.0, timeout_s: float = 30.0) -> dict[str, Any]:
    """The gateway's shadow records (`GET /v2/gateway/shadow`), once no copy is in flight or
    `wait_s` has passed: call it after the load, while the gateway still runs."""
    deadline = time.monotonic() + wait_s
    while True:
        with urllib.request.urlopen(gateway_url.rstrip("/") + SHADOW_PATH, timeout=timeout_s) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
        if not doc.get("in_flight") or time.monotonic() >= deadline:
            return doc
        time.sleep(0.1)


def shadow_dropped(doc: dict[str, Any]) -> int:
    """The copies a shadow document counts as due but never sent (over the in-flight bound, or
    no replica of the shadow version routable), since the gateway started: what the twin's
    `Twin.shadow_dropped` counts. A copy sent but not recorded (the record limit) is not one."""
    dropped = doc.get("dropped") or {}
    return int(dropped.get("in_flight_limit", 0)) + int(dropped.get("no_replica", 0))


def shadow_requests(doc: dict[str, Any], t0_unix: float, timeout_s: float, primaries: pd.DataFrame | None = None) -> pd.DataFrame:
    """The gateway's shadow records as rows of the record schema: shadow=True, on the load's clock.

    A copy is related to its primary by the OIP request id the load generator sent
    (`w<worker>-<request id>`): in open loop (`primaries` given) it takes the primary's
    intended send time as arrival_s and its user, as a twin's copy does. A copy not related to
    a scheduled request (closed loop, or another client) arrives when the gateway received its
    primary; one received before the load's time 0 (the warm-up) is no part of the run.
    Request ids continue after the primaries', in order of arrival; batch ids after theirs,
    numbered by start (a batch that mixed copies with primaries of that version, pinned ones,
    counts twice: rare, and then only its batch count is off). Times: the gateway's own clock
    is put on the load's through both clocks' wall time (`started_unix`, `t0_unix`), exact on
    one host."""
    cols = doc.get("records") or {}
    n = len(cols.get("request_id") or [])
    n_primary = len(primaries) if primaries is not None else 0
    if n == 0 or doc.get("started_unix") is None:
        return requests_frame({name: [] for name in COLUMNS})

    def floats(name: str) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in cols[name]], dtype=float)

    offset = float(doc["started_unix"]) - t0_unix
    received = floats("received_s") + offset
    sent = floats("sent_s") + offset
    finish = sent + floats("latency_s")
    user = np.asarray(cols["user_id"], dtype=np.int64)
    arrival = received.copy()
    related = np.zeros(n, dtype=bool)
    if primaries is not None and n_primary:
        primary_arrival = primaries["arrival_s"].to_numpy(dtype=float)
        primary_user = primaries["user_id"].to_numpy(dtype=np.int64)
        for k, raw in enumerate(cols["request_id"]):
            match = _LOAD_ID.fullmatch(raw or "")
            if match is not None and int(match.group(2)) < n_primary:
                rid = int(match.group(2))
                arrival[k], user[k], related[k] = primary_arrival[rid], primary_user[rid], True
    keep = related | (received >= 0)
    http = np.asarray(cols["status"], dtype=np.int64)
    served = http == 200
    queue, service, server = floats("queue_s"), floats("service_s"), floats("server_s")
    # as the primaries' (module docstring): outside time split evenly around the server's own
    derived = np.where(np.isnan(server), sent, sent + (finish - sent - np.nan_to_num(server)) / 2 + np.nan_to_num(queue))
    start = np.where(served, np.fmin(np.fmax(derived, np.fmax(arrival, sent)), finish), np.nan)
    replica = np.asarray(cols["replica"], dtype=np.int64)
    first_batch = int(primaries["batch_id"].max()) + 1 if primaries is not None and n_primary else 0
    group = _batch_groups(replica, np.asarray(cols["batch_id"], dtype=np.int64), served)
    batch_id = np.where(group >= 0, _number_by_start(group, start, replica) + first_batch, -1)
    latency = finish - arrival
    frame = pd.DataFrame({
        "request_id": np.zeros(n, dtype=np.int64), "user_id": user, "arrival_s": arrival, "start_s": start,
        "finish_s": finish, "latency_s": latency, "queue_s": np.where(served, queue, np.nan),
        "service_s": np.where(served, service, np.nan), "replica": replica,
        "version": np.asarray(cols["version"], dtype=object), "batch_id": batch_id,
        "batch_size": np.where(served, np.asarray(cols["batch_size"], dtype=np.int64), 0),
        "status": outcome(http, latency, timeout_s), "correct": np.asarray(cols["correct"], dtype=np.int64),
        "sent": sent,
    })[keep]
    frame = frame.sort_values(["arrival_s", "sent"], kind="stable")
    frame["request_id"] = np.arange(n_primary, n_primary + len(frame), dtype=np.int64)
    frame["shadow"] = True
    return requests_frame({name: frame[name].to_numpy() for name in COLUMNS if name in frame})


def with_shadow(requests: pd.DataFrame, doc: dict[str, Any], t0_unix: float, timeout_s: float, *, closed: bool = False) -> pd.DataFrame:
    """The merged requests and the gateway's shadow copies in one table (copies after)."""
    rows = shadow_requests(doc, t0_unix, timeout_s, None if closed else requests)
    if rows.empty:
        return requests
    return pd.concat([requests, rows], ignore_index=True)
