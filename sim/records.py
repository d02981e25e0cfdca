"""The per-request record schema and the metrics derived from it.

Both halves produce the same flat columns, one row per offered request; summary and time
series are pure functions of that table, so a twin run and a measured run are summarised by
the very same code and differ only in what happened.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

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
    "batch_id": "int64",  # one id per dispatched batch, unique in the run; -1: not served
    "batch_size": "int64",  # 0: not served
    "status": "string",
    "correct": "boolean",  # was the answer right (a labelled request)? <NA>: unknown or not answered
    "shadow": "bool",  # a mirrored copy: measured, never returned, never offered load
    # the online feature store (features.store != none): the entity is the request's user_id
    "feature_lookup_s": "float64",  # the lookup time of the request's batch (cache and one round trip); NaN: no lookup
    "feature_hit": "boolean",  # the request's row came from the replica's cache; <NA>: no lookup
    "feature_fallback": "bool",  # served on the declared default row (missing entity or failed lookup)
    # asynchronous serving (pattern=async); latency_s is then submit to the client learning the result
    "ready_s": "float64",  # when the result was ready on the server (run clock); NaN: never, or sync
    "polls": "int64",  # result requests the client made (0: sync, or told by callback)
}
# columns a producer may leave out, and what they then hold for every row
DEFAULTS: dict[str, Any] = {"correct": pd.NA, "shadow": False, "feature_lookup_s": math.nan, "feature_hit": pd.NA,
                            "feature_fallback": False, "ready_s": math.nan, "polls": 0}

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


def requests_frame(columns: Mapping[str, Sequence[Any] | np.ndarray]) -> pd.DataFrame:
    """One DataFrame in the schema's column order and types; `status` may be codes or names,
    `correct` booleans, or codes 1 (right), 0 (wrong), -1 (unknown)."""
    missing = set(COLUMNS) - set(columns) - set(DEFAULTS)
    if missing:
        raise ValueError(f"request records miss columns: {sorted(missing)}")
    n = len(columns["request_id"])
    data: dict[str, Any] = {}
    for name, dtype in COLUMNS.items():
        if name not in columns:
            data[name] = pd.array([DEFAULTS[name]] * n, dtype=dtype)
            continue
        values = columns[name]
        if name == "correct":
            codes = np.asarray(values)
            if codes.dtype.kind in "iu":
                data[name] = pd.array(codes == 1, dtype=dtype)
                data[name][codes < 0] = pd.NA
                continue
        if name == "status" and len(values) and not isinstance(values[0], str):
            values = np.asarray(STATUSES, dtype=object)[np.asarray(values, dtype=np.int64)]
        data[name] = pd.array(np.asarray(values) if dtype != "string" else list(values), dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.sort_values("request_id", kind="stable").reset_index(drop=True)


def primary(frame: pd.DataFrame) -> pd.DataFrame:
    """The offered requests: every row but the shadow copies (which a client never sent)."""
    shadow = frame["shadow"].to_numpy(dtype=bool)
    return frame[~shadow] if shadow.any() else frame


def _latency_stats(latency: np.ndarray) -> dict[str, float | None]:
    if len(latency) == 0:
        return {**{k: None for k in PERCENTILES}, "mean": None, "max": None}
    q = np.percentile(latency, list(PERCENTILES.values()))
    out: dict[str, float | None] = {k: float(v) for k, v in zip(PERCENTILES, q)}
    out["mean"] = float(latency.mean())
    out["max"] = float(latency.max())
    return out


def _batches_started(frame: pd.DataFrame, warmup_s: float, duration_s: float) -> pd.DataFrame:
    """One row per batch dispatched in [warmup_s, duration_s): its replica, start, service time
    and size. A batch is one `batch_id`; its first member the model ran for stands for it
    (members share all four), so a batch counts once however many of its requests the table
    holds. (A request whose feature lookup failed rode in a batch but the model did not run
    for it: no service time; a batch of only such requests never ran the model.)"""
    bid = frame["batch_id"].to_numpy(dtype=np.int64)
    served = np.flatnonzero((bid >= 0) & np.isfinite(frame["service_s"].to_numpy(dtype=float)))
    first = served[np.unique(bid[served], return_index=True)[1]]
    batches = frame.iloc[first][["replica", "start_s", "service_s", "batch_size"]]
    start = batches["start_s"].to_numpy(dtype=float)
    return batches[(start >= warmup_s) & (start < duration_s)]


def batch_figures(batches: pd.DataFrame) -> dict[str, Any]:
    """Batch size two ways, named for what they average: per batch (what a server's batch-size
    histogram shows: sizes 1 and 3 -> 2) and per request (the batch a request rode in: 1 and 3
    -> (1 + 3 * 3) / 4 = 2.5). Both over the same batches, so they differ only in weighting."""
    size = batches["batch_size"].to_numpy(dtype=float)
    if len(size) == 0:
        return {"batches": 0, "batch_size_mean_per_batch": None, "batch_size_mean_per_request": None}
    return {
        "batches": int(len(size)),
        "batch_size_mean_per_batch": float(size.mean()),
        "batch_size_mean_per_request": float((size * size).sum() / size.sum()),
    }


def completed_in(finish: np.ndarray, ok: np.ndarray, start_s: float, end_s: float) -> int:
    """Answered requests (`ok`) whose answer came in [start_s, end_s), whenever they were sent:
    the numerator of throughput, which therefore cannot exceed what the servers can answer."""
    return int((ok & (finish >= start_s) & (finish < end_s)).sum())


def feature_figures(frame: pd.DataFrame, *, warmup_s: float, duration_s: float,
                    predicted_hit_ratio: float | None = None) -> dict[str, Any] | None:
    """summary.json's `features`, or None when no request had a feature lookup. Over the
    requests sent in [warmup_s, duration_s) that had one and were answered (status ok: the
    real stack learns a lookup from the answer, so a request that failed or was given up on
    has none there, and the twin's are left out too, for like to be compared with like):
    `lookups`, `hits`, `misses`, `hit_ratio` (rows from the replica's cache among them),
    `fallbacks` (served on the default row); over the batches of those that started in the
    window, `batches` and the lookup time per batch `lookup_s` p50/p99/mean (each batch counts
    once, as its one round trip does). With
    `predicted_hit_ratio` (what the cache should reach in theory: sim.features), it too and
    `hit_ratio_error`, measured less predicted."""
    if "feature_hit" not in frame.columns:  # records written before the feature store
        return None
    hit = frame["feature_hit"].to_numpy(dtype=float, na_value=np.nan)
    looked = ~np.isnan(hit)
    if not looked.any():
        return None
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    looked &= frame["status"].to_numpy(dtype=object) == "ok"
    sent = looked & (arrival >= warmup_s) & (arrival < duration_s)
    lookups = int(sent.sum())
    hits = int(hit[sent].sum())
    fallbacks = int(frame["feature_fallback"].to_numpy(dtype=bool)[sent].sum())
    bid = frame["batch_id"].to_numpy(dtype=np.int64)
    lookup_s = frame["feature_lookup_s"].to_numpy(dtype=float)
    start = frame["start_s"].to_numpy(dtype=float)
    rows = np.flatnonzero(looked & (bid >= 0) & np.isfinite(lookup_s) & (start >= warmup_s) & (start < duration_s))
    per_batch = lookup_s[rows[np.unique(bid[rows], return_index=True)[1]]]
    if len(per_batch):
        p50, p99 = (float(x) for x in np.percentile(per_batch, [50, 99]))
        times: dict[str, float | None] = {"p50": p50, "p99": p99, "mean": float(per_batch.mean())}
    else:
        times = {"p50": None, "p99": None, "mean": None}
    ratio = hits / lookups if lookups else None
    out: dict[str, Any] = {
        "lookups": lookups,
        "hits": hits,
        "misses": lookups - hits,
        "hit_ratio": ratio,
        "fallbacks": fallbacks,
        "batches": int(len(per_batch)),
        "lookup_s": times,
    }
    if predicted_hit_ratio is not None and math.isfinite(predicted_hit_ratio):
        out["predicted_hit_ratio"] = float(predicted_hit_ratio)
        out["hit_ratio_error"] = None if ratio is None else ratio - float(predicted_hit_ratio)
    return out


def summarize(
    frame: pd.DataFrame,
    *,
    warmup_s: float,
    duration_s: float,
    replicas: int,
    concurrency: int,
    capacity_rps: float | None = None,
    extra: Mapping[str, Any] | None = None,
    versions: Sequence[str] = (),
    hit_ratio_at: Callable[[float], float] | None = None,
) -> dict[str, Any]:
    """summary.json: rates, latency of answered requests, status counts, batching, utilisation.

    Two populations, each the one its figure is about. Offered rate, latency and status counts
    describe the requests *sent* in the measurement window [warmup_s, duration_s), so a warm-up's
    cold caches and empty queues do not dilute them. Throughput, batches and utilisation describe
    what the servers *did* in that window: answers completed, batches dispatched, busy time. An
    overloaded system then reports throughput at its capacity, not at the offered rate (which
    it only reaches by draining its backlog after the window). `capacity_rps`, when the caller
    knows it (sim.service.capacity_rps), adds itself and the offered load as a fraction of it.
    `versions` (per-version figures, `version_figures`) lists the versions in the order to
    report them; versions the records name beyond those follow. With a feature store, a
    `features` block (`feature_figures`); `hit_ratio_at` (sim.features.predicted_hit_ratio)
    gives the cache's predicted hit ratio at a replica's share of the offered rate.
    """
    window = duration_s - warmup_s
    per_version = version_figures(frame, warmup_s=warmup_s, duration_s=duration_s, versions=versions)
    frame = primary(frame)
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    status_all = frame["status"].to_numpy(dtype=object)
    ok_all = status_all == "ok"
    sent = (arrival >= warmup_s) & (arrival < duration_s)
    measured = frame[sent]
    status = status_all[sent]
    ok = frame[sent & ok_all]
    counts = {s: int((status == s).sum()) for s in STATUSES}
    batches = _batches_started(frame, warmup_s, duration_s)
    busy = batches.groupby("replica")["service_s"].sum()
    utilisation = {str(r): float(busy.get(r, 0.0)) / (window * concurrency) for r in range(replicas)}
    offered = len(measured) / window
    summary: dict[str, Any] = {
        "requests_total": int(len(frame)),
        "requests_measured": int(len(measured)),
        "window_s": window,
        "offered_rate": offered,
        "throughput": completed_in(frame["finish_s"].to_numpy(dtype=float), ok_all, warmup_s, duration_s) / window,
        "latency_s": _latency_stats(ok["latency_s"].to_numpy(dtype=float)),
        "queue_s_mean": float(ok["queue_s"].mean()) if len(ok) else None,
        "service_s_mean": float(ok["service_s"].mean()) if len(ok) else None,
        "status_counts": counts,
        "shed_fraction": counts["shed"] / len(measured) if len(measured) else 0.0,
        **batch_figures(batches),
        "utilisation": utilisation,
        "utilisation_mean": float(sum(utilisation.values()) / replicas) if replicas else None,
        "versions": per_version,
    }
    if is_async(frame):
        summary["async"] = async_figures(frame[sent])
    predicted = hit_ratio_at(offered / replicas) if hit_ratio_at is not None and replicas else None
    features = feature_figures(frame, warmup_s=warmup_s, duration_s=duration_s, predicted_hit_ratio=predicted)
    if features is not None:
        summary["features"] = features
    if capacity_rps is not None and capacity_rps > 0 and math.isfinite(capacity_rps):
        summary["capacity_rps"] = float(capacity_rps)
        summary["offered_load"] = offered / capacity_rps
    if extra:
        summary.update(extra)
    return summary


def is_async(frame: pd.DataFrame) -> bool:
    """Records of async serving (pattern=async): some result was ready, or some client polled
    (records written before these columns existed are sync ones)."""
    if "ready_s" not in frame or "polls" not in frame:
        return False
    return bool(frame["ready_s"].notna().any() or (frame["polls"].to_numpy(dtype=np.int64) > 0).any())


def async_figures(frame: pd.DataFrame) -> dict[str, Any]:
    """summary.json's `async` block over the measured requests: `submitted`, of which
    `accepted` (202) and `refused` (503 at submit: status shed), `polls_per_request` (mean
    result requests per accepted submission), `ready_latency_s` (submit -> result ready on the server) and
    `observed_latency_s` (submit -> the client has it) p50/p99 of the results got, and
    `poll_overhead_s_mean`: what polling added (observed - ready, mean)."""
    status = frame["status"].to_numpy(dtype=object)
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    ready = frame["ready_s"].to_numpy(dtype=float) - arrival
    observed = frame["latency_s"].to_numpy(dtype=float)
    got = (status == "ok") & ~np.isnan(ready)
    accepted = status != "shed"

    def p50_p99(x: np.ndarray) -> dict[str, float | None]:
        if not len(x):
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(x, [50, 99])
        return {"p50": float(p50), "p99": float(p99)}

    polls = frame["polls"].to_numpy(dtype=float)[accepted]
    return {
        "submitted": int(len(status)),
        "accepted": int(accepted.sum()),
        "refused": int((~accepted).sum()),
        "polls_per_request": float(polls.mean()) if len(polls) else None,
        "ready_latency_s": p50_p99(ready[got]),
        "observed_latency_s": p50_p99(observed[got]),
        "poll_overhead_s_mean": float((observed[got] - ready[got]).mean()) if got.any() else None,
    }


def _correct_codes(frame: pd.DataFrame) -> np.ndarray:
    """`correct` as floats: 1.0 right, 0.0 wrong, NaN unknown (sums and means skip NaN)."""
    return frame["correct"].to_numpy(dtype=float, na_value=np.nan)


def _versions_in(frame: pd.DataFrame, versions: Sequence[str]) -> list[str]:
    """`versions` in their order, then any other version the records name, sorted."""
    seen = set(pd.unique(frame["version"].astype(str).to_numpy())) - {""}
    return list(versions) + sorted(seen - set(versions))


def _served_figures(latency: np.ndarray, status: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Latency p50/p99 of the answered, the error fraction, and accuracy (right / judged among
    the answered) of one population of requests."""
    ok = status == "ok"
    judged = ok & ~np.isnan(correct)
    lat = latency[ok]
    p50, p99 = (float(x) for x in np.percentile(lat, [50, 99])) if len(lat) else (None, None)
    return {
        "latency_s": {"p50": p50, "p99": p99},
        "error_rate": float((status == "error").sum() / len(status)) if len(status) else None,
        "accuracy": float(correct[judged].sum() / judged.sum()) if judged.any() else None,
        "judged": int(judged.sum()),
    }


def version_figures(frame: pd.DataFrame, *, warmup_s: float, duration_s: float,
                    versions: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """summary.json's `versions`: per version, over the requests sent in [warmup_s, duration_s)
    that it served (routed to it): `requests`, `offered_rate`, `throughput` (its answers
    completed in the window, per second), `latency_s` p50/p99 of its answers, `error_rate`
    (the fraction that failed: HTTP 500, status `error`), `accuracy` (right among its judged
    answers; None when none was judged), `judged`, `status_counts`. Shadow copies are a
    version's own extra figures (`shadow_requests`, `shadow_latency_s`, `shadow_error_rate`,
    `shadow_accuracy`), never part of its primary ones: nobody offered them."""
    window = duration_s - warmup_s
    version = frame["version"].astype(str).to_numpy()
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    finish = frame["finish_s"].to_numpy(dtype=float)
    status = frame["status"].to_numpy(dtype=object)
    latency = frame["latency_s"].to_numpy(dtype=float)
    correct = _correct_codes(frame)
    shadow = frame["shadow"].to_numpy(dtype=bool)
    sent = (arrival >= warmup_s) & (arrival < duration_s)
    out: dict[str, dict[str, Any]] = {}
    for name in _versions_in(frame, versions):
        mine = (version == name) & ~shadow
        measured = mine & sent
        copies = (version == name) & shadow & sent
        primary_figures = _served_figures(latency[measured], status[measured], correct[measured])
        mirrored = _served_figures(latency[copies], status[copies], correct[copies])
        out[name] = {
            "requests": int(measured.sum()),
            "offered_rate": float(measured.sum() / window),
            "throughput": completed_in(finish[mine], status[mine] == "ok", warmup_s, duration_s) / window,
            **primary_figures,
            "status_counts": {s: int((status[measured] == s).sum()) for s in STATUSES},
            "shadow_requests": int(copies.sum()),
            "shadow_latency_s": mirrored["latency_s"],
            "shadow_error_rate": mirrored["error_rate"],
            "shadow_accuracy": mirrored["accuracy"],
        }
    return out


def _left_at(arrival: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sorted times a request stopped being counted: NaN (never happened) is never, and no
    request leaves before it arrived, so every request's span nests as counted below."""
    return np.sort(np.maximum(arrival, np.where(np.isnan(t), np.inf, t)))


def _window_percentiles(latency: np.ndarray, finish: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p50 and p99 per window of the answers finished in it (NaN for a window with none).

    One sort for every window at once, then numpy's default ("linear") percentile read off
    each window's slice by index arithmetic: O(answers log answers) whatever the number of
    windows, so a long horizon (a million one-second windows) costs what its answers cost."""
    n_windows = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, finish, side="right") - 1, 0, n_windows - 1)
    order = np.lexsort((latency, idx))  # by window, then by latency within it
    values = latency[order]
    bounds = np.searchsorted(idx[order], np.arange(n_windows + 1))
    return _sorted_percentile(values, bounds, 0.50), _sorted_percentile(values, bounds, 0.99)


def _sorted_percentile(values: np.ndarray, bounds: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each slice values[bounds[w]:bounds[w + 1]] (each sorted), linear
    interpolation between closest ranks as np.percentile does; NaN for an empty slice."""
    count = np.diff(bounds)
    out = np.full(len(count), math.nan)
    has = count > 0
    pos = (count[has] - 1) * q
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, count[has] - 1)
    first = bounds[:-1][has]
    low, high = values[first + lo], values[first + hi]
    out[has] = low + (high - low) * (pos - lo)
    return out


def _version_series(frame: pd.DataFrame, edges: np.ndarray, window_s: float, versions: Sequence[str]) -> dict[str, Any]:
    """timeseries' per-version columns, `<column>@<version>`: `offered_rate@V` (its requests by
    send time), `throughput@V`, `latency_p50_s@V`, `latency_p99_s@V` (its answers by finish
    time, as the run-wide columns), `error_rate@V` (failed, status `error`, among its outcomes
    in the window) and `accuracy@V` (right among its judged answers in the window); NaN where
    a window has nothing to divide. One pass per version, O(requests) each."""
    version = frame["version"].astype(str).to_numpy()
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    finish = frame["finish_s"].to_numpy(dtype=float)
    status = frame["status"].to_numpy(dtype=object)
    latency = frame["latency_s"].to_numpy(dtype=float)
    correct = _correct_codes(frame)
    columns: dict[str, Any] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in _versions_in(frame, versions):
            mine = version == name
            ok = mine & (status == "ok")
            judged = ok & ~np.isnan(correct)
            outcomes = np.histogram(finish[mine & ~np.isnan(finish)], edges)[0]
            p50, p99 = _window_percentiles(latency[ok], finish[ok], edges)
            right = np.histogram(finish[judged], edges, weights=correct[judged])[0]
            columns[f"offered_rate@{name}"] = np.histogram(arrival[mine], edges)[0] / window_s
            columns[f"throughput@{name}"] = np.histogram(finish[ok], edges)[0] / window_s
            columns[f"latency_p50_s@{name}"] = p50
            columns[f"latency_p99_s@{name}"] = p99
            columns[f"error_rate@{name}"] = np.histogram(finish[mine & (status == "error")], edges)[0] / outcomes
            columns[f"accuracy@{name}"] = right / np.histogram(finish[judged], edges)[0]
    return columns


# A time series no figure can show is no use: past this many windows the automatic window widens.
MAX_SERIES_WINDOWS = 1000
_NICE_FACTORS = (1, 2, 5)


def series_window_s(end_s: float, window_s: float, chosen_s: float = 0.0,
                    max_windows: int = MAX_SERIES_WINDOWS) -> float:
    """The window of a run's time series over [0, end_s): `chosen_s` when the user chose one
    (timeseries_window_s > 0), else `window_s` (the controllers' analysis window) while that
    gives at most `max_windows`, else the smallest window_s x 1, 2, 5 x 10^k that does. A
    multiple of window_s, so each series window holds whole analysis windows (rollout.parquet's
    rows nest in it), and a nice number of seconds when window_s is one: 142,857 s of one-second
    windows become 200-second ones (715 windows), the series stays readable, and the
    controllers, which read window_s, are unchanged."""
    if chosen_s > 0:
        return chosen_s
    if not math.isfinite(end_s) or math.ceil(end_s / window_s) <= max_windows:
        return window_s
    exponent = math.floor(math.log10(end_s / (window_s * max_windows)))
    while True:  # at most four steps: this decade's 1, 2, 5 or the next one's 1
        for factor in _NICE_FACTORS:
            width = float(f"{window_s * factor * 10.0 ** exponent:.12g}")  # 200.0, not 200.00000000000003
            if math.ceil(end_s / width) <= max_windows:  # as `timeseries` counts them
                return width
        exponent += 1


def timeseries(frame: pd.DataFrame, window_s: float, end_s: float | None = None,
               versions: Sequence[str] = ()) -> pd.DataFrame:
    """Per-window offered rate (by send time), throughput (answers completed in the window,
    by finish time), latency percentiles of those answers, and queue length and in-flight at
    each window's end, all from the per-request table in O(requests log requests); then the
    same per version (`_version_series`: `offered_rate@V`, ..., `error_rate@V`, `accuracy@V`),
    for `versions` in that order and any other version the records name.

    A request is in flight from its arrival until its outcome (finish_s, whatever the status);
    it waits until it is served or gets its outcome, whichever comes first (a client may give
    up before the server starts it). A request with no outcome (cut short, never sent) stays
    in flight, and waiting if never started, to the end: it was owed an answer. With
    arrival <= left queue <= finish per request, 0 <= queue_len <= in_flight in every window.
    Shadow copies are not offered load: they are left out here, as in `summarize`."""
    frame = primary(frame)
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    finish = frame["finish_s"].to_numpy(dtype=float)
    start = frame["start_s"].to_numpy(dtype=float)
    if end_s is None:
        end_s = float(np.nanmax(finish)) if np.isfinite(finish).any() else window_s
    n_windows = max(1, int(math.ceil(end_s / window_s)))
    edges = np.arange(n_windows + 1) * window_s
    ok = (frame["status"].to_numpy(dtype=object) == "ok")
    sent = np.histogram(arrival, edges)[0]
    done = np.histogram(finish[ok], edges)[0]
    lat = frame["latency_s"].to_numpy(dtype=float)[ok]
    p50, p99 = _window_percentiles(lat, finish[ok], edges)
    rows = {"latency_p50_s": p50, "latency_p99_s": p99}
    ends = edges[1:]
    arrived = np.searchsorted(np.sort(arrival), ends, side="right")
    left_queue = np.searchsorted(_left_at(arrival, np.fmin(start, finish)), ends, side="right")
    finished = np.searchsorted(_left_at(arrival, finish), ends, side="right")
    return pd.DataFrame(
        {
            "window_start_s": edges[:-1],
            "offered_rate": sent / window_s,
            "throughput": done / window_s,
            **rows,
            "queue_len": arrived - left_queue,
            "in_flight": arrived - finished,
            **_version_series(frame, edges, window_s, versions),
        }
    )


def _window_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Per (window, version): requests, ok, latency p50/p99 of the ok, judged and right."""
    return table.groupby(["window", "version"], sort=True).agg(
        requests=("ok", "size"), ok=("ok", "sum"),
        latency_p50_s=("latency_s", lambda x: x.quantile(0.5)),
        latency_p99_s=("latency_s", lambda x: x.quantile(0.99)),
        judged=("correct", "count"), right=("correct", "sum"))


def version_windows(frame: pd.DataFrame, window_s: float, weights: Sequence[tuple[float, Sequence[float]]] = (),
                    versions: Sequence[str] = ()) -> pd.DataFrame:
    """rollout.parquet: per window (by send time) and version, requests, answered, errors
    (anything not answered) and their `error_rate` (errors / requests), latency p50/p99 of the
    answered, `accuracy` (right among the judged answers; NaN when none was judged), and the
    version's traffic weight at the window's start (`weights`: (time, weights) changes in
    order). Shadow copies count apart, in `shadow_requests`, `shadow_error_rate` and
    `shadow_accuracy` of the version that answered them. O(requests)."""
    routed = frame[frame["version"].astype(str) != ""]
    ok = routed["status"].to_numpy(dtype=object) == "ok"
    correct = _correct_codes(routed)
    table = pd.DataFrame({
        "window": (routed["arrival_s"].to_numpy(dtype=float) // window_s).astype(np.int64),
        "version": routed["version"].astype(str).to_numpy(),
        "ok": ok,
        "latency_s": np.where(ok, routed["latency_s"].to_numpy(dtype=float), np.nan),
        "correct": np.where(ok, correct, np.nan),
    })
    shadow = routed["shadow"].to_numpy(dtype=bool)
    out = _window_groups(table[~shadow])
    copies = _window_groups(table[shadow])
    out = out.join(copies[["requests", "ok", "judged", "right"]].add_prefix("shadow_"), how="outer").reset_index()
    counts = ["requests", "ok", "judged", "right", "shadow_requests", "shadow_ok", "shadow_judged", "shadow_right"]
    if versions and len(out):  # a version that got nothing in a window is a row of zeros, not a gap
        full = pd.MultiIndex.from_product([range(int(out["window"].max()) + 1), list(versions)], names=["window", "version"])
        out = out.set_index(["window", "version"]).reindex(full).reset_index()
    out[counts] = out[counts].fillna(0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["errors"] = out["requests"] - out["ok"]
        out["error_rate"] = out["errors"] / out["requests"].where(out["requests"] > 0)
        out["accuracy"] = out["right"] / out["judged"].where(out["judged"] > 0)
        out["shadow_error_rate"] = (out["shadow_requests"] - out["shadow_ok"]) / out["shadow_requests"].where(out["shadow_requests"] > 0)
        out["shadow_accuracy"] = out["shadow_right"] / out["shadow_judged"].where(out["shadow_judged"] > 0)
    out["window_start_s"] = out["window"] * window_s
    weight = np.full(len(out), np.nan)
    if weights and versions:
        times = np.array([t for t, _ in weights])
        index = {name: i for i, name in enumerate(versions)}
        at = np.searchsorted(times, out["window_start_s"].to_numpy(), side="right") - 1
        for row, (k, name) in enumerate(zip(at, out["version"])):
            if k >= 0:
                weight[row] = weights[k][1][index[name]]
    out["weight"] = weight
    return out[["window_start_s", "version", "weight", "requests", "ok", "errors", "error_rate", "latency_p50_s",
                "latency_p99_s", "judged", "accuracy", "shadow_requests", "shadow_error_rate", "shadow_accuracy"]]
