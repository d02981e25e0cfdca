"""Whole A/B experiments in the twin: the controller and the record analysis look at the same
windows, and the statistics hold end to end (A/A false positives under peeking, power at the
design's size, the SRM flag), at sizes that run in a minute or two (scenarios.bench_ab_twin runs
the same functions at full size)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from scenarios.bench_ab_stats import binomial_tolerance
from scenarios.bench_ab_twin import (AA, AB_VERSIONS, BASE, TRUE_ACCURACY, AARun, ab_design, ab_run, aa_run, analyse_run,
                                     config, expected_fixed_power, mean_z, naive_peeking, promised_sequential_power,
                                     run_seeds, seeded, srm_config, srm_run, watching)
from scenarios.experiment import EXPERIMENT_JSON, finish
from scenarios.run_sim import simulate
from sim.experiment import replay
from sim.policy.experiment import ExperimentController
from sim.policy.rollout import controller_from_config, experiment_spec
from sim.records import requests_frame
from sim.twin import Twin

ALPHA = 0.05
ACCURACY_ONLY = "experiment.metrics=[{metric:accuracy,mde:0.05}]"


def controller_run(overrides: list[str]) -> tuple[ExperimentController, pd.DataFrame, float]:
    """The twin's run of a scenario with its controller kept: (controller, records, the end of
    the looks: when the controller stopped the experiment, else the planned end)."""
    cfg = config(overrides)
    controller = controller_from_config(cfg)
    assert isinstance(controller, ExperimentController)
    frame = requests_frame(Twin(cfg, controller=controller).run().columns)
    pd.testing.assert_frame_equal(frame, simulate(cfg)[0])  # the run mode=sim makes
    decided = controller.decision
    return controller, frame, decided.time_s if decided is not None else cfg.duration_s


SCENARIOS = {
    "aa (runs to its end)": [*BASE],
    "aa, 0.3 s windows (look times summed by the twin's clock)": [*BASE, "window_s=0.3", "duration_s=12"],
    "ab_latency_guardrail (aborted at its first look)": ["scenario=ab_latency_guardrail", "progress=false"],
    "a/b on accuracy (concluded)": [*BASE, AB_VERSIONS, "seed=3"],
}


@pytest.mark.parametrize("overrides", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_the_controller_and_the_record_analysis_take_the_same_looks(overrides: list[str]) -> None:
    """Same code, same windows: every look the controller took is in the analysis, at the same
    time, with the same counts per variant and the same always-valid p-value and interval (up to
    the order floating-point sums were taken in), to the look that stopped the experiment."""
    cfg = config(overrides)
    controller, frame, end_s = controller_run(overrides)
    spec = experiment_spec(cfg)
    replayed = replay(frame, spec, cfg.duration_s, end_s if controller.done else None)[0].looks
    taken = controller.looks.looks
    assert taken and len(replayed) == len(taken)
    for mine, theirs in zip(taken, replayed):
        assert (mine.index, mine.requests) == (theirs.index, theirs.requests)
        assert math.isclose(mine.time_s, theirs.time_s, abs_tol=1e-9)
        assert [b.detail for b in mine.breaches] == [b.detail for b in theirs.breaches]
        for m in spec.metrics:
            assert [s.n for s in mine.totals[m.name]] == [s.n for s in theirs.totals[m.name]]
            a, b = mine.sequential[m.name], theirs.sequential[m.name]
            assert a.rejected == b.rejected
            for x, y in ((a.p_value, b.p_value), (a.estimate, b.estimate), (a.ci_low, b.ci_low), (a.ci_high, b.ci_high)):
                assert x == y or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15)


def test_the_scenarios_above_stop_as_their_names_say() -> None:
    """The agreement above covers a run that stops on a decision and one that stops on a guardrail."""
    states = {name: controller_run(overrides)[0].state for name, overrides in SCENARIOS.items()}
    assert list(states.values()) == ["progressing", "progressing", "aborted", "concluded"]


def test_the_analysis_takes_no_look_the_controller_did_not() -> None:
    """The twin's controller ticks at k x tick_s while before the arrivals' end, as the real driver
    does; the analysis replays those looks and no other (none at duration_s itself)."""
    controller, frame, end_s = controller_run([*BASE])
    spec = controller.spec
    assert not controller.done and len(replay(frame, spec, end_s, None)[0].looks) == len(controller.looks.looks)


def test_a_watching_controller_leaves_the_run_as_it_was() -> None:
    """A sequential experiment whose controller never stopped is the same run as the fixed
    design's (the controller acts only to stop): what aa_run relies on to analyse one run twice."""
    sequential = seeded(config(AA), 0)
    frame, summary, _ = simulate(sequential)
    assert summary["rollout"]["decided_s"] is None
    fixed_frame, fixed_summary, _ = simulate(watching(sequential))
    pd.testing.assert_frame_equal(frame, fixed_frame)
    assert fixed_summary["rollout"]["decided_s"] is None


