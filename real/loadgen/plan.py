"""What a Locust process is told to do: the plan (JSON) and the schedule (npz), both files.

The load generator runs in Locust subprocesses (importing Locust patches the whole process with
gevent), so everything they need travels as two files in the run directory, and the worker index
as an environment variable (the parent starts the workers itself). The schedule is written once,
from `sim.arrivals.make_schedule`, so the twin and every worker replay the very same arrivals.

This module is shared by both sides: it imports numpy and the standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

PLAN_ENV = "SERVELAB_LOADGEN_PLAN"
WORKER_ENV = "SERVELAB_LOADGEN_WORKER"
DEADLINE_SLACK_S = 2.0  # past the client deadline, a request's record is on its way: not a setting


@dataclass(frozen=True)
class LoadPlan:
    """One run of the load generator; every worker reads the same plan.

    Built from the scenario by `real.loadgen.runner.make_plan`: every setting here is a config
    key (`loadgen.*`, `arrival.*`, ...) and its default lives in the schema, not here."""

    url: str  # the gateway (or any OIP endpoint), e.g. http://127.0.0.1:8000
    infer_path: str  # /v2/models/<name>/infer
    closed: bool  # closed loop (users wait for answers) instead of the schedule
    schedule: str  # open loop: the npz written by `write_schedule`; "" when closed
    out_dir: str  # where workers write records-<i>.npz and started-<i>.json
    workers: int
    duration_s: float
    timeout_s: float  # client deadline from the intended send time; 0 = none
    users: int  # closed loop: concurrent users (user u runs on worker u % workers)
    think_s: float  # closed loop: mean exponential think time (sim.policy.users.ThinkTime)
    seed: int  # the run's seed: closed-loop think times come from its think stream
    dispatch: str  # loadgen.dispatch
    start_lead_s: float  # loadgen.start_lead_s: t0 = when the master says go + this
    max_connections: int  # loadgen.max_connections, per worker
    drain_s: float  # loadgen.drain_s: without a client deadline, how long to wait for the last answers
    inputs: str = ""  # labelled images to send (`write_inputs`); "" = one synthetic unlabelled row
    spin_s: float = 0.0  # loadgen.spin_s: sleep to this long before a send, spin the rest
    protocol: str = "http"  # loadgen.protocol: http (url is http://host:port) | grpc (url is the gRPC target host:port)
    model: str = "digits"  # the model a gRPC infer names (REST names it in infer_path)
    # pattern=async (real.loadgen.async_client): submit, then poll on PollSchedule(poll_*) or be called back
    pattern: str = "sync"
    poll_first_s: float = 0.05
    poll_backoff: float = 2.0
    poll_max_interval_s: float = 1.0
    callback: bool = False
    entity: bool = False  # features.store != none: requests carry no input, parameters.entity_id = the schedule's user_id

    @property
    def drain_after_s(self) -> float:
        """How long after its last send a worker waits for answers: the client deadline and a
        little slack, or loadgen.drain_s when there is none."""
        return self.timeout_s + DEADLINE_SLACK_S if self.timeout_s > 0 else self.drain_s

    def write(self, path: Path) -> None:
        _atomic_bytes(path, json.dumps(asdict(self), indent=2).encode())

    @staticmethod
    def read(path: str | Path) -> "LoadPlan":
        return LoadPlan(**json.loads(Path(path).read_text()))


def records_path(out_dir: str | Path, worker: int) -> Path:
    return Path(out_dir) / f"records-{worker}.npz"


def started_path(out_dir: str | Path, worker: int) -> Path:
    return Path(out_dir) / f"started-{worker}.json"


def worker_share(request_ids: np.ndarray, worker: int, workers: int) -> np.ndarray:
    """The positions a worker sends: request_id % workers == worker. Interleaving (rather than
    contiguous blocks) gives every worker the same rate and the same arrival process, thinned."""
    return np.flatnonzero(request_ids % workers == worker)


def write_schedule(path: Path, times_s: np.ndarray, user_ids: np.ndarray, versions: np.ndarray | None = None) -> None:
    """request_id = position in the schedule, as in the twin. `versions`: a trace's pinned
    version per request ("" = none), sent as x-model-version."""
    n = len(times_s)
    pins = {} if versions is None else {"versions": np.asarray(versions, dtype=str)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, times_s=np.asarray(times_s, dtype=np.float64), user_ids=np.asarray(user_ids, dtype=np.int64),
                     request_ids=np.arange(n, dtype=np.int64), **pins)

    _atomic(path, write)


def write_inputs(path: Path, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """The labelled images a run sends (the held-out digits: real.models.digits.test_split), in
    an order the seed shuffles once: request r sends image `input_index(r, n)` with its label
    as `parameters.label`, whichever worker sends it, so a run's inputs are reproducible."""
    order = np.random.default_rng(seed).permutation(len(labels))
    write_arrays(path, {"images": np.asarray(images)[order].astype(np.int64),
                        "labels": np.asarray(labels)[order].astype(np.int64)})


def read_inputs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["images"], z["labels"]


def input_index(request_id: int, n_inputs: int) -> int:
    """Which of the run's inputs request `request_id` sends: every input in turn."""
    return request_id % n_inputs


def read_schedule(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["times_s"], z["user_ids"], z["request_ids"]


def read_schedule_pins(path: str | Path) -> dict[int, str]:
    """request_id -> the version its x-model-version header names (only the pinned ones)."""
    with np.load(path, allow_pickle=False) as z:
        if "versions" not in z.files:
            return {}
        versions, ids = z["versions"], z["request_ids"]
    pinned = np.flatnonzero(versions != "")
    return dict(zip(ids[pinned].tolist(), versions[pinned].tolist()))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside the target and rename: a reader sees the whole file or none (the parent polls
    for the workers' records). sim.files does the same, but pulls in pandas and yaml, which a
    Locust worker has no use for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda p: p.write_bytes(data))


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(path, write)


def write_json_file(path: Path, doc: dict[str, object]) -> None:
    _atomic_bytes(path, json.dumps(doc).encode())
