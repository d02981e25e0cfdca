"""sim.policy.users.ThinkTime: one implementation of closed-loop think times for both worlds.

A user's sequence of think times depends on the seed and the user's number only: not on the
order users draw in, on how many users there are, or on which worker (or the twin) asks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ArrivalConfig, ScenarioConfig
from sim.policy.users import ThinkTime
from sim.rng import make_streams
from sim.twin import Twin

USERS, DRAWS = 5, 40


def sequences(think: ThinkTime, order: list[int]) -> dict[int, list[float]]:
    """Draw DRAWS think times per user, interleaving users in `order` (a list of user numbers)."""
    out: dict[int, list[float]] = {u: [] for u in range(USERS)}
    for u in order:
        if len(out[u]) < DRAWS:
            out[u].append(think.draw(u))
    return out


@given(order=st.permutations(list(range(USERS)) * DRAWS), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_same_seed_same_sequence_per_user_whatever_the_order(order: list[int], seed: int) -> None:
    in_turn = sequences(ThinkTime(0.1, seed), [u for u in range(USERS) for _ in range(DRAWS)])
    shuffled = sequences(ThinkTime(0.1, seed), order)
    assert shuffled == in_turn


def test_a_user_does_not_depend_on_the_others() -> None:
    """Worker w of a distributed run only ever asks for its own users (u % workers == w): user 7
    draws the same alone as among 99 others drawing in between."""
    alone, crowd = ThinkTime(0.05, 3), ThinkTime(0.05, 3)
    mine = []
    for _ in range(10):
        mine.append(crowd.draw(7))
        for u in range(100):
            if u != 7:
                crowd.draw(u)
    assert [alone.draw(7) for _ in range(10)] == mine


def test_users_and_seeds_differ() -> None:
    a = ThinkTime(0.1, 0)
    first = [a.draw(u) for u in range(50)]
    assert len(set(first)) == 50  # independent streams, not one stream repeated
    assert first != [ThinkTime(0.1, 1).draw(u) for u in range(50)]


def test_the_run_think_stream_is_the_seed_both_worlds_use() -> None:
    """The twin passes streams.think; the load generator builds it from the plan's seed: the
    same SeedSequence, so the same numbers, even after the twin drew from that generator."""
    from_plan = ThinkTime(0.2, make_streams(11).think.bit_generator.seed_seq)
    expected = [from_plan.draw(u % 3) for u in range(30)]
    streams = make_streams(11)
    streams.think.exponential(1.0, 1000)  # the generator's own state is not the users' streams
    think = ThinkTime(0.2, streams.think)
    assert [think.draw(u % 3) for u in range(30)] == expected


@pytest.mark.parametrize("mean_s", [0.01, 0.5])
def test_mean_and_shape_match_an_exponential(mean_s: float) -> None:
    think = ThinkTime(mean_s, 42)
    x = np.array([think.draw(u) for _ in range(400) for u in range(50)])  # 20k draws over 50 users
    assert (x >= 0).all()
    assert x.mean() == pytest.approx(mean_s, rel=0.03)  # standard error 0.7%
    assert x.std() / x.mean() == pytest.approx(1.0, rel=0.05)  # exponential: cv 1
    per_user = x.reshape(400, 50).mean(axis=0)
    assert per_user.min() > 0.7 * mean_s and per_user.max() < 1.3 * mean_s  # every user, not only the sum


def test_zero_mean_draws_nothing() -> None:
    think = ThinkTime(0.0, 0)
    assert [think.draw(u) for u in range(5)] == [0.0] * 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mean think time"):
        ThinkTime(-1.0, 0)
    with pytest.raises(ValueError, match="user"):
        ThinkTime(1.0, 0).draw(-1)


def test_the_twins_users_think_the_load_generators_think_times() -> None:
    cfg = ScenarioConfig(seed=7, duration_s=2.0, warmup_s=0.0, replicas=2,
                         arrival=ArrivalConfig(kind="closed", users=6, think_s=0.3))
    columns = Twin(cfg).run().columns
    think = ThinkTime(0.3, make_streams(7).think)
    for user in range(6):
        first = columns["arrival_s"][columns["user_id"] == user].min()
        assert first == think.draw(user)
