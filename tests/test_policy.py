"""Property tests for the serving decisions shared by the twin and the real stack."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policy.batching import Dispatch, DynamicBatcher, Wait
from sim.policy.controller import Eject, Restore, apply
from sim.policy.health import HealthPolicy, Outcome, RetryPolicy
from sim.policy.lb import LeastOutstandingLB, PowerOfTwoLB, RandomLB, RoundRobinLB, WeightedLB, make_lb
from sim.policy.membership import Membership
from sim.policy.split import Router, VersionSplit, user_hash_unit
from sim.policy.windows import VersionWindows

loads = st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12)


@given(loads, st.sampled_from(["random", "round_robin", "least_outstanding", "p2c"]), st.integers(0, 2**32))
def test_every_policy_returns_a_valid_index(outstanding: list[int], policy: str, seed: int) -> None:
    lb = make_lb(policy)
    rng = random.Random(seed)
    for _ in range(5):
        assert 0 <= lb.choose(outstanding, 0.0, rng) < len(outstanding)


@given(loads, st.integers(0, 2**32))
def test_least_outstanding_picks_a_minimum(outstanding: list[int], seed: int) -> None:
    i = LeastOutstandingLB().choose(outstanding, 0.0, random.Random(seed))
    assert outstanding[i] == min(outstanding)


@given(loads, st.integers(0, 2**32))
def test_p2c_never_picks_a_replica_worse_than_both_others(outstanding: list[int], seed: int) -> None:
    # p2c picks the better of two: it can never pick the unique worst replica when n >= 2
    i = PowerOfTwoLB().choose(outstanding, 0.0, random.Random(seed))
    if len(outstanding) >= 2 and outstanding.count(max(outstanding)) == 1 and max(outstanding) > min(outstanding):
        assert outstanding[i] < max(outstanding)


def test_round_robin_cycles() -> None:
    lb = RoundRobinLB()
    assert [lb.choose([0] * 3, 0.0, random.Random(0)) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_rotates_ties() -> None:
    lb = LeastOutstandingLB()
    picks = Counter(lb.choose([1, 1, 1, 1], 0.0, random.Random(0)) for _ in range(400))
    assert set(picks.values()) == {100}


@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).filter(lambda w: sum(w) > 0.5))
@settings(max_examples=30, deadline=None)
def test_weighted_shares_follow_weights(weights: list[float]) -> None:
    lb, rng, n = WeightedLB(weights), random.Random(1), 20000
    counts = Counter(lb.choose([0] * len(weights), 0.0, rng) for _ in range(n))
    for i, w in enumerate(weights):
        p = w / sum(weights)
        # 5 sigma, plus 3 picks: for a share so small that it expects under one pick in n,
        # one pick is no evidence against it (the normal approximation fails there)
        assert abs(counts[i] - n * p) < 5 * math.sqrt(n * p * (1 - p)) + 3
        if w == 0:
            assert counts[i] == 0


def test_random_is_uniform() -> None:
    rng, n = random.Random(2), 40000
    counts = Counter(RandomLB().choose([0] * 4, 0.0, rng) for _ in range(n))
    assert all(abs(c / n - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n) for c in counts.values())


@given(
    max_batch=st.integers(1, 64),
    delay=st.floats(0.0, 0.1),
    queue_len=st.integers(0, 200),
    waited=st.floats(0.0, 0.2),
)
def test_batcher_dispatches_exactly_when_full_or_due(max_batch: int, delay: float, queue_len: int, waited: float) -> None:
    now = 10.0
    decision = DynamicBatcher(max_batch, delay).decide(queue_len, now - waited, now)
    if queue_len == 0:
        assert decision == Wait(math.inf)
    elif queue_len >= max_batch or now >= (now - waited) + delay:
        assert isinstance(decision, Dispatch)
        assert decision.size == min(queue_len, max_batch)
        assert 1 <= decision.size <= max_batch
    else:
        assert isinstance(decision, Wait)
        assert decision.until_s > now
        assert math.isclose(decision.until_s, now - waited + delay)


@given(st.integers(0, 2**63 - 1))
def test_user_hash_is_a_unit_interval_value(user_id: int) -> None:
    assert 0.0 <= user_hash_unit(user_id) < 1.0


@given(st.lists(st.floats(0.0, 5.0), min_size=2, max_size=4).filter(lambda w: sum(w) > 0.1), st.integers(0, 10**9))
def test_sticky_split_keeps_a_user_on_one_version(weights: list[float], user_id: int) -> None:
    split = VersionSplit(weights, sticky=True)
    picks = {split.choose(user_id, random.Random(k)) for k in range(5)}
    assert len(picks) == 1
    assert weights[picks.pop()] > 0


def router(n_replicas: int, n_versions: int, policy: str, version_weights: Sequence[float] = (), sticky: bool = False) -> Router:
    """Versions "1".."n" on n_replicas replicas, replica r serving version r % n_versions."""
    versions = [str(v + 1) for v in range(n_versions)]
    return Router(Membership.initial(versions, n_replicas), policy, version_weights=version_weights, sticky=sticky)


def test_router_sends_each_version_only_to_its_replicas() -> None:
    r = router(6, 2, "p2c", version_weights=[0.0, 1.0])
    rng = random.Random(3)
    replicas = {r.route(u, [0] * 6, 0.0, rng) for u in range(500)}
    assert replicas == {1, 3, 5}


def test_sticky_split_sends_anonymous_requests_by_weight() -> None:
    """No user id (None) has nothing to stick to: anonymous requests follow the weights, where
    a stand-in id (0) would put every one of them on the same version."""
    r = router(4, 2, "random", version_weights=[1.0, 1.0], sticky=True)
    m = r.membership
    rng, n = random.Random(5), 4000
    versions = Counter(m.version_of[r.route(None, [0] * 4, 0.0, rng)] for _ in range(n))
    assert abs(versions[0] / n - 0.5) < 5 * math.sqrt(0.25 / n)
    pinned = {m.version_of[r.route(7, [0] * 4, 0.0, rng)] for _ in range(50)}
    assert len(pinned) == 1  # a known user still sticks


def test_anonymous_requests_route_with_health_and_weights() -> None:
    r = router(4, 2, "round_robin", version_weights=[0.0, 1.0], sticky=True)
    r.membership.set_healthy(3, False)
    picks = {r.route(None, [0] * 4, 0.0, random.Random(k)) for k in range(20)}
    assert picks == {1}


def test_a_drained_replica_gets_nothing_and_exclude_keeps_one_out() -> None:
    r = router(3, 1, "round_robin")
    r.membership.drain(1)
    assert {r.route(None, [0] * 3, 0.0, random.Random(0)) for _ in range(6)} == {0, 2}
    assert {r.route(None, [0] * 3, 0.0, random.Random(0), exclude=0) for _ in range(6)} == {2}


# -- health and retries --------------------------------------------------------------------------


def test_refused_ejects_at_once_failures_and_probe_timeouts_after_the_threshold() -> None:
    h = HealthPolicy(2, failure_threshold=3)
    assert h.on_request(0, Outcome.REFUSED) is not None and not h.healthy[0]
    assert [h.on_probe(1, Outcome.TIMEOUT) for _ in range(2)] == [None, None]
    change = h.on_probe(1, Outcome.TIMEOUT)
    assert change is not None and not change.healthy
    assert h.on_probe(1, Outcome.OK) is not None and h.healthy[1]  # success_threshold=1


def test_request_timeouts_and_dropped_connections_never_eject() -> None:
    """A slow answer is load, not death; a dropped keep-alive says nothing: probes decide."""
    h = HealthPolicy(1, failure_threshold=1)
    for outcome in (Outcome.TIMEOUT, Outcome.DISCONNECTED) * 5:
        assert h.on_request(0, outcome) is None
    assert h.healthy == [True]


def test_a_controller_restore_does_not_blind_the_health_policy() -> None:
    """Restored after an ejection, a replica that keeps failing is ejected again; ejected by a
    controller, it comes back through passing probes, as after any ejection."""
    r = router(2, 1, "round_robin")
    h = HealthPolicy(2, failure_threshold=2)
    for _ in range(2):
        change = h.on_probe(0, Outcome.FAILED)
    assert change is not None
    r.membership.set_healthy(0, change.healthy)
    apply(Restore(0), r, h)
    assert r.membership.routable(0)
    assert h.on_probe(0, Outcome.FAILED) is None
    again = h.on_probe(0, Outcome.FAILED)
    assert again is not None and not again.healthy
    apply(Eject(1), r, h)
    assert not r.membership.routable(1)
    back = h.on_probe(1, Outcome.OK)
    assert back is not None and back.healthy


def test_retry_only_when_nothing_came_back_and_reuse_only_after_a_drop() -> None:
    retry = RetryPolicy(max_retries=1)
    assert retry.should_retry(0, Outcome.REFUSED) and retry.should_retry(0, Outcome.DISCONNECTED)
    assert not retry.should_retry(1, Outcome.REFUSED)
    assert not any(retry.should_retry(0, o) for o in (Outcome.TIMEOUT, Outcome.FAILED, Outcome.OK))
    assert retry.may_reuse(Outcome.DISCONNECTED) and not retry.may_reuse(Outcome.REFUSED)


def test_version_windows_slide_and_count_latency_over_ok_answers_only() -> None:
    w = VersionWindows(2, window_s=1.0)
    w.add(0, 0.0, 0.5, ok=True, error=False)  # leaves the window at t > 1.0
    w.add(0, 0.9, 0.010, ok=True, error=False)
    w.add(0, 1.0, 0.001, ok=False, error=True)  # a fast failure must not make the version look fast
    w.add(0, 1.2, 0.020, ok=True, error=False)
    now = w.windows(1.5)
    assert set(now) == {0}  # version 1 answered nothing: not in a controller's view
    assert (now[0].requests, now[0].ok, now[0].errors) == (3, 2, 1)
    assert now[0].latency_p50_s == pytest.approx(0.015)
