"""The twin against queueing theory.

Tolerances are justified by the run itself: the measured requests are cut into consecutive
batches and the batch means give a standard error (batch means absorb the autocorrelation of
queueing delays). A test passes when the estimate is within 4 standard errors of the formula
plus a small allowance for known bias (finite n for the mean-field model), and it also asserts
the run was long enough that this band is narrow, so a test cannot pass by being vague.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from tests.conftest import scenario

pytestmark = pytest.mark.slow

BATCHES = 20
MU = 100.0  # service rate per instance, 1/s: mean service 10 ms


def batch_means(values: np.ndarray, stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float]:
    """Point estimate over all values, and its standard error from BATCHES consecutive batches."""
    parts = np.array_split(values, BATCHES)
    per = np.array([stat(p) for p in parts])
    return float(stat(values)), float(per.std(ddof=1) / math.sqrt(BATCHES))


def assert_close(name: str, estimate: float, se: float, theory: float, max_rel_se: float = 0.02, bias_rel: float = 0.0) -> None:
    assert se / theory < max_rel_se, f"{name}: run too short, standard error {se / theory:.1%} of the value"
    band = 4 * se + bias_rel * theory
    print(f"{name}: error {(estimate - theory) / theory:+.2%}, band {band / theory:.2%}")
    assert abs(estimate - theory) <= band, (
        f"{name}: twin {estimate * 1e3:.3f} ms vs theory {theory * 1e3:.3f} ms "
        f"(error {(estimate - theory) / theory:+.2%}, allowed {band / theory:.2%})"
    )


def sojourn(frame: pd.DataFrame, warmup_s: float) -> np.ndarray:
    ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= warmup_s)]
    return ok.sort_values("arrival_s")["latency_s"].to_numpy(dtype=float)


def no_batching(**kw: object) -> dict[str, object]:
    return dict(batching=dict(max_batch_size=1, max_queue_delay_s=0.0), **kw)


def exp_service(mean_s: float = 1 / MU) -> dict[str, object]:
    return dict(kind="exponential", base_s=mean_s, per_item_s=0.0)


def test_mm1_mean_and_p99_sojourn(run_twin) -> None:
    rho = 0.7
    cfg = scenario(duration_s=3000.0, warmup_s=50.0, replicas=1, arrival=dict(rate=rho * MU), service=exp_service(), **no_batching())
    w = sojourn(run_twin(cfg), cfg.warmup_s)
    # M/M/1 FIFO sojourn is exponential with rate mu - lambda
    mean, se = batch_means(w)
    assert_close("M/M/1 mean", mean, se, 1 / (MU - rho * MU))
    p99, se99 = batch_means(w, lambda x: float(np.percentile(x, 99)))
    assert_close("M/M/1 p99", p99, se99, math.log(100) / (MU - rho * MU), max_rel_se=0.03)


def erlang_c(c: int, offered: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lambda / mu."""
    rho = offered / c
    top = offered**c / math.factorial(c) / (1 - rho)
    return top / (sum(offered**k / math.factorial(k) for k in range(c)) + top)


def test_mmc_as_one_replica_with_c_instances(run_twin) -> None:
    c, rho = 4, 0.8
    lam = rho * c * MU
    cfg = scenario(duration_s=800.0, warmup_s=20.0, replicas=1, concurrency=c, arrival=dict(rate=lam), service=exp_service(), **no_batching())
    mean, se = batch_means(sojourn(run_twin(cfg), cfg.warmup_s))
    theory = erlang_c(c, lam / MU) / (c * MU - lam) + 1 / MU
    assert_close("M/M/4 mean (Erlang C)", mean, se, theory)


def test_md1_pollaczek_khinchine(run_twin) -> None:
    rho = 0.8
    cfg = scenario(
        duration_s=2000.0, warmup_s=50.0, replicas=1, arrival=dict(rate=rho * MU),
        service=dict(kind="deterministic", base_s=1 / MU, per_item_s=0.0), **no_batching(),
    )
    mean, se = batch_means(sojourn(run_twin(cfg), cfg.warmup_s))
    theory = rho / (2 * MU * (1 - rho)) + 1 / MU
    assert_close("M/D/1 mean (P-K)", mean, se, theory)


