"""Benchmark: the A/B statistics (sim.stats) proved by simulation at full size.

Per-window counts are drawn directly (seeded numpy), no twin: what is under test is the
statistic, not the serving stack. Two metrics, each with its design's minimum detectable effect:
accuracy 0.90 -> 0.92 (a proportion, two-proportion z) and mean latency 50 ms + 2.5 ms with a
lognormal spread of cv 0.5 (Welch t). For each it prints, with a 95% Monte Carlo interval:
- A/A with a look after each of `--looks` windows up to the design's sample size: the mixture
  SPRT's false-positive rate (must stay <= alpha) against the fixed test's applied at every look
  (naive peeking: far above alpha, the reason the sequential test exists);
- A/B with an effect of exactly the MDE at the design's size: the fixed test's power against the
  design's, and its interval's coverage against the nominal 1 - alpha;
- the mixture SPRT under the same effect, a look every 1/looks of the design's size up to
  `--horizon` times it: how often it rejects (by the end, by the fixed design's size, by the
  sequential design's size, which promises the power), the mean sample size when it stops
  (against the fixed design's), how often its confidence sequence covers the effect at every look;
- the sample-ratio-mismatch check: a 52/48 split of 20,000 requests planned 50/50, and no bias.

    python -m scenarios.bench_ab_stats [--runs 10000] [--looks 20] [--horizon 4] [--seed 0]

tests/test_stats_*.py run the same simulations (these functions) at a few hundred runs.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from sim.stats.design import (SampleSize, mean_sample_size, proportion_sample_size, sequential_mean_sample_size,
                              sequential_proportion_sample_size)
from sim.stats.estimates import proportion_estimate
from sim.stats.fixed import Comparison, two_proportion_z, welch_t
from sim.stats.sequential import MixtureSPRT
from sim.stats.srm import sample_ratio_mismatch
from sim.stats.summaries import MeanMoments, ProportionCounts

S = TypeVar("S", ProportionCounts, MeanMoments)


class Case(Protocol[S]):
    """A metric to simulate: its design, one window's draw for A and B, its fixed test."""

    name: str
    mde: float
    alpha: float

    def design(self) -> SampleSize: ...

    def sequential_design(self) -> SampleSize: ...

    def window(self, rng: np.random.Generator, n: int, effect: float) -> tuple[S, S]: ...

    def fixed_test(self, a: S, b: S) -> Comparison: ...


@dataclass(frozen=True)
class AccuracyCase:
    name: str = "accuracy"
    baseline: float = 0.90
    mde: float = 0.02
    alpha: float = 0.05
    power: float = 0.8

    def design(self) -> SampleSize:
        return proportion_sample_size(self.baseline, self.mde, self.alpha, self.power)

    def sequential_design(self) -> SampleSize:
        return sequential_proportion_sample_size(self.baseline, self.mde, self.alpha, self.power)

    def window(self, rng: np.random.Generator, n: int, effect: float) -> tuple[ProportionCounts, ProportionCounts]:
        return (ProportionCounts(n, int(rng.binomial(n, self.baseline))),
                ProportionCounts(n, int(rng.binomial(n, self.baseline + effect))))

    def fixed_test(self, a: ProportionCounts, b: ProportionCounts) -> Comparison:
        return two_proportion_z(a, b, self.alpha)


@dataclass(frozen=True)
class LatencyCase:
    """Lognormal latency of mean `mean_s` and coefficient of variation `cv`; B is A shifted by the effect."""

    name: str = "latency mean"
    mean_s: float = 0.050
    cv: float = 0.5
    mde: float = 0.0025
    alpha: float = 0.05
    power: float = 0.8

    def design(self) -> SampleSize:
        return mean_sample_size(self.cv * self.mean_s, self.mde, self.alpha, self.power)

    def sequential_design(self) -> SampleSize:
        return sequential_mean_sample_size(self.cv * self.mean_s, self.mde, self.alpha, self.power)

    def window(self, rng: np.random.Generator, n: int, effect: float) -> tuple[MeanMoments, MeanMoments]:
        sigma = math.sqrt(math.log1p(self.cv * self.cv))
        mu = math.log(self.mean_s) - sigma * sigma / 2
        return MeanMoments.of(rng.lognormal(mu, sigma, n)), MeanMoments.of(rng.lognormal(mu, sigma, n) + effect)

    def fixed_test(self, a: MeanMoments, b: MeanMoments) -> Comparison:
        return welch_t(a, b, self.alpha)


