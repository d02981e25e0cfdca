"""The twin of async serving (sim/async_serving.py): queueing theory where it applies, the poll
schedule's effect on what a client observes, admission, batch formation, and every submission
ending in exactly one record."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.run_sim import simulate
from sim.async_serving import AsyncTwin, async_capacity_rps, observe, polls_before
from sim.config import AsyncJobsConfig, ConfigError, OverheadConfig, ScenarioConfig, validate
from sim.policy.async_jobs import PollSchedule
from sim.records import OK, STATUSES, TIMEOUT, requests_frame
from tests.conftest import scenario
from tests.test_queueing import assert_close, batch_means

MU = 100.0  # service rate of a worker at batch size 1, 1/s


def async_scenario(jobs: dict[str, Any] | None = None, **overrides: Any) -> ScenarioConfig:
    """An async scenario with no time outside queue and model unless asked: the workers' queue
    alone, as the formulas see it."""
    base = dict(workers=1, batch_size=1, batch_overhead_s=0.0, poll_first_s=0.01, poll_backoff=1.0, poll_max_interval_s=0.01)
    cfg = scenario(pattern="async", async_jobs=AsyncJobsConfig(**{**base, **(jobs or {})}), **overrides)
    validate(cfg)
    return cfg


def run_async(cfg: ScenarioConfig) -> pd.DataFrame:
    return requests_frame(AsyncTwin(cfg).run().columns)


def ready_after(frame: pd.DataFrame, warmup_s: float) -> np.ndarray:
    ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= warmup_s)]
    return (ok["ready_s"] - ok["arrival_s"]).to_numpy(dtype=float)


@pytest.mark.slow
def test_one_worker_batch_of_one_is_mm1_until_ready() -> None:
    rho = 0.7
    cfg = async_scenario(duration_s=3000.0, warmup_s=50.0, arrival=dict(rate=rho * MU),
                         service=dict(kind="exponential", base_s=1 / MU, per_item_s=0.0))
    mean, se = batch_means(ready_after(run_async(cfg), cfg.warmup_s))
    assert_close("async M/M/1 submit -> ready", mean, se, 1 / (MU - rho * MU))


@pytest.mark.slow
def test_one_worker_batch_of_one_is_md1_until_ready() -> None:
    rho = 0.8
    cfg = async_scenario(duration_s=2000.0, warmup_s=50.0, arrival=dict(rate=rho * MU),
                         service=dict(kind="deterministic", base_s=1 / MU, per_item_s=0.0))
    mean, se = batch_means(ready_after(run_async(cfg), cfg.warmup_s))
    assert_close("async M/D/1 submit -> ready (P-K)", mean, se, rho / (2 * MU * (1 - rho)) + 1 / MU)


def test_a_client_learns_at_its_first_poll_after_the_result_is_written() -> None:
    """With nothing outside the queue, a client observes exactly the schedule's first poll at
    or after its result was written (one round trip of the worker's after ready), and made the
    schedule's number of polls."""
    schedule, write_s = PollSchedule(0.005, 2.0, 0.04), 0.002
    cfg = async_scenario(dict(workers=2, batch_size=4, batch_overhead_s=write_s, poll_first_s=0.005, poll_backoff=2.0,
                              poll_max_interval_s=0.04),
                         duration_s=20.0, arrival=dict(rate=300.0), service=dict(kind="exponential", base_s=0.01, per_item_s=0.002))
    frame = run_async(cfg)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == len(frame)
    expected = [schedule.observed(r + write_s) for r in (ok["ready_s"] - ok["arrival_s"]).tolist()]
    assert np.allclose(ok["latency_s"].to_numpy(dtype=float), [t for t, _ in expected], rtol=0, atol=1e-9)
    assert ok["polls"].tolist() == [p for _, p in expected]
    # and the worker's read before the model is queue time: start = ready - service
    assert np.allclose(ok["start_s"] + ok["service_s"], ok["ready_s"])


def test_a_fixed_poll_interval_adds_the_residual_to_the_next_poll() -> None:
    """Polling every d, a client learns at the first multiple of d at or after ready. One
    worker, batches of one, Poisson arrivals, exponential service: the time to ready is
    exponential with rate theta = mu - lambda (M/M/1), so what polling adds has mean
    E[d ceil(X / d) - X] = d / (1 - exp(-theta d)) - 1 / theta (d / 2 only when theta d -> 0),
    and it costs ceil(X / d) polls."""
    d, lam = 0.02, 60.0
    cfg = async_scenario(dict(poll_first_s=d, poll_backoff=1.0, poll_max_interval_s=d), duration_s=300.0, warmup_s=10.0,
                         arrival=dict(rate=lam), service=dict(kind="exponential", base_s=1 / MU, per_item_s=0.0))
    frame = run_async(cfg)
    ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= cfg.warmup_s)]
    overhead = (ok["latency_s"] - (ok["ready_s"] - ok["arrival_s"])).to_numpy(dtype=float)
    theta = MU - lam
    mean, se = batch_means(overhead)
    assert_close("poll overhead", mean, se, d / (1 - math.exp(-theta * d)) - 1 / theta)
    assert ok["polls"].tolist() == [math.ceil(x / d - 1e-9) for x in ok["latency_s"].tolist()]


