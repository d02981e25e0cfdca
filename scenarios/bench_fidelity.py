"""Benchmark: the twin's fidelity on the quickstart matrix, as a table for README.

Emulated backend (device time 20 ms + 4 ms per item, cv 0.1); 2 and 4 replicas; batching on
(max 4, 5 ms) and off; p2c and round robin; load at 30%, 60% and 85% of capacity. Each cell is
one `mode=compare` run (the 60% point is the main run, 30% and 85% its load points); the
profile is measured once per (replicas, batching) pair and reused for the other policy, as
routing changes neither device times nor per-request overhead. Targets: |error| <= 5% on p50,
<= 10% on p99, <= 2% on throughput.

    python -m scenarios.bench_fidelity [--out runs/fidelity] [--duration 20] [--point-duration 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from scenarios import compare
from scenarios.cli import preflight
from sim.files import write_text
from sim.service import capacity_rps

TARGETS = {"latency_p50": 0.05, "latency_p99": 0.10, "throughput": 0.02}


def cell(error: float | None, target: float) -> str:
    if error is None:
        return "-"
    mark = "" if abs(error) <= target + 1e-9 else " ✗"
    return f"{error * 100:+.1f}%{mark}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fidelity")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds of the main (60%%) run")
    parser.add_argument("--point-duration", type=float, default=12.0, help="measured seconds of the 30%% and 85%% points")
    args = parser.parse_args()
    out = Path(args.out)
    rows: list[tuple[str, float, dict]] = []
    profiles: dict[tuple[int, bool], Path] = {}
    started = time.perf_counter()
    for replicas in (2, 4):
        for batching in (True, False):
            for policy in ("p2c", "round_robin"):
                name = f"r{replicas}-{'batch' if batching else 'nobatch'}-{policy}"
                overrides = [
                    "scenario=quickstart", f"replicas={replicas}", f"lb.policy={policy}",
                    f"batching.max_batch_size={4 if batching else 1}", f"warmup_s=3",
                    f"duration_s={3 + args.duration}", f"compare.point_duration_s={args.point_duration}",
                    "compare.load_fractions=[0.3,0.85]", "progress=false",
                ]
                if (replicas, batching) in profiles:
                    overrides.append(f"overhead.profile={profiles[(replicas, batching)]}")
                cfg = preflight(overrides)
                capacity = capacity_rps(cfg)
                cfg.arrival.rate = 0.6 * capacity
                run_dir = out / name
                print(f"[{time.perf_counter() - started:6.0f} s] {name}: capacity {capacity:.0f} req/s", flush=True)
                with contextlib.redirect_stdout(io.StringIO()):
                    compare.run(cfg, run_dir)
                profiles.setdefault((replicas, batching), run_dir / "profile.json")
                result = json.loads((run_dir / "comparison.json").read_text())
                points = [(0.6, result)] + [(p["load"], p["comparison"]) for p in result["load_curve"]]
                for load, comparison in sorted(points, key=lambda p: p[0]):
                    rows.append((name, load, comparison["metrics"]))
    lines = ["| scenario | load | p50 error | p99 error | throughput error | p50 twin / real (ms) |",
             "| --- | --- | --- | --- | --- | --- |"]
    met = total = 0
    for name, load, m in rows:
        errs = {k: m[k]["rel_error"] for k in TARGETS}
        total += 3
        met += sum(1 for k, t in TARGETS.items() if errs[k] is not None and abs(errs[k]) <= t + 1e-9)
        p50 = m["latency_p50"]
        lines.append(f"| {name} | {load:.0%} | {cell(errs['latency_p50'], 0.05)} | {cell(errs['latency_p99'], 0.10)} | "
                     f"{cell(errs['throughput'], 0.02)} | {p50['predicted'] * 1e3:.1f} / {p50['measured'] * 1e3:.1f} |")
    lines.append(f"\n{met} of {total} targets met (✗ = missed); {time.perf_counter() - started:.0f} s")
    table = "\n".join(lines)
    write_text(out / "fidelity.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
