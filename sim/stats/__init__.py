"""The statistics of A/B tests: design, fixed-horizon and always-valid tests, SRM, verdict.

Pure functions and small state objects over per-variant sufficient statistics (numpy and
scipy.special/stats only: no clock, no I/O, no SimPy, no config), shared by the twin's and the
real stack's experiment controller exactly as `sim.policy` is. Proved by simulation in
tests/test_stats_*.py and, at full size, `make bench-ab-stats`.

- `summaries`: `ProportionCounts` (n, successes) and `MeanMoments` (n, sum, sum of squares), one
  per variant per window, accumulated with `+`;
- `design`: sample size per variant for two proportions and two means (Welch), for the fixed
  tests and for the sequential one, the power at a size, and the duration at a request rate and
  allocation;
- `fixed`: two-proportion z, Welch t from moments, Mann-Whitney U with the Hodges-Lehmann shift,
  each a `Comparison` (B - A, interval, p-value) for the planned end;
- `sequential`: `MixtureSPRT`, the always-valid p-value and confidence sequence to look at after
  every window and stop early on;
- `srm`: the sample-ratio-mismatch chi-square;
- `estimates`: one variant's value with its interval (Wilson, t) for per-window plots;
- `verdict`: the answer as data (`decide`) and as words (`format_verdict`).
"""

from sim.stats.design import (SampleSize, allocation_ratio, duration_s, mean_power, mean_sample_size, proportion_power,
                              proportion_sample_size, sequential_mean_sample_size, sequential_power,
                              sequential_proportion_sample_size)
from sim.stats.estimates import Estimate, estimate, mean_estimate, proportion_estimate
from sim.stats.fixed import Comparison, mann_whitney, two_proportion_z, welch_t
from sim.stats.sequential import MixtureSPRT, SequentialLook
from sim.stats.srm import SampleRatioCheck, sample_ratio_mismatch
from sim.stats.summaries import MeanMoments, ProportionCounts
from sim.stats.verdict import GuardrailBreach, MetricOutcome, Verdict, decide, format_verdict

__all__ = [
    "Comparison", "Estimate", "GuardrailBreach", "MeanMoments", "MetricOutcome", "MixtureSPRT", "ProportionCounts",
    "SampleRatioCheck", "SampleSize", "SequentialLook", "Verdict", "allocation_ratio", "decide", "duration_s", "estimate",
    "format_verdict", "mann_whitney", "mean_estimate", "mean_power", "mean_sample_size", "proportion_estimate",
    "proportion_power", "proportion_sample_size", "sample_ratio_mismatch", "sequential_mean_sample_size", "sequential_power",
    "sequential_proportion_sample_size", "two_proportion_z", "welch_t",
]
