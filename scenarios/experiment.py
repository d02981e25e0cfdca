"""An A/B experiment around a run: designed by the twin before it, analysed from the records after.

Before the run (`plan`): the twin runs the same scenario once as a pilot (seed + 1, watching
only: no early stop), and the control's figures there (accuracy, error rate, latency mean and
spread) and the rate each metric is observed at size the experiment: per metric the sample per
variant and the time it takes, for a fixed horizon and for the sequential test. It is printed
and written (experiment.json, `"status": "planned"`) before the load starts, so a user knows
whether the run is long enough before spending it. mode=compare plans with the calibrated twin.

After the run (`finish`): the records and the controller's outcome (summary's `rollout`, where
the experiment's controller reports like a rollout's) go to `sim.experiment.analyse`;
experiment.json gets the results beside the design, experiment.parquet the looks, and the
summary a short `experiment` entry (decision and headline) for sweeps and CI.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from sim.config import ScenarioConfig, experiment_allocation, experiment_metrics
from sim.experiment import EXPERIMENT_JSON, EXPERIMENT_PARQUET, analyse, baselines, design, format_design
from sim.files import write_json, write_parquet
from sim.policy.rollout import experiment_spec



def plan(cfg: ScenarioConfig, out_dirs: list[Path] | tuple[Path, ...] = (), *, quiet: bool = False) -> dict[str, Any] | None:
    """The design from a twin pilot run, printed and written into each of `out_dirs`; None
    without an experiment."""
    from scenarios.run_sim import mean_offered_rate, simulate  # run_sim finishes experiments: import late

    e = cfg.experiment
    if not e.variants:
        return None
    pilot = copy.deepcopy(cfg)
    pilot.seed = cfg.seed + 1  # the design must not have seen the run it sizes
    pilot.experiment.stop_early = False
    frame, _, _ = simulate(pilot)
    span = cfg.duration_s - cfg.warmup_s
    measured = frame[frame["arrival_s"] >= cfg.warmup_s]
    source = f"a twin pilot run (seed {pilot.seed}, {len(measured):,} requests)"
    kind = "sequential" if e.stop_early else "fixed"
    doc = design(experiment_metrics(e), baselines(measured, str(e.variants[0]), span, cfg.window_s), experiment_allocation(e), e.alpha, e.power,
                 e.stop_early, cfg.warmup_s, cfg.duration_s, source)
    doc["rate_rps"] = mean_offered_rate(cfg)
    if not quiet:
        print(format_design(doc, doc["rate_rps"], kind), flush=True)
    for out_dir in out_dirs:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / EXPERIMENT_JSON, {"status": "planned", "design": doc})
    return doc


def finish(out_dir: Path, cfg: ScenarioConfig, frame: pd.DataFrame, summary: dict[str, Any],
           planned: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Analyse the run's experiment, write experiment.json and experiment.parquet, and put its
    decision in the summary. None without an experiment."""
    e = cfg.experiment
    if not e.variants:
        return None
    controller = summary.get("rollout") or {}
    stopped = controller.get("decided_s")
    doc, table = analyse(frame, experiment_spec(cfg), allocation=experiment_allocation(e), unit=e.unit,
                         planned_end_s=cfg.duration_s, stopped_s=stopped, stop_reason=controller.get("reason") if stopped is not None else None)
    doc = {"status": "done", **doc, "power": e.power, "design": dict(planned) if planned is not None else None}
    write_parquet(out_dir / EXPERIMENT_PARQUET, table)
    write_json(out_dir / EXPERIMENT_JSON, doc)
    summary["experiment"] = {"decision": doc["verdict"]["decision"], "headline": doc["verdict"]["headline"],
                             "stopped_early": doc["stopped_early"], "end_s": doc["end_s"],
                             "srm_mismatch": bool(doc["srm"] and doc["srm"]["mismatch"])}
    return doc


def format_experiment(doc: Mapping[str, Any]) -> str:
    """The experiment's lines on stdout after the run: the verdict, the SRM check, the files."""
    lines = [f"  experiment {line}" if i == 0 else f"             {line.strip()}" for i, line in enumerate(doc["verdict"]["lines"])]
    if not lines:
        lines = [f"  experiment {doc['verdict']['headline']}"]
    if doc["stopped_early"]:
        lines.append(f"             stopped at {doc['end_s']:.1f} s (planned end {doc['planned_end_s']:g} s): {doc['stop_reason']}; "
                     "all traffic back on control")
    srm = doc.get("srm")
    if srm:
        flag = "MISMATCH: distrust the comparison" if srm["mismatch"] else "ok"
        lines.append(f"             assignment {srm['counts'][0]:,} / {srm['counts'][1]:,} {srm['unit']}s, SRM p {srm['p_value']:.3g}: {flag}")
    lines.append(f"             {EXPERIMENT_JSON}, {EXPERIMENT_PARQUET}")
    return "\n".join(lines)