def test_a_callback_tells_the_client_a_way_out_after_the_result_is_written_with_no_poll() -> None:
    cfg = async_scenario(dict(callback=True, batch_overhead_s=0.0005), duration_s=5.0, arrival=dict(rate=100.0),
                         overhead=dataclasses.replace(ScenarioConfig().overhead, before_s=0.001, after_s=0.002))
    ok = run_async(cfg)
    assert (ok["status"] == "ok").all() and (ok["polls"] == 0).all()
    assert np.allclose(ok["finish_s"] - ok["ready_s"], 0.0005 + 0.002)


def test_workers_take_what_waits_up_to_the_batch_size() -> None:
    """A burst (everything at once) fills batches to async_jobs.batch_size; a trickle far
    below capacity is served one at a time (a worker never waits for a fuller batch)."""
    burst = async_scenario(dict(workers=2, batch_size=8), duration_s=1.0, arrival=dict(kind="constant", rate=2000.0),
                           service=dict(kind="deterministic", base_s=0.01, per_item_s=0.001))
    sizes = run_async(burst)["batch_size"]
    assert sizes.max() == 8 and (sizes >= 1).all()
    trickle = async_scenario(dict(workers=2, batch_size=8), duration_s=5.0, arrival=dict(kind="constant", rate=10.0),
                             service=dict(kind="deterministic", base_s=0.001, per_item_s=0.0))
    assert (run_async(trickle)["batch_size"] == 1).all()


def test_no_more_than_max_pending_are_ever_waiting_or_running() -> None:
    cfg = async_scenario(dict(max_pending=5, batch_size=2), duration_s=5.0, arrival=dict(rate=400.0),
                         service=dict(kind="deterministic", base_s=0.01, per_item_s=0.0))
    frame = run_async(cfg)
    accepted = frame[frame["status"] != "shed"]
    assert (frame["status"] == "shed").sum() > 0  # the load is twice what one worker carries
    # pending from submission (no way in here) to ready: at each submission, how many were
    submitted, ready = accepted["arrival_s"].to_numpy(), frame.loc[accepted.index, "ready_s"].to_numpy()
    pending = [((submitted <= t) & (ready > t)).sum() for t in submitted]
    assert max(pending) <= 5


