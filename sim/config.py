"""The scenario schema: one dataclass per config group, shared by the twin and the real stack.

Hydra composes YAML over these dataclasses (so a misspelt key or a wrong type fails at
composition); `validate` adds the range and choice checks a type cannot express. Everything
here is plain data: the twin, the real stack and the reports all read the same objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

ARRIVAL_KINDS = ("poisson", "constant", "bursty", "diurnal", "trace", "closed")
SERVICE_KINDS = ("deterministic", "exponential", "lognormal", "empirical")
BACKENDS = ("numpy", "emulated")
MODES = ("sim", "real", "compare", "serve", "profile")
LOADGEN_DISPATCH = ("dispatcher", "timers")


@dataclass
class ArrivalConfig:
    kind: str = "poisson"
    rate: float = 200.0  # mean offered rate, req/s (poisson, constant; diurnal base)
    users: int = 1000  # distinct user ids (open loop) or concurrent users (closed)
    # bursty: a two-state Markov-modulated Poisson process
    high_rate: float = 400.0
    low_rate: float = 100.0
    high_dwell_s: float = 2.0
    low_dwell_s: float = 2.0
    # diurnal: rate * (1 + amplitude * sin(2 pi t / period_s))
    amplitude: float = 0.5
    period_s: float = 60.0
    # trace: replay timestamps (column `arrival_s`, optional `user_id`) from CSV or Parquet
    path: str = ""
    time_scale: float = 1.0
    # closed: `users` users, each waits for its answer then thinks (exponential, mean think_s)
    think_s: float = 0.1


@dataclass
class ServiceConfig:
    kind: str = "lognormal"
    base_s: float = 0.004  # mean time of a batch of B = base_s + per_item_s * B
    per_item_s: float = 0.0005
    cv: float = 0.2  # lognormal coefficient of variation
    profile: str = ""  # empirical: a profile file written by mode=profile
    # 0: every model instance has its own device (an accelerator). N: batches of all replicas
    # share N CPU cores, as numpy replicas do on this machine; a batch waits for a free core.
    shared_cores: int = 0


@dataclass
class OverheadConfig:
    """Time a request spends outside the replica's queue and model: client, gateway, network,
    (de)serialisation. Zero is the ideal stack; mode=profile measures the real one."""

    before_s: float = 0.0  # intended send -> enqueued at the replica
    after_s: float = 0.0  # model done -> answer at the client
    profile: str = ""  # a profile file: replay its measured overhead samples instead


@dataclass
class LbConfig:
    policy: str = "p2c"
    weights: list[float] = field(default_factory=list)  # weighted: one per replica


@dataclass
class BatchingConfig:
    max_batch_size: int = 16
    max_queue_delay_s: float = 0.005
    max_queue_size: int = 0  # 0 = unbounded, as in Triton


@dataclass
class ModelConfig:
    name: str = "digits"
    backend: str = "emulated"
    versions: list[str] = field(default_factory=lambda: ["1"])  # replica r serves versions[r % len]


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    hop_s: float = 0.0  # one-way network delay gateway <-> replica (twin)
    version_weights: list[float] = field(default_factory=list)  # empty = share by replica count
    sticky: bool = False  # a user always lands on the same version (A/B assignment)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    token: str = ""  # bearer token for control endpoints; empty = generated per run
    max_body_bytes: int = 1_048_576


@dataclass
class LoadgenConfig:
    workers: int = 1
    max_lag_p99_s: float = 0.005  # a run whose send lag p99 passes this is flagged invalid
    dispatch: str = "dispatcher"  # dispatcher (one greenlet sleeps to each send) | timers (a timer per request)
    remote_workers: int = 0  # of `workers`, how many you start yourself on other hosts (README)
    master_bind_host: str = "127.0.0.1"  # where the Locust master listens for workers


@dataclass
class ScenarioConfig:
    """What the twin needs to run a scenario; the CLI's config extends it."""

    seed: int = 0
    duration_s: float = 10.0
    warmup_s: float = 1.0
    replicas: int = 2
    concurrency: int = 1
    timeout_s: float = 5.0  # client deadline; 0 = none
    window_s: float = 1.0  # time-series window
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    lb: LbConfig = field(default_factory=LbConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    overhead: OverheadConfig = field(default_factory=OverheadConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    loadgen: LoadgenConfig = field(default_factory=LoadgenConfig)


class ConfigError(ValueError):
    """A config value that cannot run; `key` is the dotted path a user typed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _choice(value: str, key: str, allowed: tuple[str, ...] | list[str]) -> None:
    _require(value in allowed, key, f"{value!r} is not allowed; use one of {', '.join(allowed)}")


def _positive(value: float, key: str) -> None:
    _require(math.isfinite(value) and value > 0, key, f"must be > 0, got {value}")


def _non_negative(value: float, key: str) -> None:
    _require(math.isfinite(value) and value >= 0, key, f"must be >= 0, got {value}")


def validate(cfg: ScenarioConfig) -> None:
    """Raise ConfigError for the first value that cannot run. Called before anything starts."""
    from sim.policy.lb import LB_POLICIES

    _non_negative(cfg.seed, "seed")
    _positive(cfg.duration_s, "duration_s")
    _non_negative(cfg.warmup_s, "warmup_s")
    _require(cfg.warmup_s < cfg.duration_s, "warmup_s", f"must be < duration_s ({cfg.duration_s}), got {cfg.warmup_s}")
    _require(cfg.replicas >= 1, "replicas", f"must be >= 1, got {cfg.replicas}")
    _require(cfg.concurrency >= 1, "concurrency", f"must be >= 1, got {cfg.concurrency}")
    _non_negative(cfg.timeout_s, "timeout_s")
    _positive(cfg.window_s, "window_s")

    a = cfg.arrival
    _choice(a.kind, "arrival.kind", ARRIVAL_KINDS)
    _require(a.users >= 1, "arrival.users", f"must be >= 1, got {a.users}")
    if a.kind in ("poisson", "constant", "diurnal"):
        _positive(a.rate, "arrival.rate")
    if a.kind == "bursty":
        _positive(a.high_rate, "arrival.high_rate")
        _non_negative(a.low_rate, "arrival.low_rate")
        _positive(a.high_dwell_s, "arrival.high_dwell_s")
        _positive(a.low_dwell_s, "arrival.low_dwell_s")
    if a.kind == "diurnal":
        _require(0 <= a.amplitude <= 1, "arrival.amplitude", f"must be in [0, 1], got {a.amplitude}")
        _positive(a.period_s, "arrival.period_s")
    if a.kind == "trace":
        _require(bool(a.path), "arrival.path", "arrival.kind=trace needs a CSV or Parquet file of arrival_s")
        _positive(a.time_scale, "arrival.time_scale")
    if a.kind == "closed":
        _non_negative(a.think_s, "arrival.think_s")

    s = cfg.service
    _choice(s.kind, "service.kind", SERVICE_KINDS)
    _non_negative(s.base_s, "service.base_s")
    _non_negative(s.per_item_s, "service.per_item_s")
    if s.kind != "empirical":
        _positive(s.base_s + s.per_item_s, "service.base_s")
    _non_negative(s.cv, "service.cv")
    if s.kind == "empirical":
        _require(bool(s.profile), "service.profile", "service.kind=empirical needs a profile file (see mode=profile)")
    _require(s.shared_cores >= 0, "service.shared_cores", f"must be >= 0 (0 = a device per instance), got {s.shared_cores}")
    _non_negative(cfg.overhead.before_s, "overhead.before_s")
    _non_negative(cfg.overhead.after_s, "overhead.after_s")

    _choice(cfg.lb.policy, "lb.policy", sorted(LB_POLICIES))
    if cfg.lb.policy == "weighted":
        w = cfg.lb.weights
        _require(len(w) == cfg.replicas, "lb.weights", f"needs one weight per replica ({cfg.replicas}), got {len(w)}")
        _require(all(x >= 0 for x in w) and sum(w) > 0, "lb.weights", "must be >= 0 with a positive sum")

    b = cfg.batching
    _require(b.max_batch_size >= 1, "batching.max_batch_size", f"must be >= 1, got {b.max_batch_size}")
    _non_negative(b.max_queue_delay_s, "batching.max_queue_delay_s")
    _require(b.max_queue_size >= 0, "batching.max_queue_size", f"must be >= 0 (0 = unbounded), got {b.max_queue_size}")

    _choice(cfg.model.backend, "model.backend", BACKENDS)
    _require(len(cfg.model.versions) >= 1, "model.versions", "needs at least one version")
    _require(
        len(cfg.model.versions) <= cfg.replicas,
        "model.versions",
        f"{len(cfg.model.versions)} versions need at least as many replicas, got replicas={cfg.replicas}",
    )
    vw = cfg.gateway.version_weights
    if vw:
        _require(len(vw) == len(cfg.model.versions), "gateway.version_weights", f"needs one weight per version ({len(cfg.model.versions)}), got {len(vw)}")
        _require(all(x >= 0 for x in vw) and sum(vw) > 0, "gateway.version_weights", "must be >= 0 with a positive sum")
    _non_negative(cfg.gateway.hop_s, "gateway.hop_s")
    _require(0 <= cfg.gateway.port < 65536, "gateway.port", f"must be in [0, 65535], got {cfg.gateway.port}")
    lg = cfg.loadgen
    _require(lg.workers >= 1, "loadgen.workers", f"must be >= 1, got {lg.workers}")
    _choice(lg.dispatch, "loadgen.dispatch", LOADGEN_DISPATCH)
    _require(0 <= lg.remote_workers < lg.workers, "loadgen.remote_workers",
             f"must be in [0, loadgen.workers - 1] ({lg.workers - 1}): the master's host runs one worker at least; got {lg.remote_workers}")
    _positive(cfg.loadgen.max_lag_p99_s, "loadgen.max_lag_p99_s")


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists, for config.yaml and JSON."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def load_config(path: str, schema: type = ScenarioConfig) -> Any:
    """A resolved config.yaml (as written by a run) back into the dataclass tree, validated.

    How subprocesses of the real stack receive the scenario: one file, the same schema.
    """
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(raw, dict), f"{path}: not a mapping"
    known = {f.name for f in fields(schema)}  # a run's file also holds mode, out_dir, ...
    merged = OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in raw.items() if k in known})
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg
