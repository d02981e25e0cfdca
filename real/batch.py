"""Offline batch scoring's worker: a process that scores whole chunks of a Parquet file.

mode=batch (scenarios/batch.py) starts `batch.parallelism` of these with multiprocessing's
spawn method. Each reads the input once, loads the model, says it is ready, then pulls chunk
indices from a shared queue until it is told to stop; a chunk is scored in model calls of
`batch_size` rows and its predictions written atomically (sim.files) as
`predictions/chunk-NNNNN.parquet` with columns `row` (the input's 0-based row), `label`, and
`probability` (of that label; NaN with the emulated backend, whose device computes nothing).
A crash loses at most the chunks in flight: a rerun skips every chunk file that reads back valid.

The model call is the serving backend's (real.server.backends): the numpy digits classifier,
or the emulated device that sleeps the service model's time and answers label 0. The same
`Scorer` is what `calibrate` times, in a process started the same way, so the twin is fed the
costs of the code that runs.
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.config import ServiceConfig
from sim.files import write_parquet

FEATURES = 64
FEATURE_COLUMNS = tuple(f"x{i}" for i in range(FEATURES))
PREDICTION_COLUMNS = ("row", "label", "probability")
# the environment a worker starts with: one BLAS thread, as a replica (real/launcher.py), so
# `parallelism` workers use `parallelism` cores and the twin's processor sharing holds
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PARENT_POLL_S = 1.0  # how often an idle worker checks that its parent still lives


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (spawned processes receive it as an argument)."""

    input_path: str
    predictions_dir: str
    rows: int
    chunk_rows: int
    batch_size: int
    backend: str  # numpy | emulated
    version: str
    service: ServiceConfig
    service_factor: float
    seed: int


