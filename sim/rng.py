"""Independent random streams from one seed.

The arrival schedule has its own stream so the twin and the real load generator, given the same
seed, see the very same schedule whatever else either of them draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class Streams:
    arrivals: np.random.Generator
    users: np.random.Generator
    service: np.random.Generator
    think: np.random.Generator
    routing: random.Random  # the policies' UniformSource: cheap per call
    overhead: np.random.Generator
    shadow: random.Random  # which requests the gateway mirrors, and to which replica (never routing's draws)


def make_streams(seed: int) -> Streams:
    # spawn children are indexed: appending a stream leaves the earlier ones unchanged. Per-request
    # failures and right/wrong answers draw from no stream: sim.policy.versions.common_unit
    arrivals, users, service, think, routing, overhead, shadow = np.random.SeedSequence(seed).spawn(7)
    return Streams(
        arrivals=np.random.default_rng(arrivals),
        users=np.random.default_rng(users),
        service=np.random.default_rng(service),
        think=np.random.default_rng(think),
        routing=random.Random(int(routing.generate_state(1)[0])),
        overhead=np.random.default_rng(overhead),
        shadow=random.Random(int(shadow.generate_state(1)[0])),
    )
