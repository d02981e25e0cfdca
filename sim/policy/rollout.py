"""Rollout controllers by strategy name, built from `rollout.*`: the one place config meets them.

Each strategy is a module of its own (one concept each), all on the shared base in
`sim.policy.strategy` and the shared analysis in `sim.policy.analysis`:

| strategy   | anchor                              | what moves                                   |
| ---------- | ----------------------------------- | -------------------------------------------- |
| canary     | Argo Rollouts canary steps          | traffic weights, step by step, with pauses   |
| linear     | Flagger progressive delivery        | traffic weights, step_weight per passing check |
| blue_green | Argo Rollouts blueGreen             | a second full replica set, then all traffic  |
| rolling    | Kubernetes RollingUpdate            | replicas, one bounded batch at a time        |
| recreate   | Kubernetes Recreate                 | every replica at once (with downtime)        |

The twin (`sim.twin.Twin(controller=...)`) and the real stack's controller driver
(`real.controller.ControllerDriver`) take what `controller_from_config` returns; every
controller has `tick_s`, `on_tick(now, view)`, `state`, `done`, `decision`, `decisions`,
`failures`, `promote()` and `abort()`.
"""

from __future__ import annotations

from typing import Callable

from sim.config import ScenarioConfig, experiment_guardrails, experiment_metrics, rollout_versions, version_names
from sim.policy.analysis import Analysis
from sim.policy.blue_green import BlueGreenController, BlueGreenSpec
from sim.policy.experiment import ExperimentController, ExperimentSpec
from sim.policy.canary import CanaryController, CanarySpec, CanaryStep, canary
from sim.policy.linear import LinearController, LinearSpec
from sim.policy.recreate import RecreateController, RecreateSpec
from sim.policy.rolling import RollingController, RollingSpec
from sim.policy.strategy import Decision, RolloutController

__all__ = ["Analysis", "BlueGreenController", "CanaryController", "CanarySpec", "CanaryStep", "Decision", "LinearController",
           "RecreateController", "RollingController", "RolloutController", "STRATEGIES", "canary", "controller_from_config"]


def _analysis(cfg: ScenarioConfig) -> Analysis | None:
    r = cfg.rollout
    if not r.analysis:
        return None
    return Analysis(max_error_rate=r.max_error_rate, max_p99_ratio=r.max_p99_ratio, failure_limit=r.failure_limit,
                    min_requests=r.min_requests, max_accuracy_drop=r.max_accuracy_drop)


def _canary(cfg: ScenarioConfig, stable: int, new: int, n: int) -> RolloutController:
    steps = tuple(CanaryStep(**{str(k): float(v) for k, v in step.items()}) for step in cfg.rollout.steps)
    return CanaryController(CanarySpec(steps, _analysis(cfg), cfg.rollout.interval_s, stable, new), n)


def _linear(cfg: ScenarioConfig, stable: int, new: int, n: int) -> RolloutController:
    r = cfg.rollout
    return LinearController(LinearSpec(r.step_weight, r.max_weight, r.threshold, _analysis(cfg), r.interval_s, stable, new), n)


def _blue_green(cfg: ScenarioConfig, stable: int, new: int, n: int) -> RolloutController:
    r = cfg.rollout
    return BlueGreenController(BlueGreenSpec(r.scale_down_delay_s, _analysis(cfg), r.interval_s, stable, new), n)


def _rolling(cfg: ScenarioConfig, stable: int, new: int, n: int) -> RolloutController:
    r = cfg.rollout
    return RollingController(RollingSpec(r.max_surge, r.max_unavailable, _analysis(cfg), r.interval_s, stable, new), n)


def _recreate(cfg: ScenarioConfig, stable: int, new: int, n: int) -> RolloutController:
    return RecreateController(RecreateSpec(_analysis(cfg), cfg.rollout.interval_s, stable, new), n)


# strategy name -> builder(cfg, stable index, new version index, number of versions)
STRATEGIES: dict[str, Callable[[ScenarioConfig, int, int, int], RolloutController]] = {
    "canary": _canary,
    "linear": _linear,
    "blue_green": _blue_green,
    "rolling": _rolling,
    "recreate": _recreate,
}


def experiment_spec(cfg: ScenarioConfig) -> ExperimentSpec:
    """The experiment `experiment.*` describes (validated by sim.config), ticked every window_s
    from the end of the warm-up."""
    e = cfg.experiment
    names = version_names(cfg.model)
    control, treatment = (str(v) for v in e.variants)
    return ExperimentSpec(names.index(control), names.index(treatment), (control, treatment), tuple(experiment_metrics(e)),
                          tuple(experiment_guardrails(e)), e.alpha, e.stop_early, cfg.warmup_s, cfg.window_s, e.min_requests)


def controller_from_config(cfg: ScenarioConfig) -> RolloutController | None:
    """The rollout controller `rollout.*` describes, or the experiment's (`experiment.*`), both
    validated by sim.config; None when neither is set."""
    if cfg.experiment.variants:
        return ExperimentController(experiment_spec(cfg), len(version_names(cfg.model)))
    if cfg.rollout.strategy == "none":
        return None
    names = version_names(cfg.model)
    stable, new = rollout_versions(cfg)
    return STRATEGIES[cfg.rollout.strategy](cfg, names.index(stable), names.index(new), len(names))

