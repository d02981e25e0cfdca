"""Benchmark: whole A/B experiments run by the twin, the statistics proved by simulation end to end.

scenarios/bench_ab_stats.py proves the statistics on counts drawn directly; here every run is a
whole experiment: the twin serves the scenario (`scenarios.run_sim.simulate`, seed 0..N-1, the
experiment's controller looking every window and, in a sequential design, stopping it), and the
run's records are analysed exactly as `scenarios.experiment.finish` does (`sim.experiment.analyse`).
So the split, the windows, the controller, the record analysis and the verdict are all under test,
on latencies that queue and batch (not independent draws). The cases, on the `aa` preset
(150 req/s, 50/50 by user, accuracy MDE 0.05, latency MDE 0.5 ms, a look every 1 s):
- A/A, sequential design, 20 looks: how often the controller stopped the experiment (concluded),
  how often each metric's always-valid p reached alpha at some look (and any metric's: at most
  2 alpha, one alpha per metric), against the naive fixed test (z, Welch) applied at every look
  from the first the sequential test may decide at (above alpha: why the sequential test exists);
  the SRM check's false alarms (threshold 0.001);
- A/A, fixed-horizon design: how often the verdict is not "no detectable difference";
- A/B, version b right 95% of the time against a's 90% (the MDE exactly), each design run as long
  as the twin's pilot run sizes it (`scenarios.experiment.plan`, as before a real run): the fixed
  design's rejections against the power formula at the sample sizes the runs reached, and its
  interval's coverage of the true +0.05; the sequential design's conclusions by its planned length
  against the power its design promises (a lower bound), and its confidence sequence's coverage;
- SRM: the router splitting requests 55/45 while the analysis expects 50/50 is flagged, as often as
  the chi-square's power at that bias says;
- latency in A/A: B - A in standard errors, from the windows' means (what the tests use,
  `WindowMeans`) and as if requests were independent: only the first is standard (mean square ~1),
  since requests that share a queue are alike (the second found a "difference" in 10-14% of A/A
  runs before the tests moved to window means).

    python -m scenarios.bench_ab_twin [--runs 2000] [--ab-runs 500] [--srm-runs 200] [--workers 2]

It prints figures (rate, Monte Carlo standard error, target, within 3 s.e. of it); it asserts
nothing. tests/test_experiment_twin.py runs the same functions at a few hundred runs.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd
from scipy import stats

from scenarios.bench_ab_stats import binomial_tolerance
from scenarios.cli import preflight
from scenarios.config import ServelabConfig
from scenarios.experiment import plan
from scenarios.run_sim import simulate
from sim.config import ScenarioConfig, experiment_allocation
from sim.experiment import analyse, replay
from sim.policy.rollout import experiment_spec
from sim.stats.design import proportion_power, sequential_power
from sim.stats.fixed import Comparison, two_proportion_z, welch_t
from sim.stats.srm import DEFAULT_THRESHOLD
from sim.stats.summaries import MeanMoments, ProportionCounts
from sim.stats.verdict import NO_DIFFERENCE

T = TypeVar("T")

BASE = ("scenario=aa", "progress=false")
AA = (*BASE, "duration_s=22")  # 20 looks of 1 s after the 2 s warm-up; the sequential design needs ~13 s
AB_VERSIONS = "model.versions=[{name:a,accuracy:0.90},{name:b,accuracy:0.95}]"
TRUE_ACCURACY = (0.90, 0.95)
SRM_SHARES = (0.55, 0.45)  # what the router runs; the analysis expects 50/50
PILOT_SEED = 1_000_000  # the design's pilot runs seed + 1: far from the runs' seeds 0..N-1


def config(overrides: Sequence[str]) -> ServelabConfig:
    """A scenario as the CLI composes and validates it."""
    return preflight(list(overrides))


def seeded(cfg: ScenarioConfig, seed: int) -> ScenarioConfig:
    out = copy.deepcopy(cfg)
    out.seed = seed
    return out


def watching(cfg: ScenarioConfig) -> ScenarioConfig:
    """The same experiment in a fixed-horizon design: the controller only watches."""
    out = copy.deepcopy(cfg)
    out.experiment.stop_early = False
    return out


# -- one experiment ----------------------------------------------------------------------------

def analyse_run(cfg: ScenarioConfig, frame: pd.DataFrame, summary: Mapping[str, Any],
                allocation: Sequence[float] | None = None) -> dict[str, Any]:
    """experiment.json's results for a run, as `scenarios.experiment.finish` computes them;
    `allocation`: what the analysis expects, when not the configured one (an SRM to find)."""
    e = cfg.experiment
    controller = summary.get("rollout") or {}
    stopped = controller.get("decided_s")
    doc, _ = analyse(frame, experiment_spec(cfg), allocation=list(allocation) if allocation else experiment_allocation(e),
                     unit=e.unit, planned_end_s=cfg.duration_s, stopped_s=stopped,
                     stop_reason=controller.get("reason") if stopped is not None else None)
    doc["controller_outcome"] = controller.get("outcome")
    return doc


def run_experiment(cfg: ScenarioConfig, allocation: Sequence[float] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """One whole experiment: the twin's run and its analysis."""
    frame, summary, _ = simulate(cfg)
    return analyse_run(cfg, frame, summary, allocation), frame


