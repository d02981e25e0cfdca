"""How each model version behaves at a given run time: its speed, its error rate, its accuracy.

A version is configured once (model.versions: `service_factor`, `error_rate`, `accuracy`) and
may turn bad while the run goes on (its `faults`: from `at_s`, a slowdown, an error rate, an
accuracy drop). Both worlds ask this one object, with the run time as an argument: the twin's
replicas when a batch is dispatched (device time) and when it completes (failures, right or
wrong answers), and the real replicas at the same two moments on their own clock, counted from
the run's time 0 they are told (`POST /v2/fault {"t0_unix": ...}`). So a "good at first, bad
under load" version turns bad at the same instant of the schedule in both.

No clock here: callers pass `t`. The per-request draws (does this answer fail, is it right)
are common random numbers (`common_unit`): a pure function of (seed, request id, version,
purpose), so the twin (its request index) and a real replica (the request id the load
generator sends, which is the same index) decide the same request's failure and correctness
from the same number, and a compare of a rollout decided by random errors compares like with
like: only requests the two worlds routed differently can differ.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from sim.config import ScenarioConfig, VersionConfig

# The numpy backend's models (real.models.digits), right answers on the 450 held-out digits
# (real.models.digits.test_split, which the load generator sends): the twin's accuracy for a
# numpy run. sim/ cannot import real/, so the figures are kept here and
# tests/real/test_quality.py measures the models again and checks them against this table.
NUMPY_DIGITS_ACCURACY: dict[str, float] = {
    "1": 436 / 450,  # softmax
    "2": 441 / 450,  # MLP, 512 hidden
    "3": 364 / 450,  # softmax fitted on three images per digit: the degraded release
}


# -- common random numbers -------------------------------------------------------------------

# what a per-request draw decides; each purpose has its own numbers
ERROR_DRAW = 1  # the answer fails (u < error_rate)
CORRECT_DRAW = 2  # the emulated answer is right (u < accuracy)
WRONG_DRAW = 3  # which wrong digit an emulated wrong answer names
FLIP_DRAW = 4  # a real model's right answer is made wrong by an accuracy drop (u < flip_probability)

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_UNIT = 2.0 ** -53


def _splitmix(z: int) -> int:
    """One SplitMix64 step from state z: the output for state z + gamma."""
    z = (z + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def common_key(seed: int, version: int, purpose: int) -> int:
    """The 64-bit key of one (seed, version index, purpose): its requests' numbers are the
    SplitMix64 sequence started at this key (`common_unit`, `common_units`)."""
    return _splitmix(_splitmix(_splitmix(seed & _MASK64) ^ version) ^ purpose)


def unit_of(key: int, request: int) -> float:
    """The number of request `request` (>= 0) under `key`, in [0, 1): SplitMix64's output number
    request + 1 from state `key`, so consecutive ids are as independent as a SplitMix64 stream."""
    z = (key + (request + 1) * _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return ((z ^ (z >> 31)) >> 11) * _UNIT


def common_unit(seed: int, request: int, version: int, purpose: int) -> float:
    """Uniform in [0, 1) decided by (seed, request id, version index, purpose) alone: what both
    worlds draw for a request's failure (ERROR_DRAW) or correctness (CORRECT_DRAW, ...)."""
    return unit_of(common_key(seed, version, purpose), request)


def common_units(seed: int, version: int, purpose: int, n: int) -> np.ndarray:
    """`common_unit` for requests 0..n-1 at once (float64): what the twin reads per answer."""
    z = np.uint64(common_key(seed, version, purpose)) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GAMMA))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) * _UNIT


@dataclass(frozen=True)
class VersionState:
    """One version's behaviour over an interval of run time."""

    slowdown: float = 1.0  # a fault's device-time factor
    device_factor: float = 1.0  # service_factor x slowdown: what the device time is multiplied by
    error_rate: float = 0.0  # probability a request fails after its batch ran (HTTP 500)
    accuracy: float | None = None  # probability an answer is right; None: answers are not judged
    model_accuracy: float | None = None  # the accuracy before any drop (a real model's own)

    @property
    def judged(self) -> bool:
        return self.accuracy is not None

    @property
    def flip_probability(self) -> float:
        """For a real model whose answers are right with `model_accuracy`: the probability of
        turning a right answer wrong so that answers are right with `accuracy` (an accuracy
        drop on a model that computes its own answers). 0 when nothing dropped."""
        if self.accuracy is None or self.model_accuracy is None or self.model_accuracy <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self.accuracy / self.model_accuracy))


class VersionBehaviour:
    """Every version's states over run time: a step function per version, changing at its
    faults' times. `at(v, t)` before the first fault (or with t = -inf: a replica that does not
    know the run's time 0 yet) is the version as configured."""

    def __init__(self, versions: Sequence[VersionConfig], model_accuracy: Mapping[str, float] | None = None) -> None:
        self.names = [v.name for v in versions]
        self._times: list[list[float]] = []
        self._states: list[list[VersionState]] = []
        for v in versions:
            base = model_accuracy.get(v.name) if model_accuracy is not None else v.accuracy
            times, states = [-math.inf], [VersionState(1.0, v.service_factor, v.error_rate, base, base)]
            drop = 0.0  # the version's accuracy drop so far
            for f in sorted(v.faults, key=lambda f: f.at_s):  # stable: equal times apply in the order given
                last = states[-1]
                slowdown = f.slowdown if f.slowdown is not None else last.slowdown
                error_rate = f.error_rate if f.error_rate is not None else last.error_rate
                drop = f.accuracy_drop if f.accuracy_drop is not None else drop
                state = VersionState(slowdown, v.service_factor * slowdown, error_rate,
                                     None if base is None else max(0.0, base - drop), base)
                if times[-1] == f.at_s:  # two faults at one instant: the later one wins
                    states[-1] = state
                else:
                    times.append(f.at_s)
                    states.append(state)
            self._times.append(times)
            self._states.append(states)
        self.static = all(len(times) == 1 for times in self._times)  # no state ever changes
        states = [s for per in self._states for s in per]
        self.uniform_speed = all(s.device_factor == 1.0 for s in states)
        self.judges = any(s.error_rate > 0 or s.judged for s in states)  # the twin must draw per request

    @classmethod
    def from_config(cls, cfg: ScenarioConfig) -> VersionBehaviour:
        """The numpy backend's accuracy is its real model's (NUMPY_DIGITS_ACCURACY); the
        emulated backend's is model.versions[...].accuracy."""
        from sim.config import version_specs

        table = NUMPY_DIGITS_ACCURACY if cfg.model.backend == "numpy" else None
        return cls(version_specs(cfg.model), table)

    def at(self, version: int, t: float) -> VersionState:
        times = self._times[version]
        if len(times) == 1:
            return self._states[version][0]
        return self._states[version][bisect.bisect_right(times, t) - 1]

    def device_factor(self, version: int, t: float) -> float:
        return self.at(version, t).device_factor

    def changes(self, version: int) -> list[tuple[float, VersionState]]:
        """(from time, state) in order, the first from -inf: the version's whole schedule."""
        return list(zip(self._times[version], self._states[version]))