def test_the_bench_analyses_a_run_as_finish_does(tmp_path: Path) -> None:
    cfg = config([*BASE, AB_VERSIONS, "seed=3"])
    frame, summary, _ = simulate(cfg)
    mine = analyse_run(cfg, frame, summary)
    finish(tmp_path, cfg, frame, summary, None)
    written = json.loads((tmp_path / EXPERIMENT_JSON).read_text())
    assert mine["stopped_early"] and mine["controller_outcome"] == "concluded"
    for key in ("looks", "end_s", "stop_reason", "estimates", "tests", "srm", "verdict"):  # NaN != NaN: compare as JSON
        assert json.dumps(written[key]) == json.dumps(mine[key], default=float)


def test_a_router_off_the_planned_split_is_flagged() -> None:
    """The router splits requests 60/40, the analysis expects 50/50: flagged in every run; the
    same runs read against the split they ran with are not."""
    cfg = srm_config((0.6, 0.4))
    for seed in range(3):
        run = srm_run((cfg, seed))
        assert run.mismatch and run.counts[0] > run.counts[1]
        frame, summary, _ = simulate(seeded(cfg, seed))
        assert not analyse_run(seeded(cfg, seed), frame, summary)["srm"]["mismatch"]


@pytest.mark.slow
def test_an_aa_run_reads_the_fixed_design_from_the_whole_run_even_when_the_controller_stopped() -> None:
    """A/A seeds until one whose fixed design rejected at the end and one whose sequential
    controller stopped early (each ~5% and ~1.5% of seeds): peeking includes the last look, so a
    fixed design's rejection is a peek's too; and a stopped run's fixed design and peeks are read
    from the whole run the watching controller let happen, not the stopped one."""
    cfg = config([*AA, ACCURACY_ONLY])
    seen_fixed = seen_stopped = False
    for seed in range(150):
        run = aa_run((cfg, seed))
        assert run.naive_peeked["accuracy"] or not run.fixed_rejected["accuracy"]
        seen_fixed |= run.fixed_rejected["accuracy"]
        if run.concluded:
            seen_stopped = True
            frame, _, _ = simulate(watching(seeded(cfg, seed)))
            assert naive_peeking(watching(cfg), frame) == run.naive_peeked and run.naive_peeked["accuracy"]
        if seen_fixed and seen_stopped:
            break
    assert seen_fixed and seen_stopped


# -- the statistics end to end, by simulation ---------------------------------------------------------

AA_RUNS = 300
METRICS = ("accuracy", "latency_s")  # the aa preset's


@pytest.fixture(scope="module")
def aa_runs() -> list[AARun]:
    """300 A/A experiments of the aa preset (20 looks), each in both designs, on 2 processes."""
    return run_seeds(aa_run, config(AA), range(AA_RUNS), workers=2)


@pytest.mark.slow
def test_aa_the_sequential_test_looked_at_every_window_stays_within_alpha(aa_runs: list[AARun]) -> None:
    """The controller concluded (a false positive), and each metric's always-valid p reached
    alpha at some look, in at most alpha of the runs, give or take 3 binomial standard errors
    of alpha at 300 runs (0.038)."""
    tolerance = binomial_tolerance(ALPHA, AA_RUNS)
    assert sum(r.concluded for r in aa_runs) / AA_RUNS <= ALPHA + tolerance
    for metric in METRICS:
        assert sum(r.sequential_rejected[metric] for r in aa_runs) / AA_RUNS <= ALPHA + tolerance, metric


