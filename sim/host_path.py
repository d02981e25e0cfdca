"""A request's way through the stack's processes on the host (sim.host), in the twin.

Out: the load generator's worker sends it (its half of the generator's CPU), the gateway
parses and forwards it (half of the gateway's), the loopback and wake-ups take the non-CPU
half, the replica's server parses it (most of the replica's), and it joins the replica's
queue. Back: the replica answers the batch (per-batch CPU and `REPLICA_ANSWER_SHARE` per request),
the gateway relays each answer (where the gateway counts it: its windows, its outstanding
count), the non-CPU other half, and the worker reads it: then the client has its answer.

Every CPU step is a job of its process on `SimHost`, so a busy gateway loop or a host with
every core taken delays the request as the real one is delayed; the twin's request log gets
the client's time. A load-generator worker is request id mod workers, as the real plan
shares the schedule (real.loadgen.plan.worker_share).
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Callable

import numpy as np

from sim.host import GATEWAY, LOADGEN, REPLICA, REPLICA_ANSWER_SHARE, HostCosts, SimHost
from sim.records import TIMEOUT

if TYPE_CHECKING:
    import simpy

    from sim.replica import SimReplica
    from sim.requests import RequestLog

_BUFFER = 65536


class HostPath:
    def __init__(self, env: simpy.Environment, log: RequestLog, costs: HostCosts, workers: int, rng: np.random.Generator,
                 timeout_s: float, gateway_saw: Callable[[int, int], None], client_has: Callable[[int], None]) -> None:
        self.env = env
        self.log = log
        self.host = SimHost(env, costs.cores, costs.slowdown, costs.wake_s)
        self.timeout_s = timeout_s
        self.gateway_saw = gateway_saw  # (replica, request): the gateway has the answer
        self.client_has = client_has  # (request): the client has it (log.finish is set)
        c = costs.cpu_per_request_s
        self.loadgen_s, self.gateway_s = c[LOADGEN] / 2, c[GATEWAY] / 2
        self.replica_in_s, self.replica_answer_s = c[REPLICA] * (1 - REPLICA_ANSWER_SHARE), c[REPLICA] * REPLICA_ANSWER_SHARE
        self.batch_s = costs.replica_cpu_per_batch_s
        self.handoff_s = costs.handoff_s
        # the generator runs niced: a free core goes to the stack first
        self.workers = [self.host.add_process(priority=1) for _ in range(workers)]
        self.gateway = self.host.add_process()
        self.replicas: dict[int, int] = {}
        self._fixed = np.asarray(costs.fixed_s, dtype=float) / 2
        self._rng = rng
        self._draws: list[float] = []
        self.after: dict[int, float] = {}  # request -> its non-CPU time on the way back

    def _half_fixed(self) -> float:
        """Half of one measured non-CPU time: the same request's other half goes back."""
        if len(self._fixed) == 1:
            return float(self._fixed[0])
        if not self._draws:
            self._draws = self._fixed[self._rng.integers(0, len(self._fixed), _BUFFER)].tolist()
        return self._draws.pop()

    def replica_process(self, replica: int) -> int:
        process = self.replicas.get(replica)
        if process is None:
            process = self.replicas[replica] = self.host.add_process()
        return process

    def _later(self, delay: float, then: Callable[[], None]) -> None:
        if delay > 0:
            self.env.timeout(delay).callbacks.append(lambda _e: then())
        else:
            then()

    # -- out ---------------------------------------------------------------------------------

    def send(self, i: int, rep: SimReplica) -> None:
        """Request i, routed to `rep` at its send time: through the generator and the gateway
        into the replica's queue."""
        half = self._half_fixed()
        self.after[i] = half
        host = self.host
        replica = self.replica_process(rep.index)

        def at_replica() -> None:
            rep.enqueue(i, self.env._now)

        def past_gateway() -> None:
            self._later(half, lambda: host.run(replica, self.replica_in_s, at_replica))

        host.run(self.workers[i % len(self.workers)], self.loadgen_s,
                 lambda: host.run(self.gateway, self.gateway_s, past_gateway))

    def lane(self, replica: int) -> ReplicaLane:
        """Replica `replica`'s process, for its batches' hand-back (and a CPU model's compute)."""
        return ReplicaLane(self.host, self.replica_process(replica), self.batch_s, self.handoff_s)

    # -- back --------------------------------------------------------------------------------

    def relay(self, replica: int, requests: list[int]) -> None:
        """Answers that left replica `replica`'s batch (or its refusal, or its expired queue):
        its loop writes each in turn (its answer share of the replica's CPU: after the instance is free,
        as the server answers once the batch is handed back). Each handler resumes and writes
        its own answer, so the first leaves while the others are still being written; they
        run as one batch of ready callbacks, so the instance's thread takes the GIL for its
        next batch only after the last (SimHost.run_series). Then each goes back through the
        gateway to its worker."""
        self.host.run_series(self.replica_process(replica), self.replica_answer_s,
                             [partial(self._to_gateway, replica, j) for j in requests])

    def _to_gateway(self, replica: int, j: int) -> None:
        self.host.run(self.gateway, self.gateway_s, partial(self._at_gateway, replica, j))

    def _at_gateway(self, replica: int, j: int) -> None:
        self.log.finish[j] = self.env._now  # the gateway's view, until the client has it
        self.gateway_saw(replica, j)
        if self.log.shadow[j]:  # a shadow copy's answer stops at the gateway
            return
        worker = self.workers[j % len(self.workers)]
        self._later(self.after.pop(j, 0.0), lambda: self.host.run(worker, self.loadgen_s, partial(self._at_client, j)))

    def _at_client(self, j: int) -> None:
        log = self.log
        now = self.env._now
        deadline = log.arrival[j] + self.timeout_s
        if log.status[j] == TIMEOUT:  # the client gave up at its deadline, before the answer
            log.finish[j] = deadline
        elif now > deadline and math.isfinite(self.timeout_s):
            log.status[j] = TIMEOUT
            log.finish[j] = deadline
        else:
            log.finish[j] = now
        self.client_has(j)



class ReplicaLane:
    """One replica's process on the host: `run(cost, then)` a job on it; what taking a batch
    back from an instance costs it (`answer_s`), and how long an instance's thread takes to
    wake up for a batch (`handoff_s`)."""

    __slots__ = ("host", "process", "batch_s", "handoff_s")

    def __init__(self, host: SimHost, process: int, batch_s: float, handoff_s: float) -> None:
        self.host, self.process, self.batch_s, self.handoff_s = host, process, batch_s, handoff_s

    def run(self, cost_s: float, then: Callable[[], None]) -> None:
        self.host.run(self.process, cost_s, then)

    def answer_s(self, n: int) -> float:
        """Taking a batch back from its instance and handing the instance its next (its
        answers are written after, `HostPath.relay`)."""
        return self.batch_s
