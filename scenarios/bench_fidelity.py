"""Benchmark: the twin's fidelity over a wide matrix of scenarios (issue 11), as a table for README.

The twin was tuned in one corner (device time 20 ms + 4 ms per item, 2-4 replicas, up to ~200
req/s); this asks how far from that corner its predictions hold. Factors and their levels:

    device time     base 2, 5 or 20 ms per batch, plus base/5 per item (quickstart's 20 + 4 ms, scaled)
    service spread  lognormal cv 0.1, lognormal cv 0.5, exponential
    replicas        1, 2, 3, 4
    instances       1, 2 per replica (concurrency)
    batching        off (max batch 1), or max batch 4 or 8 with a max queue delay of 2 or 5 ms
    balancing       p2c, round_robin, least_outstanding
    load            30%, 60%, 85% of the predicted capacity of the stack as deployed
                    (sim.host.stack_capacity: the lesser of the device and host limits), and 120%
                    with a bounded queue of QUEUE_BATCHES full batches per instance
                    (batching.max_queue_size = 4 x max batch x instances), where the shed
                    fraction and the throughput are what is predicted

The whole matrix has 3 x 3 x 4 x 2 x 5 x 3 x 4 = 4,320 cells, far more than one can measure. A
seeded Latin-hypercube sample (scipy.stats.qmc.LatinHypercube) of N cells (default 30) takes
each level of each factor in N / levels cells (rounded), so every level appears and the
factors mix. Each cell is one in-process `mode=compare` run without extra load points, Poisson
at its fraction of the stack's predicted capacity, reusing one profile of the stack
(`overhead.profile`): measured once here (`scenario=quickstart`) or named with --profile.

Every cell is reported, valid or not: a measurement the real stack flags invalid (compare's exit
3: the load generator fell behind, requests never sent) is counted and shown with its reason,
and a cell that fails is shown with its error; neither is dropped. Targets per valid cell: p50
and p99 within 5% and 10% (relative to the measured value), throughput within 2%, shed fraction
within 2 percentage points; the matrix passes when at least 90% of the valid cells meet all four.

    python -m scenarios.bench_fidelity [--cells 30] [--seed 0] [--profile PATH] [--out runs/fidelity]
                                       [--warmup 3] [--duration 20] [--min-requests 5000] [--max-duration 45]
                                       [--lock PATH] [--only 3,7] [--repeat] [--repredict]

Writes out/results.json (the design, every cell's settings, figures, errors and verdict; rewritten
after each cell, so an interrupted run keeps what it measured) and out/table.md, prints progress
per cell and the table. A cell's run is in out/cells/NN/ (its compare log in compare.log), and
`command` in results.json reproduces it with the servelab CLI. With --repeat each cell's real
stack is measured a second time (out/cells/NN/real-again) and judged against the first with the
same targets: how often the stack agrees with itself bounds how often any twin can meet them.
--repredict measures nothing: it judges the cells already in out/ against this tree's twin.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import shlex
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from reports.compare import compare_metric, measurement_validity
from scenarios.cli import preflight
from scenarios.config import ServelabConfig, check_inputs, validate_servelab
from sim.files import write_json, write_text
from sim.host import StackCapacity, stack_capacity
from sim.profile import Profile, load_profile
from sim.service import capacity_rps

# --- the factors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """How device times vary around their mean: a service.kind and, for lognormal, its cv."""

    label: str
    kind: str
    cv: float = 0.0


@dataclass(frozen=True)
class Batching:
    """A dynamic-batching setting; max_batch_size 1 is batching off (the delay is then moot)."""

    max_batch_size: int
    max_queue_delay_s: float

    @property
    def label(self) -> str:
        return "off" if self.max_batch_size == 1 else f"{self.max_batch_size} / {self.max_queue_delay_s * 1e3:g} ms"


PER_ITEM_SHARE = 0.2  # per-item time = base x this: quickstart's 20 ms + 4 ms, scaled to every base
QUEUE_BATCHES = 4  # at 120% load: full batches each instance may have waiting before a request is shed
BATCHING_OFF = Batching(1, 0.005)  # the schema's default delay: nothing waits for a batch of one

# name -> levels, in the order of the Latin hypercube's dimensions
FACTORS: dict[str, tuple[Any, ...]] = {
    "device_s": (0.002, 0.005, 0.020),
    "spread": (Spread("cv 0.1", "lognormal", 0.1), Spread("cv 0.5", "lognormal", 0.5), Spread("exp", "exponential")),
    "replicas": (1, 2, 3, 4),
    "concurrency": (1, 2),
    "batching": (BATCHING_OFF, Batching(4, 0.002), Batching(4, 0.005), Batching(8, 0.002), Batching(8, 0.005)),
    "lb": ("p2c", "round_robin", "least_outstanding"),
    "load": (0.3, 0.6, 0.85, 1.2),
}
# |error| at most this per valid cell: relative for latency and throughput, percentage points for shed
TARGETS: dict[str, float] = {"latency_p50": 0.05, "latency_p99": 0.10, "throughput": 0.02, "shed_pp": 2.0}
TARGET_LABELS = {"latency_p50": "p50", "latency_p99": "p99", "throughput": "throughput", "shed_pp": "shed"}
PASS_SHARE = 0.9  # of the valid cells, at least this many meet every target
_TOLERANCE = 1e-9  # as reports.compare: +5.0000000001% is a table's +5.0%, not a miss
# The host model's profile: a stack whose fast devices (1 ms + 0.2 ms per item, 2 replicas x 2
# instances) never bind, so its load points reach the host's own range (up to ~95% of what the
# host carries) and its batches vary with the rate (the per-batch CPU term can be told apart).
# A device-bound profile (the quickstart's, 222 req/s) fits the CPU costs at rates far below
# where the host matters, where a request costs more CPU than at high rates.
PROFILE_OVERRIDES = ["mode=profile", "scenario=quickstart", "service.base_s=0.001", "service.per_item_s=0.0002",
                     "batching.max_batch_size=4", "batching.max_queue_delay_s=0.002", "replicas=2", "concurrency=2",
                     "progress=false"]
# the twin-only points compare predicts past capacity (scenarios.compare.PREDICTED_FRACTIONS) are
# for the report's curve, not for this table: short, so a high-rate cell does not wait on them
PREDICTED_POINT_S = 2.0
FIRST_CELL_OVERHEAD_S = 8.0  # launch, warm-up burst, drain, twin, report: the ETA's guess until a cell is done


@dataclass(frozen=True)
class Cell:
    """One sampled combination of levels. `index` counts from 1, as the table does."""

    index: int
    device_s: float
    spread: Spread
    replicas: int
    concurrency: int
    batching: Batching
    lb: str
    load: float

    @property
    def max_queue_size(self) -> int:
        """Bounded only past capacity: QUEUE_BATCHES full batches per instance; else unbounded."""
        if self.load <= 1:
            return 0
        return QUEUE_BATCHES * self.batching.max_batch_size * self.concurrency

    def describe(self) -> str:
        queue = f", queue {self.max_queue_size}" if self.max_queue_size else ""
        return (f"device {self.device_s * 1e3:g} ms {self.spread.label}, {self.replicas} x {self.concurrency}, "
                f"batching {self.batching.label}{queue}, {self.lb}, {self.load:.0%}")

    def levels(self) -> dict[str, Any]:
        """The cell's settings as plain values, for results.json."""
        return {"device_base_s": self.device_s, "device_per_item_s": self.device_s * PER_ITEM_SHARE,
                "service_kind": self.spread.kind, "service_cv": self.spread.cv if self.spread.kind == "lognormal" else None,
                "spread": self.spread.label, "replicas": self.replicas, "concurrency": self.concurrency,
                "max_batch_size": self.batching.max_batch_size,
                "max_queue_delay_s": self.batching.max_queue_delay_s if self.batching.max_batch_size > 1 else None,
                "lb": self.lb, "load": self.load, "max_queue_size": self.max_queue_size}


