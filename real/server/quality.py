"""A replica's version behaviour at run time: its slowdown, its failures and its accuracy.

The schedule is the twin's own (`sim.policy.versions.VersionBehaviour`, from model.versions
and their `faults`), read at the same two moments as the twin reads it: when a batch is dispatched
(the emulated device time is stretched by the version's slowdown then) and when an answer is
ready (it fails with the version's error rate: HTTP 500 with an OIP error body, after its batch
ran, as a model failure would; else, for a labelled request, it is right or wrong).

Run time is counted from the run's time 0, which the replica learns through its token-guarded
`POST /v2/fault {"t0_unix": ...}` (the wall time of time 0). Before that, no scheduled fault
applies: the version is as configured, except that it fails nothing. Failures belong to the
run: the requests a replica answers before it (the launcher's readiness checks, the warm-up,
mode=profile's calibration) measure the stack, and a 500 there would stop the run before it
starts. Whoever starts the load tells every replica its time 0 first.

Right or wrong, per backend: the numpy backend's answer is its real model's prediction against
the label the client sent (`parameters.label`); an accuracy drop then turns a right prediction
wrong with the probability that brings the model's own accuracy down to the scheduled one. The
emulated backend computes nothing: it draws right with the version's accuracy and answers a
label consistent with the draw (the label itself if right, another digit if wrong); with no
accuracy configured its answers are not judged.

Which requests fail, and which are right, is decided by common random numbers
(`sim.policy.versions.common_unit`: seed, request id, version, purpose), the twin's own: the
load generator sends schedule request i as OIP id `w<worker>-<i>`, and the twin draws for its
request i, so the same request fails (or is right) in both worlds when both routed it to the
same version. A request without such an id (tritonclient, curl, a closed-loop run, whose ids
are no schedule index) draws from the replica's own stream; so do rows after a request's first.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from sim.config import ScenarioConfig, version_names
from sim.policy.versions import CORRECT_DRAW, ERROR_DRAW, FLIP_DRAW, WRONG_DRAW, VersionBehaviour, VersionState, common_key, unit_of

LABEL = "label"
CLASSES = 10  # digits
# the load generator's OIP request id, w<worker>-<schedule index> (real.loadgen.locustfile)
LOAD_ID = re.compile(r"w\d+-(\d+)")


def schedule_index(request_id: str | None) -> int | None:
    """The schedule index in a load generator's request id, else None."""
    if request_id is None:
        return None
    match = LOAD_ID.fullmatch(request_id)
    return int(match.group(1)) if match is not None else None


@dataclass(frozen=True, slots=True)
class Judgement:
    """What became of one answer: a model failure, or whether it was right (None: not judged)."""

    failed: bool = False
    correct: bool | None = None


NOT_JUDGED = Judgement()


class ReplicaQuality:
    """The version behaviour of one replica, on the run's clock once it knows time 0."""

    def __init__(self, behaviour: VersionBehaviour, version: int, computes: bool, rng: random.Random,
                 clock: Callable[[], float] = time.perf_counter, seed: int | None = None) -> None:
        self.behaviour = behaviour
        self.version = version
        self.computes = computes  # the backend predicts (numpy) rather than draws (emulated)
        self.rng = rng  # a request the load generator's schedule did not send
        self.seed = seed  # the run's seed: common numbers by request id; None: the rng only
        self._keys: dict[int, int] = {}  # purpose -> common_key(seed, version, purpose)
        self.clock = clock
        self.t0: float | None = None  # `clock` at the run's time 0; None: not told yet
        self.t0_unix: float | None = None
        # nothing could ever fail, slow down or be judged: answers pass through untouched
        self.inert = behaviour.static and behaviour.uniform_speed and not behaviour.judges

    @classmethod
    def from_config(cls, cfg: ScenarioConfig, version: str, replica: int) -> ReplicaQuality:
        seed = int(np.random.SeedSequence([cfg.seed, replica, 0x9A11]).generate_state(1)[0])
        # closed-loop users' ids count per worker: no schedule index, nothing in the twin to share
        common = cfg.seed if cfg.arrival.kind != "closed" else None
        return cls(VersionBehaviour.from_config(cfg), version_names(cfg.model).index(version),
                   cfg.model.backend == "numpy", random.Random(seed), seed=common)

    def set_t0_unix(self, t0_unix: float) -> None:
        """Time 0 as wall time (another process's time.time()), onto this replica's clock."""
        self.t0_unix = t0_unix
        self.t0 = self.clock() - (time.time() - t0_unix)

    def now(self) -> float:
        """Run time, or -inf before time 0 is known (the version as configured)."""
        return -math.inf if self.t0 is None else self.clock() - self.t0

    def state(self) -> VersionState:
        return self.behaviour.at(self.version, self.now())

    def slowdown(self) -> float:
        """The scheduled fault's device-time factor now (service_factor is the backend's own)."""
        return 1.0 if self.inert else self.state().slowdown

    def judge(self, outputs: dict[str, np.ndarray], label: int | list[int] | None, request_id: str | None = None) -> Judgement:
        """Fail the answer, or judge it against `label` (one per row, or one for all rows);
        rewrites `outputs["label"]` in place where the answer is made wrong or drawn.
        `request_id`: the OIP body's id (the load generator's names the schedule index)."""
        if self.inert:
            return NOT_JUDGED
        state = self.state()
        index = schedule_index(request_id) if self.seed is not None else None
        if index is None:
            rng = self.rng.random
            draw = lambda _purpose, _row=0: rng()  # noqa: E731
        else:
            draw = partial(self._common, index)
        if state.error_rate > 0 and self.t0 is not None and draw(ERROR_DRAW) < state.error_rate:
            return Judgement(failed=True)
        if label is None or state.accuracy is None or LABEL not in outputs:
            return NOT_JUDGED
        predicted = outputs[LABEL]
        labels = np.broadcast_to(np.asarray(label, dtype=np.int64), predicted.shape)
        if self.computes:
            flip = state.flip_probability
            for row in range(len(predicted)):
                if predicted[row] == labels[row] and flip > 0 and draw(FLIP_DRAW, row) < flip:
                    predicted[row] = self._wrong(int(labels[row]), draw(WRONG_DRAW, row))
        else:
            for row in range(len(predicted)):
                right = draw(CORRECT_DRAW, row) < state.accuracy
                predicted[row] = labels[row] if right else self._wrong(int(labels[row]), draw(WRONG_DRAW, row))
        return Judgement(correct=bool((predicted == labels).all()))

    def _common(self, index: int, purpose: int, row: int = 0) -> float:
        """Request `index`'s common number for `purpose`; rows after the first (the twin's request
        is one row) from the replica's own stream."""
        if row:
            return self.rng.random()
        key = self._keys.get(purpose)
        if key is None:
            assert self.seed is not None
            key = self._keys[purpose] = common_key(self.seed, self.version, purpose)
        return unit_of(key, index)  # = common_unit(seed, index, version, purpose)

    @staticmethod
    def _wrong(label: int, u: float) -> int:
        """Any digit but `label`, uniformly by `u` in [0, 1)."""
        return (label + 1 + int(u * (CLASSES - 1))) % CLASSES
