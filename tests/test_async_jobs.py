"""Asynchronous serving's bookkeeping (issue 14): submissions, results, expiry, refusals, and
what a polling client observes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.policy.async_jobs import DONE, PENDING, UNKNOWN, AsyncJobs, PollSchedule, Refused, Submitted


def test_a_submission_is_pending_then_done_then_gone_after_its_ttl() -> None:
    jobs = AsyncJobs(max_pending=4, ttl_s=10.0)
    s = jobs.submit(0.0)
    assert isinstance(s, Submitted) and jobs.poll(s.request_id, 0.5).state == PENDING
    jobs.complete(s.request_id, 1.0, {"label": 3})
    assert jobs.poll(s.request_id, 10.9) == jobs.poll(s.request_id, 1.0)
    assert jobs.poll(s.request_id, 10.9).state == DONE and jobs.poll(s.request_id, 10.9).result == {"label": 3}
    assert jobs.poll(s.request_id, 11.0).state == UNKNOWN and jobs.expired == 1  # ttl_s after it was ready


def test_an_unknown_id_is_unknown() -> None:
    assert AsyncJobs(max_pending=1, ttl_s=1.0).poll("nope", 0.0).state == UNKNOWN


def test_a_full_queue_refuses_with_retry_after_and_takes_more_once_one_finishes() -> None:
    jobs = AsyncJobs(max_pending=2, ttl_s=5.0, retry_after_s=0.5)
    first, _ = jobs.submit(0.0), jobs.submit(0.0)
    assert jobs.submit(0.1) == Refused(0.5) and jobs.refused == 1
    assert isinstance(first, Submitted)
    jobs.complete(first.request_id, 0.2, "ok")
    assert isinstance(jobs.submit(0.3), Submitted) and jobs.pending == 2


def test_an_id_in_use_is_refused_as_a_bug_and_completing_twice_too() -> None:
    jobs = AsyncJobs(max_pending=3, ttl_s=5.0)
    jobs.submit(0.0, "r1")
    with pytest.raises(ValueError):
        jobs.submit(0.0, "r1")
    jobs.complete("r1", 1.0, None)
    with pytest.raises(KeyError):
        jobs.complete("r1", 1.0, None)


@given(st.lists(st.tuples(st.sampled_from(["submit", "complete", "poll"]), st.floats(0, 1)), max_size=60))
def test_every_submission_is_pending_done_or_expired_exactly_once(ops: list[tuple[str, float]]) -> None:
    jobs = AsyncJobs(max_pending=5, ttl_s=2.0)
    now, ids, done = 0.0, [], set()
    for op, dt in ops:
        now += dt
        if op == "submit":
            s = jobs.submit(now)
            if isinstance(s, Submitted):
                ids.append(s.request_id)
        elif op == "complete":
            waiting = [i for i in ids if i not in done]
            if waiting:
                jobs.complete(waiting[0], now, waiting[0])
                done.add(waiting[0])
        else:
            for i in ids:
                jobs.poll(i, now)
    states = [jobs.poll(i, now).state for i in ids]
    assert jobs.submitted == len(ids) and jobs.pending == states.count(PENDING) <= 5
    assert states.count(DONE) + jobs.expired == len(done)


def test_a_polling_client_learns_of_a_result_at_its_first_poll_after_it() -> None:
    polls = PollSchedule(first_s=0.01, backoff=2.0, max_interval_s=0.1)  # polls at 0.01, 0.03, 0.07, 0.15, 0.25, ...
    assert polls.observed(0.0) == (0.01, 1)
    assert polls.observed(0.02) == pytest.approx((0.03, 2))
    assert polls.observed(0.07) == pytest.approx((0.07, 3))
    assert polls.observed(0.2) == pytest.approx((0.25, 5))


@given(st.floats(0, 5), st.floats(0, 5))
def test_a_later_result_is_never_observed_sooner_nor_with_fewer_polls(a: float, b: float) -> None:
    polls = PollSchedule(first_s=0.02, backoff=1.5, max_interval_s=0.5)
    early, late = sorted((a, b))
    (t_early, n_early), (t_late, n_late) = polls.observed(early), polls.observed(late)
    assert early <= t_early and t_early <= t_late and n_early <= n_late
    assert t_late - late <= 0.5 + 1e-12  # never more than one capped interval late
