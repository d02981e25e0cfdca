"""What every run's records must satisfy, sim or real: one helper both worlds' tests call.

A capacity planner reads summaries computed from these tables; a row that breaks one of these
(a request twice, a start after its finish, a batch whose members disagree) silently corrupts
utilisation, queue length and latency figures, so tests check the whole table, not samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.records import STATUSES

UNANSWERED = ("timeout", "error")  # statuses whose row may have lost its batch (no answer came back)


def assert_record_invariants(frame: pd.DataFrame, series: pd.DataFrame | None = None, *,
                             scheduled: int | None = None) -> None:
    """Raise AssertionError naming the first broken invariant of a requests table (and its
    time series, if given). `scheduled`: how many requests the schedule held, when known."""
    _each_request_once(frame, scheduled)
    _statuses_allowed(frame)
    _times_ordered(frame)
    _batches_consistent(frame)
    if series is not None:
        _queue_within_in_flight(series)


def _each_request_once(frame: pd.DataFrame, scheduled: int | None) -> None:
    ids = frame["request_id"].to_numpy(dtype=np.int64)
    n = len(ids) if scheduled is None else scheduled
    assert len(ids) == n, f"{len(ids)} rows for {n} scheduled requests"
    assert np.array_equal(np.sort(ids), np.arange(n)), "request ids are not each of 0..n-1 exactly once"


def _statuses_allowed(frame: pd.DataFrame) -> None:
    bad = sorted(set(frame["status"].astype(str)) - set(STATUSES))
    assert not bad, f"statuses {bad} not in {STATUSES}"


def _times_ordered(frame: pd.DataFrame) -> None:
    """arrival <= start <= finish wherever a start exists; every ok row has one."""
    arrival, start, finish = (frame[c].to_numpy(dtype=float) for c in ("arrival_s", "start_s", "finish_s"))
    ok = frame["status"].to_numpy(dtype=object) == "ok"
    assert np.isfinite(start[ok]).all() and np.isfinite(finish[ok]).all(), "an ok row without start or finish"
    has = np.isfinite(start)
    early = has & (start < arrival)
    assert not early.any(), f"{int(early.sum())} rows start before they arrive, e.g. {_row(frame, early)}"
    late = has & np.isfinite(finish) & (start > finish)
    assert not late.any(), f"{int(late.sum())} rows start after they finish, e.g. {_row(frame, late)}"


def _batches_consistent(frame: pd.DataFrame) -> None:
    """A batch id names one batch in the run: one replica, one start, one size, as many members
    as its size. A member whose answer never reached the client may have lost its batch (it is
    then a timeout or error row without one), so batches may fall short by at most that many."""
    batch_id = frame["batch_id"].to_numpy(dtype=np.int64)
    size = frame["batch_size"].to_numpy(dtype=np.int64)
    in_batch = batch_id >= 0
    assert np.array_equal(in_batch, size > 0), "batch_id >= 0 exactly where batch_size > 0"
    ok = frame["status"].to_numpy(dtype=object) == "ok"
    assert in_batch[ok].all(), "an ok row that ran in no batch"
    members = frame[in_batch]
    if members.empty:
        return
    per_batch = members.groupby("batch_id").agg(
        replicas=("replica", "nunique"), starts=("start_s", "nunique"), sizes=("batch_size", "nunique"),
        size=("batch_size", "first"), count=("request_id", "size"))
    for what in ("replicas", "starts", "sizes"):
        split = per_batch.index[per_batch[what].to_numpy() != 1]
        assert not len(split), f"batch {int(split[0])}: members disagree on {what[:-1]}"
    short = per_batch["size"].to_numpy() - per_batch["count"].to_numpy()
    assert (short >= 0).all(), f"batch {int(per_batch.index[np.argmin(short)])} has more members than its batch_size"
    lost = int((frame["status"].isin(UNANSWERED).to_numpy() & ~in_batch).sum())
    assert int(short.sum()) <= lost, (f"batches miss {int(short.sum())} members but only {lost} unanswered rows "
                                      f"could have lost theirs, e.g. batch {int(per_batch.index[np.argmax(short)])}")


def _queue_within_in_flight(series: pd.DataFrame) -> None:
    queue, in_flight = series["queue_len"].to_numpy(), series["in_flight"].to_numpy()
    assert (queue >= 0).all(), f"negative queue length in window {int(np.argmin(queue))}"
    over = np.flatnonzero(queue > in_flight)
    assert not len(over), f"queue length above in-flight in window {int(over[0]) if len(over) else -1}"


def _row(frame: pd.DataFrame, mask: np.ndarray) -> dict[str, object]:
    return frame[mask].iloc[0][["request_id", "arrival_s", "start_s", "finish_s", "batch_id", "status"]].to_dict()
