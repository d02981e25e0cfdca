"""Benchmark: how fast mode=rehearse answers, the issue's "interactive" target.

100 rehearsals (50 per scenario, bad and good) of a 10-minute rollout at 200 req/s, 4 replicas,
analysis every 10 s, on `--workers` processes; the target is under a minute on this 2-core
machine. Prints the wall time and the CPU time the workers used: the CPU time does not move
when something else shares the machine, the wall time does (run it on a quiet machine).

    python -m scenarios.bench_rehearse [--strategy canary] [--runs 50] [--workers 2]

The canary is README's ("Rehearsal speed"); the other strategies rehearse the same slow
version (service_factor 1.6) with their own keys at this scale.
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from reports.rehearse import format_oc_table
from scenarios.cli import preflight
from scenarios.rehearse import BAD, GOOD, _task, balanced, good_version_of, operating_characteristics

COMMON = ["mode=rehearse", "model.versions=[1,{name:2,service_factor:1.6}]", "replicas=4", "arrival.rate=200",
          "duration_s=600", "window_s=10", "rollout.interval_s=10", "rollout.max_p99_ratio=1.3"]
STRATEGY = {
    "canary": ["rollout.strategy=canary", "rollout.failure_limit=1",
               "rollout.steps=[{set_weight:10},{pause_s:120},{set_weight:30},{pause_s:120},{set_weight:60},{pause_s:300}]"],
    "linear": ["rollout.strategy=linear", "rollout.step_weight=5", "rollout.max_weight=50", "rollout.threshold=2"],
    "blue_green": ["rollout.strategy=blue_green", "rollout.failure_limit=1", "rollout.scale_down_delay_s=300"],
    "rolling": ["rollout.strategy=rolling", "rollout.failure_limit=1", "rollout.max_surge=1", "rollout.max_unavailable=0"],
    "recreate": ["rollout.strategy=recreate", "rollout.failure_limit=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=sorted(STRATEGY), default="canary")
    parser.add_argument("--runs", type=int, default=50, help="rehearsals per scenario (two scenarios)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = preflight([*COMMON, *STRATEGY[args.strategy], f"rehearse.runs={args.runs}", f"rehearse.workers={args.workers}"])
    scenarios = {BAD: cfg, GOOD: good_version_of(cfg)}
    tasks = [(c, name, cfg.seed + k) for name, c in scenarios.items() for k in range(args.runs)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_task, balanced(tasks)))
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print(format_oc_table(operating_characteristics(pd.DataFrame(rows))))
    print(f"{args.strategy}: {len(tasks)} rehearsals of a {cfg.duration_s:g} s rollout at {cfg.arrival.rate:g} req/s in "
          f"{wall:.1f} s wall ({cpu:.1f} s CPU on {args.workers} worker(s); target: 100 in < 60 s wall)")


if __name__ == "__main__":
    main()
