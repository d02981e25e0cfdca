"""Load-balancing policies: which replica gets the next request.

Each policy sees only the outstanding-request count of each candidate replica, the time and a
random source, so the twin (SimPy) and the real gateway (asyncio) drive the very same objects.
`rng` is anything with `random() -> float in [0, 1)` (a `random.Random` in both halves: a call
costs tens of nanoseconds, which matters at a million simulated requests).
"""

from __future__ import annotations

import bisect
import itertools
from typing import Protocol, Sequence


class UniformSource(Protocol):
    def random(self) -> float: ...


class LoadBalancer(Protocol):
    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        """Index into `outstanding` (one entry per candidate replica)."""
        ...


class RandomLB:
    """Uniform random split: n independent M/G/1 queues for Poisson input."""

    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        return int(rng.random() * len(outstanding))


class RoundRobinLB:
    """Cyclic order: each replica sees Erlang-n interarrivals when the input is Poisson."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        i = self._next % len(outstanding)
        self._next = i + 1
        return i


class LeastOutstandingLB:
    """Fewest requests in flight; ties broken in rotating order so no replica is favoured."""

    def __init__(self) -> None:
        self._offset = 0

    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        n = len(outstanding)
        start = self._offset % n
        self._offset = start + 1
        best = start
        best_load = outstanding[start]
        for k in range(1, n):
            i = (start + k) % n
            if outstanding[i] < best_load:
                best, best_load = i, outstanding[i]
        return best


class PowerOfTwoLB:
    """Two distinct replicas at random, the one with fewer outstanding (ties: the first drawn)."""

    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        n = len(outstanding)
        if n == 1:
            return 0
        # both picks from one uniform: its integer part is the first, its fraction (still ~50 bits
        # for any realistic n) the second; half the calls into the random source
        x = rng.random() * n
        i = int(x)
        j = int((x - i) * (n - 1))
        if j >= i:
            j += 1
        return j if outstanding[j] < outstanding[i] else i


class WeightedLB:
    """A fixed traffic share per replica (canaries, heterogeneous hardware)."""

    def __init__(self, weights: Sequence[float]) -> None:
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError("weights must be >= 0 with a positive sum")
        self._cumulative = list(itertools.accumulate(w / total for w in weights))

    def choose(self, outstanding: Sequence[int], now: float, rng: UniformSource) -> int:
        i = bisect.bisect_right(self._cumulative, rng.random())
        return min(i, len(outstanding) - 1)


LB_POLICIES: dict[str, type] = {
    "random": RandomLB,
    "round_robin": RoundRobinLB,
    "least_outstanding": LeastOutstandingLB,
    "p2c": PowerOfTwoLB,
    "weighted": WeightedLB,
}


def make_lb(policy: str, weights: Sequence[float] = ()) -> LoadBalancer:
    if policy not in LB_POLICIES:
        raise ValueError(f"unknown lb.policy {policy!r}; use one of {', '.join(sorted(LB_POLICIES))}")
    if policy == "weighted":
        return WeightedLB(weights)
    return LB_POLICIES[policy]()