@dataclass(frozen=True)
class Rate:
    """`hits` of `runs` simulated experiments, with its Monte Carlo error."""

    hits: int
    runs: int

    @property
    def value(self) -> float:
        return self.hits / self.runs

    def interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the rate."""
        e = proportion_estimate(ProportionCounts(self.runs, self.hits))
        return e.ci_low, e.ci_high

    def __str__(self) -> str:
        low, high = self.interval()
        return f"{self.value:.4f} (95% MC {low:.4f}..{high:.4f})"


def binomial_tolerance(p: float, runs: int, sigmas: float = 3.0) -> float:
    """`sigmas` binomial standard errors of a rate p estimated from `runs` runs: how far a Monte
    Carlo estimate may stray from p by chance (3 SE: a 0.3% chance per check)."""
    return sigmas * math.sqrt(p * (1 - p) / runs)


def window_sizes(total: int, looks: int) -> list[int]:
    """`total` split into `looks` windows as evenly as integers allow."""
    base, extra = divmod(total, looks)
    return [base + (1 if i < extra else 0) for i in range(looks)]


@dataclass(frozen=True)
class Peeking:
    sequential: Rate  # the mixture SPRT rejected at some look
    naive: Rate  # the fixed test had p <= alpha at some look


def aa_peeking(case: Case[S], runs: int, looks: int, rng: np.random.Generator) -> Peeking:
    """A/A: no effect, a look after each of `looks` windows up to the design's size per variant."""
    sizes = window_sizes(case.design().n_a, looks)
    sequential = naive = 0
    for _ in range(runs):
        test: MixtureSPRT[S] = MixtureSPRT.for_design(case.mde, case.alpha)
        peeked = False
        for n in sizes:
            a, b = case.window(rng, n, 0.0)
            test.update(a, b)
            assert test.a is not None and test.b is not None
            peeked = peeked or case.fixed_test(test.a, test.b).significant
        sequential += test.rejected
        naive += peeked
    return Peeking(Rate(sequential, runs), Rate(naive, runs))


@dataclass(frozen=True)
class FixedHorizon:
    design: SampleSize
    power: Rate  # rejections at the design's size with an effect of exactly the MDE
    coverage: Rate  # intervals that held the true effect


def fixed_at_design(case: Case[S], runs: int, rng: np.random.Generator) -> FixedHorizon:
    design = case.design()
    assert design.n_a == design.n_b, "the cases here are 50/50"
    rejected = covered = 0
    for _ in range(runs):
        c = case.fixed_test(*case.window(rng, design.n_a, case.mde))
        rejected += c.significant
        covered += c.ci_low <= case.mde <= c.ci_high
    return FixedHorizon(design, Rate(rejected, runs), Rate(covered, runs))


@dataclass(frozen=True)
class SequentialUnderEffect:
    rejected: Rate  # rejected within the horizon
    rejected_by_fixed_n: Rate  # rejected by the fixed design's size: the sequential test's power there
    rejected_by_sequential_n: Rate  # by the sequential design's size (promised: >= its power)
    covered: Rate  # the confidence sequence held the effect at every look up to the horizon
    mean_n_at_stop: float  # per variant, over the runs that rejected
    fixed_n: int  # the fixed design's size per variant
    sequential_n: int  # the sequential design's


