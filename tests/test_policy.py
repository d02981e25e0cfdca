"""Property tests for the serving decisions shared by the twin and the real stack."""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policy.batching import Dispatch, DynamicBatcher, Wait
from sim.policy.lb import LeastOutstandingLB, PowerOfTwoLB, RandomLB, RoundRobinLB, WeightedLB, make_lb
from sim.policy.split import Router, VersionSplit, user_hash_unit

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
        assert abs(counts[i] / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9
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


def test_router_sends_each_version_only_to_its_replicas() -> None:
    router = Router(6, 2, "p2c", version_weights=[0.0, 1.0])
    rng = random.Random(3)
    replicas = {router.route(u, [0] * 6, 0.0, rng) for u in range(500)}
    assert replicas == {1, 3, 5}


def test_sticky_split_sends_anonymous_requests_by_weight() -> None:
    """No user id (None) has nothing to stick to: anonymous requests follow the weights, where
    a stand-in id (0) would put every one of them on the same version."""
    router = Router(4, 2, "random", version_weights=[1.0, 1.0], sticky=True)
    rng, n = random.Random(5), 4000
    versions = Counter(router.version_of(router.route(None, [0] * 4, 0.0, rng)) for _ in range(n))
    assert abs(versions[0] / n - 0.5) < 5 * math.sqrt(0.25 / n)
    pinned = {router.version_of(router.route(7, [0] * 4, 0.0, rng)) for _ in range(50)}
    assert len(pinned) == 1  # a known user still sticks


def test_anonymous_requests_route_with_health_and_weights() -> None:
    router = Router(4, 2, "round_robin", version_weights=[0.0, 1.0], sticky=True)
    healthy = [True, True, True, False]
    picks = {router.route(None, [0] * 4, 0.0, random.Random(k), healthy=healthy) for k in range(20)}
    assert picks == {1}
