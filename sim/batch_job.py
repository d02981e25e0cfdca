"""The twin of an offline batch-scoring job (mode=batch): when will it finish, and what is the
fastest (or cheapest) batch size and parallelism for it?

The job is modelled as the real one runs (real/batch.py): `parallelism` workers start (spawn,
imports on the shared cores, then reading the input and the model, which overlap only as far
as JobCosts.load_cores says), wait until all are ready, then pull chunks from one queue
until it is empty. A chunk costs its model calls (ceil(rows / batch_size) batches, the last one
smaller) and a fixed part (slicing, writing its predictions). Costs are of two kinds:
- CPU work, which the workers share with each other on the host's cores (processor sharing:
  n busy workers on c cores each progress at min(1, c / n)), so parallelism beyond the cores
  stretches every batch instead of adding throughput;
- device time (the emulated accelerator's sleep), which needs no core.
A chunk is simulated as two phases, its device time then its CPU work, rather than batch by
batch: O(chunks) events, so a grid search over batch sizes x parallelism stays cheap. (Within a
chunk the real worker interleaves them; the phases' order changes only how CPU contention
overlaps, which matters little when either part dominates.)

I/O-free: costs come in as numbers and functions (scenarios/batch.py measures them).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import simpy


@dataclass(frozen=True)
class BatchJob:
    """What to score: chunk sizes (rows each), rows per model call, workers."""

    chunks: tuple[int, ...]
    batch_size: int
    parallelism: int

    @classmethod
    def split(cls, rows: int, chunk_rows: int, batch_size: int, parallelism: int) -> BatchJob:
        full, last = divmod(rows, chunk_rows)
        return cls(tuple([chunk_rows] * full + ([last] if last else [])), batch_size, parallelism)

    @property
    def rows(self) -> int:
        return sum(self.chunks)


@dataclass(frozen=True)
class JobCosts:
    """What a worker's steps cost, in seconds on a core (or device) of its own."""

    batch_cpu_s: Callable[[int], float]  # CPU time of one model call of B rows
    batch_device_s: Callable[[int], float] = lambda b: 0.0  # device time of one call (needs no core)
    chunk_s: float = 0.0  # CPU time per chunk beside its model calls (slice, write the predictions)
    start_s: float = 0.0  # CPU time for a worker to start (interpreter, imports), shared on `cores`
    load_s: float = 0.0  # then its time to read the input and load the model, alone
    cores: int | None = None  # cores the workers share; None: as many as there are workers
    # how many workers' loads overlap: on this project's VM, starting 1, 2 and 4 workers on a
    # 500k-row input took ~0.8, 1.7 and 4 s (first-touch memory serialises, cores or not), so 1
    load_cores: int | None = 1


@dataclass(frozen=True)
class JobTiming:
    """A job's two phases, predicted or measured alike."""

    startup_s: float  # until every worker is ready
    scoring_s: float  # from then until the last chunk is written
    rows: int

    @property
    def completion_s(self) -> float:
        return self.startup_s + self.scoring_s

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.completion_s if self.completion_s > 0 else math.inf


@dataclass(frozen=True)
class JobPrediction(JobTiming):
    parallelism: int
    batch_size: int

    def cost_per_1000(self, price_per_replica_hour: float) -> float:
        """price x replicas x hours, per 1,000 predictions (every worker is paid for the whole job)."""
        return cost_per_1000(price_per_replica_hour, self.parallelism, self.completion_s, self.rows)


def cost_per_1000(price_per_replica_hour: float, replicas: int, seconds: float, rows: int) -> float:
    return price_per_replica_hour * replicas * seconds / 3600.0 / (rows / 1000.0) if rows else math.nan


