"""The twin request by request: exact recursions, the batching rule, accounting, determinism."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.arrivals import make_schedule
from sim.config import ConfigError, OverheadConfig
from sim.records import COLUMNS, STATUSES, requests_frame, summarize, timeseries
from sim.service import capacity_rps
from sim.twin import Twin
from sim.rng import make_streams
from tests.conftest import scenario, twin_requests


def test_fifo_single_server_satisfies_lindley_exactly(run_twin) -> None:
    cfg = scenario(duration_s=60.0, replicas=1, arrival=dict(rate=80.0),
                   service=dict(kind="exponential", base_s=0.01, per_item_s=0.0),
                   batching=dict(max_batch_size=1, max_queue_delay_s=0.0))
    f = run_twin(cfg)
    arrival, start, finish = (f[c].to_numpy() for c in ("arrival_s", "start_s", "finish_s"))
    # start_n = max(arrival_n, finish_{n-1}): the waiting-time recursion, to the last bit
    expected_start = np.maximum(arrival[1:], finish[:-1])
    assert np.array_equal(start[1:], expected_start)
    assert start[0] == arrival[0]
    assert np.array_equal(finish, start + f["service_s"].to_numpy())


@pytest.mark.parametrize("max_batch, delay", [(4, 0.003), (8, 0.0), (16, 0.02), (1, 0.0)])
def test_batches_obey_the_dispatch_rule_exactly(run_twin, max_batch: int, delay: float) -> None:
    cfg = scenario(duration_s=30.0, replicas=1, arrival=dict(rate=400.0),
                   service=dict(kind="lognormal", base_s=0.004, per_item_s=0.001, cv=0.3),
                   batching=dict(max_batch_size=max_batch, max_queue_delay_s=delay))
    f = run_twin(cfg).sort_values("arrival_s").reset_index(drop=True)
    arrival = f["arrival_s"].to_numpy()
    start = f["start_s"].to_numpy()
    size = f["batch_size"].to_numpy()
    finish = f["finish_s"].to_numpy()
    j, free_at, batches = 0, 0.0, 0
    while j < len(f):
        # FIFO: a batch is the next `size` requests in arrival order, all starting together
        k = size[j]
        assert 1 <= k <= max_batch
        assert np.all(start[j:j + k] == start[j]) and np.all(size[j:j + k] == k)
        full_at = arrival[j + max_batch - 1] if j + max_batch - 1 < len(f) else math.inf
        due = min(full_at, arrival[j] + delay)
        assert start[j] == pytest.approx(max(free_at, due), abs=1e-9), f"batch at request {j}"
        waiting = int(np.searchsorted(arrival, start[j], side="right")) - j
        assert k == min(waiting, max_batch), f"batch at request {j} took {k} of {waiting} waiting"
        free_at = finish[j]
        j += k
        batches += 1
    assert batches > 100


def test_overload_throughput_is_capacity_and_the_rest_is_shed(run_twin) -> None:
    replicas, batch, base, per_item = 2, 8, 0.004, 0.001
    capacity = replicas * batch / (base + per_item * batch)
    cfg = scenario(duration_s=30.0, warmup_s=5.0, replicas=replicas, arrival=dict(rate=3 * capacity),
                   service=dict(kind="deterministic", base_s=base, per_item_s=per_item),
                   batching=dict(max_batch_size=batch, max_queue_delay_s=0.001, max_queue_size=32))
    f = run_twin(cfg)
    s = summarize(f, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=replicas, concurrency=1)
    assert s["throughput"] == pytest.approx(capacity, rel=0.01)
    assert s["batch_size_mean_per_batch"] == pytest.approx(batch, rel=0.001)
    assert s["batch_size_mean_per_request"] == pytest.approx(batch, rel=0.001)
    assert s["status_counts"]["shed"] + s["status_counts"]["ok"] == s["requests_measured"]
    assert s["shed_fraction"] == pytest.approx(1 - capacity / (3 * capacity), abs=0.02)
    shed = f[f["status"] == "shed"]
    assert shed["start_s"].isna().all() and (shed["latency_s"] == 0).all()


configs = st.fixed_dictionaries(
    {
        "replicas": st.integers(1, 4),
        "concurrency": st.integers(1, 3),
        "timeout_s": st.sampled_from([0.0, 0.02, 0.2]),
        "arrival": st.fixed_dictionaries({"kind": st.sampled_from(["poisson", "constant", "bursty", "diurnal", "closed"]),
                                          "rate": st.floats(20.0, 3000.0), "users": st.integers(1, 40)}),
        "lb": st.fixed_dictionaries({"policy": st.sampled_from(["random", "round_robin", "least_outstanding", "p2c"])}),
        "service": st.fixed_dictionaries({"kind": st.sampled_from(["deterministic", "exponential", "lognormal"]),
                                          "base_s": st.floats(0.0005, 0.02), "per_item_s": st.floats(0.0, 0.003)}),
        "batching": st.fixed_dictionaries({"max_batch_size": st.integers(1, 16), "max_queue_delay_s": st.floats(0.0, 0.01),
                                           "max_queue_size": st.integers(0, 20)}),
        "seed": st.integers(0, 1000),
    }
)


@given(configs)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_request_is_accounted_for_exactly_once(overrides: dict) -> None:
    cfg = scenario(duration_s=1.0, warmup_s=0.1, **overrides)
    f = twin_requests(cfg)
    assert list(f["request_id"]) == list(range(len(f)))
    assert set(f["status"]) <= set(STATUSES) and "error" not in set(f["status"])
    served = f[f["batch_size"] > 0]
    assert (served["batch_size"] <= cfg.batching.max_batch_size).all()
    assert (served["start_s"] >= served["arrival_s"] - 1e-12).all()
    ok = f[f["status"] == "ok"]
    assert (ok["finish_s"] >= ok["start_s"]).all()
    if cfg.timeout_s > 0:
        assert (f["latency_s"] <= cfg.timeout_s + 1e-9).all()
        assert np.allclose(f.loc[f["status"] == "timeout", "latency_s"], cfg.timeout_s, rtol=0, atol=1e-9)
    if cfg.batching.max_queue_size == 0:
        assert not (f["status"] == "shed").any()
    if cfg.arrival.kind == "closed":  # a user has at most one request outstanding
        for _, g in f.sort_values("arrival_s").groupby("user_id"):
            assert (g["arrival_s"].to_numpy()[1:] >= g["finish_s"].to_numpy()[:-1] - 1e-12).all()


def test_same_seed_same_requests_parquet(run_twin) -> None:
    cfg = scenario(duration_s=5.0, replicas=3, arrival=dict(rate=500.0))

    def parquet_bytes() -> bytes:
        buf = io.BytesIO()
        run_twin(cfg).to_parquet(buf, index=False)
        return buf.getvalue()

    assert parquet_bytes() == parquet_bytes()
    other = scenario(duration_s=5.0, replicas=3, arrival=dict(rate=500.0), seed=1)
    assert not run_twin(other).equals(run_twin(cfg))


@pytest.mark.parametrize("kind, expected_rate", [("poisson", 500.0), ("constant", 500.0), ("diurnal", 500.0), ("bursty", 250.0)])
def test_arrival_processes_hold_their_mean_rate(kind: str, expected_rate: float) -> None:
    cfg = scenario(duration_s=400.0, arrival=dict(kind=kind, rate=500.0, high_rate=400.0, low_rate=100.0,
                                                   high_dwell_s=1.0, low_dwell_s=1.0, period_s=100.0, amplitude=0.8))
    streams = make_streams(0)
    times = make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users).times_s
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < cfg.duration_s
    assert len(times) / cfg.duration_s == pytest.approx(expected_rate, rel=0.03)
    gaps = np.diff(times)
    cv = gaps.std() / gaps.mean()
    assert {"constant": cv < 1e-6, "poisson": abs(cv - 1) < 0.02, "diurnal": cv > 1.02, "bursty": cv > 1.05}[kind]


def test_diurnal_rate_follows_the_sine() -> None:
    cfg = scenario(duration_s=400.0, arrival=dict(kind="diurnal", rate=500.0, amplitude=0.8, period_s=100.0))
    streams = make_streams(0)
    times = make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users).times_s
    phase = (times % 100.0) / 100.0
    peak = np.sum((phase > 0.2) & (phase < 0.3))  # around sin = 1
    trough = np.sum((phase > 0.7) & (phase < 0.8))  # around sin = -1
    assert peak / trough == pytest.approx((1 + 0.8 * 0.95) / (1 - 0.8 * 0.95), rel=0.15)


def test_trace_replay_scales_time_and_keeps_users(tmp_path, run_twin) -> None:
    path = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": [0.1, 0.2, 0.4, 3.0], "user_id": [7, 8, 7, 9]}).to_csv(path, index=False)
    cfg = scenario(duration_s=2.0, warmup_s=0.0, arrival=dict(kind="trace", path=str(path), time_scale=0.5))
    f = run_twin(cfg)
    assert list(f["arrival_s"]) == [0.05, 0.1, 0.2, 1.5]
    assert list(f["user_id"]) == [7, 8, 7, 9]


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), ("time\n1\n", "needs a column 'arrival_s'"), ("arrival_s\n2\n1\n", "sorted"),
     ("arrival_s\nabc\n", "finite numbers"), ("arrival_s\n", "no rows")],
)
def test_bad_trace_is_a_clear_error(tmp_path, content: str | None, message: str) -> None:
    path = tmp_path / "trace.csv"
    if content is not None:
        path.write_text(content)
    cfg = scenario(arrival=dict(kind="trace", path=str(path)))
    streams = make_streams(0)
    with pytest.raises(ConfigError, match=message) as info:
        make_schedule(cfg.arrival, cfg.duration_s, streams.arrivals, streams.users)
    assert info.value.key == "arrival.path"


def test_closed_loop_throughput_follows_the_interactive_law(run_twin) -> None:
    users, think, service = 10, 0.05, 0.01
    cfg = scenario(duration_s=200.0, warmup_s=10.0, replicas=4, concurrency=4,
                   arrival=dict(kind="closed", users=users, think_s=think),
                   service=dict(kind="deterministic", base_s=service, per_item_s=0.0),
                   batching=dict(max_batch_size=1, max_queue_delay_s=0.0))
    f = run_twin(cfg)
    measured = f[(f["arrival_s"] >= 10.0) & (f["arrival_s"] < 200.0)]
    # no queueing with 16 instances for 10 users: X = N / (Z + R) exactly in expectation
    assert len(measured) / 190.0 == pytest.approx(users / (think + service), rel=0.03)
    assert np.allclose(f["latency_s"], service, rtol=0, atol=1e-9)


def test_network_hop_adds_two_hops_to_every_answer(run_twin) -> None:
    base = scenario(duration_s=20.0, replicas=2, arrival=dict(rate=100.0))
    hop = scenario(duration_s=20.0, replicas=2, arrival=dict(rate=100.0), gateway=base.gateway.__class__(hop_s=0.002))
    a, b = run_twin(base), run_twin(hop)
    assert b["latency_s"].mean() == pytest.approx(a["latency_s"].mean() + 0.004, abs=0.0015)
    assert (b["queue_s"] >= -1e-12).all()


def test_timeseries_counts_add_up(run_twin) -> None:
    cfg = scenario(duration_s=10.0, replicas=2, arrival=dict(rate=300.0))
    f = run_twin(cfg)
    ts = timeseries(f, 1.0, end_s=10.5)
    assert ts["offered_rate"].sum() * 1.0 == len(f)
    assert ts["throughput"].sum() == (f["status"] == "ok").sum()
    assert (ts["in_flight"] >= ts["queue_len"]).all() and (ts["queue_len"] >= 0).all()


def test_overheads_add_to_latency_but_not_to_queueing(run_twin) -> None:
    # one replica: a constant delay before the queue shifts every arrival alike
    plain = scenario(duration_s=20.0, replicas=1, arrival=dict(rate=150.0), service=dict(kind="deterministic", base_s=0.005, per_item_s=0.0))
    slow = dataclasses.replace(plain, overhead=OverheadConfig(before_s=0.0007, after_s=0.0003))
    a, b = run_twin(plain), run_twin(slow)
    assert np.allclose(b["latency_s"] - a["latency_s"], 0.001, atol=1e-9)
    assert np.allclose(a["queue_s"], b["queue_s"], atol=1e-9) and a["queue_s"].max() > 0.001


def test_replayed_overhead_samples_are_drawn_per_request() -> None:
    cfg = scenario(duration_s=20.0, replicas=1, arrival=dict(rate=20.0), service=dict(kind="deterministic", base_s=0.001, per_item_s=0.0))
    frame = requests_frame(Twin(cfg, overhead_samples={"before_s": [0.001, 0.003], "after_s": [0.0]}).run().columns)
    extra = np.round((frame["latency_s"] - frame["queue_s"] - frame["service_s"]).to_numpy(), 9)
    assert set(extra) == {0.001, 0.003}


def test_shared_cores_cap_throughput_at_the_cores_not_the_replicas(run_twin) -> None:
    # four numpy replicas on one core serve what one core can, however many replicas there are
    cfg = scenario(duration_s=20.0, warmup_s=4.0, replicas=4, arrival=dict(rate=2000.0),
                   service=dict(kind="deterministic", base_s=0.002, per_item_s=0.001, shared_cores=1),
                   batching=dict(max_batch_size=4, max_queue_delay_s=0.001, max_queue_size=16))
    f = run_twin(cfg)
    s = summarize(f, warmup_s=4.0, duration_s=20.0, replicas=4, concurrency=1)
    assert s["throughput"] == pytest.approx(4 / 0.006, rel=0.02)
    # a replica's measured service time includes waiting for the core
    assert f.loc[f["batch_size"] > 0, "service_s"].mean() > 0.006 * 2


def test_overload_throughput_is_capacity_not_the_offered_rate(run_twin) -> None:
    """Nothing shed, so every request is answered at last; those sent in the window are answered
    only by draining the backlog after it. Completions inside the window are what the
    servers can do: a planner reading throughput must see capacity, not the offered rate."""
    cfg = scenario(duration_s=20.0, warmup_s=2.0, replicas=2, arrival=dict(rate=1.35 * 400.0),
                   service=dict(kind="deterministic", base_s=0.004, per_item_s=0.001),
                   batching=dict(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=0))
    capacity = capacity_rps(cfg)
    assert capacity == pytest.approx(400.0)
    f = run_twin(cfg)
    s = summarize(f, warmup_s=2.0, duration_s=20.0, replicas=2, concurrency=1, capacity_rps=capacity)
    assert s["status_counts"]["ok"] == s["requests_measured"]  # all answered, after the window
    assert s["throughput"] == pytest.approx(capacity, rel=0.03)
    assert s["throughput"] < 0.8 * s["offered_rate"]
    assert s["capacity_rps"] == capacity and s["offered_load"] == pytest.approx(1.35, rel=0.03)
    assert s["utilisation_mean"] == pytest.approx(1.0, abs=0.01)


def hand_frame(*rows: dict) -> pd.DataFrame:
    """A requests table from a few rows; unnamed columns as for a request never served."""
    blank = {"user_id": 0, "start_s": math.nan, "finish_s": math.nan, "latency_s": math.nan, "queue_s": math.nan,
             "service_s": math.nan, "replica": -1, "version": "", "batch_id": -1, "batch_size": 0, "status": "ok"}
    full = [{**blank, "request_id": i, **row} for i, row in enumerate(rows)]
    return requests_frame({c: [r[c] for r in full] for c in COLUMNS if c in full[0]})


def served(arrival: float, start: float, service: float, batch_id: int, size: int) -> dict:
    return {"arrival_s": arrival, "start_s": start, "finish_s": start + service, "latency_s": start + service - arrival,
            "queue_s": start - arrival, "service_s": service, "replica": 0, "version": "1",
            "batch_id": batch_id, "batch_size": size}


def test_batch_size_per_batch_and_per_request() -> None:
    """Batches of 1 and 3: a server's histogram says 2 per batch; a request rode in 2.5 on
    average, (1 + 3 * 3) / 4. Batches are told apart by batch_id, not by their timing: the two
    below start together on one replica with equal service times."""
    f = hand_frame(served(1.0, 1.0, 0.01, 0, 1), *(served(1.0, 1.0, 0.01, 1, 3) for _ in range(3)))
    s = summarize(f, warmup_s=0.5, duration_s=2.0, replicas=1, concurrency=2)
    assert s["batches"] == 2
    assert s["batch_size_mean_per_batch"] == pytest.approx(2.0)
    assert s["batch_size_mean_per_request"] == pytest.approx(2.5)
    assert s["utilisation"] == {"0": pytest.approx(0.02 / (1.5 * 2))}  # each batch's time counted once


def test_queue_never_exceeds_in_flight_whatever_the_outcome() -> None:
    """A client that gave up (timeout at 1.2 s) before the server started its request (1.6 s),
    a shed request, and one with no outcome at all: in every window 0 <= queue <= in flight."""
    f = hand_frame(
        {**served(1.0, 1.6, 0.1, 0, 1), "finish_s": 1.2, "latency_s": 0.2, "status": "timeout"},
        {"arrival_s": 0.3, "finish_s": 0.3, "latency_s": 0.0, "status": "shed"},
        {"arrival_s": 0.6, "status": "error"},  # never finished
        served(0.2, 0.25, 0.5, 1, 1),
    )
    ts = timeseries(f, 0.5, end_s=2.0)
    assert ((ts["queue_len"] >= 0) & (ts["queue_len"] <= ts["in_flight"])).all(), ts
    # at 1.5 s: the timed-out request is gone from both; the one with no outcome is still owed
    at = ts.set_index("window_start_s").loc[1.0]
    assert (at["queue_len"], at["in_flight"]) == (1, 1)
    assert list(ts["throughput"] * 0.5) == [0, 1, 0, 0]
