"""How each model version behaves at a given run time: its speed, its error rate, its accuracy.

A version is configured once (model.versions: `service_factor`, `error_rate`, `accuracy`) and
may turn bad while the run goes on (`faults`: from `at_s`, a slowdown, an error rate, an
accuracy drop). Both worlds ask this one object, with the run time as an argument: the twin's
replicas when a batch is dispatched (device time) and when it completes (failures, right or
wrong answers), and the real replicas at the same two moments on their own clock, counted from
the run's time 0 they are told (`POST /v2/fault {"t0_unix": ...}`). So a "good at first, bad
under load" version turns bad at the same instant of the schedule in both.

No clock and no randomness here: callers pass `t` and draw from their own stream.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from sim.config import FaultConfig, ScenarioConfig, VersionConfig

# The numpy backend's models (real.models.digits), right answers on the 450 held-out digits
# (real.models.digits.test_split, which the load generator sends): the twin's accuracy for a
# numpy run. sim/ cannot import real/, so the figures are kept here and
# tests/real/test_quality.py measures the models again and checks them against this table.
NUMPY_DIGITS_ACCURACY: dict[str, float] = {
    "1": 436 / 450,  # softmax
    "2": 441 / 450,  # MLP, 512 hidden
    "3": 364 / 450,  # softmax fitted on three images per digit: the degraded release
}


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

    def __init__(self, versions: Sequence[VersionConfig], faults: Sequence[FaultConfig] = (),
                 model_accuracy: Mapping[str, float] | None = None) -> None:
        self.names = [v.name for v in versions]
        index = {name: i for i, name in enumerate(self.names)}
        self._times: list[list[float]] = []
        self._states: list[list[VersionState]] = []
        for v in versions:
            base = model_accuracy.get(v.name) if model_accuracy is not None else v.accuracy
            self._times.append([-math.inf])
            self._states.append([VersionState(1.0, v.service_factor, v.error_rate, base, base)])
        drops = [0.0] * len(versions)  # each version's accuracy drop so far
        for f in sorted(faults, key=lambda f: f.at_s):  # stable: equal times apply in the order given
            i = index[f.version]
            last = self._states[i][-1]
            slowdown = f.slowdown if f.slowdown is not None else last.slowdown
            error_rate = f.error_rate if f.error_rate is not None else last.error_rate
            drops[i] = f.accuracy_drop if f.accuracy_drop is not None else drops[i]
            base = last.model_accuracy
            state = VersionState(slowdown, versions[i].service_factor * slowdown, error_rate,
                                 None if base is None else max(0.0, base - drops[i]), base)
            if self._times[i][-1] == f.at_s:  # two faults at one instant: the later one wins
                self._states[i][-1] = state
            else:
                self._times[i].append(f.at_s)
                self._states[i].append(state)
        self.static = not faults  # no state ever changes
        states = [s for per in self._states for s in per]
        self.uniform_speed = all(s.device_factor == 1.0 for s in states)
        self.judges = any(s.error_rate > 0 or s.judged for s in states)  # the twin must draw per request

    @classmethod
    def from_config(cls, cfg: ScenarioConfig) -> VersionBehaviour:
        """The numpy backend's accuracy is its real model's (NUMPY_DIGITS_ACCURACY); the
        emulated backend's is model.versions[...].accuracy."""
        from sim.config import fault_specs, version_specs

        table = NUMPY_DIGITS_ACCURACY if cfg.model.backend == "numpy" else None
        return cls(version_specs(cfg.model), fault_specs(cfg.faults), table)

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
