"""What each process of the real stack costs the host's CPU: sampled from the kernel's per-process
CPU time (user + system, psutil), for the twin's host model (sim.host).

On a shared host the stack saturates on CPU before its devices do; to model that the twin needs
each process's CPU seconds per request. A `CpuSampler` reads every descendant of this process
(the launcher's gateway and replicas, the load generator's Locust processes) a few times a
second and tells them apart by command line, so it needs no handle from whoever started them.
`CpuTrace.between(a, b)` is then each role's CPU seconds over a wall-clock span, interpolated
between samples: the span of a measurement window, not of a process's start-up.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import psutil

LOADGEN, GATEWAY, REPLICA, OTHER = "loadgen", "gateway", "replica", "other"
ROLES = (LOADGEN, GATEWAY, REPLICA)


def role_of(cmdline: list[str]) -> str:
    """Which part of the stack a process is, by its command line: the launcher runs
    `python -m real.gateway` / `python -m real.server`, the load generator `python -m locust`
    (a master without `--worker` only coordinates: counted with the load generator)."""
    text = " ".join(cmdline)
    if "real.gateway" in text:
        return GATEWAY
    if "real.server" in text:
        return REPLICA
    if "locust" in text:
        return LOADGEN
    return OTHER


@dataclass
class CpuTrace:
    """Per process: (wall time, cumulative CPU seconds) samples, and the process's role."""

    roles: dict[int, str] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    # the whole host's busy CPU seconds (every process, and time stolen by a hypervisor): what
    # is not the stack's was someone else's, and a measurement sharing the host is not clean
    host: list[tuple[float, float]] = field(default_factory=list)

    def _at(self, pid: int, t: float) -> float:
        points = self.samples[pid]
        times = [p[0] for p in points]
        cpu = [p[1] for p in points]
        # before its first sample a process used nothing we saw; after its last, nothing more
        return float(np.interp(t, times, cpu, left=0.0 if t < times[0] else cpu[0], right=cpu[-1]))

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each role used in the wall-clock span [start, end]."""
        used: dict[str, float] = defaultdict(float)
        for pid, role in self.roles.items():
            if self.samples[pid]:
                used[role] += max(self._at(pid, end) - self._at(pid, start), 0.0)
        return {role: used.get(role, 0.0) for role in (*ROLES, OTHER)}

    def host_busy(self, start: float, end: float) -> float:
        """CPU seconds the whole host was busy (or stolen) in [start, end]."""
        if len(self.host) < 2:
            return 0.0
        times, busy = zip(*self.host)
        return float(np.interp(end, times, busy) - np.interp(start, times, busy))

    def processes(self, role: str) -> int:
        return sum(1 for r in self.roles.values() if r == role)


class CpuSampler:
    """Samples the CPU time of every descendant of this process every `interval_s`, in a
    daemon thread, from `start()` to `stop()` (a context manager)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.trace = CpuTrace()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._known: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        now = time.time()
        host = psutil.cpu_times()
        busy = host.user + host.system + sum(getattr(host, name, 0.0) for name in ("nice", "irq", "softirq", "steal"))
        self.trace.host.append((now, busy))
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            pid = child.pid
            proc = self._known.get(pid)
            if proc is None or self.trace.roles[pid] == OTHER:
                # a child seen between fork and exec still shows its parent's command line:
                # look again until it says what it is
                try:
                    role = role_of(child.cmdline())
                except psutil.Error:
                    continue
                if proc is None:
                    self._known[pid] = proc = child
                self.trace.roles[pid] = role
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            self.trace.samples[pid].append((now, times.user + times.system))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> CpuSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
