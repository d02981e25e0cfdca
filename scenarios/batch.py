"""mode=batch: offline batch scoring, predicted by the twin and then measured.

A dataset (batch.input, Parquet with float columns x0..x63; empty: the digits held-out set
repeated to batch.rows rows, written to out_dir/input.parquet with its labels in column y) is
scored in chunks of batch.chunk_rows rows by batch.parallelism worker processes
(real/batch.py), in model calls of batch.batch_size rows. Each chunk's predictions land
atomically in out_dir/predictions/chunk-NNNNN.parquet; a rerun into the same out_dir
(batch.resume=true) scores only the chunks missing or unreadable, so a crash costs at most the
chunks in flight. predictions/job.json records what the chunks are of: a rerun of a different
job into the same directory is refused rather than mixed.

Before the job, a spawned process like the workers times what they will do (a model call per
batch size, a chunk's write, its own start); the twin (sim/batch_job.py) turns those costs into
the job's predicted start, scoring and completion time, and with batch.search, a grid of batch
sizes x parallelism with the fastest and the cheapest point. After the job the measured figures
are printed beside the prediction, with the error, and both are written to batch.json.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from reports.batch import COMPARED, comparison_rows, write_batch_report
from scenarios.config import MEMORY_SHARE, ServelabConfig, available_memory_bytes
from scenarios.outputs import format_report_paths
from sim.batch_job import BatchJob, JobCosts, JobPrediction, JobTiming, SearchResult, cost_per_1000, predict, search
from sim.config import ConfigError, to_plain, version_specs
from sim.files import write_config, write_json, write_parquet
from real.batch import (FEATURE_COLUMNS, FEATURES, WORKER_ENV, WorkerSpec, calibrate_main, chunk_bounds, chunk_count,
                        chunk_path, read_features, valid_chunk, worker_main)

SEARCH_BATCH_SIZES = (1, 8, 32, 128, 512)
CALIBRATION_BUDGET_S = 0.6  # model-call timing, split over the batch sizes
START_TIMEOUT_S = 120.0  # a worker that is not ready by then (a hung import) stops the job
INPUT_HINT = "a Parquet file with numeric columns x0..x63 (the 8x8 pixels), or empty for the generated digits set"
EXIT_FAILED = 1


class BatchJobError(RuntimeError):
    """A worker failed or died: the job stops, the chunks written so far stay for a rerun."""


# --- input ---------------------------------------------------------------------------------------

def check_batch_input(cfg: ServelabConfig) -> None:
    """batch.input is a readable Parquet file with the model's 64 feature columns, and the job
    fits in memory (each worker holds the input's features). Reads the file's schema only."""
    b = cfg.batch
    rows = b.rows
    if b.input:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(b.input)
        if not path.is_file():
            raise ConfigError("batch.input", f"{b.input} {'is not a file' if path.exists() else 'does not exist'}; give {INPUT_HINT}")
        try:
            meta = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:
            raise ConfigError("batch.input", f"{b.input} is not a Parquet file ({str(exc).splitlines()[0]}); give {INPUT_HINT}") from exc
        schema = meta.schema_arrow
        missing = [c for c in FEATURE_COLUMNS if c not in schema.names]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ConfigError("batch.input", f"{b.input} lacks column(s) {shown}; give {INPUT_HINT}")
        wrong = [c for c in FEATURE_COLUMNS if not (pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type))]
        if wrong:
            raise ConfigError("batch.input", f"{b.input}: column {wrong[0]} is {schema.field(wrong[0]).type}, not a number; give {INPUT_HINT}")
        rows = meta.metadata.num_rows
        if rows < 1:
            raise ConfigError("batch.input", f"{b.input} has no rows; give {INPUT_HINT}")
    need = rows * FEATURES * 4 * (b.parallelism + 2)  # each worker's copy, and the parent's while it generates or checks
    limit = MEMORY_SHARE * available_memory_bytes()
    if need > limit:
        key = "batch.input" if b.input else "batch.rows"
        raise ConfigError(key, f"{rows:,} rows x {FEATURES} features in {b.parallelism} workers need ~{need / 2**20:.0f} MiB, "
                               f"more than {limit / 2**20:.0f} MiB ({MEMORY_SHARE:.0%} of the memory available); "
                               f"lower {key if b.input else 'batch.rows'} or batch.parallelism")


def generate_input(path: Path, rows: int) -> None:
    """The digits held-out set (never seen in training) repeated to `rows` rows, with its labels
    in column y. Deterministic: an existing file of the right size is kept (a resumed job's)."""
    import pyarrow.parquet as pq

    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            if pq.ParquetFile(path).metadata.num_rows == rows:
                return
    from real.models import test_split

    x, y = test_split()
    take = np.resize(np.arange(len(y)), rows)
    frame = pd.DataFrame(x[take], columns=list(FEATURE_COLUMNS))
    frame["y"] = y[take]
    write_parquet(path, frame)


def input_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


# --- chunks: what is done, what is left ------------------------------------------------------------

def job_manifest(spec: WorkerSpec) -> dict[str, Any]:
    """What a directory's chunk files are predictions of: a resumed job must match it."""
    return {"input": spec.input_path, "rows": spec.rows, "chunk_rows": spec.chunk_rows, "backend": spec.backend,
            "version": spec.version}


def plan_chunks(spec: WorkerSpec, resume: bool) -> tuple[list[int], list[int]]:
    """(chunks to score, chunks already written). Without resume every chunk file goes first;
    with it, a directory holding another job's chunks is refused (mixing them would be wrong)."""
    pred = Path(spec.predictions_dir)
    pred.mkdir(parents=True, exist_ok=True)
    for leftover in pred.glob(".chunk-*"):  # a crashed write's temporary file
        leftover.unlink(missing_ok=True)
    manifest_path = pred / "job.json"
    manifest = job_manifest(spec)
    if resume and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            differs = sorted(k for k in manifest if not isinstance(old, dict) or old.get(k) != manifest[k])
            raise ConfigError("batch.resume", f"{pred} holds predictions of another job (its {', '.join(differs)} differ); "
                                              "give another out_dir, or batch.resume=false to score all again")
    n = chunk_count(spec.rows, spec.chunk_rows)
    if not resume:
        for old_chunk in pred.glob("chunk-*.parquet"):
            old_chunk.unlink()
    write_json(manifest_path, manifest)
    done = [i for i in range(n) if resume and valid_chunk(chunk_path(pred, i), *chunk_bounds(spec.rows, spec.chunk_rows, i))]
    finished = set(done)
    return [i for i in range(n) if i not in finished], done


# --- processes -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _worker_env() -> Iterator[None]:
    """Spawned children inherit os.environ as it is at start(): pin one BLAS thread for them."""
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop(processes: list[Any]) -> None:
    for p in processes:
        p.join(timeout=5.0)
    for p in processes:
        if p.is_alive():
            p.terminate()
            p.join(timeout=5.0)
        if p.is_alive():
            p.kill()
            p.join()


def _next_report(results: Any, processes: list[Any], deadline: float | None = None) -> tuple[Any, ...]:
    """The next worker report; a worker that died without one (killed, out of memory) is an error."""
    while True:
        try:
            report: tuple[Any, ...] = results.get(timeout=0.5)
        except queue.Empty:
            dead = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode not in (None, 0)]
            if dead:
                raise BatchJobError(f"worker {dead[0][0]} died (exit code {dead[0][1]})") from None
            if deadline is not None and time.monotonic() > deadline:
                raise BatchJobError(f"workers not ready within {START_TIMEOUT_S:.0f} s") from None
            continue
        if report[0] == "error":
            raise BatchJobError(f"worker {report[1]}: {report[2]}")
        return report


@dataclass(frozen=True)
class Calibration:
    batch_cpu_s: dict[int, float]  # a model call's CPU time per batch size
    oversleep_s: float  # how much longer than asked an emulated device's sleep takes
    chunk_s: float  # a chunk's fixed CPU time (slice, write its predictions)
    start_s: float  # a worker's start alone: spawn, interpreter, imports
    load_s: float  # then its reading of the input and loading of the model


def calibrate(spec: WorkerSpec, batch_sizes: list[int]) -> Calibration:
    """Measured in one process started as the workers are (its start is the workers' start cost).

    A throwaway process that reads the input is started first: the first process a parent
    spawns starts markedly slower (~1.8 s against ~0.8 s on this project's machine for a
    500k-row input, whatever it runs), which the job's workers, spawned later, do not pay."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with _worker_env():
        warm = ctx.Process(target=read_features, args=(spec.input_path,), daemon=True)
        warm.start()
    warm.join(START_TIMEOUT_S)
    _stop([warm])
    with _worker_env():
        process = ctx.Process(target=calibrate_main, args=(spec, batch_sizes, CALIBRATION_BUDGET_S, results), daemon=True)
        began = time.monotonic()
        process.start()
    try:
        entered = _next_report(results, [process], began + START_TIMEOUT_S)
        ready = _next_report(results, [process], began + START_TIMEOUT_S)
        measured = _next_report(results, [process])[2]
    finally:
        _stop([process])
    return Calibration({int(b): float(t) for b, t in measured["batch_cpu_s"].items()}, float(measured["oversleep_s"]),
                       float(measured["chunk_s"]), float(entered[2]) - began, float(ready[2]) - float(entered[2]))


@dataclass(frozen=True)
class Measured(JobTiming):
    chunks: int


def run_job(spec: WorkerSpec, todo: list[int], parallelism: int, on_chunk: Callable[[int], None] | None = None) -> Measured:
    """Score the chunks `todo` in `parallelism` spawned workers: start them all, wait until every
    one is ready (so the scoring phase is measured as the twin models it), then queue the chunks."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    processes = [ctx.Process(target=worker_main, args=(spec, w, tasks, results), daemon=True) for w in range(parallelism)]
    began = time.monotonic()
    try:
        with _worker_env():
            for p in processes:
                p.start()
        for _ in processes:
            _next_report(results, processes, began + START_TIMEOUT_S)
        ready = time.monotonic()
        for index in todo:
            tasks.put(index)
        for _ in processes:
            tasks.put(None)
        rows, last = 0, ready
        for _ in todo:
            _, _worker, _index, n, _start, end = _next_report(results, processes)
            rows += n
            last = max(last, end)
            if on_chunk is not None:
                on_chunk(n)
    finally:
        _stop(processes)
    return Measured(ready - began, last - ready, rows, len(todo))


# --- the twin's costs ---------------------------------------------------------------------------------

def job_costs(cfg: ServelabConfig, calibration: Calibration, cores: int) -> tuple[JobCosts, str]:
    """The twin's costs, and where they came from. Emulated: the service model's mean device
    time (x the version's factor, + the measured oversleep) beside the measured CPU around it.
    Numpy: a profile's device times when service.profile or overhead.profile names one, else
    the calibration's model calls (interpolated between the sizes it timed)."""
    sizes = sorted(calibration.batch_cpu_s)
    measured = [calibration.batch_cpu_s[b] for b in sizes]

    def calibrated(b: int) -> float:
        return float(np.interp(b, sizes, measured))

    base = dict(chunk_s=calibration.chunk_s, start_s=calibration.start_s, load_s=calibration.load_s, cores=cores)
    version = version_specs(cfg.model)[0]
    if cfg.model.backend == "emulated":
        from sim.service import ServiceTime

        service = ServiceTime(cfg.service, np.random.default_rng(cfg.seed))
        return (JobCosts(batch_cpu_s=calibrated, batch_device_s=lambda b: service.mean(b) * version.service_factor + calibration.oversleep_s,
                         **base), "service model + calibration")  # type: ignore[arg-type]
    profile_path = cfg.service.profile or cfg.overhead.profile
    if profile_path:
        from sim.profile import load_profile

        profile = load_profile(profile_path, "service.profile" if cfg.service.profile else "overhead.profile").for_version(version.name)
        return JobCosts(batch_cpu_s=profile.mean_s, **base), f"profile {profile_path}"  # type: ignore[arg-type]
    return JobCosts(batch_cpu_s=calibrated, **base), "calibration"  # type: ignore[arg-type]


# --- output ---------------------------------------------------------------------------------------

def _prediction_doc(p: JobPrediction, price: float) -> dict[str, Any]:
    return {"batch_size": p.batch_size, "parallelism": p.parallelism, "rows": p.rows, "startup_s": p.startup_s,
            "scoring_s": p.scoring_s, "completion_s": p.completion_s, "rows_per_s": p.rows_per_s,
            "cost_per_1000": p.cost_per_1000(price)}


def _measured_doc(m: Measured, parallelism: int, price: float) -> dict[str, Any]:
    return {"rows": m.rows, "chunks": m.chunks, "startup_s": m.startup_s, "scoring_s": m.scoring_s,
            "completion_s": m.completion_s, "rows_per_s": m.rows_per_s,
            "cost_per_1000": cost_per_1000(price, parallelism, m.completion_s, m.rows)}


def comparison_lines(twin: dict[str, Any], real: dict[str, Any]) -> list[str]:
    """The compare table's style: one row per figure, twin and real side by side, the error
    as (twin - real) / real (reports.batch's rows, as the report shows them)."""
    return [f"  {'':<16}{'twin':>12}{'real':>12}{'error':>9}"] + [
        f"  {label:<16}{t:>12}{r:>12}{error:>9}" for label, t, r, error in comparison_rows(twin, real)]


def accuracy(predictions_dir: Path, input_path: str, n_chunks: int) -> tuple[int, float | None]:
    """(rows predicted, accuracy against the input's y column when it has one)."""
    import pyarrow.parquet as pq

    frames = [pd.read_parquet(chunk_path(predictions_dir, i)) for i in range(n_chunks)]
    pred = pd.concat(frames, ignore_index=True)
    if "y" not in pq.ParquetFile(input_path).schema_arrow.names:
        return len(pred), None
    y = pd.read_parquet(input_path, columns=["y"])["y"].to_numpy()
    return len(pred), float(np.mean(pred["label"].to_numpy() == y[pred["row"].to_numpy()]))


def _progress(enabled: bool, total: int) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    if not (enabled and sys.stderr.isatty()):
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="row", unit_scale=True, desc="batch", leave=False, mininterval=0.5)
    return bar.update, bar.close


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    b = cfg.batch
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir / "config.yaml", cfg)
    input_path = b.input
    if not input_path:
        input_path = str(out_dir / "input.parquet")
        generate_input(Path(input_path), b.rows)
    version = version_specs(cfg.model)[0]
    rows = input_rows(input_path)
    spec = WorkerSpec(input_path, str(out_dir / "predictions"), rows, b.chunk_rows, b.batch_size, cfg.model.backend,
                      version.name, cfg.service, version.service_factor, cfg.seed)
    todo, done = plan_chunks(spec, b.resume)
    n_chunks = len(todo) + len(done)
    cores = len(os.sched_getaffinity(0))
    print(f"batch: {rows:,} rows in {n_chunks} chunk(s) of {b.chunk_rows:,}, batch_size {b.batch_size}, parallelism {b.parallelism}, "
          f"backend {cfg.model.backend} (version {version.name}), {cores} core(s)"
          + (f"; {len(done)} chunk(s) already written, skipped" if done else ""))
    doc: dict[str, Any] = {"backend": cfg.model.backend, "version": version.name, "input": input_path, "rows": rows,
                           "chunk_rows": b.chunk_rows, "batch_size": b.batch_size, "parallelism": b.parallelism,
                           "price_per_replica_hour": b.price_per_replica_hour, "cores": cores,
                           "chunks": {"total": n_chunks, "skipped": len(done), "scored": 0}}
    if not todo:
        print("batch: every chunk is already written; nothing to score")
        doc["rows_predicted"], doc["accuracy"] = accuracy(Path(spec.predictions_dir), input_path, n_chunks)
        write_json(out_dir / "batch.json", doc)
        print(format_report_paths(out_dir, write_batch_report(out_dir, doc, to_plain(cfg))))
        return 0
    sizes = sorted({b.batch_size, *(SEARCH_BATCH_SIZES if b.search else ())})
    try:
        calibration = calibrate(spec, sizes)
    except BatchJobError as exc:
        print(f"servelab: mode=batch failed: calibration: {exc}", file=sys.stderr)
        return EXIT_FAILED
    costs, source = job_costs(cfg, calibration, cores)
    todo_sizes = tuple(stop - start for start, stop in (chunk_bounds(rows, b.chunk_rows, i) for i in todo))
    todo_rows = sum(todo_sizes)
    job = BatchJob(todo_sizes, b.batch_size, b.parallelism)
    twin = _prediction_doc(predict(job, costs), b.price_per_replica_hour)
    doc["costs"] = {"source": source, "calibration": to_plain(calibration)}
    doc["twin"] = twin
    print(f"twin: {todo_rows:,} rows: start {twin['startup_s']:.2f} s + scoring {twin['scoring_s']:.2f} s = "
          f"{twin['completion_s']:.2f} s, {twin['rows_per_s']:,.0f} rows/s, {twin['cost_per_1000']:.3g} per 1,000 predictions "
          f"(costs: {source})")
    if b.search:
        found = search(rows, b.chunk_rows, sizes, sorted({*range(1, 2 * cores + 1), b.parallelism}), costs, b.price_per_replica_hour)
        doc["search"] = _search_doc(found, b.price_per_replica_hour)
        for name in ("fastest", "cheapest"):
            point = doc["search"][name]
            print(f"twin search, {name}: batch.batch_size={point['batch_size']} batch.parallelism={point['parallelism']}: "
                  f"{point['completion_s']:.2f} s, {point['rows_per_s']:,.0f} rows/s, {point['cost_per_1000']:.3g} per 1,000")
    update, close = _progress(cfg.progress, todo_rows)
    try:
        measured = run_job(spec, todo, b.parallelism, update)
    except BatchJobError as exc:
        close()
        print(f"servelab: mode=batch failed: {exc} (the chunks written stay; rerun to resume)", file=sys.stderr)
        return EXIT_FAILED
    close()
    real = _measured_doc(measured, b.parallelism, b.price_per_replica_hour)
    doc["real"] = real
    doc["chunks"]["scored"] = measured.chunks
    doc["error"] = {k: (twin[k] - real[k]) / real[k] if real[k] else None for k, _, _ in COMPARED}
    doc["rows_predicted"], doc["accuracy"] = accuracy(Path(spec.predictions_dir), input_path, n_chunks)
    write_json(out_dir / "batch.json", doc)
    print("\n".join(comparison_lines(twin, real)))
    acc = f", accuracy {doc['accuracy']:.3f}" if doc["accuracy"] is not None and cfg.model.backend == "numpy" else ""
    print(f"batch: {doc['rows_predicted']:,} predictions in {out_dir / 'predictions'}{acc}; figures in {out_dir / 'batch.json'}")
    print(format_report_paths(out_dir, write_batch_report(out_dir, doc, to_plain(cfg))))
    return 0


def _search_doc(found: SearchResult, price: float) -> dict[str, Any]:
    assert found.fastest is not None and found.cheapest is not None
    return {"fastest": _prediction_doc(found.fastest, price), "cheapest": _prediction_doc(found.cheapest, price),
            "grid": [_prediction_doc(p, price) for p in found.points]}