def test_random_split_is_n_independent_mm1(run_twin) -> None:
    n, rho = 4, 0.7
    cfg = scenario(duration_s=1000.0, warmup_s=20.0, replicas=n, lb=dict(policy="random"),
                   arrival=dict(rate=n * rho * MU), service=exp_service(), **no_batching())
    mean, se = batch_means(sojourn(run_twin(cfg), cfg.warmup_s))
    assert_close("random split mean", mean, se, 1 / (MU - rho * MU))


def gi_m1_sigma(lam_total: float, n: int, mu: float) -> float:
    """Root of sigma = A*(mu (1 - sigma)) for Erlang-n interarrivals of rate lam_total (GI/M/1)."""
    sigma = 0.5
    for _ in range(10_000):
        sigma = (lam_total / (lam_total + mu * (1 - sigma))) ** n
    return sigma


def test_round_robin_is_erlang_n_gi_m1(run_twin) -> None:
    n, rho = 4, 0.8
    lam = n * rho * MU
    cfg = scenario(duration_s=1000.0, warmup_s=20.0, replicas=n, lb=dict(policy="round_robin"),
                   arrival=dict(rate=lam), service=exp_service(), **no_batching())
    mean, se = batch_means(sojourn(run_twin(cfg), cfg.warmup_s))
    sigma = gi_m1_sigma(lam, n, MU)
    theory = 1 / (MU * (1 - sigma))
    assert_close("round robin E_n/M/1 mean", mean, se, theory)
    assert theory < 1 / (MU - rho * MU)  # and round robin beats a random split, as it should


def test_p2c_matches_the_supermarket_mean_field(run_twin) -> None:
    n, rho = 100, 0.9
    cfg = scenario(duration_s=100.0, warmup_s=10.0, replicas=n, lb=dict(policy="p2c"),
                   arrival=dict(rate=n * rho * MU), service=exp_service(), **no_batching())
    mean, se = batch_means(sojourn(run_twin(cfg), cfg.warmup_s))
    # Mitzenmacher / Vvedenskaya et al.: a queue holds >= k jobs with probability rho^(2^k - 1)
    in_queue = sum(rho ** (2**k - 1) for k in range(1, 60))
    theory = in_queue / (rho * MU)
    # the mean field is the n -> infinity limit; at n = 100 finite-size effects are ~1-2%
    assert_close("p2c mean (mean field)", mean, se, theory, bias_rel=0.03)
    assert theory < 1 / (MU - rho * MU) / 2  # far better than a random split at this load


def test_littles_law(run_twin) -> None:
    cfg = scenario(duration_s=400.0, warmup_s=0.0, replicas=2, arrival=dict(rate=300.0),
                   service=dict(kind="lognormal", base_s=0.004, per_item_s=0.001, cv=0.5),
                   batching=dict(max_batch_size=8, max_queue_delay_s=0.002))
    frame = run_twin(cfg)
    # L from sampling the number in system at random instants; lambda W from the records
    rng = np.random.default_rng(5)
    instants = np.sort(rng.uniform(20.0, cfg.duration_s - 20.0, 20000))
    arrivals = np.sort(frame["arrival_s"].to_numpy())
    finishes = np.sort(frame["finish_s"].to_numpy())
    in_system = np.searchsorted(arrivals, instants, side="right") - np.searchsorted(finishes, instants, side="right")
    measured = frame[(frame["arrival_s"] > 20.0) & (frame["arrival_s"] < cfg.duration_s - 20.0)]
    lam = len(measured) / (cfg.duration_s - 40.0)
    lw = lam * float(measured["latency_s"].mean())
    lq, se = batch_means(in_system.astype(float))
    assert_close("Little's law L = lambda W", lq, se, lw, max_rel_se=0.05)