@pytest.mark.slow
def test_aa_the_naive_fixed_test_at_every_window_exceeds_alpha(aa_runs: list[AARun]) -> None:
    """The same runs, the fixed test's p (z, Welch on window means) read after every window:
    clearly above alpha (the reason the sequential test exists), while the same test read once
    at the end of the fixed design is at alpha."""
    tolerance = binomial_tolerance(ALPHA, AA_RUNS)
    for metric in METRICS:
        assert sum(r.naive_peeked[metric] for r in aa_runs) / AA_RUNS > ALPHA + tolerance, metric
        assert abs(sum(r.fixed_rejected[metric] for r in aa_runs) / AA_RUNS - ALPHA) <= tolerance, metric


@pytest.mark.slow
def test_aa_the_sample_ratio_check_of_a_sticky_user_split_raises_no_alarm(aa_runs: list[AARun]) -> None:
    """By user hash, 50/50 as planned: flagged (p < 0.001) in at most a handful of 300 runs."""
    assert sum(r.srm_mismatch for r in aa_runs) <= 2


LATENCY_RUNS = 200


@pytest.mark.slow
def test_aa_latency_in_standard_errors_is_standard_from_window_means_and_not_as_if_independent() -> None:
    """What every test of mean latency rests on: in A/A runs, B - A over its standard error has
    mean square 1, within 3 standard errors (sqrt(2 / 200) each), with the standard error the
    tests use (from the windows' means); with s^2 / n, as if the requests that share a queue
    were independent, it is far above 1 (why WindowMeans exists: ~1.8 in the aa preset)."""
    cfg = config(list(AA))
    z = [mean_z(cfg, simulate(seeded(cfg, seed))[0])["latency_s"] for seed in range(LATENCY_RUNS)]
    tolerance = 3 * math.sqrt(2 / LATENCY_RUNS)
    independent, windows = (sum(pair[k] ** 2 for pair in z) / LATENCY_RUNS for k in (0, 1))
    assert abs(windows - 1) <= tolerance
    assert independent > 1 + tolerance


AB_RUNS = 200


@pytest.mark.slow
def test_ab_power_at_the_designed_size_matches_the_design_and_intervals_cover() -> None:
    """v2 right 95% of the time against v1's 90% (the MDE), each design run as long as the twin's
    pilot sizes it: the fixed z-test rejects as often as the power formula says at the sizes
    reached, within 3 standard errors, its interval covers +0.05 at its nominal rate; the
    sequential controller concludes at least as often as its design promises."""
    design = ab_design()
    effect = TRUE_ACCURACY[1] - TRUE_ACCURACY[0]
    fixed = [ab_run((design.fixed, seed)) for seed in range(AB_RUNS)]
    power = expected_fixed_power(fixed, ALPHA)
    assert power >= 0.8  # the design asked for 0.8 at the planned size; the runs reach at least that size
    assert abs(sum(r.rejected for r in fixed) / AB_RUNS - power) <= binomial_tolerance(power, AB_RUNS)
    assert sum(r.ci[0] <= effect <= r.ci[1] for r in fixed) / AB_RUNS >= 1 - ALPHA - binomial_tolerance(1 - ALPHA, AB_RUNS)
    sequential = [ab_run((design.sequential, seed)) for seed in range(AB_RUNS)]
    promised = promised_sequential_power(sequential, ALPHA)
    assert sum(r.stopped_s is not None for r in sequential) / AB_RUNS >= promised - binomial_tolerance(promised, AB_RUNS)
    assert sum(r.ci[0] <= effect <= r.ci[1] for r in sequential) / AB_RUNS >= 1 - ALPHA - binomial_tolerance(1 - ALPHA, AB_RUNS)


def test_the_bench_prints_every_case_with_its_target(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m scenarios.bench_ab_twin` at a handful of runs, in this process: its table has
    a row per figure, each with runs, rate, Monte Carlo s.e., target and whether it is within."""
    from scenarios import bench_ab_twin

    monkeypatch.setattr("sys.argv", ["bench_ab_twin", "--runs", "3", "--ab-runs", "2", "--srm-runs", "2", "--workers", "1"])
    bench_ab_twin.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith(("A/A ", "A/B ", "SRM: ")) and line.rstrip().endswith(("yes", "NO"))]
    assert len(table) == 15
    runs = {line.split()[-6] for line in table if line.startswith("A/A")}, {line.split()[-6] for line in table if not line.startswith("A/A")}
    assert runs == ({"3"}, {"2"})
    assert "from the windows' means" in out and "wall" in out
