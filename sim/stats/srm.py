"""Sample-ratio mismatch: did the assignment split traffic as planned?

When a 50/50 experiment ends with 10,400 requests on one side and 9,600 on the other, something
between the splitter and the metrics lost or duplicated requests of one variant (a crash loop,
a redirect, a bot filter, a sticky-user hash that is not uniform), and every metric comparison
is suspect whatever it says. The check is Pearson's chi-square goodness of fit of the
assignment counts to the planned allocation (scipy.stats.chisquare). The usual threshold is
strict, p < 0.001 (Kohavi, Tang and Xu, "Trustworthy Online Controlled Experiments", ch. 21):
the check runs on every experiment and often at every window, so a loose one would cry wolf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats

DEFAULT_THRESHOLD = 0.001


@dataclass(frozen=True)
class SampleRatioCheck:
    counts: tuple[int, ...]  # requests assigned to each variant
    expected: tuple[float, ...]  # what the allocation planned for the same total
    chi2: float
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        """The split is off plan beyond chance: distrust the experiment's comparisons."""
        return self.p_value < self.threshold


def sample_ratio_mismatch(counts: Sequence[int], allocation: Sequence[float],
                          threshold: float = DEFAULT_THRESHOLD) -> SampleRatioCheck:
    """Chi-square of `counts` (one per variant) against the shares `allocation` (summing to 1)."""
    if len(counts) != len(allocation) or len(counts) < 2:
        raise ValueError(f"need one count per allocation share, at least two; got {len(counts)} and {len(allocation)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    if any(share <= 0 for share in allocation) or not math.isclose(sum(allocation), 1.0, abs_tol=1e-9):
        raise ValueError(f"allocation shares must be > 0 and sum to 1, got {list(allocation)}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    total = sum(counts)
    expected = tuple(total * share for share in allocation)
    if total == 0:
        return SampleRatioCheck(tuple(counts), expected, 0.0, 1.0, threshold)
    result = stats.chisquare(list(counts), f_exp=list(expected))
    return SampleRatioCheck(tuple(int(c) for c in counts), expected, float(result.statistic), float(result.pvalue), threshold)
