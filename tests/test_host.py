"""The host model (sim.host, sim.host_path): its scheduler against queueing theory, its fit
against known costs, its capacity against what the twin carries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.cli import preflight
from scenarios.profile import host_costs
from sim.host import REPLICA_ANSWER_SHARE, CpuPoint, HostCosts, SimHost, fit_host_costs, host_capacity, stack_capacity
from sim.profile import Profile
from sim.twin import Twin
from scenarios.run_sim import simulate


def _poisson_jobs(host: SimHost, env: simpy.Environment, processes: list[int], rate: float, cost: float, n: int,
                  seed: int) -> list[float]:
    """n jobs of `cost` at Poisson times, spread over `processes` in turn; their waits."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate, n))
    waits: list[float] = []

    def submit(k: int, at: float) -> None:
        host.run(processes[k % len(processes)], cost, lambda: waits.append(env.now - at - cost))

    for k, at in enumerate(times):
        env.timeout(at).callbacks.append(lambda _e, k=k, at=at: submit(k, at))
    env.run()
    return waits


def md1_wait(rate: float, cost: float) -> float:
    rho = rate * cost
    return rho * cost / (2 * (1 - rho))


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.8])
def test_one_process_one_core_is_md1(rho: float) -> None:
    env = simpy.Environment()
    host = SimHost(env, cores=1)
    cost = 0.001
    waits = _poisson_jobs(host, env, [host.add_process()], rho / cost, cost, 60_000, seed=1)
    assert np.mean(waits) == pytest.approx(md1_wait(rho / cost, cost), rel=0.08)


def test_two_processes_share_one_core_as_one_queue() -> None:
    """A core is one server whichever process a job is for: FIFO by submission across both."""
    env = simpy.Environment()
    host = SimHost(env, cores=1)
    cost, rate = 0.001, 700.0
    waits = _poisson_jobs(host, env, [host.add_process(), host.add_process()], rate, cost, 60_000, seed=2)
    assert np.mean(waits) == pytest.approx(md1_wait(rate, cost), rel=0.08)


def test_a_process_uses_one_core_at_most() -> None:
    """Two cores do not make one loop faster: its jobs still queue as M/D/1."""
    env = simpy.Environment()
    host = SimHost(env, cores=2)
    cost, rate = 0.001, 700.0
    waits = _poisson_jobs(host, env, [host.add_process()], rate, cost, 60_000, seed=3)
    assert np.mean(waits) == pytest.approx(md1_wait(rate, cost), rel=0.08)


def test_a_sleeping_process_wakes_first_a_busy_one_does_not() -> None:
    env = simpy.Environment()
    host = SimHost(env, cores=1, wake_s=0.5)
    p = host.add_process()
    done: list[float] = []
    host.run(p, 1.0, lambda: done.append(env.now))  # asleep: starts at 0.5
    host.run(p, 1.0, lambda: done.append(env.now))  # queued behind it: no wake of its own
    env.run()
    assert done == [1.5, 2.5]
    host.run(p, 1.0, lambda: done.append(env.now), wakes=False)  # a thread already awake
    env.run()
    assert done[-1] == pytest.approx(3.5)


def test_the_stack_gets_a_free_core_before_the_load_generator() -> None:
    env = simpy.Environment()
    host = SimHost(env, cores=1)
    generator, gateway, other = host.add_process(priority=1), host.add_process(), host.add_process()
    order: list[str] = []
    host.run(other, 1.0, lambda: order.append("other"))  # holds the core
    host.run(generator, 1.0, lambda: order.append("generator"))
    host.run(gateway, 1.0, lambda: order.append("gateway"))  # later, but the stack's
    env.run()
    assert order == ["other", "gateway", "generator"]


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-5, 1e-3), st.floats(1e-5, 1e-3), st.floats(1e-5, 1e-3), st.floats(0.0, 0.3), st.floats(0.0, 5e-4))
def test_the_fit_recovers_costs_it_was_given(loadgen: float, gateway: float, replica: float, background: float,
                                              per_batch: float) -> None:
    """Cores used = background + cost x rate (+ per batch x batch rate) at three rates with
    different batch sizes: the least-squares fit gets every term back."""
    costs = {"loadgen": loadgen, "gateway": gateway, "replica": replica}
    points = []
    for rate, batch in ((100.0, 1.0), (400.0, 2.0), (800.0, 4.0)):
        used = {role: background / 3 + c * rate for role, c in costs.items()}
        used["replica"] += per_batch * rate / batch
        points.append(CpuPoint(rate, rate / batch, used))
    fitted = fit_host_costs(points, cores=2, fixed_s=[0.0])
    for role, c in costs.items():
        assert fitted.cpu_per_request_s[role] == pytest.approx(c, rel=1e-6, abs=1e-9)
    assert fitted.replica_cpu_per_batch_s == pytest.approx(per_batch, rel=1e-6, abs=1e-9)
    assert fitted.background_cores == pytest.approx(background, rel=1e-6, abs=1e-9)