def chunk_count(rows: int, chunk_rows: int) -> int:
    return -(-rows // chunk_rows)


def chunk_bounds(rows: int, chunk_rows: int, index: int) -> tuple[int, int]:
    """[start, stop) of chunk `index`: every chunk has chunk_rows rows but the last."""
    start = index * chunk_rows
    return start, min(start + chunk_rows, rows)


def chunk_path(predictions_dir: str | Path, index: int) -> Path:
    return Path(predictions_dir) / f"chunk-{index:05d}.parquet"


def read_features(path: str | Path) -> np.ndarray:
    """The input's x0..x63 as one float32 (rows, 64) array. Read on one thread: pyarrow would
    decode on every core, and `parallelism` workers starting at once would then contend in a way
    the twin's one-core-per-worker start cost does not model."""
    frame = pd.read_parquet(path, columns=list(FEATURE_COLUMNS), use_threads=False)
    return np.ascontiguousarray(frame.to_numpy(dtype=np.float32))


def valid_chunk(path: Path, start: int, stop: int) -> bool:
    """Whether a chunk file holds exactly the predictions of rows [start, stop)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return False
    if tuple(table.column_names) != PREDICTION_COLUMNS or table.num_rows != stop - start:
        return False
    rows = table.column("row").to_numpy()
    return bool(np.array_equal(rows, np.arange(start, stop)))


class Scorer:
    """One worker's model: a chunk's rows -> predictions, in model calls of `batch_size` rows."""

    def __init__(self, spec: WorkerSpec, worker: int) -> None:
        self.spec = spec
        self._sleep = True
        if spec.backend == "numpy":
            from real.models import load_model

            self._model: Any = load_model(spec.version)
            self._model.predict_proba(np.zeros((4, FEATURES), dtype=np.float32))  # first call pays lazy set-up
        elif spec.backend == "emulated":
            from sim.service import ServiceTime

            self._service = ServiceTime(spec.service, np.random.default_rng([spec.seed, worker]))
            self._service.draw(1)  # fills its draw buffer now, not inside the first chunk
        else:
            raise ValueError(f"unknown model.backend {spec.backend!r}")

    def batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One model call: (labels, probability of each label)."""
        if self.spec.backend == "numpy":
            proba = self._model.predict_proba(x)
            labels = proba.argmax(axis=1)
            return labels.astype(np.int64), proba[np.arange(len(labels)), labels]
        planned = self._service.draw(x.shape[0]) * self.spec.service_factor
        if self._sleep and planned > 0:
            time.sleep(planned)
        return np.zeros(x.shape[0], dtype=np.int64), np.full(x.shape[0], np.nan, dtype=np.float32)

    def chunk(self, x: np.ndarray, start: int) -> pd.DataFrame:
        b = self.spec.batch_size
        labels, probs = [], []
        for i in range(0, x.shape[0], b):
            label, prob = self.batch(x[i:i + b])
            labels.append(label)
            probs.append(prob)
        return pd.DataFrame({"row": np.arange(start, start + x.shape[0], dtype=np.int64),
                             "label": np.concatenate(labels), "probability": np.concatenate(probs).astype(np.float32)})


def worker_main(spec: WorkerSpec, worker: int, tasks: Any, results: Any) -> None:
    """A worker process: ready, then chunks until None. Reports go to `results` as tuples
    (kind, worker, ...) with time.monotonic() stamps (CLOCK_MONOTONIC: one clock for every process)."""
    parent = os.getppid()
    try:
        features = read_features(spec.input_path)
        scorer = Scorer(spec, worker)
        results.put(("ready", worker, time.monotonic()))
        while True:
            try:
                index = tasks.get(timeout=PARENT_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:  # orphaned: the job is gone, so is the point of going on
                    return
                continue
            if index is None:
                return
            start, stop = chunk_bounds(spec.rows, spec.chunk_rows, index)
            began = time.monotonic()
            frame = scorer.chunk(features[start:stop], start)
            write_parquet(chunk_path(spec.predictions_dir, index), frame)
            results.put(("done", worker, index, stop - start, began, time.monotonic()))
    except BaseException as exc:  # the parent names the failure; a traceback line each
        results.put(("error", worker, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def _mean_time(call: Any, budget_s: float, max_calls: int, min_calls: int = 5) -> float:
    """Mean seconds of call(): repeated until budget_s or max_calls, whichever first."""
    call()  # warm
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) if len(times) >= 20 else float(np.mean(times))


def calibrate_main(spec: WorkerSpec, batch_sizes: list[int], budget_s: float, results: Any) -> None:
    """Time, in a process started as the workers are, what a worker spends: per batch size the
    CPU time of one model call (the emulated device's sleep left out, and its oversleep measured
    apart), and a chunk's fixed cost (slicing and writing its predictions). Puts a dict on results."""
    try:
        results.put(("entered", 0, time.monotonic()))  # started, imports done: the rest is input and model
        features = read_features(spec.input_path)
        scorer = Scorer(spec, 0)
        results.put(("ready", 0, time.monotonic()))
        scorer._sleep = False  # the device's time is the service model's: only the CPU around it is measured
        batch_cpu_s = {}
        for b in batch_sizes:
            x = np.ascontiguousarray(np.resize(features[: max(b, 1)], (b, FEATURES)))
            batch_cpu_s[b] = _mean_time(lambda x=x: scorer.batch(x), budget_s / max(len(batch_sizes), 1), 20_000)
        oversleep_s = 0.0
        if spec.backend == "emulated":
            nominal = 0.002
            oversleep_s = max(_mean_time(lambda: time.sleep(nominal), 0.1, 40) - nominal, 0.0)
        rows = min(spec.chunk_rows, features.shape[0])
        frame = pd.DataFrame({"row": np.arange(spec.chunk_rows, dtype=np.int64),
                              "label": np.zeros(spec.chunk_rows, dtype=np.int64),
                              "probability": np.full(spec.chunk_rows, 0.5, dtype=np.float32)})
        with tempfile.TemporaryDirectory(prefix="servelab-batch-calibration-") as tmp:
            target = Path(tmp) / "chunk.parquet"

            def write() -> None:
                features[:rows].copy()
                write_parquet(target, frame)

            chunk_s = _mean_time(write, 0.3, 20, min_calls=3)
        results.put(("calibration", 0, {"batch_cpu_s": batch_cpu_s, "oversleep_s": oversleep_s, "chunk_s": chunk_s}))
    except BaseException as exc:
        results.put(("error", 0, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