class SharedCores:
    """Processor sharing on `cores` cores: n jobs in service each progress at min(1, cores / n).

    `run(work)` is an event that fires when `work` CPU-seconds are done. Each change of the
    job count re-plans the next completion; a superseded plan's timer is ignored."""

    def __init__(self, env: simpy.Environment, cores: int | None) -> None:
        self.env = env
        self.cores = cores
        self._left: dict[simpy.Event, float] = {}
        self._last = 0.0
        self._plan = 0

    def _rate(self) -> float:
        n = len(self._left)
        return 1.0 if self.cores is None or n <= self.cores else self.cores / n

    def _advance(self) -> None:
        done = (self.env.now - self._last) * self._rate()
        if done > 0:
            for ev in self._left:
                self._left[ev] -= done
        self._last = self.env.now

    def _replan(self) -> None:
        self._plan += 1
        if self._left:
            plan = self._plan
            delay = max(min(self._left.values()), 0.0) / self._rate()
            self.env.timeout(delay).callbacks.append(lambda _ev: self._fire(plan))

    def _fire(self, plan: int) -> None:
        if plan != self._plan:
            return
        self._advance()
        first = min(self._left.values())
        for ev in [ev for ev, left in self._left.items() if left <= first + 1e-12]:
            del self._left[ev]
            ev.succeed()
        self._replan()

    def run(self, work: float) -> simpy.Event:
        ev = self.env.event()
        if work <= 0:
            ev.succeed()
            return ev
        if self.cores is None:  # nothing shared: a plain delay
            return self.env.timeout(work)
        self._advance()
        self._left[ev] = work
        self._replan()
        return ev


def chunk_work(rows: int, batch_size: int, costs: JobCosts) -> tuple[float, float]:
    """(device seconds, CPU seconds) of one chunk of `rows` rows."""
    full, last = divmod(rows, batch_size)
    device = full * costs.batch_device_s(batch_size) + (costs.batch_device_s(last) if last else 0.0)
    cpu = full * costs.batch_cpu_s(batch_size) + (costs.batch_cpu_s(last) if last else 0.0) + costs.chunk_s
    return device, cpu


def predict(job: BatchJob, costs: JobCosts) -> JobPrediction:
    """Simulate the job: startup (all workers at once, sharing the cores), then the chunk queue."""
    env = simpy.Environment()
    cores = SharedCores(env, costs.cores)
    loading = SharedCores(env, costs.load_cores)
    pending: deque[int] = deque(job.chunks)
    work = {rows: chunk_work(rows, job.batch_size, costs) for rows in set(job.chunks)}
    ready: list[float] = []

    def worker(all_ready: simpy.Event) -> simpy.events.ProcessGenerator:
        yield cores.run(costs.start_s)
        yield loading.run(costs.load_s)
        ready.append(env.now)
        if len(ready) == job.parallelism:
            all_ready.succeed()
        yield all_ready
        while pending:
            device, cpu = work[pending.popleft()]
            if device > 0:
                yield env.timeout(device)
            yield cores.run(cpu)

    all_ready = env.event()
    for _ in range(job.parallelism):
        env.process(worker(all_ready))
    env.run()
    startup = max(ready)
    return JobPrediction(startup, env.now - startup, job.rows, job.parallelism, job.batch_size)


@dataclass(frozen=True)
class SearchResult:
    points: list[JobPrediction] = field(default_factory=list)
    fastest: JobPrediction | None = None  # the most rows/s (ties: fewer workers, then smaller batches)
    cheapest: JobPrediction | None = None  # the least cost per 1,000 (ties: the faster)


def search(rows: int, chunk_rows: int, batch_sizes: Iterable[int], parallelisms: Iterable[int], costs: JobCosts,
           price_per_replica_hour: float) -> SearchResult:
    """Every (batch size, parallelism) of the grid predicted; the throughput-optimal and the
    cheapest named. A relative tolerance keeps float noise from breaking ties."""
    points = [predict(BatchJob.split(rows, chunk_rows, b, p), costs)
              for b in sorted(set(batch_sizes)) for p in sorted(set(parallelisms))]
    if not points:
        return SearchResult()

    def rounded(x: float) -> float:
        return float(f"{x:.9g}")

    fastest = min(points, key=lambda q: (-rounded(q.rows_per_s), q.parallelism, q.batch_size))
    cheapest = min(points, key=lambda q: (rounded(q.cost_per_1000(price_per_replica_hour)), q.completion_s))
    return SearchResult(points, fastest, cheapest)