CASES = {
    "plain": dict(),
    "refusing": dict(jobs=dict(max_pending=3)),
    "client deadline": dict(timeout_s=0.03),
    "results expire": dict(jobs=dict(result_ttl_s=0.005, poll_first_s=0.02, poll_max_interval_s=0.02)),
    "callback": dict(jobs=dict(callback=True)),
    "with overheads": dict(jobs=dict(batch_overhead_s=0.001, workers=3, batch_size=4),
                           overhead=dataclasses.replace(ScenarioConfig().overhead, before_s=0.0005, after_s=0.0005)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_submission_ends_in_exactly_one_record(case: str) -> None:
    kw = dict(CASES[case])
    cfg = async_scenario(kw.pop("jobs", None), duration_s=4.0, arrival=dict(rate=250.0),
                         service=dict(kind="exponential", base_s=0.005, per_item_s=0.001), **kw)
    result = AsyncTwin(cfg).run()
    frame = requests_frame(result.columns)
    n = len(AsyncTwin(cfg).run().columns["arrival_s"])  # the schedule the seed gives, again
    assert frame["request_id"].tolist() == list(range(n))
    assert set(frame["status"]) <= set(STATUSES)
    assert frame["finish_s"].notna().all() and (frame["finish_s"] >= frame["arrival_s"]).all()
    served = frame[frame["batch_id"] >= 0]
    assert ((served["arrival_s"] <= served["start_s"]) & (served["start_s"] <= served["finish_s"])).all()
    ok = frame[frame["status"] == "ok"]
    assert (ok["ready_s"] <= ok["finish_s"] + 1e-12).all() and ok["ready_s"].notna().all()
    assert frame[frame["status"] != "ok"]["ready_s"].isna().all()
    if cfg.timeout_s > 0:
        assert (frame["latency_s"] <= cfg.timeout_s + 1e-9).all()
    if cfg.async_jobs.callback:
        assert (frame["polls"] == 0).all()


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(workers=st.integers(1, 3), batch_size=st.integers(1, 8), max_pending=st.integers(1, 40),
       rate=st.floats(20.0, 600.0), timeout_s=st.sampled_from([0.0, 0.02, 0.2]), ttl_s=st.sampled_from([0.005, 60.0]),
       callback=st.booleans(), backoff=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 3))
def test_any_async_run_accounts_for_every_submission_once(workers: int, batch_size: int, max_pending: int, rate: float,
                                                           timeout_s: float, ttl_s: float, callback: bool, backoff: float,
                                                           seed: int) -> None:
    jobs = dict(workers=workers, batch_size=batch_size, max_pending=max_pending, result_ttl_s=ttl_s, callback=callback,
                poll_first_s=0.01, poll_backoff=backoff, poll_max_interval_s=0.04, batch_overhead_s=0.0005)
    cfg = async_scenario(jobs, seed=seed, duration_s=1.0, timeout_s=timeout_s, arrival=dict(rate=rate),
                         service=dict(kind="exponential", base_s=0.004, per_item_s=0.001))
    frame = run_async(cfg)
    assert frame["request_id"].tolist() == list(range(len(frame)))
    assert frame["finish_s"].notna().all() and (frame["latency_s"] >= 0).all()
    ok = frame["status"] == "ok"
    assert (frame["ready_s"].notna() == ok).all() and (frame.loc[ok, "ready_s"] <= frame.loc[ok, "finish_s"]).all()
    assert (frame.loc[ok, "batch_size"].between(1, batch_size)).all()
    assert (frame.loc[frame["status"] == "shed", "polls"] == 0).all()
    if timeout_s > 0:
        assert (frame["latency_s"] <= timeout_s + 1e-9).all()


def test_each_case_shows_its_outcome() -> None:
    """The cases above are not vacuous: each one's defining outcome happens."""
    def statuses(**kw: Any) -> pd.Series:
        cfg = async_scenario(kw.pop("jobs", None), duration_s=4.0, arrival=dict(rate=250.0),
                             service=dict(kind="exponential", base_s=0.005, per_item_s=0.001), **kw)
        return run_async(cfg)["status"]

    assert (statuses(jobs=CASES["refusing"]["jobs"]) == "shed").any()
    assert (statuses(timeout_s=0.03) == "timeout").any()
    assert (statuses(jobs=CASES["results expire"]["jobs"]) == "error").any()


def test_observe_counts_only_the_polls_sent_before_the_deadline() -> None:
    schedule = PollSchedule(0.01, 1.0, 0.01)
    late = observe(schedule, stored_s=0.5, answered_s=0.0, way_in_s=0.0, way_out_s=0.0, timeout_s=0.095, ttl_s=60.0)
    assert (late.status, late.learned_s, late.polls) == (TIMEOUT, 0.095, 9)  # polls at 0.01 .. 0.09
    assert polls_before(schedule, 0.0) == 0 and polls_before(None, 1.0) == 0
    on_time = observe(schedule, stored_s=0.031, answered_s=0.001, way_in_s=0.0005, way_out_s=0.0005, timeout_s=1.0, ttl_s=60.0)
    assert on_time.status == OK and on_time.polls == 3 and on_time.learned_s == pytest.approx(0.001 + 0.03 + 0.001)


def test_mode_sim_summarises_the_async_run() -> None:
    cfg = async_scenario(dict(workers=2, batch_size=4), duration_s=5.0, arrival=dict(rate=200.0),
                         service=dict(kind="exponential", base_s=0.005, per_item_s=0.001))
    frame, summary, series = simulate(cfg)
    block = summary["async"]
    measured = frame[frame["arrival_s"] >= cfg.warmup_s]
    assert block["submitted"] == len(measured) == block["accepted"] + block["refused"]
    assert block["ready_latency_s"]["p50"] <= block["observed_latency_s"]["p50"]
    assert block["poll_overhead_s_mean"] > 0 and block["polls_per_request"] >= 1
    assert set(summary["utilisation"]) == {"0", "1"}  # one per worker
    assert "async" not in simulate(scenario(duration_s=2.0))[1]


def test_a_busy_worker_pays_one_round_trip_a_batch_an_idle_one_two() -> None:
    """Saturated, a worker runs batch after batch: service + the results' write each, so its
    throughput is async_capacity_rps; a worker woken from idle reads its entry a round trip
    late, which shows as queue time."""
    rtt = 0.002
    busy = async_scenario(dict(batch_overhead_s=rtt, max_pending=50), duration_s=30.0, warmup_s=5.0,
                          arrival=dict(kind="constant", rate=300.0), service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0))
    frame, summary, _ = simulate(busy)
    assert summary["throughput"] == pytest.approx(async_capacity_rps(busy), rel=0.01)
    assert async_capacity_rps(busy) == pytest.approx(1 / (0.004 + rtt))
    idle = async_scenario(dict(batch_overhead_s=rtt), duration_s=5.0, arrival=dict(kind="constant", rate=10.0),
                          service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0))
    assert np.allclose(run_async(idle)["queue_s"], rtt)