def fixed_test(summaries: tuple[Any, Any], alpha: float) -> Comparison:
    """The fixed-horizon test of the running totals: two-proportion z, or Welch t on means."""
    a, b = summaries
    if isinstance(a, ProportionCounts):
        return two_proportion_z(a, b, alpha)
    assert isinstance(a, MeanMoments)
    return welch_t(a, b, alpha)


def naive_peeking(cfg: ScenarioConfig, frame: pd.DataFrame) -> dict[str, bool]:
    """Per metric, whether the fixed test on the running totals reached p <= alpha at some look,
    from the first look at which the sequential test may decide (min_samples per variant): what a
    dashboard showing a fixed-horizon p after every window would have stopped on. The run must
    have gone to its planned end (a watching controller), so every look is there."""
    spec = experiment_spec(cfg)
    looks = replay(frame, spec, cfg.duration_s, None)[0].looks
    out = {}
    for m in spec.metrics:
        out[m.name] = any(fixed_test(look.totals[m.name], spec.alpha).significant for look in looks
                          if min(s.n for s in look.totals[m.name]) >= spec.min_samples)
    return out


def mean_z(cfg: ScenarioConfig, frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per mean metric (latency), B - A at the planned end over its standard error two ways: as if
    requests were independent (s^2 / n, `MeanMoments.variance_of_mean`), and from the windows'
    means (`WindowMeans`, what the tests use), which holds when a queue makes neighbours alike.
    Over A/A runs the squares of a valid one average ~1 (a t's variance, a little above)."""
    spec = experiment_spec(cfg)
    last = replay(frame, spec, cfg.duration_s, None)[0].looks[-1]
    out = {}
    for m in spec.metrics:
        if m.kind != "mean":
            continue
        a, b = last.totals[m.name]
        independent = [MeanMoments(s.n, s.total, s.total_sq).variance_of_mean for s in (a, b)]
        out[m.name] = ((b.mean - a.mean) / math.sqrt(sum(independent)),
                       (b.mean - a.mean) / math.sqrt(a.variance_of_mean + b.variance_of_mean))
    return out


def named_test(doc: Mapping[str, Any], metric: str, test: str) -> Mapping[str, Any]:
    return next(t for t in doc["tests"] if t["metric"] == metric and t["test"] == test)


def sample_sizes(doc: Mapping[str, Any], metric: str) -> tuple[int, int]:
    """(control, treatment) observations of `metric` the analysis had."""
    by_variant = {e["variant"]: e["n"] for e in doc["estimates"] if e["metric"] == metric}
    return by_variant[doc["control"]], by_variant[doc["treatment"]]


# -- the outcomes a case keeps of each run (small, so workers send little back) ---------------------

@dataclass(frozen=True)
class AARun:
    seed: int
    concluded: bool  # the sequential controller stopped the experiment on a decision
    sequential_rejected: dict[str, bool]  # the metric's always-valid p reached alpha at some look
    naive_peeked: dict[str, bool]  # the fixed test at every look
    fixed_rejected: dict[str, bool]  # the fixed design's verdict test at the planned end
    fixed_decision: str  # the fixed design's verdict
    srm_mismatch: bool  # the sample-ratio check flagged the (unbiased) split
    mean_z: dict[str, tuple[float, float]]  # per mean metric: B - A over its i.i.d. and its window-means standard error


def aa_run(task: tuple[ScenarioConfig, int]) -> AARun:
    """One A/A seed in both designs. The fixed design's run is the sequential one's when its
    controller never stopped (a watching controller takes no action, so the twin's run is the
    same: tests/test_experiment_twin.py checks it); else the twin runs it."""
    cfg, seed = task
    sequential_cfg = seeded(cfg, seed)
    fixed_cfg = watching(sequential_cfg)
    frame, summary, _ = simulate(sequential_cfg)
    doc = analyse_run(sequential_cfg, frame, summary)
    if doc["stopped_early"]:
        frame, summary, _ = simulate(fixed_cfg)
    fixed = analyse_run(fixed_cfg, frame, summary)
    metrics = [m["metric"] for m in doc["verdict"]["metrics"]]
    return AARun(seed, doc["controller_outcome"] == "concluded",
                 {m: named_test(doc, m, "mixture SPRT")["significant"] for m in metrics},
                 naive_peeking(fixed_cfg, frame),
                 {m["metric"]: m["p_value"] <= fixed["alpha"] for m in fixed["verdict"]["metrics"]},
                 fixed["verdict"]["decision"], bool(doc["srm"]["mismatch"]), mean_z(fixed_cfg, frame))


@dataclass(frozen=True)
class ABRun:
    seed: int
    stopped_s: float | None  # when the controller stopped it (sequential design)
    rejected: bool  # the primary metric's verdict test rejected (p <= alpha)
    ci: tuple[float, float]  # the verdict test's interval of the primary metric's B - A
    n: tuple[int, int]  # the primary metric's observations per variant


def ab_run(task: tuple[ScenarioConfig, int]) -> ABRun:
    cfg, seed = task
    doc, _ = run_experiment(seeded(cfg, seed))
    primary = doc["verdict"]["metrics"][0]
    return ABRun(seed, doc["end_s"] if doc["stopped_early"] else None, primary["p_value"] <= doc["alpha"],
                 (primary["ci_low"], primary["ci_high"]), sample_sizes(doc, primary["metric"]))


@dataclass(frozen=True)
class SRMRun:
    seed: int
    counts: tuple[int, int]
    p_value: float
    mismatch: bool


def srm_run(task: tuple[ScenarioConfig, int]) -> SRMRun:
    """The router splits as configured (`srm_config`); the analysis expects equal shares."""
    cfg, seed = task
    doc, _ = run_experiment(seeded(cfg, seed), allocation=[0.5, 0.5])
    srm = doc["srm"]
    return SRMRun(seed, (int(srm["counts"][0]), int(srm["counts"][1])), float(srm["p_value"]), bool(srm["mismatch"]))


def run_seeds(task: Callable[[tuple[ScenarioConfig, int]], T], cfg: ScenarioConfig, seeds: Iterable[int], workers: int) -> list[T]:
    """`task` for every seed, on `workers` processes (1: in this one)."""
    tasks = [(cfg, seed) for seed in seeds]
    if workers <= 1:
        return [task(t) for t in tasks]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(task, tasks, chunksize=max(1, len(tasks) // (8 * workers))))


# -- the designs ---------------------------------------------------------------------------------

def ab_config(*extra: str) -> ServelabConfig:
    return config([*BASE, AB_VERSIONS, *extra])


@dataclass(frozen=True)
class ABDesign:
    """The A/B experiment sized by the twin's pilot run, as `scenarios.experiment.plan` sizes it."""

    fixed: ServelabConfig  # run for the fixed design's duration, stop_early=false
    sequential: ServelabConfig  # run for the sequential design's duration, stop_early=true
    planned_fixed_n: int  # per variant, control's
    planned_sequential_n: int
    doc: Mapping[str, Any]


def whole_windows(duration_s: float, window_s: float) -> float:
    """`duration_s` up to a whole number of windows: the analysis looks at whole windows only."""
    return math.ceil(duration_s / window_s - 1e-9) * window_s


def ab_design() -> ABDesign:
    """The pilot (stop_early=false, seed PILOT_SEED + 1) sizes the primary metric for both
    designs; each design's run lasts the duration its design asks for."""
    base = ab_config()
    pilot = seeded(base, PILOT_SEED)
    doc = plan(pilot, quiet=True)
    assert doc is not None
    row = doc["metrics"][0]
    fixed = ab_config("experiment.stop_early=false", f"duration_s={whole_windows(row['fixed']['duration_s'], base.window_s):g}")
    sequential = ab_config(f"duration_s={whole_windows(row['sequential']['duration_s'], base.window_s):g}")
    return ABDesign(fixed, sequential, row["fixed"]["n_control"], row["sequential"]["n_control"], doc)


def srm_config(shares: Sequence[float] = SRM_SHARES) -> ServelabConfig:
    """A/A with the router splitting requests by `shares` (`srm_run` analyses it expecting 50/50)."""
    return config([*AA, "experiment.unit=request", f"experiment.allocation=[{shares[0]},{shares[1]}]"])


def srm_power(total: int, shares: Sequence[float], expected: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> float:
    """The chi-square check's chance to flag `total` units split by `shares` when it expects
    `expected`: the noncentral chi-square beyond the threshold's critical value."""
    ncp = total * sum((s - e) ** 2 / e for s, e in zip(shares, expected))
    df = len(shares) - 1
    return float(stats.ncx2.sf(stats.chi2.isf(threshold, df), df, ncp))


# -- the table -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One figure: `hits` of `runs`, against `target` read as `kind` (at_most, at_least, about, above)."""

    case: str
    hits: int
    runs: int
    target: float
    kind: str

    @property
    def rate(self) -> float:
        return self.hits / self.runs

    @property
    def se(self) -> float:
        """The rate's Monte Carlo standard error."""
        return math.sqrt(self.rate * (1 - self.rate) / self.runs)

    @property
    def within(self) -> bool:
        """Within 3 binomial standard errors of the target (at the target's rate) on the side that matters."""
        slack = binomial_tolerance(self.target, self.runs)
        if self.kind == "at_most":
            return self.rate <= self.target + slack
        if self.kind == "at_least":
            return self.rate >= self.target - slack
        if self.kind == "above":
            return self.rate > self.target + slack
        return abs(self.rate - self.target) <= slack


def count(flags: Iterable[bool]) -> tuple[int, int]:
    values = [bool(f) for f in flags]
    return sum(values), len(values)


def row(case: str, flags: Iterable[bool], target: float, kind: str) -> Row:
    return Row(case, *count(flags), target, kind)


SIGN = {"at_most": "<=", "at_least": ">=", "about": "~", "above": ">"}


def format_table(rows: Sequence[Row]) -> str:
    width = max(len(r.case) for r in rows)
    lines = [f"{'case':<{width}}  {'runs':>5}  {'rate':>7}  {'MC s.e.':>7}  {'target':>9}  within"]
    for r in rows:
        lines.append(f"{r.case:<{width}}  {r.runs:>5}  {r.rate:>7.4f}  {r.se:>7.4f}  {SIGN[r.kind]:>2} {r.target:>6.4f}  "
                     f"{'yes' if r.within else 'NO'}")
    return "\n".join(lines)


def aa_rows(runs: Sequence[AARun], alpha: float, threshold: float = DEFAULT_THRESHOLD) -> list[Row]:
    metrics = list(runs[0].sequential_rejected)
    out = [row("A/A sequential: controller concluded", (r.concluded for r in runs), alpha, "at_most")]
    out += [row(f"A/A sequential: {m} always-valid p <= alpha", (r.sequential_rejected[m] for r in runs), alpha, "at_most")
            for m in metrics]
    out.append(row("A/A sequential: any metric", (any(r.sequential_rejected.values()) for r in runs), len(metrics) * alpha, "at_most"))
    out += [row(f"A/A naive fixed test at every look: {m}", (r.naive_peeked[m] for r in runs), alpha, "above") for m in metrics]
    out.append(row("A/A sample-ratio check flagged (no bias)", (r.srm_mismatch for r in runs), threshold, "at_most"))
    out += [row(f"A/A fixed design: {m} rejected at the end", (r.fixed_rejected[m] for r in runs), alpha, "about") for m in metrics]
    out.append(row("A/A fixed design: verdict not no-difference", (r.fixed_decision != NO_DIFFERENCE for r in runs),
                   len(metrics) * alpha, "at_most"))
    return out


def format_mean_z(runs: Sequence[AARun]) -> list[str]:
    """The mean square over the A/A runs of each mean metric's z, both ways (`mean_z`)."""
    lines = []
    for metric in runs[0].mean_z:
        independent, windows = (np.array([r.mean_z[metric][k] for r in runs]) for k in (0, 1))
        lines.append(f"A/A {metric}: B - A in standard errors, mean square over the runs (valid: ~1): "
                     f"{np.mean(windows ** 2):.2f} from the windows' means (the tests'), "
                     f"{np.mean(independent ** 2):.2f} as if requests were independent")
    return lines


def expected_fixed_power(runs: Sequence[ABRun], alpha: float) -> float:
    """The two-proportion power formula at each run's sample sizes and the true accuracies, averaged."""
    p_a, p_b = TRUE_ACCURACY
    return float(np.mean([proportion_power(p_a, p_b - p_a, n_a, n_b, alpha) for n_a, n_b in (r.n for r in runs)]))


def promised_sequential_power(runs: Sequence[ABRun], alpha: float) -> float:
    """The sequential design's power bound at the sizes the runs that went to the end reached
    (`sim.stats.design.sequential_power`, tau = MDE = the true effect)."""
    p_a, p_b = TRUE_ACCURACY
    effect = p_b - p_a
    sizes = [r.n for r in runs if r.stopped_s is None] or [r.n for r in runs]
    n_a, n_b = (float(np.mean(x)) for x in zip(*sizes))
    return sequential_power(effect, p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b, effect, alpha)


def ab_rows(fixed: Sequence[ABRun], sequential: Sequence[ABRun], alpha: float) -> list[Row]:
    effect = TRUE_ACCURACY[1] - TRUE_ACCURACY[0]
    return [
        row("A/B fixed design: accuracy z rejects", (r.rejected for r in fixed), expected_fixed_power(fixed, alpha), "about"),
        row("A/B fixed design: z interval covers +0.05", (r.ci[0] <= effect <= r.ci[1] for r in fixed), 1 - alpha, "about"),
        row("A/B sequential: controller concluded", (r.stopped_s is not None for r in sequential),
            promised_sequential_power(sequential, alpha), "at_least"),
        row("A/B sequential: interval covers +0.05", (r.ci[0] <= effect <= r.ci[1] for r in sequential), 1 - alpha, "at_least"),
    ]


def srm_row(runs: Sequence[SRMRun], shares: Sequence[float] = SRM_SHARES) -> Row:
    total = int(np.mean([sum(r.counts) for r in runs]))
    return row(f"SRM: router {shares[0]:g}/{shares[1]:g}, plan 0.5/0.5, flagged", (r.mismatch for r in runs),
               srm_power(total, shares, (0.5, 0.5)), "about")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="A/A experiments (each in both designs)")
    parser.add_argument("--ab-runs", type=int, default=500, help="A/B experiments per design")
    parser.add_argument("--srm-runs", type=int, default=200, help="experiments with a biased split")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ab_runs = args.ab_runs
    started = time.perf_counter()
    aa = config(AA)
    alpha = aa.experiment.alpha
    print(f"whole experiments by the twin (scenario=aa: {aa.arrival.rate:g} req/s, 50/50 by {aa.experiment.unit}, "
          f"a look every {aa.window_s:g} s), seeds 0..N-1, alpha {alpha:g}, {args.workers} worker(s)", flush=True)
    aa_runs = run_seeds(aa_run, aa, range(args.runs), args.workers)
    print(f"  A/A: {args.runs} runs of {aa.duration_s:g} s ({aa.duration_s - aa.warmup_s:g} looks) in both designs, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    design = ab_design()
    print(f"  A/B design from {design.doc['source']}: accuracy {TRUE_ACCURACY[0]:g} -> {TRUE_ACCURACY[1]:g}, "
          f"fixed {design.planned_fixed_n} per variant ({design.fixed.duration_s:g} s run), "
          f"sequential {design.planned_sequential_n} ({design.sequential.duration_s:g} s run)", flush=True)
    fixed_runs = run_seeds(ab_run, design.fixed, range(ab_runs), args.workers)
    sequential_runs = run_seeds(ab_run, design.sequential, range(ab_runs), args.workers)
    srm_runs = run_seeds(srm_run, srm_config(), range(args.srm_runs), args.workers)
    rows = [*aa_rows(aa_runs, alpha), *ab_rows(fixed_runs, sequential_runs, alpha), srm_row(srm_runs)]
    print()
    print(format_table(rows))
    print()
    print("\n".join(format_mean_z(aa_runs)))
    fixed_n = np.mean([r.n for r in fixed_runs], axis=0)
    stops = [r.stopped_s for r in sequential_runs if r.stopped_s is not None]
    print(f"\nA/B fixed runs reached {fixed_n[0]:.0f} + {fixed_n[1]:.0f} judged answers on average (planned "
          f"{design.planned_fixed_n} per variant for power 0.8); the sequential runs that concluded stopped at "
          f"{np.mean(stops) if stops else math.nan:.1f} s on average (planned {design.sequential.duration_s:g} s)")
    print(f"{time.perf_counter() - started:.1f} s wall")


if __name__ == "__main__":
    main()