def sequential_under_effect(case: Case[S], runs: int, looks: int, horizon: float,
                            rng: np.random.Generator) -> SequentialUnderEffect:
    """An effect of exactly the MDE; windows of 1/looks of the design's size, up to `horizon`
    times that size; every run goes to the horizon so coverage is checked at every look."""
    fixed_n, sequential_n = case.design().n_a, case.sequential_design().n_a
    sizes = window_sizes(math.ceil(horizon * fixed_n), math.ceil(horizon * looks))
    rejected = early = planned = covered = 0
    stop_sizes: list[int] = []
    for _ in range(runs):
        test: MixtureSPRT[S] = MixtureSPRT.for_design(case.mde, case.alpha)
        held = True
        stopped_at: int | None = None
        for n in sizes:
            look = test.update(*case.window(rng, n, case.mde))
            held = held and look.ci_low <= case.mde <= look.ci_high
            if look.rejected and stopped_at is None:
                stopped_at = look.n_a
        rejected += stopped_at is not None
        early += stopped_at is not None and stopped_at <= fixed_n
        planned += stopped_at is not None and stopped_at <= sequential_n
        covered += held
        if stopped_at is not None:
            stop_sizes.append(stopped_at)
    mean_stop = float(np.mean(stop_sizes)) if stop_sizes else math.nan
    return SequentialUnderEffect(Rate(rejected, runs), Rate(early, runs), Rate(planned, runs), Rate(covered, runs), mean_stop,
                                 fixed_n, sequential_n)


def srm_flag_rate(runs: int, total: int, share_a: float, threshold: float, rng: np.random.Generator) -> Rate:
    """How often the SRM check flags `total` requests assigned to A with probability `share_a`,
    the plan being 50/50."""
    flagged = 0
    for _ in range(runs):
        n_a = int(rng.binomial(total, share_a))
        flagged += sample_ratio_mismatch([n_a, total - n_a], [0.5, 0.5], threshold).mismatch
    return Rate(flagged, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="simulated experiments per figure")
    parser.add_argument("--looks", type=int, default=20, help="windows up to the design's sample size")
    parser.add_argument("--horizon", type=float, default=4.0, help="the sequential run's length, in design sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    cases: list[Case] = [AccuracyCase(), LatencyCase()]
    print(f"A/B statistics by simulation: seed {args.seed}, {args.runs} runs per figure, {args.looks} looks, "
          f"alpha 0.05, power 0.8; rates with their 95% Monte Carlo interval")
    for case in cases:
        d = case.design()
        what = (f"{case.baseline:.2f} -> {case.baseline + case.mde:.2f}" if isinstance(case, AccuracyCase)
                else f"{case.mean_s * 1e3:g} ms + {case.mde * 1e3:g} ms, cv {case.cv:g}")
        print(f"\n{case.name} ({what}): the design needs {d.n_a} per variant for the fixed test (power {d.power:.3f}), "
              f"{case.sequential_design().n_a} for the sequential one")
        peek = aa_peeking(case, args.runs, args.looks, rng)
        print(f"  A/A, a look per window: mixture SPRT false positives {peek.sequential}   "
              f"naive {'z' if isinstance(case, AccuracyCase) else 'Welch t'} at every look {peek.naive}   (alpha 0.05)")
        fixed = fixed_at_design(case, args.runs, rng)
        print(f"  A/B at the design's n, effect = MDE: fixed-test power {fixed.power} vs design {d.power:.3f};"
              f" CI coverage {fixed.coverage} vs nominal 0.95")
        seq = sequential_under_effect(case, args.runs, args.looks, args.horizon, rng)
        print(f"  mixture SPRT, effect = MDE, looks to {args.horizon:g}x the design: rejects {seq.rejected}, "
              f"by the fixed design's n {seq.rejected_by_fixed_n}, by the sequential design's n {seq.rejected_by_sequential_n} "
              f"(designed 0.8); mean n at stop {seq.mean_n_at_stop:.0f} = {seq.mean_n_at_stop / seq.fixed_n:.2f}x the fixed design; "
              f"confidence sequence covers the effect at every look {seq.covered} (nominal >= 0.95)")
    print("\nsample-ratio mismatch, 20,000 requests planned 50/50:")
    print(f"  A's share 0.52, threshold 0.001: flagged {srm_flag_rate(args.runs, 20_000, 0.52, 0.001, rng)}")
    print(f"  no bias, threshold 0.001: flagged {srm_flag_rate(args.runs, 20_000, 0.50, 0.001, rng)} (expected 0.001)")
    print(f"  no bias, threshold 0.05: flagged {srm_flag_rate(args.runs, 20_000, 0.50, 0.05, rng)} (expected 0.05)")
    print(f"\n{time.perf_counter() - started:.1f} s wall")


if __name__ == "__main__":
    main()