def _host(gateway_s: float = 1e-4, loadgen_s: float = 1e-4, replica_s: float = 1e-4, **kw: float) -> HostCosts:
    return HostCosts(cores=2, cpu_per_request_s={"loadgen": loadgen_s, "gateway": gateway_s, "replica": replica_s}, **kw)


def _cfg(*overrides: str):
    return preflight(["progress=false", "model.backend=emulated", "service.kind=deterministic", "service.base_s=0.001",
                      "service.per_item_s=0", "batching.max_batch_size=1", "replicas=4", "concurrency=1",
                      "arrival.kind=poisson", "warmup_s=1", "duration_s=6", *overrides])


def test_capacity_names_what_binds() -> None:
    cfg = _cfg()  # devices: 4 instances x 1/1 ms = 4,000 req/s
    gateway_bound = stack_capacity(cfg, Profile(times_s={1: [0.001]}, host=_host(gateway_s=5e-4)))
    assert (gateway_bound.binds, gateway_bound.host_limit) == ("host", "gateway")
    assert gateway_bound.rps == pytest.approx(2000.0)
    cores_bound = stack_capacity(cfg, Profile(times_s={1: [0.001]}, host=_host(4e-4, 4e-4, 4e-4)))
    assert (cores_bound.binds, cores_bound.host_limit) == ("host", "cores")
    assert cores_bound.rps == pytest.approx(2 / 1.2e-3)
    device_bound = stack_capacity(cfg, Profile(times_s={1: [0.001]}, host=_host()))
    assert device_bound.binds == "device" and device_bound.rps == pytest.approx(4000.0)
    assert math.isinf(stack_capacity(cfg, None).host_rps)


def test_background_takes_its_share_of_the_cores() -> None:
    cfg = _cfg()
    idle, busy = host_capacity(cfg, _host(4e-4, 4e-4, 4e-4))[0], host_capacity(cfg, _host(4e-4, 4e-4, 4e-4, background_cores=0.5))[0]
    assert busy == pytest.approx(idle * 1.5 / 2)


def _twin(cfg, host: HostCosts):
    return Twin(cfg, host=host).run()


def test_past_the_host_limit_the_twin_answers_no_more_than_the_host_capacity() -> None:
    """A gateway loop of 1 ms per request carries 1,000 req/s: below that the twin answers what
    is offered; past it, never more than that, however much is offered (and less: a loop that
    keeps taking new requests in FIFO order spends its time on them), while its devices could
    carry 4,000."""
    host = _host(gateway_s=1e-3, loadgen_s=1e-5, replica_s=1e-5)
    capacity = host_capacity(_cfg(), host)[0]
    assert capacity == pytest.approx(1000.0)

    def answered(rate: float) -> float:
        finish = np.asarray(_twin(_cfg(f"arrival.rate={rate}"), host).columns["finish_s"])
        return np.count_nonzero((finish >= 1.0) & (finish < 6.0)) / 5.0

    assert answered(850) == pytest.approx(850, rel=0.03)
    assert answered(1500) <= capacity * 1.01
    assert answered(3000) <= capacity * 1.01


def test_latency_bends_as_the_host_fills() -> None:
    """At the same device load, a costlier host means a longer time outside queue and model,
    growing faster than linearly with the rate (the loops queue)."""
    host = _host(gateway_s=6e-4, loadgen_s=1e-4, replica_s=2e-4)

    def outside(rate: float) -> float:
        cols = _twin(_cfg(f"arrival.rate={rate}"), host).columns
        extra = np.asarray(cols["finish_s"]) - np.asarray(cols["arrival_s"]) - 0.001
        return float(np.mean(extra))

    light, half, heavy = outside(200), outside(800), outside(1400)
    assert light < half < heavy
    assert heavy - half > half - light


def test_every_request_is_answered_once_on_the_host_path() -> None:
    host = _host(wake_s=2e-5, fixed_s=[1e-4, 3e-4], handoff_s=5e-5)
    cfg = _cfg("arrival.rate=900", "batching.max_batch_size=4", "batching.max_queue_delay_s=0.002", "timeout_s=0.05",
               "batching.max_queue_size=8")
    cols = _twin(cfg, host).columns
    status = np.asarray(cols["status"])
    assert (status >= 0).all()
    finish, arrival = np.asarray(cols["finish_s"]), np.asarray(cols["arrival_s"])
    assert np.isfinite(finish).all() and (finish >= arrival).all()
    assert (finish - arrival <= 0.05 + 1e-9).all()


def test_the_profile_splits_overhead_into_cpu_wakes_and_the_rest() -> None:
    """The lightest point's overhead, less the CPU on the way, is wake-ups of idle processes
    plus a remainder; the fitted costs are the points' slopes."""
    cfg = _cfg()
    points = []
    for rate in (100.0, 300.0, 600.0):
        used = {"loadgen": 0.01 + 1e-4 * rate, "gateway": 0.01 + 2e-4 * rate, "replica": 0.01 + 2e-4 * rate}
        points.append({"rate": rate, "requests_per_s": rate, "batches_per_s": rate, "cores_used": used,
                       "total_s": [0.002] * 50, "valid": True})
    points.append(dict(points[-1], rate=900.0, valid=False, cores_used={"loadgen": 9, "gateway": 9, "replica": 9}))
    host = host_costs(points, 2, cfg)
    assert host is not None
    assert host.cpu_per_request_s == pytest.approx({"loadgen": 1e-4, "gateway": 2e-4, "replica": 2e-4})
    assert host.wake_s > 0
    # at the lightest point, CPU + expected wakes + the remainder's median is what was measured
    assert host.per_request_s() * host.slowdown + np.median(host.fixed_s) < 0.002