def design(cells: int, seed: int) -> list[Cell]:
    """A seeded Latin-hypercube sample of `cells` cells, mapped onto the discrete levels.

    In each dimension the sample puts exactly one point in each of the `cells` strata; stratum s
    maps to level s x L // cells, so each of a factor's L levels gets cells / L of them (rounded)
    and every level appears once cells >= L. The space-filling optimisation (random-cd) keeps the
    two-factor projections mixed too. The same seed gives the same design."""
    most = max(len(levels) for levels in FACTORS.values())
    if cells < most:
        raise ValueError(f"at least {most} cells are needed for every level to appear, got {cells}")
    sampler = qmc.LatinHypercube(d=len(FACTORS), optimization="random-cd", rng=np.random.default_rng(seed))
    strata = np.minimum(np.floor(sampler.random(cells) * cells).astype(int), cells - 1)
    out = []
    for k, row in enumerate(strata):
        chosen = {name: levels[int(s) * len(levels) // cells] for (name, levels), s in zip(FACTORS.items(), row)}
        out.append(Cell(index=k + 1, **chosen))
    return out


# --- one cell's plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How long each cell measures: at least `duration_s`, longer at low rates so the p99 rests
    on enough requests (`min_requests`), never longer than `max_duration_s`."""

    warmup_s: float = 3.0
    duration_s: float = 20.0
    min_requests: int = 5000
    max_duration_s: float = 45.0

    def measured_s(self, rate: float) -> float:
        wanted = self.min_requests / rate if rate > 0 else self.max_duration_s
        return round(min(max(self.duration_s, wanted), max(self.max_duration_s, self.duration_s)), 1)


def run_duration_s(timing: Timing, measured_s: float) -> float:
    """duration_s of a cell's run: warm-up and measurement, rounded so the command line spells it exactly."""
    return round(timing.warmup_s + measured_s, 3)


def cell_overrides(cell: Cell, *, seed: int, profile: str, timing: Timing, rate: float | None = None,
                   measured_s: float | None = None) -> list[str]:
    """The servelab overrides of a cell's compare run (without a rate: the config whose capacity
    sets the rate)."""
    measured = timing.duration_s if measured_s is None else measured_s
    duration = run_duration_s(timing, measured)
    out = [
        "mode=compare", "progress=false", f"seed={seed}", f"replicas={cell.replicas}", f"concurrency={cell.concurrency}",
        f"service.kind={cell.spread.kind}", f"service.base_s={cell.device_s:g}",
        f"service.per_item_s={cell.device_s * PER_ITEM_SHARE:g}",
        f"batching.max_batch_size={cell.batching.max_batch_size}",
        f"batching.max_queue_delay_s={cell.batching.max_queue_delay_s:g}",
        f"batching.max_queue_size={cell.max_queue_size}", f"lb.policy={cell.lb}",
        "arrival.kind=poisson", f"warmup_s={timing.warmup_s:g}", f"duration_s={duration!r}",
        "compare.load_fractions=[]", f"compare.point_duration_s={PREDICTED_POINT_S:g}", f"overhead.profile={profile}",
    ]
    if cell.spread.kind == "lognormal":
        out.append(f"service.cv={cell.spread.cv:g}")
    if rate is not None:
        out.append(f"arrival.rate={rate!r}")
    return out


@dataclass
class PlannedCell:
    """A cell made concrete: its validated config, the capacity its rate is a fraction of, and
    how long it measures. Planned for every cell before the first runs, so a config the schema
    refuses stops the benchmark at once rather than twenty minutes in."""

    cell: Cell
    seed: int
    overrides: list[str]
    cfg: ServelabConfig
    capacity: StackCapacity
    device_model_rps: float  # the cell's own service model, all instances busy: a check on capacity
    rate: float
    measured_s: float

    @property
    def planned_s(self) -> float:
        return self.cfg.duration_s


def plan_cell(cell: Cell, *, seed: int, profile_path: str, profile: Profile | None, timing: Timing) -> PlannedCell:
    """The cell's config as the CLI composes and checks it (scenarios.cli.preflight), then its
    rate and duration, which depend on that config's capacity, set and checked again (the
    schema's ranges, the memory the run needs): what `servelab` with the returned overrides
    would run, for one Hydra composition instead of two."""
    base = preflight(cell_overrides(cell, seed=seed, profile=profile_path, timing=timing))
    capacity = stack_capacity(base, profile)
    rate = round(cell.load * capacity.rps, 1)  # as the command line gives it
    measured = timing.measured_s(rate)
    overrides = cell_overrides(cell, seed=seed, profile=profile_path, timing=timing, rate=rate, measured_s=measured)
    cfg = dataclasses.replace(base, duration_s=run_duration_s(timing, measured), arrival=dataclasses.replace(base.arrival, rate=rate))
    validate_servelab(cfg)
    check_inputs(cfg)
    return PlannedCell(cell, seed, overrides, cfg, capacity, capacity_rps(base), rate, measured)


# --- judging a cell -----------------------------------------------------------------------------


def shed_fraction(summary: Mapping[str, Any]) -> float | None:
    """The summary's shed fraction, or shed / all from its status counts when it lacks one."""
    value = summary.get("shed_fraction")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    counts = summary.get("status_counts") or {}
    total = sum(int(v) for v in counts.values())
    return int(counts.get("shed", 0)) / total if total else None


def _latency(summary: Mapping[str, Any], name: str) -> Any:
    return (summary.get("latency_s") or {}).get(name)


def _within(error: float | None, target: float) -> bool:
    return error is not None and abs(error) <= target + _TOLERANCE


def judge(predicted: Mapping[str, Any], measured: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's verdict from the twin's and the real stack's summaries: each target's error
    (twin - real: relative to the measured value; shed in percentage points), whether it is
    within its target, and whether the measurement stands. An invalid cell keeps its errors, for
    the table, and its reasons; it meets no target count (`meets_all` is None)."""
    # as comparison.json: finite figures or None; errors relative to the measured value (None when
    # that is 0 and the twin's is not); shed in percentage points
    entries = {k: compare_metric(p, m) for k, (p, m) in {
        "latency_p50": (_latency(predicted, "p50"), _latency(measured, "p50")),
        "latency_p99": (_latency(predicted, "p99"), _latency(measured, "p99")),
        "throughput": (predicted.get("throughput"), measured.get("throughput")),
        "shed_fraction": (shed_fraction(predicted), shed_fraction(measured)),
    }.items()}
    figures = {k: {"predicted": e["predicted"], "measured": e["measured"]} for k, e in entries.items()}
    errors: dict[str, float | None] = {k: entries[k]["rel_error"] for k in ("latency_p50", "latency_p99", "throughput")}
    shed = entries["shed_fraction"]["abs_error"]
    errors["shed_pp"] = None if shed is None else shed * 100
    within = {k: _within(errors[k], TARGETS[k]) for k in TARGETS}
    validity = measurement_validity(measured)  # invalid: the stack or its load generator flagged it
    valid, reasons = bool(validity["valid"]), list(validity["invalid_reasons"])
    return {
        "status": "ok" if valid else "invalid",
        "reasons": reasons,
        "notes": [] if not valid else list(measured.get("warnings") or []),
        "figures": figures,
        "errors": errors,
        "within": within,
        "meets_all": all(within.values()) if valid else None,
    }


def failed_record(error: BaseException) -> dict[str, Any]:
    """The verdict of a cell whose run raised: shown with its error, never dropped."""
    message = " ".join(str(error).split()) or type(error).__name__
    return {"status": "error", "reasons": [f"{type(error).__name__}: {message}"], "notes": [], "figures": {},
            "errors": {k: None for k in TARGETS}, "within": {k: None for k in TARGETS}, "meets_all": None}


# --- the table ----------------------------------------------------------------------------------


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over the cells: how many measured validly, how many of those met every target (and
    each target), the invalid and failed ones, and which resource bound each cell's capacity."""
    valid = [r for r in records if r["status"] == "ok"]
    met = sum(1 for r in valid if r["meets_all"])
    share = met / len(valid) if valid else None
    binds: dict[str, int] = {}
    for r in records:
        if r.get("binds"):
            binds[r["binds"]] = binds.get(r["binds"], 0) + 1
    return {
        "cells": len(records), "valid": len(valid), "met_all": met, "met_share": share,
        "target_share": PASS_SHARE, "passed": share is not None and share >= PASS_SHARE - _TOLERANCE,
        "invalid": sum(1 for r in records if r["status"] == "invalid"),
        "failed": sum(1 for r in records if r["status"] == "error"),
        "per_target": {k: sum(1 for r in valid if r["within"][k]) for k in TARGETS},
        "binds": binds,
        # the twin replaying the profile's overheads by rate instead of modelling the host
        "replay_met_all": sum(1 for r in valid if (r.get("replay") or {}).get("meets_all")),
        "replay_per_target": {k: sum(1 for r in valid if ((r.get("replay") or {}).get("within") or {}).get(k)) for k in TARGETS},
        # the real stack against itself (--repeat): cells where both measurements stand
        "repeat_valid": len(repeats := [r["repeat"] for r in valid if (r.get("repeat") or {}).get("valid")]),
        "repeat_met_all": sum(1 for r in repeats if r["meets_all"]),
        "repeat_per_target": {k: sum(1 for r in repeats if r["within"][k]) for k in TARGETS},
    }


def _error_cell(record: Mapping[str, Any], key: str) -> str:
    err = record["errors"].get(key)
    if err is None:
        return "-"
    text = f"{err:+.1f} pp" if key == "shed_pp" else f"{err * 100:+.1f}%"
    if record["status"] == "ok" and not record["within"][key]:
        return f"**{text}** ✗"
    return text


def _replay_cell(record: Mapping[str, Any]) -> str:
    replay = record.get("replay")
    if not replay:
        return "-"
    return " / ".join(_error_cell({**record, **replay}, k) for k in ("latency_p50", "latency_p99"))


def _repeat_cell(record: Mapping[str, Any]) -> str:
    repeat = record.get("repeat")
    if not repeat:
        return "-"
    return " / ".join(_error_cell({**record, **repeat, "status": "ok" if repeat["valid"] else "invalid"}, k)
                      for k in ("latency_p50", "latency_p99"))


def _ms(value: Any) -> str:
    return f"{value * 1e3:.1f}" if isinstance(value, (int, float)) else "-"


def _verdict(record: Mapping[str, Any], note: int | None) -> str:
    if record["status"] == "ok":
        return "met" if record["meets_all"] else "missed"
    mark = f" [{note}]" if note is not None else ""
    return f"**{'INVALID' if record['status'] == 'invalid' else 'FAILED'}**{mark}"


def format_summary(summary: Mapping[str, Any]) -> str:
    share = summary["met_share"]
    head = (f"{summary['met_all']} of {summary['valid']} valid cells meet every target"
            + (f" ({share:.0%}; target >= {summary['target_share']:.0%}: {'met' if summary['passed'] else 'missed'})"
               if share is not None else " (no valid cell)"))
    per = ", ".join(f"{TARGET_LABELS[k]} {n}/{summary['valid']}" for k, n in summary["per_target"].items())
    binds = ", ".join(f"{k} {n}" for k, n in sorted(summary["binds"].items())) or "-"
    replay = ", ".join(f"{TARGET_LABELS[k]} {n}/{summary['valid']}" for k, n in summary.get("replay_per_target", {}).items())
    return (f"{head}. Of {summary['cells']} cells: {summary['invalid']} invalid, {summary['failed']} failed "
            f"(shown, not counted). Per target over the valid cells: {per}. Capacity bound by: {binds}. "
            f"The same measurements against the twin replaying the profile's overheads by rate "
            f"(overhead.model=replay): {summary.get('replay_met_all', 0)} of {summary['valid']} meet every target ({replay or '-'})."
            + _repeat_summary(summary))


def _repeat_summary(summary: Mapping[str, Any]) -> str:
    if not summary.get("repeat_valid"):
        return ""
    n = summary["repeat_valid"]
    per = ", ".join(f"{TARGET_LABELS[k]} {m}/{n}" for k, m in summary["repeat_per_target"].items())
    return (f" The real stack measured a second time, judged against its first measurement with the same targets: "
            f"{summary['repeat_met_all']} of {n} cells agree within every target ({per}).")


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per cell, valid or not, the misses in bold; invalid and failed cells
    numbered to a note giving the reason; the summary line last."""
    repeats = any(r.get("repeat") for r in records)
    lines = ["| # | device | spread | replicas x inst. | batching | lb | load | rate (req/s) | capacity (binds) "
             "| p50 twin / real (ms) | p50 error | p99 error | throughput error | shed error | verdict "
             "| replay: p50 / p99 error |" + (" real again: p50 / p99 error |" if repeats else ""),
             "| --- " * (17 if repeats else 16) + "|"]
    notes: list[str] = []
    for r in records:
        s = r["settings"]
        again = f" {_repeat_cell(r)} |" if repeats else ""
        note = None
        if r["status"] != "ok":
            notes.append(f"[{len(notes) + 1}] cell {r['index']}: " + "; ".join(r["reasons"] or ["no reason given"]))
            note = len(notes)
        batching = "off" if s["max_batch_size"] == 1 else f"{s['max_batch_size']} / {s['max_queue_delay_s'] * 1e3:g} ms"
        if s["max_queue_size"]:
            batching += f", queue {s['max_queue_size']}"
        p50 = r["figures"].get("latency_p50", {})
        capacity = r.get("capacity_rps")
        binds = r.get("binds") or "-"
        if binds == "host" and r.get("host_limit"):
            binds += f": {r['host_limit']}"
        lines.append(
            f"| {r['index']} | {s['device_base_s'] * 1e3:g} + {s['device_per_item_s'] * 1e3:g} ms | {s['spread']} "
            f"| {s['replicas']} x {s['concurrency']} | {batching} | {s['lb']} | {s['load']:.0%} "
            f"| {r['rate']:.0f} | {'-' if capacity is None else f'{capacity:.0f}'} ({binds}) "
            f"| {_ms(p50.get('predicted'))} / {_ms(p50.get('measured'))} "
            f"| {' | '.join(_error_cell(r, k) for k in TARGETS)} | {_verdict(r, note)} | {_replay_cell(r)} |{again}")
    out = "\n".join(lines)
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out + "\n\n" + format_summary(summarise(records))


# --- running it ---------------------------------------------------------------------------------


def _plain(level: Any) -> Any:
    return asdict(level) if isinstance(level, (Spread, Batching)) else level


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def _held(lock: str | None) -> Iterator[None]:
    """An exclusive flock on `lock` for the duration (none without one): lets the benchmark share
    a machine with other measurements a cell at a time, instead of holding it for twenty minutes."""
    if not lock:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _profile(out: Path, lock: str | None) -> Path:
    """One profile of the stack for every cell (mode=profile on PROFILE_OVERRIDES)."""
    from scenarios import profile

    cfg = preflight(PROFILE_OVERRIDES)
    target = out / "profile"
    print(f"profiling the stack once ({' '.join(PROFILE_OVERRIDES[1:])}) into {target} ...", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    with _held(lock), open(target / "profile.log", "w") as log, contextlib.redirect_stdout(log):
        profile.run(cfg, target)
    return target / "profile.json"


def run_cell(plan: PlannedCell, run_dir: Path, lock: str | None, repeat: bool = False) -> dict[str, Any]:
    """One compare run; its verdict, or the error it raised. Its log goes to run_dir/compare.log.
    With `repeat`, the real stack measures the cell a second time (run_dir/real-again), and that
    measurement is judged against the first with the same targets: how far the stack agrees with
    itself, the floor under any prediction's error."""
    from scenarios import compare

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "compare.log", "w") as log:
        try:
            with _held(lock), contextlib.redirect_stdout(log):
                compare.run(plan.cfg, run_dir)
            predicted = json.loads((run_dir / "sim" / "summary.json").read_text())
            measured = json.loads((run_dir / "real" / "summary.json").read_text())
            replayed = replay_prediction(plan.cfg)
            again = None
            if repeat:
                with _held(lock), contextlib.redirect_stdout(log):
                    again = compare.measure_real(plan.cfg, run_dir / "real-again", plan.capacity.rps)
        except Exception as exc:  # a cell that fails is shown with its error, and the others still run
            traceback.print_exc(file=log)
            return failed_record(exc)
    verdict = cell_verdict(predicted, replayed, measured)
    if again is not None:
        verdict["repeat"] = repeat_verdict(again, measured)
    return verdict


def cell_verdict(predicted: Mapping[str, Any], replayed: Mapping[str, Any], measured: Mapping[str, Any]) -> dict[str, Any]:
    """The twin's verdict on a measurement, and under "replay" the same measurement against the
    twin that replays the profile's overheads by rate instead of modelling the host
    (overhead.model=replay): which mechanism explains the data better."""
    verdict = judge(predicted, measured)
    replay = judge(replayed, measured)
    verdict["replay"] = {k: replay[k] for k in ("errors", "within", "meets_all")}
    return verdict


def repeat_verdict(again: Mapping[str, Any], measured: Mapping[str, Any]) -> dict[str, Any]:
    """The second real measurement judged against the first as if it were a prediction; the
    pair counts only where both stand (the first one's validity is the cell's status)."""
    repeated = judge(again, measured)
    valid = bool(measurement_validity(again)["valid"])
    return {"errors": repeated["errors"], "within": repeated["within"],
            "meets_all": repeated["meets_all"] if valid else None, "valid": valid}


def replay_prediction(cfg: Any) -> dict[str, Any]:
    """The twin's summary of the cell with the profile's overheads replayed, interpolated by rate,
    around the cell's own service model (the profile's device times are another scenario's)."""
    from scenarios.run_sim import simulate

    _, summary, _ = simulate(dataclasses.replace(cfg, overhead=dataclasses.replace(cfg.overhead, model="replay")))
    return summary


def _record(plan: PlannedCell, verdict: dict[str, Any], run_dir: Path, wall_s: float) -> dict[str, Any]:
    return {
        "index": plan.cell.index, "settings": plan.cell.levels(), "seed": plan.seed, "rate": plan.rate,
        "capacity_rps": plan.capacity.rps, "device_rps": plan.capacity.device_rps,
        "host_rps": plan.capacity.host_rps if math.isfinite(plan.capacity.host_rps) else None,
        "binds": plan.capacity.binds, "host_limit": getattr(plan.capacity, "host_limit", "") or None,
        "device_model_rps": plan.device_model_rps, "measured_s": plan.measured_s,
        **verdict, "run_dir": str(run_dir), "wall_s": wall_s,
        "command": "servelab " + " ".join(shlex.quote(o) for o in plan.overrides) + f" out_dir={shlex.quote(str(run_dir))}",
    }


def repredict(out: Path) -> int:
    """The cells measured in out/ (results.json and each cell's real summary) judged again
    against the twin of this tree, the measurements untouched (a second measurement, --repeat,
    keeps its verdict): how a change to the twin does on cells it was not tuned on, without
    twenty minutes of load. Rewrites out/results.json and out/table.md."""
    from scenarios.compare import calibrated
    from scenarios.run_sim import simulate

    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no results to re-predict (run the benchmark with --out {out} first)")
    document = json.loads(path.read_text())
    records = []
    for record in document["cells"]:
        measured_path = Path(record["run_dir"]) / "real" / "summary.json"
        if record["status"] == "error" or not measured_path.is_file():
            records.append(record)
            continue
        overrides = [o for o in shlex.split(record["command"])[1:] if not o.startswith("out_dir=")]
        cfg = preflight(overrides)
        _, predicted, _ = simulate(calibrated(cfg, Path(cfg.overhead.profile)))
        measured = json.loads(measured_path.read_text())
        verdict = cell_verdict(predicted, replay_prediction(cfg), measured)
        if record.get("repeat"):
            verdict["repeat"] = record["repeat"]
        records.append({**record, **verdict})
        print(f"cell {record['index']}: {_line(records[-1])}", flush=True)
    write_json(path, {**document, "cells": records, "summary": summarise(records), "repredicted": True})
    table = format_table(records)
    write_text(out / "table.md", table + "\n")
    print()
    print(table)
    return 0


def _line(record: Mapping[str, Any]) -> str:
    if record["status"] == "error":
        return f"FAILED: {record['reasons'][0]}"
    errors = ", ".join(f"{TARGET_LABELS[k]} {_error_cell(record, k).replace('**', '')}" for k in TARGETS)
    if record["status"] == "invalid":
        return f"INVALID ({'; '.join(record['reasons'])}); {errors}"
    return f"{'met' if record['meets_all'] else 'missed'}: {errors}"


@dataclass
class Progress:
    """Elapsed time and an ETA: the cells still to run, at their planned seconds plus the mean
    overhead per cell seen so far (launch, warm-up burst, drain, twin, report)."""

    started: float = field(default_factory=time.perf_counter)
    overheads: list[float] = field(default_factory=list)

    def done(self, wall_s: float, planned_s: float) -> None:
        self.overheads.append(max(wall_s - planned_s, 0.0))

    def eta(self, remaining: Sequence[PlannedCell]) -> float:
        overhead = float(np.mean(self.overheads)) if self.overheads else FIRST_CELL_OVERHEAD_S
        return sum(p.planned_s + overhead for p in remaining)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=30, help="cells in the Latin-hypercube sample (>= 5)")
    parser.add_argument("--seed", type=int, default=0, help="the design's seed; cell k runs with seed + k")
    parser.add_argument("--profile", default="", help="a profile.json to reuse (default: profile the stack once)")
    parser.add_argument("--out", default="runs/fidelity")
    parser.add_argument("--warmup", type=float, default=Timing.warmup_s, help="seconds before each cell's measurement")
    parser.add_argument("--duration", type=float, default=Timing.duration_s, help="measured seconds per cell, at least")
    parser.add_argument("--min-requests", type=int, default=Timing.min_requests,
                        help="a cell at a low rate measures longer, to hold this many requests ...")
    parser.add_argument("--max-duration", type=float, default=Timing.max_duration_s, help="... but never more seconds than this")
    parser.add_argument("--lock", default="", help="hold an flock on this file during each cell (share the machine between cells)")
    parser.add_argument("--only", default="", help="run only these cells of the design (comma-separated numbers)")
    parser.add_argument("--repeat", action="store_true",
                        help="measure each cell's real stack twice and judge the second against the first: the noise floor")
    parser.add_argument("--repredict", action="store_true",
                        help="measure nothing: judge the cells already measured in --out against this tree's twin")
    args = parser.parse_args(argv)
    if args.repredict:
        return repredict(Path(args.out).resolve())
    if args.cells < max(len(v) for v in FACTORS.values()):
        parser.error(f"--cells must be >= {max(len(v) for v in FACTORS.values())} so that every level appears")
    timing = Timing(args.warmup, args.duration, args.min_requests, args.max_duration)
    out = Path(args.out).resolve()
    lock = args.lock or None

    profile_path = Path(args.profile).resolve() if args.profile else _profile(out, lock)
    profile = load_profile(str(profile_path), "--profile")
    cells = design(args.cells, args.seed)
    if args.only:
        wanted = {int(k) for k in args.only.split(",") if k.strip()}
        cells = [c for c in cells if c.index in wanted]
    plans = [plan_cell(c, seed=args.seed + c.index, profile_path=str(profile_path), profile=profile, timing=timing) for c in cells]
    unlike = [p for p in plans if abs(p.capacity.device_rps / p.device_model_rps - 1) > 0.1]
    if unlike:  # the emulated device sleeps the cell's service model: its capacity is that model's
        print(f"note: in {len(unlike)} cells the device capacity stack_capacity gives is not the cell's own service "
              f"model's (cell {unlike[0].cell.index}: {unlike[0].capacity.device_rps:.0f} against "
              f"{unlike[0].device_model_rps:.0f} req/s): the profile's device times stand in for the cell's", flush=True)
    planned = sum(p.planned_s for p in plans)
    print(f"fidelity matrix: {len(plans)} of {args.cells} cells (seed {args.seed}), profile {profile_path}; "
          f"{planned:.0f} s of load planned, about {_clock(planned + FIRST_CELL_OVERHEAD_S * len(plans))} in all", flush=True)

    records: list[dict[str, Any]] = []
    progress = Progress()
    document = {"design": {"seed": args.seed, "cells": args.cells, "only": [c.index for c in cells] if args.only else None,
                           "factors": {k: [_plain(v) for v in levels] for k, levels in FACTORS.items()},
                           "queue_batches": QUEUE_BATCHES, "per_item_share": PER_ITEM_SHARE, "timing": asdict(timing)},
                "profile": str(profile_path), "targets": TARGETS, "pass_share": PASS_SHARE}
    try:
        for k, plan in enumerate(plans):
            print(f"[{_clock(progress.elapsed())}] cell {k + 1}/{len(plans)} (#{plan.cell.index}): {plan.cell.describe()} = "
                  f"{plan.rate:.0f} req/s of {plan.capacity.rps:.0f} ({plan.capacity.binds} binds), "
                  f"{plan.measured_s:.0f} s measured", flush=True)
            run_dir = out / "cells" / f"{plan.cell.index:02d}"
            started = time.perf_counter()
            verdict = run_cell(plan, run_dir, lock, args.repeat)
            wall = time.perf_counter() - started
            progress.done(wall, plan.planned_s)
            records.append(_record(plan, verdict, run_dir, wall))
            print(f"    {_line(records[-1])}  ({wall:.0f} s; elapsed {_clock(progress.elapsed())}, "
                  f"ETA {_clock(progress.eta(plans[k + 1:]))})", flush=True)
            write_json(out / "results.json", {**document, "complete": False, "cells": records, "summary": summarise(records)})
    finally:
        summary = summarise(records)
        write_json(out / "results.json", {**document, "complete": len(records) == len(plans), "cells": records,
                                          "summary": summary, "wall_s": progress.elapsed()})
        table = format_table(records)
        write_text(out / "table.md", table + "\n")
    print()
    print(table)
    print(f"\n{_clock(progress.elapsed())}; {out / 'results.json'}, {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
