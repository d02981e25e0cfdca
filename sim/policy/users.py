"""Closed-loop users: how long each one thinks between an answer and its next request.

Written once for both worlds: the twin's SimPy users and the load generator's greenlets ask the
same object. Each user has a stream of its own, derived from the run's think stream by the
user's number (a SeedSequence child keyed by `user`), so user u's k-th think time is the same
number in the twin and in every Locust worker, whatever order the users draw in, however they
are spread over workers, and however many users there are.

No clock, no global RNG: the caller passes the named stream (`sim.rng.Streams.think`) and asks
for the next think time of a user; time stays with the caller.
"""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.SeedSequence | np.random.Generator


def _seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    if isinstance(seed, np.random.Generator):
        seq = seed.bit_generator.seed_seq
        if not isinstance(seq, np.random.SeedSequence):
            raise TypeError("ThinkTime needs a Generator seeded from a SeedSequence (np.random.default_rng(seq))")
        return seq
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(int(seed))


class ThinkTime:
    """Exponential think times with mean `mean_s`, one independent stream per user.

    `draw(user)` is the user's next think time. A user's stream is the SeedSequence child
    `spawn_key + (user,)` of `seed` (what `seed.spawn(user + 1)[user]` would give), created on
    the user's first draw: only the user's own draws advance it. `mean_s == 0` draws nothing and
    always answers 0.0 (users send again as soon as they are answered).
    """

    def __init__(self, mean_s: float, seed: SeedLike) -> None:
        if not mean_s >= 0:
            raise ValueError(f"mean think time must be >= 0, got {mean_s}")
        self.mean_s = float(mean_s)
        self._root = _seed_sequence(seed)
        self._streams: dict[int, np.random.Generator] = {}

    def stream(self, user: int) -> np.random.Generator:
        """User `user`'s own generator (the same object on every call)."""
        rng = self._streams.get(user)
        if rng is None:
            if user < 0:
                raise ValueError(f"user must be >= 0, got {user}")
            root = self._root
            child = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, user), pool_size=root.pool_size)
            rng = self._streams[user] = np.random.default_rng(child)
        return rng

    def draw(self, user: int) -> float:
        """The next think time of `user`, in seconds."""
        if self.mean_s == 0:
            return 0.0
        return float(self.stream(user).exponential(self.mean_s))