def test_a_run_with_a_host_profile_reports_the_stack_capacity(tmp_path) -> None:
    from sim.files import write_json

    path = tmp_path / "profile.json"
    write_json(path, Profile(times_s={1: [0.001]}, host=_host(gateway_s=5e-4)).to_json())
    cfg = _cfg("arrival.rate=500", f"overhead.profile={path}")
    _, summary, _ = simulate(cfg)
    assert summary["capacity_rps"] == pytest.approx(2000.0)
    _, replayed, _ = simulate(dataclasses.replace(cfg, overhead=dataclasses.replace(cfg.overhead, model="replay")))
    assert replayed["capacity_rps"] == pytest.approx(4000.0)


def test_a_cpu_model_s_compute_counts_against_the_host() -> None:
    """numpy computes on its replica's loop: its time per request is the host's, not a device's."""
    cfg = _cfg("model.backend=numpy", "replicas=1")
    profile = Profile(times_s={1: [0.002]}, host=_host(1e-5, 1e-5, 1e-5))
    capacity = stack_capacity(cfg, profile)
    assert (capacity.binds, capacity.host_limit) == ("host", "replicas")
    assert capacity.rps == pytest.approx(1 / (0.002 + 1e-5), rel=1e-6)


def test_a_batch_s_answers_leave_the_replica_one_by_one() -> None:
    """Each handler resumes and writes its own answer: the first of a batch reaches the
    gateway one answer's share of the replica's CPU after the batch, the last only after all of them."""
    from sim.host_path import HostPath
    from sim.requests import RequestLog

    env = simpy.Environment()
    log = RequestLog()
    for k in range(3):
        log.append(user_id=k, arrival_s=0.0, after_s=0.0)
    seen: list[tuple[int, float]] = []
    path = HostPath(env, log, _host(gateway_s=2e-4, replica_s=2e-3, loadgen_s=0.0), workers=1, rng=np.random.default_rng(0),
                    timeout_s=math.inf, gateway_saw=lambda _r, j: seen.append((j, env.now)), client_has=lambda _j: None)
    path.relay(0, [0, 1, 2])
    env.run()
    answer, half_gateway = 2e-3 * REPLICA_ANSWER_SHARE, 1e-4  # the gateway's CPU is half in, half back
    assert [j for j, _ in seen] == [0, 1, 2]
    assert [t for _, t in seen] == pytest.approx([(k + 1) * answer + half_gateway for k in range(3)])


def test_a_thread_waiting_for_the_gil_runs_after_the_callbacks_under_way_not_between_them() -> None:
    env = simpy.Environment()
    host = SimHost(env, cores=2)
    loop = host.add_process()
    order: list[tuple[str, float]] = []
    host.run_series(loop, 1.0, [lambda k=k: order.append((f"answer {k}", env.now)) for k in range(3)])
    host.run(loop, 1.0, lambda: order.append(("next request", env.now)))  # queued behind the series
    env.timeout(0.5).callbacks.append(
        lambda _e: host.run(loop, 0.25, lambda: order.append(("instance thread", env.now)), wakes=False))
    env.run()
    assert order == [("answer 0", 1.0), ("answer 1", 2.0), ("answer 2", 3.0), ("instance thread", 3.25),
                     ("next request", 4.25)]


@pytest.mark.parametrize("batch", [1, 8])
def test_a_busy_instance_waits_between_batches_for_its_batchs_answers_only(batch: int) -> None:
    """At overload a replica's next batch starts once its thread has woken (the hand-off) and
    the last batch's answers are written (`REPLICA_ANSWER_SHARE` of the replica's CPU each),
    whichever is later: the parse of requests that came in meanwhile does not hold it."""
    replica_s, handoff_s, device_s = 4e-4, 1.3e-4, 0.02
    host = _host(gateway_s=1e-5, loadgen_s=1e-5, replica_s=replica_s, handoff_s=handoff_s)
    cfg = _cfg("replicas=1", f"batching.max_batch_size={batch}", f"service.base_s={device_s}", "batching.max_queue_delay_s=0",
               f"arrival.rate={1.3 * batch / device_s}", "timeout_s=0")
    cols = _twin(cfg, host).columns
    starts = np.unique(np.asarray(cols["start_s"])[np.asarray(cols["batch_size"]) == batch])
    starts = starts[(starts > 1.0) & (starts < 5.0)]
    gap = float(np.median(np.diff(starts))) - device_s
    assert gap == pytest.approx(max(handoff_s, batch * replica_s * REPLICA_ANSWER_SHARE * host.slowdown), rel=0.02)