def test_submit_and_poll_ways_are_the_sync_overhead_scaled_by_the_measured_path_ratios() -> None:
    """A submit and a poll stop at the gateway and Redis: the twin scales the sync request's way
    (before_s, after_s) by the ratios mode=profile measured. With the first poll well after the
    result, a client learns of it at submit's two ways + the first poll + the poll's two ways."""
    from sim.async_serving import AsyncWayScale

    cfg = async_scenario(dict(poll_first_s=0.1, poll_max_interval_s=0.1), duration_s=3.0, warmup_s=0.0,
                         overhead=OverheadConfig(before_s=0.002, after_s=0.002), arrival=dict(kind="constant", rate=20.0),
                         service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0))

    def learned(scale: AsyncWayScale | None) -> np.ndarray:
        frame = requests_frame(AsyncTwin(cfg, way_scale=scale).run().columns)
        assert (frame["status"] == "ok").all() and (frame["polls"] == 1).all()
        return frame["latency_s"].to_numpy(dtype=float)

    assert learned(None) == pytest.approx(0.004 + 0.1 + 0.004)
    assert learned(AsyncWayScale(submit=0.5, poll=0.25)) == pytest.approx(0.002 + 0.1 + 0.001)


def test_way_ratios_come_from_the_medians_the_profile_measured_on_one_stack() -> None:
    from sim.async_serving import AsyncWayScale

    measured = {"async_sync_s": [0.002, 0.003, 0.004], "async_submit_s": [0.001, 0.0015, 0.01], "async_poll_s": [0.0006, 0.0009, 0.0012]}
    scale = AsyncWayScale.from_overheads(measured)
    assert (scale.submit, scale.poll) == pytest.approx((0.5, 0.3))
    assert AsyncWayScale.from_overheads({"before_s": [0.001]}) == AsyncWayScale()  # a profile from before: the sync way


def test_the_real_side_quotes_the_workers_capacity_as_the_twin_does() -> None:
    """An async stack's capacity is what its workers finish (the replicas serve no async
    request): mode=real and compare quote the figure the twin's summary does; 1 worker taking
    batches of 1 carries far less than 2 replicas batching 16."""
    from scenarios.run_real import known_capacity
    from sim.service import capacity_rps

    cfg = async_scenario(dict(workers=1, batch_size=1, batch_overhead_s=0.001),
                         service=dict(kind="deterministic", base_s=0.004, per_item_s=0.0005))
    twin_summary = simulate(cfg)[1]
    assert known_capacity(cfg) == pytest.approx(twin_summary["capacity_rps"]) == pytest.approx(1 / (0.0045 + 0.001))
    assert known_capacity(cfg) < capacity_rps(dataclasses.replace(cfg, pattern="sync")) / 5


def test_async_serving_with_a_feature_store_is_refused_naming_the_key() -> None:
    """The workers serve each request on its own input: a run whose lookups never happen would
    pass for one that modelled them."""
    cfg = dataclasses.replace(ScenarioConfig(), pattern="async")
    cfg.features.store = "embedded"
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == "features.store" and "pattern=async" in str(info.value)
    cfg.features.store = "none"
    validate(cfg)
