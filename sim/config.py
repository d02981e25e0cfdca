"""The scenario schema: one dataclass per config group, shared by the twin and the real stack.

Hydra composes YAML over these dataclasses (so a misspelt key or a wrong type fails at
composition); `validate` adds the range and choice checks a type cannot express. Everything
here is plain data: the twin, the real stack and the reports all read the same objects.

Every key carries its one-line help beside it (`setting(default, help)`): `servelab --help`
and README's key table are generated from it (`schema_help`), so the three cannot drift.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar, cast

ARRIVAL_KINDS = ("poisson", "constant", "bursty", "diurnal", "trace", "closed")
SERVICE_KINDS = ("deterministic", "exponential", "lognormal", "empirical")
OVERHEAD_MODELS = ("host", "replay")
BACKENDS = ("numpy", "emulated")
MODES = ("sim", "real", "compare", "serve", "profile", "rehearse", "batch")
LOADGEN_DISPATCH = ("dispatcher", "timers")
LOADGEN_PROTOCOLS = ("http", "grpc")
FEATURE_STORES = ("none", "embedded", "redis")
FEATURE_FALLBACKS = ("default", "error")
SERVING_PATTERNS = ("sync", "async")
# a version is a URL path segment (/v2/models/NAME/versions/VERSION/infer): no '/', '?', '%', ...
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# what sets the offered rate of the kinds that do not read arrival.rate
RATE_SET_BY = {
    "bursty": "arrival.high_rate, arrival.low_rate, arrival.high_dwell_s and arrival.low_dwell_s",
    "closed": "arrival.users and arrival.think_s",
    "trace": "the trace file (arrival.path) and arrival.time_scale",
}

T = TypeVar("T")


def setting(default: T, help: str) -> T:
    """A schema field with its help text: the help lives beside the key it documents."""
    if isinstance(default, (list, dict)):
        frozen = copy.deepcopy(default)
        return cast(T, field(default_factory=lambda: copy.deepcopy(frozen), metadata={"help": help}))
    return cast(T, field(default=default, metadata={"help": help}))


@dataclass
class ArrivalConfig:
    kind: str = setting("poisson", f"{' | '.join(ARRIVAL_KINDS)}: how requests arrive (each kind reads the keys marked with it)")
    rate: float = setting(200.0, "mean offered rate, req/s (poisson, constant; diurnal: the base rate)")
    users: int = setting(1000, "distinct user ids (open loop) or users (closed)")
    high_rate: float = setting(400.0, "bursty (a two-state Markov-modulated Poisson process): rate in the high state, req/s")
    low_rate: float = setting(100.0, "bursty: rate in the low state, req/s")
    high_dwell_s: float = setting(2.0, "bursty: mean (exponential) time in the high state, s")
    low_dwell_s: float = setting(2.0, "bursty: mean (exponential) time in the low state, s")
    amplitude: float = setting(0.5, "diurnal: rate * (1 + amplitude * sin(2 pi t / period_s)), in [0, 1]")
    period_s: float = setting(60.0, "diurnal: period of the sine, s")
    path: str = setting("", "trace: CSV or Parquet file, column arrival_s (seconds, sorted), optional user_id (integers >= 0) and version (pins the request's version as x-model-version does; empty = the split)")
    time_scale: float = setting(1.0, "trace: every arrival_s is multiplied by this (0.5 = twice as fast)")
    think_s: float = setting(0.1, "closed: mean (exponential) think time between an answer and the user's next request, s")
    user_zipf_s: float = setting(0.0, "how user ids are drawn (not trace): 0 = uniform over arrival.users; s > 0 = Zipf with exponent s, user 0 the most popular (the feature cache's hit ratio follows from it)")


@dataclass
class ServiceConfig:
    kind: str = setting("lognormal", "deterministic | exponential | lognormal (cv) | empirical (profile): the service-time model")
    base_s: float = setting(0.004, "mean time of a batch of B = base_s + per_item_s * B, s")
    per_item_s: float = setting(0.0005, "per-item part of a batch's mean time, s")
    cv: float = setting(0.2, "lognormal: coefficient of variation of the service time")
    profile: str = setting("", "empirical: a profile file written by mode=profile, whose measured times are replayed")
    shared_cores: int = setting(0, "0: a device per model instance (accelerator); N: batches of all replicas share N CPU cores (numpy)")


@dataclass
class OverheadConfig:
    """Time a request spends outside the replica's queue and model: client, gateway, network,
    (de)serialisation. Zero is the ideal stack; mode=profile measures the real one."""

    before_s: float = setting(0.0, "time from the intended send to enqueued at the replica, s")
    after_s: float = setting(0.0, "time from the model done to the answer at the client, s")
    profile: str = setting("", "a profile file: model (or replay) the stack it measured instead (mode=compare: its calibration)")
    model: str = setting("host", "with a profile: host = its processes' CPU costs on the host's cores (sim.host), replay = its overheads measured at a few rates, interpolated by rate (profiles without a host part replay)")


@dataclass
class LbConfig:
    policy: str = setting("p2c", "random | round_robin | least_outstanding | p2c (power of two choices) | weighted")
    weights: list[float] = setting([], "weighted: one weight per replica (only lb.policy=weighted reads them)")


@dataclass
class BatchingConfig:
    max_batch_size: int = setting(16, "largest batch a model instance runs; 1 = batching off")
    max_queue_delay_s: float = setting(0.005, "how long the oldest request may wait for a fuller batch, s")
    max_queue_size: int = setting(0, "queue bound per replica: a request arriving at a full queue is shed (real: 503 + Retry-After); 0 = unbounded")


@dataclass
class VersionConfig:
    """One model version and what is particular to it. In model.versions an entry is either
    its name alone (`1`) or a mapping with these keys (`{name: 2, service_factor: 1.5}`).

    `accuracy` unset means: the emulated backend's answers are not judged (an emulated device
    computes nothing that could be right or wrong; `correct` stays unknown), and the numpy
    backend's are judged by its real model (which is why setting it there is an error)."""

    name: str
    service_factor: float = 1.0  # its device time is service.* times this (a slower canary)
    error_rate: float = 0.0  # probability a request fails after its batch ran (HTTP 500, OIP error body)
    accuracy: float | None = None  # emulated backend: probability an answer is right; None: not judged
    faults: list[FaultConfig] = field(default_factory=list)  # its schedule of turning bad (FaultConfig)


@dataclass
class FaultConfig:
    """One entry of a version's `faults`: from `at_s` on (run time), the version turns bad. Each
    key left out keeps what the version had until then (its own settings, or an earlier
    fault's value), so a later entry can also heal it (`slowdown: 1, error_rate: 0, accuracy_drop: 0`)."""

    at_s: float
    slowdown: float | None = None  # its device time x this (on top of service_factor)
    error_rate: float | None = None  # its probability of failing a request (HTTP 500) from at_s
    accuracy_drop: float | None = None  # its accuracy minus this (probability points)


FAULT_KEYS = ("at_s", "slowdown", "error_rate", "accuracy_drop")


@dataclass
class ModelConfig:
    name: str = setting("digits", "the model served (a digits classifier)")
    backend: str = setting("emulated", "numpy (a real classifier on the CPU) | emulated (an accelerator whose device time follows service.*)")
    # list[Any]: an entry is a name or a VersionConfig mapping; read it through version_specs()
    versions: list[Any] = setting(["1"], f"versions deployed: replica r starts on versions[r % len] (rollout.strategy=blue_green, rolling, recreate: every replica on rollout.stable); an entry is a name ({VERSION_PATTERN}) or {{name: N, service_factor: F, error_rate: P, accuracy: A, faults: [{{at_s: T, slowdown: S, error_rate: Q, accuracy_drop: D}}, ...]}} (device time x F; a request fails (HTTP 500) with probability P; emulated: an answer is right with probability A, unset = not judged; from run time T on: device time x S too, failures with Q, accuracy minus D, a key left out keeps its value)")


def version_specs(model: ModelConfig) -> list[VersionConfig]:
    """model.versions as VersionConfig objects: the one reader of that key's two spellings."""
    known = {f.name for f in fields(VersionConfig)}
    specs: list[VersionConfig] = []
    for i, entry in enumerate(model.versions):
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            specs.append(VersionConfig(str(entry)))
            continue
        if is_dataclass(entry) and isinstance(entry, VersionConfig):
            specs.append(replace(entry, faults=fault_specs(entry.faults, f"model.versions[{entry.name}].faults")))
            continue
        if not isinstance(entry, dict):
            raise ConfigError("model.versions", f"entry {i} must be a name or a mapping with keys {', '.join(sorted(known))}, got {entry!r}")
        unknown = set(map(str, entry)) - known
        if unknown:
            raise ConfigError("model.versions", f"entry {i}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}")
        if "name" not in entry:
            raise ConfigError("model.versions", f"entry {i} needs a name")
        name = str(entry["name"])
        numbers = {key: _number(entry[key], f"model.versions[{name}].{key}")
                   for key in ("service_factor", "error_rate", "accuracy") if key in entry and entry[key] is not None}
        specs.append(VersionConfig(name, **numbers, faults=fault_specs(entry.get("faults"), f"model.versions[{name}].faults")))
    return specs


def _number(value: Any, key: str) -> float:
    """A config number from YAML or the command line (an int, a float, or a numeric string)."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {value!r}") from None


def fault_specs(faults: Any, key: str) -> list[FaultConfig]:
    """A version's `faults` (`key`: where they are, model.versions[NAME].faults) as FaultConfig
    objects, in the order given (errors name that index). None or absent: no faults."""
    if faults is None:
        return []
    if not isinstance(faults, (list, tuple)):
        raise ConfigError(key, f"must be a list like [{{at_s: 5, error_rate: 0.1}}], got {faults!r}")
    specs: list[FaultConfig] = []
    for i, entry in enumerate(faults):
        at = f"{key}[{i}]"
        if is_dataclass(entry) and isinstance(entry, FaultConfig):
            specs.append(entry)
            continue
        if not isinstance(entry, dict):
            raise ConfigError(at, f"must be a mapping like {{at_s: 5, error_rate: 0.1}}, got {entry!r}")
        unknown = set(map(str, entry)) - set(FAULT_KEYS)
        if unknown:
            raise ConfigError(at, f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(FAULT_KEYS)}")
        if entry.get("at_s") is None:
            raise ConfigError(f"{at}.at_s", "is required (a fault makes the version bad from a time)")
        numbers = {name: _number(entry[name], f"{at}.{name}")
                   for name in ("slowdown", "error_rate", "accuracy_drop") if entry.get(name) is not None}
        specs.append(FaultConfig(_number(entry["at_s"], f"{at}.at_s"), **numbers))
    return specs


def version_names(model: ModelConfig) -> list[str]:
    return [v.name for v in version_specs(model)]


def rollout_versions(cfg: ScenarioConfig) -> tuple[str, str]:
    """(stable, canary) of a rollout: as configured, else the first and second version. An
    experiment's controller takes the same place: (control, treatment)."""
    if cfg.experiment.variants:
        control, treatment = cfg.experiment.variants
        return str(control), str(treatment)
    names = version_names(cfg.model)
    return cfg.rollout.stable or names[0], cfg.rollout.canary or names[1]


def experiment_allocation(e: ExperimentConfig) -> list[float]:
    """Each variant's share of the assignment units: as configured, else equal."""
    return [float(x) for x in e.allocation] if e.allocation else [1.0 / len(e.variants)] * len(e.variants)


def experiment_metrics(e: ExperimentConfig) -> list[ExperimentMetric]:
    """experiment.metrics as ExperimentMetric objects (a name alone takes its default MDE)."""
    out = []
    for entry in e.metrics:
        if isinstance(entry, str):
            out.append(ExperimentMetric(entry, EXPERIMENT_METRICS[entry][2]))
        else:
            name = str(entry["metric"])
            out.append(ExperimentMetric(name, float(entry.get("mde", EXPERIMENT_METRICS[name][2]))))
    return out


def experiment_guardrails(e: ExperimentConfig) -> list[Guardrail]:
    return [Guardrail(str(g["metric"]), float(g["max"])) for g in e.guardrails]


def traffic_split(cfg: ScenarioConfig) -> tuple[list[float], bool]:
    """(version weights, sticky by user) the router starts with: gateway.* as configured, or an
    experiment's allocation over its two variants (every other version weight 0; sticky when the
    unit is the user). Empty weights: by replica count."""
    e = cfg.experiment
    if not e.variants:
        return list(cfg.gateway.version_weights), cfg.gateway.sticky
    names = version_names(cfg.model)
    weights = [0.0] * len(names)
    for variant, share in zip(e.variants, experiment_allocation(e)):
        weights[names.index(str(variant))] = share
    return weights, cfg.gateway.sticky or e.unit == "user"


@dataclass
class GatewayConfig:
    host: str = setting("127.0.0.1", "where the real gateway listens")
    port: int = setting(0, "the real gateway's port (0 = a free port)")
    grpc_port: int = setting(0, "the real gateway's GRPCInferenceService port, with server.grpc (0 = a free port)")
    hop_s: float = setting(0.0, "one-way network delay gateway <-> replica (twin), s")
    version_weights: list[float] = setting([], "traffic share per version (empty: by replica count)")
    sticky: bool = setting(False, "a user always lands on the same version (A/B assignment by user id)")
    connections_per_replica: int = setting(256, "keep-alive connections the real gateway may hold open to each replica")
    upstream_timeout_s: float = setting(0.0, "the real gateway gives up on a replica's answer after this (HTTP 504), s; 0 = timeout_s, or 60 s when that is 0 too")
    shadow_version: str = setting("", "mirror traffic to this version: copies measured and recorded (shadow=true), never returned to the client; it must have weight 0 in gateway.version_weights (empty: no shadow)")
    shadow_percent: float = setting(0.0, "share of primary requests copied to gateway.shadow_version, 0..100 (a request already served by that version is not copied)")
    shadow_max_in_flight: int = setting(128, "shadow copies in flight at once; a copy beyond it is dropped and counted, so a slow shadow never takes the gateway down")


@dataclass
class HealthConfig:
    probe_interval_s: float = setting(0.5, "the gateway probes each replica's readiness this often (the twin simulates the probes), s")
    probe_timeout_s: float = setting(1.0, "a probe unanswered by then counts as failed, s")
    failure_threshold: int = setting(2, "failed probes or requests in a row that eject a replica (a refused connection ejects at once)")
    success_threshold: int = setting(1, "passing probes in a row that bring an ejected replica back")
    retries: int = setting(1, "times the gateway retries a request on another replica when nothing came back (refused, or the connection dropped)")


@dataclass
class RolloutConfig:
    """A rollout of `canary` (the new version) over `stable`. canary and linear move traffic
    between the replicas that exist; blue_green, rolling and recreate replace replicas, so their
    runs start with every replica on stable (`sim.policy.membership.initial_versions`)."""

    strategy: str = setting("none", "none | canary (Argo Rollouts steps) | linear (Flagger: step_weight up to max_weight) | blue_green | rolling (Kubernetes RollingUpdate) | recreate (stop all, start all); blue_green, rolling and recreate start with every replica on rollout.stable")
    steps: list[Any] = setting([], "canary: steps in order, each {set_weight: PERCENT} or {pause_s: S} (pause_s: inf = until promoted); none after a set_weight of 100")
    stable: str = setting("", "the version traffic returns to on abort (empty: the first of model.versions)")
    canary: str = setting("", "the version rolled out, whatever the strategy (empty: the second of model.versions)")
    interval_s: float = setting(1.0, "the controller's tick: analysis and step interval; each analysis reads the last window_s, s")
    analysis: bool = setting(True, "analyse the new version's window against stable's every interval_s (false: canary and linear only step, blue_green/rolling/recreate only check readiness)")
    max_error_rate: float = setting(0.01, "analysis: a canary window with a larger error fraction fails")
    max_p99_ratio: float = setting(1.5, "analysis: a canary window whose p99 exceeds stable's p99 times this fails")
    max_accuracy_drop: float = setting(0.05, "analysis: a canary window whose accuracy is below stable's by more than this fails (when both windows hold min_requests judged answers)")
    min_requests: int = setting(20, "analysis: a canary window with fewer answers is inconclusive (neither passes nor fails)")
    failure_limit: int = setting(0, "canary, blue_green, rolling, recreate: failed windows tolerated; one more rolls back")
    step_weight: float = setting(10.0, "linear: percent of traffic moved to the canary per passing check")
    max_weight: float = setting(50.0, "linear: the canary's percent at which a passing check promotes")
    threshold: int = setting(2, "linear: failed checks that roll back (Flagger's threshold)")
    scale_down_delay_s: float = setting(30.0, "blue_green: the old (blue) set is kept this long after the switch, so a rollback within it is instant, s")
    max_surge: int = setting(1, "rolling: replicas allowed above `replicas` while updating (Kubernetes maxSurge)")
    max_unavailable: int = setting(0, "rolling: ready replicas allowed below `replicas` while updating (Kubernetes maxUnavailable)")
    replica_start_s: float = setting(0.6, "blue_green, rolling, recreate: the twin's time from starting a replica to its answering ready (a real one took 0.41-0.51 s idle, 0.6 s under load on a 2-core host), s")


EXPERIMENT_UNITS = ("request", "user")
# metric -> (kind, higher is better, default minimum detectable effect in its unit)
EXPERIMENT_METRICS: dict[str, tuple[str, bool, float]] = {
    "accuracy": ("proportion", True, 0.02),  # right answers / judged ok answers
    "error_rate": ("proportion", False, 0.01),  # requests not ok / requests
    "latency_s": ("mean", False, 0.001),  # mean latency of the ok answers, s
}
GUARDRAIL_METRICS = ("p99_s", "error_rate")


def metric_unit(metric: str) -> str:
    """How an experiment's metric or guardrail is measured: "fraction" (a proportion: accuracy,
    error rate), "s" (a time: latency_s, p99_s), or "" (unknown). The one place the verdict, the
    guardrail lines and the report learn it."""
    if metric in EXPERIMENT_METRICS and EXPERIMENT_METRICS[metric][0] == "proportion":
        return "fraction"
    return "s" if metric in ("latency_s", "p99_s") else ""


@dataclass(frozen=True)
class ExperimentMetric:
    """One metric an experiment compares, and the smallest effect it is designed to detect (in
    the metric's own unit: proportion points, or seconds)."""

    name: str
    mde: float

    @property
    def kind(self) -> str:
        return EXPERIMENT_METRICS[self.name][0]

    @property
    def higher_is_better(self) -> bool:
        return EXPERIMENT_METRICS[self.name][1]


@dataclass(frozen=True)
class Guardrail:
    """A limit the treatment must hold in every window: its p99 (s) or error rate at most `max`."""

    metric: str
    max: float


@dataclass
class ExperimentConfig:
    """An A/B test of two model versions: how traffic is split, what is compared, how it is
    decided. The split is the router's (`gateway.version_weights`, sticky by user hash), set from
    the allocation; the decisions are a controller's, ticked every window_s like a rollout's."""

    variants: list[str] = setting([], "A/B test: the two model versions compared, control first, e.g. [\"1\",\"2\"] (empty: no experiment)")
    allocation: list[float] = setting([], "share of the assignment units per variant, summing to 1 (empty: equal shares)")
    unit: str = setting("request", "request | user: what is assigned to a variant (user: by a hash of the user id, so a user never switches variant)")
    metrics: list[Any] = setting(["accuracy", "latency_s"], "compared metrics, the first primary (its decision can stop the experiment); each a name or "
                                                            "{metric: NAME, mde: X}: accuracy (right answers, higher better; MDE default 0.02), "
                                                            "error_rate (requests not ok, lower better; 0.01), latency_s (mean of ok answers, lower better; 0.001 s)")
    guardrails: list[Any] = setting([], "limits the treatment must hold in every window: each {metric: p99_s | error_rate, max: X}")
    alpha: float = setting(0.05, "significance level of every test (two-sided)")
    power: float = setting(0.8, "the design's power at the MDE: sets the sample size and duration printed before the run")
    stop_early: bool = setting(True, "sequential design: a look every window_s with always-valid p-values (mixture SPRT); the experiment stops, "
                                     "all traffic back on control, at the primary metric's decision or a guardrail breach. false: fixed horizon, "
                                     "decided by the fixed tests (z, Welch) at the run's end")
    min_requests: int = setting(20, "a guardrail is judged on a window with at least this many treatment requests")


@dataclass
class ServerConfig:
    host: str = setting("127.0.0.1", "where the real model servers listen")
    token: str = setting("", "bearer token for the control endpoints (empty: generated per run)")
    max_body_bytes: int = setting(1_048_576, "largest request body the gateway and servers accept (larger: HTTP 413), bytes")
    grpc: bool = setting(True, "the gateway and every replica also serve the KServe v2 / Triton GRPCInferenceService beside REST (replicas on free ports)")
    redis_url: str = setting("", "the Redis of the feature store (features.store=redis) and the async queue (pattern=async): empty = a private redis-server the launcher starts for the run (127.0.0.1, a generated password); else redis://HOST:PORT/DB, its password (if any) in $SERVELAB_REDIS_PASSWORD")


@dataclass
class LoadgenConfig:
    workers: int = setting(1, "Locust worker processes (> 1: distributed mode, one master)")
    max_lag_p99_s: float = setting(0.005, "a run whose send lag p99 passes this is flagged invalid (exit 3), s")
    dispatch: str = setting("dispatcher", "dispatcher (one greenlet sleeps to each send) | timers (a timer per request)")
    protocol: str = setting("http", "how the load reaches the gateway: http (OIP REST, JSON) | grpc (GRPCInferenceService ModelInfer; needs server.grpc)")
    remote_workers: int = setting(0, "of loadgen.workers, how many you start yourself on other hosts (see README)")
    master_bind_host: str = setting("127.0.0.1", "where the Locust master listens for workers")
    max_connections: int = setting(2000, "open connections per worker: a request waits for a free one only beyond this many in flight")
    start_lead_s: float = setting(0.5, "the schedule's time 0 is this long after the master says go, so every worker hears it in time, s")
    drain_s: float = setting(30.0, "with no client deadline (timeout_s=0): how long workers wait for the last answers after the last send, s")
    start_timeout_s: float = setting(60.0, "the load must start within this (Locust imports, workers connect), else the run stops, s")
    remote_start_timeout_s: float = setting(600.0, "loadgen.start_timeout_s when loadgen.remote_workers > 0 (started by hand elsewhere), s")
    stop_grace_s: float = setting(10.0, "a stopped worker has this long to write its records before it is killed, s")
    nice: int = setting(-10, "the generator's CPU priority, -20..19 (lower: it preempts the stack sooner, less send lag; without the privilege it stays 0)")
    spin_s: float = setting(0.0001, "a worker sleeps until this long before a send due >= 10x this away and spins the rest, reading answers meanwhile (a late wake-up is send lag; 0 = never; dispatch=timers never spins), s")


@dataclass
class FeatureConfig:
    """The online feature store (issue 14): a request names an entity (its user id, or
    parameters.entity_id) whose feature row is fetched before inference, one round trip per batch
    through a per-replica cache (sim/policy/features.py; real/features/)."""

    store: str = setting("none", "none (requests carry their input) | embedded (in the replica's process, no server) | redis (a private redis-server the launcher starts: loopback, a generated password)")
    entities: int = setting(1000, "rows of the offline feature table (entity ids 0..entities-1, one held-out digits image each); a request for another id is a missing entity")
    cache_size: int = setting(256, "rows each replica's cache keeps (LRU); 0 = no cache, every lookup goes to the store")
    cache_ttl_s: float = setting(10.0, "a cached row is used for this long after its fetch, then fetched again (inf = until evicted), s")
    timeout_s: float = setting(0.05, "a batch's lookup unanswered by then fails every miss in it (timeout), and the fallback decides, s")
    fallback: str = setting("default", "a missing entity or a failed lookup: default (serve the declared default row, marked fallback, never judged) | error (the request fails: 404 missing entity, 503 store unavailable)")
    seed: int = setting(0, "which held-out image each entity gets (the offline table's permutation)")
    round_trip_s: float = setting(0.0002, "the twin's time of a batch's store round trip without a profile (a profile's measured lookups replace it), s")
    per_miss_s: float = setting(0.000008, "the twin's extra round-trip time per missed row fetched, without a profile, s")


@dataclass
class AsyncJobsConfig:
    """Asynchronous serving (pattern=async): submit, then poll for the result (sim/policy/async_jobs.py).
    Submissions go to a Redis stream; workers in a consumer group pull batches and run the model."""

    workers: int = setting(2, "worker processes pulling batches from the queue (each runs the model: a replica each, for the cost)")
    batch_size: int = setting(16, "most entries a worker pulls (and runs as one batch) at once; it takes what is there, never waits for more")
    max_pending: int = setting(10_000, "submissions queued or running at most; one more is refused (503 + Retry-After)")
    retry_after_s: float = setting(1.0, "the Retry-After a refused submission is told, s")
    result_ttl_s: float = setting(60.0, "a result is kept this long after it is ready; a poll later is 404, s")
    claim_idle_s: float = setting(5.0, "an entry a worker took and has not acknowledged for this long is claimed by another worker (a crashed worker's work is not lost), s")
    poll_first_s: float = setting(0.05, "a client polls first this long after its 202, s")
    poll_backoff: float = setting(2.0, "each next poll comes this many times the previous interval later (1 = fixed interval)")
    poll_max_interval_s: float = setting(1.0, "the poll interval's cap, s")
    callback: bool = setting(False, "clients give a loopback callback URL and are told when the result is ready, instead of polling")
    batch_overhead_s: float = setting(0.001, "the twin's Redis round trip of an async worker (sim/async_serving.py): after every batch, the results' write and ack (a poll sees a result only then); before it, for a worker woken from idle, its blocked read (queue time); the real worker's queue_s at a light load measures it, s")


@dataclass
class BatchJobConfig:
    """mode=batch: offline scoring of a dataset in chunks (scenarios/batch.py; the twin: sim/batch_job.py)."""

    input: str = setting("", "a Parquet file with numeric columns x0..x63 (the 64 pixels, 0..16), one row per prediction; empty: the digits held-out set repeated to batch.rows rows, written to out_dir/input.parquet")
    rows: int = setting(100_000, "rows of the generated input (batch.input empty)")
    chunk_rows: int = setting(10_000, "rows per chunk: a worker's unit of work and of output (out_dir/predictions/chunk-NNNNN.parquet)")
    batch_size: int = setting(128, "rows per model call")
    parallelism: int = setting(2, "worker processes, each scoring whole chunks (a replica each, for the cost)")
    price_per_replica_hour: float = setting(1.0, "what a worker (replica) costs per hour: sets the cost per 1,000 predictions")
    resume: bool = setting(True, "rerun into the same out_dir: skip the chunks already written (false: rescore all)")
    search: bool = setting(True, "the twin also predicts a grid of batch sizes x parallelism and names the fastest and the cheapest")


@dataclass
class ScenarioConfig:
    """What the twin needs to run a scenario; the CLI's config extends it."""

    seed: int = setting(0, "one seed: independent random streams for arrivals, users, service, routing, overheads")
    duration_s: float = setting(10.0, "requests are sent in [0, duration_s), s")
    warmup_s: float = setting(1.0, "summaries count the requests sent at or after warmup_s, s")
    replicas: int = setting(2, "model-server replicas")
    concurrency: int = setting(1, "model instances per replica sharing its queue (Triton's instance count)")
    timeout_s: float = setting(5.0, "client deadline: unanswered by then = timeout (0 = none), s")
    window_s: float = setting(1.0, "the controllers' analysis window (what a rollout analysis reads; rollout.parquet's window), and the "
                                    "time series' unless timeseries_window_s says otherwise, s")
    timeseries_window_s: float = setting(0.0, "time-series window (timeseries.parquet, its figures), s; 0 = auto: window_s, "
                                              "or on a long horizon the smallest window_s x 1, 2, 5 x 10^k giving <= 1,000 "
                                              "windows; the controllers keep window_s")
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    lb: LbConfig = field(default_factory=LbConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    overhead: OverheadConfig = field(default_factory=OverheadConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    loadgen: LoadgenConfig = field(default_factory=LoadgenConfig)
    pattern: str = setting("sync", "sync (real time: the client waits for the answer) | async (submit gets 202 and an id, the client polls; async_jobs.*)")
    features: FeatureConfig = field(default_factory=FeatureConfig)
    async_jobs: AsyncJobsConfig = field(default_factory=AsyncJobsConfig)


@dataclass(frozen=True)
class KeyHelp:
    """One config key as --help and README show it."""

    key: str  # dotted, as typed on the command line
    default: Any
    help: str


def schema_help(schema: type, prefix: str = "") -> list[KeyHelp]:
    """Every leaf key of a schema dataclass, in declaration order, with its default and help."""
    out: list[KeyHelp] = []
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            out.extend(schema_help(type(default), f"{prefix}{f.name}."))
        else:
            out.append(KeyHelp(f"{prefix}{f.name}", default, str(f.metadata.get("help", ""))))
    return out


def format_value(value: Any) -> str:
    """A value as a user types it on the command line (lists as JSON, "" for empty)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


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


def _finite(value: float, key: str, bound: str) -> None:
    """inf and nan compare in surprising ways (inf > 0 holds): name them before the range."""
    _require(math.isfinite(value), key, f"must be a finite number {bound}, got {value}")


def _positive(value: float, key: str) -> None:
    _finite(value, key, "> 0")
    _require(value > 0, key, f"must be > 0, got {value}")


def _non_negative(value: float, key: str) -> None:
    _finite(value, key, ">= 0")
    _require(value >= 0, key, f"must be >= 0, got {value}")


def _weights(values: list[float], key: str, count: int, per: str) -> None:
    _require(len(values) == count, key, f"needs one weight per {per} ({count}), got {len(values)}")
    _require(all(math.isfinite(x) and x >= 0 for x in values) and sum(values) > 0, key,
             f"must be finite numbers >= 0 with a positive sum, got {list(values)}")


def _probability(value: float, key: str) -> None:
    _require(0 <= value <= 1, key, f"must be a probability in [0, 1], got {value}")


def _validate_versions(model: ModelConfig, replicas: int, every_version_placed: bool = True) -> None:
    """Versions are URL path segments (/v2/models/NAME/versions/V) and keys of per-version
    figures: each must be distinct and need no escaping. The numpy backend serves real models,
    whose accuracy is measured, not set, and which exist only under their own names."""
    from sim.policy.versions import NUMPY_DIGITS_ACCURACY

    specs = version_specs(model)
    versions = [v.name for v in specs]
    _require(len(versions) >= 1, "model.versions", "needs at least one version")
    for v in specs:
        _positive(v.service_factor, f"model.versions[{v.name}].service_factor")
        _probability(v.error_rate, f"model.versions[{v.name}].error_rate")
        if v.accuracy is not None:
            _probability(v.accuracy, f"model.versions[{v.name}].accuracy")
            _require(model.backend != "numpy", f"model.versions[{v.name}].accuracy",
                     "the numpy backend's accuracy is its real model's, measured on labelled digits; "
                     "drop accuracy, or use model.backend=emulated")
        if model.backend == "numpy":
            _require(v.name in NUMPY_DIGITS_ACCURACY, "model.versions",
                     f"the numpy backend serves the digits models {', '.join(NUMPY_DIGITS_ACCURACY)}, got {v.name!r}")
    seen: set[str] = set()
    for v in versions:
        _require(re.fullmatch(VERSION_PATTERN, v) is not None, "model.versions",
                 f"{v!r} cannot be a URL path segment; use {VERSION_PATTERN} (a letter or digit, then letters, digits, '_', '.', '-')")
        _require(v not in seen, "model.versions", f"{v!r} appears twice in {list(versions)}; versions must be distinct")
        seen.add(v)
    _require(len(versions) <= replicas or not every_version_placed, "model.versions",
             f"{len(versions)} versions need at least as many replicas, got replicas={replicas}")


def _validate_faults(cfg: ScenarioConfig) -> None:
    """A fault schedule that could not happen: a time outside the run, a probability outside
    [0, 1], a slowdown the backend cannot apply, an accuracy to drop that nobody judges."""
    for v in version_specs(cfg.model):
        for i, f in enumerate(v.faults):
            key = f"model.versions[{v.name}].faults[{i}]"
            _non_negative(f.at_s, f"{key}.at_s")
            _require(f.at_s < cfg.duration_s, f"{key}.at_s", f"{f.at_s:g} is not before the run ends (duration_s={cfg.duration_s:g}): it would never apply")
            if f.slowdown is not None:
                _positive(f.slowdown, f"{key}.slowdown")
                _require(cfg.model.backend != "numpy" or f.slowdown == 1, f"{key}.slowdown",
                         "the numpy backend computes at the CPU's own speed; a slowdown needs model.backend=emulated")
            if f.error_rate is not None:
                _probability(f.error_rate, f"{key}.error_rate")
            if f.accuracy_drop is not None:
                _probability(f.accuracy_drop, f"{key}.accuracy_drop")
                _require(cfg.model.backend == "numpy" or v.accuracy is not None, f"{key}.accuracy_drop",
                         f"version {v.name} has no accuracy to drop: its emulated answers are not judged; "
                         f"set model.versions[{v.name}].accuracy")


def _validate_arrival(a: ArrivalConfig) -> None:
    _choice(a.kind, "arrival.kind", ARRIVAL_KINDS)
    _require(a.users >= 1, "arrival.users", f"must be >= 1, got {a.users}")
    _require(math.isfinite(a.user_zipf_s) and a.user_zipf_s >= 0, "arrival.user_zipf_s", f"must be >= 0 (0 = uniform), got {a.user_zipf_s}")
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


def _validate_service(cfg: ScenarioConfig) -> None:
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
    _choice(cfg.overhead.model, "overhead.model", OVERHEAD_MODELS)


def _validate_shadow(cfg: ScenarioConfig) -> None:
    """A shadow version serves copies only: at the start it takes no primary traffic (a controller
    may give it weight later; a request it then serves is not copied to it again). It needs a
    replica at the start (`initial_versions`), except the candidate of a blue_green or rolling
    rollout: those start every replica on stable and then start the candidate's beside it, so
    copies due before its first replica is ready are dropped (counted), and the rest measure it
    before (blue_green: before the switch) or beside its primary traffic. recreate never runs
    stable and the candidate side by side: no copy could ever be made."""
    g = cfg.gateway
    _finite(g.shadow_percent, "gateway.shadow_percent", "in [0, 100]")
    _require(0 <= g.shadow_percent <= 100, "gateway.shadow_percent", f"must be in [0, 100], got {g.shadow_percent}")
    _require(g.shadow_max_in_flight >= 1, "gateway.shadow_max_in_flight", f"must be >= 1, got {g.shadow_max_in_flight}")
    if not g.shadow_version:
        _require(g.shadow_percent == 0, "gateway.shadow_percent",
                 f"{g.shadow_percent:g}% of requests mirrored to no version; set gateway.shadow_version too")
        return
    names = version_names(cfg.model)
    _require(g.shadow_version in names, "gateway.shadow_version", f"{g.shadow_version!r} is not one of model.versions {names}")
    _require(len(names) >= 2, "gateway.shadow_version",
             f"{g.shadow_version!r} is the only version; a shadow needs another version to serve the primary traffic")
    v = names.index(g.shadow_version)
    from sim.policy.membership import initial_versions

    strategy = cfg.rollout.strategy
    stable, candidate = rollout_versions(cfg)
    replaces = strategy in REPLICA_STRATEGIES
    if replaces and stable not in names:
        return  # _validate_rollout names rollout.stable
    if v not in initial_versions(cfg):
        where = f"rollout.strategy={strategy} starts every replica on stable {stable!r}" if replaces else f"replicas={cfg.replicas}"
        _require(replaces and g.shadow_version == candidate, "gateway.shadow_version",
                 f"{g.shadow_version!r} has no replica to take the copies ({where})")
        _require(strategy != "recreate", "gateway.shadow_version",
                 f"{g.shadow_version!r} is the candidate of rollout.strategy=recreate, which stops every stable replica "
                 "before it starts one of the candidate: no copy could ever reach it; use blue_green or rolling")
        if not g.version_weights:  # by replica count it gets nothing at the start, and the rollout sets the weights
            return
    example = [0 if k == v else 1 for k in range(len(names))]
    _require(bool(g.version_weights), "gateway.version_weights",
             f"empty (traffic by replica count) would send primary traffic to the shadow version {g.shadow_version!r}; "
             f"give it weight 0, e.g. gateway.version_weights={format_value(example)}")
    _require(g.version_weights[v] == 0, "gateway.version_weights",
             f"the shadow version {g.shadow_version!r} must start with weight 0 (it serves copies only), got {list(g.version_weights)}")


def _validate_routing(cfg: ScenarioConfig) -> None:
    from sim.policy.lb import LB_POLICIES

    _choice(cfg.lb.policy, "lb.policy", sorted(LB_POLICIES))
    if cfg.lb.policy == "weighted":
        _weights(cfg.lb.weights, "lb.weights", cfg.replicas, "replica")
    else:  # silently ignoring them would run a different experiment than the one asked for
        _require(not cfg.lb.weights, "lb.weights",
                 f"only lb.policy=weighted reads weights, got lb.policy={cfg.lb.policy} with {list(cfg.lb.weights)}; "
                 "drop lb.weights or set lb.policy=weighted")
    # replica r starts on versions[r % n], except under a rollout that starts them all on stable
    _validate_versions(cfg.model, cfg.replicas, every_version_placed=cfg.rollout.strategy not in REPLICA_STRATEGIES)
    if cfg.gateway.version_weights:
        _weights(cfg.gateway.version_weights, "gateway.version_weights", len(cfg.model.versions), "version")
    _non_negative(cfg.gateway.hop_s, "gateway.hop_s")
    _validate_shadow(cfg)
    h = cfg.health
    _positive(h.probe_interval_s, "health.probe_interval_s")
    _positive(h.probe_timeout_s, "health.probe_timeout_s")
    _require(h.failure_threshold >= 1, "health.failure_threshold", f"must be >= 1, got {h.failure_threshold}")
    _require(h.success_threshold >= 1, "health.success_threshold", f"must be >= 1, got {h.success_threshold}")
    _require(h.retries >= 0, "health.retries", f"must be >= 0, got {h.retries}")


def _validate_loadgen_timing(lg: LoadgenConfig) -> None:
    _require(lg.max_connections >= 1, "loadgen.max_connections", f"must be >= 1, got {lg.max_connections}")
    for name in ("start_lead_s", "drain_s", "start_timeout_s", "remote_start_timeout_s", "stop_grace_s"):
        _positive(getattr(lg, name), f"loadgen.{name}")
    _require(-20 <= lg.nice <= 19, "loadgen.nice", f"must be in [-20, 19], got {lg.nice}")
    _require(0 <= lg.spin_s <= 0.01, "loadgen.spin_s", f"must be in [0, 0.01] (spinning longer only burns the stack's CPU), got {lg.spin_s}")


ROLLOUT_STRATEGIES = ("none", "canary", "linear", "blue_green", "rolling", "recreate")
# the strategies that replace replicas rather than move traffic between the ones there are:
# their runs start with every replica on rollout.stable
REPLICA_STRATEGIES = ("blue_green", "rolling", "recreate")
# the rollout.* keys only some strategies read (the others read every strategy's, or the analysis')
ANALYSIS_KEYS = ("max_error_rate", "max_p99_ratio", "max_accuracy_drop", "min_requests")
STRATEGY_KEYS = {
    "steps": ("canary",),
    "failure_limit": ("canary", "blue_green", "rolling", "recreate"),
    "step_weight": ("linear",),
    "max_weight": ("linear",),
    "threshold": ("linear",),
    "scale_down_delay_s": ("blue_green",),
    "max_surge": ("rolling",),
    "max_unavailable": ("rolling",),
    "replica_start_s": REPLICA_STRATEGIES,
}


def _validate_rollout(cfg: ScenarioConfig) -> None:
    r = cfg.rollout
    _choice(r.strategy, "rollout.strategy", ROLLOUT_STRATEGIES)
    if r.strategy == "none":
        _require(not r.steps, "rollout.steps", "rollout.strategy=none ignores steps; set rollout.strategy=canary or drop them")
        return
    names = version_names(cfg.model)
    _require(len(names) >= 2, "model.versions", f"rollout.strategy={r.strategy} needs two versions (stable and canary), got {names}")
    for key, value in (("rollout.stable", r.stable), ("rollout.canary", r.canary)):
        _require(not value or value in names, key, f"{value!r} is not one of model.versions {names}")
    stable, canary = rollout_versions(cfg)
    _require(stable != canary, "rollout.canary", "must differ from rollout.stable")
    if r.strategy == "canary":
        _require(bool(r.steps), "rollout.steps", "a canary needs steps, e.g. [{set_weight:20},{pause_s:5},{set_weight:50},{pause_s:5}]")
        for i, step in enumerate(r.steps):
            _require(isinstance(step, dict) and len(step) == 1 and next(iter(step)) in ("set_weight", "pause_s"), "rollout.steps",
                     f"step {i} must be {{set_weight: PERCENT}} or {{pause_s: S}}, got {step!r}")
            (name, value), = step.items()
            _require(isinstance(value, (int, float)) and not isinstance(value, bool), "rollout.steps", f"step {i}: {name} must be a number, got {value!r}")
    else:
        _require(not r.steps, "rollout.steps", f"only rollout.strategy=canary reads steps, got rollout.strategy={r.strategy}; drop rollout.steps")
    _positive(r.interval_s, "rollout.interval_s")
    _require(0 <= r.max_error_rate <= 1, "rollout.max_error_rate", f"must be in [0, 1], got {r.max_error_rate}")
    _positive(r.max_p99_ratio, "rollout.max_p99_ratio")
    _require(0 <= r.max_accuracy_drop <= 1, "rollout.max_accuracy_drop", f"must be in [0, 1], got {r.max_accuracy_drop}")
    _require(r.min_requests >= 1, "rollout.min_requests", f"must be >= 1, got {r.min_requests}")
    _require(r.failure_limit >= 0, "rollout.failure_limit", f"must be >= 0, got {r.failure_limit}")
    if r.strategy == "linear":
        _finite(r.max_weight, "rollout.max_weight", "in (0, 100]")
        _require(0 < r.max_weight <= 100, "rollout.max_weight", f"must be a percent in (0, 100], got {r.max_weight}")
        _finite(r.step_weight, "rollout.step_weight", "in (0, rollout.max_weight]")
        _require(0 < r.step_weight <= r.max_weight, "rollout.step_weight",
                 f"must be in (0, rollout.max_weight={r.max_weight:g}] (a step beyond it would overshoot), got {r.step_weight}")
        _require(r.threshold >= 1, "rollout.threshold", f"must be >= 1 (failed checks that roll back), got {r.threshold}")
    if r.strategy == "blue_green":
        _non_negative(r.scale_down_delay_s, "rollout.scale_down_delay_s")
    if r.strategy == "rolling":
        _require(r.max_surge >= 0, "rollout.max_surge", f"must be >= 0, got {r.max_surge}")
        _require(0 <= r.max_unavailable <= cfg.replicas, "rollout.max_unavailable",
                 f"must be in [0, replicas={cfg.replicas}], got {r.max_unavailable}")
        _require(r.max_surge + r.max_unavailable > 0, "rollout.max_surge",
                 "rollout.max_surge and rollout.max_unavailable cannot both be 0: no replica could ever be replaced")
    if r.strategy in REPLICA_STRATEGIES:
        _non_negative(r.replica_start_s, "rollout.replica_start_s")
        extra = [name for name, w in zip(names, cfg.gateway.version_weights) if w > 0 and name != stable]
        _require(not extra, "gateway.version_weights",
                 f"rollout.strategy={r.strategy} starts with every replica on stable ({stable}); weights on {extra} have no replica to go to")
        _require(cfg.lb.policy != "weighted", "lb.policy",
                 f"lb.policy=weighted weighs replicas 0..{cfg.replicas - 1}; rollout.strategy={r.strategy} starts replicas that have no weight")
    from sim.policy.rollout import controller_from_config  # the specs check what is left (step ranges, order)

    try:
        controller_from_config(cfg)
    except ValueError as exc:
        raise ConfigError("rollout.steps" if r.strategy == "canary" else "rollout.strategy", str(exc)) from exc


def _validate_rollout_explicit(cfg: ScenarioConfig, explicit: set[str]) -> None:
    """rollout.* keys the user typed that this strategy would ignore."""
    r = cfg.rollout
    for key in sorted(explicit):
        if not key.startswith("rollout.") or key == "rollout.strategy":
            continue
        name = key.removeprefix("rollout.")
        _require(r.strategy != "none", key, f"rollout.strategy=none ignores {key}; set rollout.strategy")
        readers = STRATEGY_KEYS.get(name)
        _require(readers is None or r.strategy in readers, key,
                 f"rollout.strategy={r.strategy} ignores {key} (read by {', '.join(readers or ())}); drop it or change the strategy")
        _require(r.analysis or name not in ANALYSIS_KEYS + ("failure_limit", "threshold"), key,
                 f"rollout.analysis=false ignores {key}; drop it or set rollout.analysis=true")


def validate(cfg: ScenarioConfig) -> None:
    """Raise ConfigError for the first value that cannot run. Called before anything starts.

    Pure: reads no files (the CLI's pre-flight checks trace and profile files on top)."""
    _non_negative(cfg.seed, "seed")
    _positive(cfg.duration_s, "duration_s")
    _non_negative(cfg.warmup_s, "warmup_s")
    _require(cfg.warmup_s < cfg.duration_s, "warmup_s", f"must be < duration_s ({cfg.duration_s}), got {cfg.warmup_s}")
    _require(cfg.replicas >= 1, "replicas", f"must be >= 1, got {cfg.replicas}")
    _require(cfg.concurrency >= 1, "concurrency", f"must be >= 1, got {cfg.concurrency}")
    _non_negative(cfg.timeout_s, "timeout_s")
    _positive(cfg.window_s, "window_s")
    _non_negative(cfg.timeseries_window_s, "timeseries_window_s")
    _validate_arrival(cfg.arrival)
    _validate_service(cfg)
    _validate_routing(cfg)
    _validate_faults(cfg)
    _validate_rollout(cfg)
    _validate_experiment(cfg)
    _validate_features(cfg.features)
    validate_async(cfg)

    b = cfg.batching
    _require(b.max_batch_size >= 1, "batching.max_batch_size", f"must be >= 1, got {b.max_batch_size}")
    _non_negative(b.max_queue_delay_s, "batching.max_queue_delay_s")
    _require(b.max_queue_size >= 0, "batching.max_queue_size", f"must be >= 0 (0 = unbounded), got {b.max_queue_size}")

    _choice(cfg.model.backend, "model.backend", BACKENDS)
    _require(0 <= cfg.gateway.port < 65536, "gateway.port", f"must be in [0, 65535], got {cfg.gateway.port}")
    _require(cfg.gateway.connections_per_replica >= 1, "gateway.connections_per_replica",
             f"must be >= 1, got {cfg.gateway.connections_per_replica}")
    _non_negative(cfg.gateway.upstream_timeout_s, "gateway.upstream_timeout_s")
    _require(cfg.server.max_body_bytes >= 1, "server.max_body_bytes", f"must be >= 1, got {cfg.server.max_body_bytes}")
    lg = cfg.loadgen
    _require(lg.workers >= 1, "loadgen.workers", f"must be >= 1, got {lg.workers}")
    _choice(lg.dispatch, "loadgen.dispatch", LOADGEN_DISPATCH)
    _choice(lg.protocol, "loadgen.protocol", LOADGEN_PROTOCOLS)
    _require(lg.protocol != "grpc" or cfg.server.grpc, "loadgen.protocol", "grpc needs server.grpc=true (the gateway's gRPC port)")
    _require(0 <= cfg.gateway.grpc_port < 65536, "gateway.grpc_port", f"must be in [0, 65535], got {cfg.gateway.grpc_port}")
    _require(0 <= lg.remote_workers < lg.workers, "loadgen.remote_workers",
             f"must be in [0, loadgen.workers - 1] ({lg.workers - 1}): the master's host runs one worker at least; got {lg.remote_workers}")
    _positive(cfg.loadgen.max_lag_p99_s, "loadgen.max_lag_p99_s")
    _validate_loadgen_timing(lg)


def _validate_features(f: FeatureConfig) -> None:
    _choice(f.store, "features.store", FEATURE_STORES)
    _require(f.entities >= 1, "features.entities", f"must be >= 1, got {f.entities}")
    _require(f.cache_size >= 0, "features.cache_size", f"must be >= 0 (0 = no cache), got {f.cache_size}")
    _require(f.cache_ttl_s > 0, "features.cache_ttl_s", f"must be > 0 (inf = until evicted), got {f.cache_ttl_s}")
    _positive(f.timeout_s, "features.timeout_s")
    _choice(f.fallback, "features.fallback", FEATURE_FALLBACKS)
    _non_negative(f.round_trip_s, "features.round_trip_s")
    _non_negative(f.per_miss_s, "features.per_miss_s")
    _non_negative(f.seed, "features.seed")


def validate_async(cfg: ScenarioConfig) -> None:
    """async_jobs.*, and with pattern=async what async serving needs of the scenario (the
    patterns preset asks it of its async pattern too)."""
    _choice(cfg.pattern, "pattern", SERVING_PATTERNS)
    a = cfg.async_jobs
    _require(a.workers >= 1, "async_jobs.workers", f"must be >= 1, got {a.workers}")
    _require(a.batch_size >= 1, "async_jobs.batch_size", f"must be >= 1, got {a.batch_size}")
    _require(a.max_pending >= 1, "async_jobs.max_pending", f"must be >= 1, got {a.max_pending}")
    _non_negative(a.retry_after_s, "async_jobs.retry_after_s")
    _positive(a.result_ttl_s, "async_jobs.result_ttl_s")
    _positive(a.claim_idle_s, "async_jobs.claim_idle_s")
    _non_negative(a.batch_overhead_s, "async_jobs.batch_overhead_s")
    _positive(a.poll_first_s, "async_jobs.poll_first_s")
    _require(math.isfinite(a.poll_backoff) and a.poll_backoff >= 1, "async_jobs.poll_backoff", f"must be >= 1 (1 = a fixed interval), got {a.poll_backoff}")
    _require(a.poll_max_interval_s >= a.poll_first_s, "async_jobs.poll_max_interval_s",
             f"must be >= async_jobs.poll_first_s ({a.poll_first_s}), got {a.poll_max_interval_s}")
    if cfg.pattern == "async":
        _require(cfg.arrival.kind != "closed", "pattern", "async serving is driven open loop (a submit does not wait); use an open-loop arrival.kind")
        _require(cfg.loadgen.protocol == "http", "loadgen.protocol", "async serving's submit and result endpoints are REST: use loadgen.protocol=http with pattern=async")
        _require(cfg.rollout.strategy == "none" and not cfg.experiment.variants, "pattern",
                 "async serving runs one version, without a rollout or an experiment; drop rollout.*/experiment.* or use pattern=sync")
        # the workers serve each request on its own input: a refusal, not a run whose lookups never happen
        _require(cfg.features.store == "none", "features.store",
                 f"async serving's workers do no feature lookup; use features.store=none with pattern=async, or pattern=sync "
                 f"(got features.store={cfg.features.store})")


BATCH_MAX_PARALLELISM = 64


def validate_batch_job(b: BatchJobConfig) -> None:
    """mode=batch's numbers (the input file is checked by the CLI's pre-flight, which reads files)."""
    _require(b.rows >= 1, "batch.rows", f"must be >= 1, got {b.rows}")
    _require(b.chunk_rows >= 1, "batch.chunk_rows", f"must be >= 1, got {b.chunk_rows}")
    _require(b.batch_size >= 1, "batch.batch_size", f"must be >= 1, got {b.batch_size}")
    _require(1 <= b.parallelism <= BATCH_MAX_PARALLELISM, "batch.parallelism", f"must be in [1, {BATCH_MAX_PARALLELISM}], got {b.parallelism}")
    _non_negative(b.price_per_replica_hour, "batch.price_per_replica_hour")


def _validate_experiment(cfg: ScenarioConfig) -> None:
    """An experiment that could not run or could not be read: checked before anything starts."""
    e = cfg.experiment
    if not e.variants:
        return
    names = version_names(cfg.model)
    variants = [str(v) for v in e.variants]
    _require(len(variants) == 2, "experiment.variants", f"an experiment compares two variants (control, treatment), got {len(variants)}: {variants}")
    for v in variants:
        _require(v in names, "experiment.variants", f"{v!r} is not one of model.versions {names}")
    _require(variants[0] != variants[1], "experiment.variants", f"control and treatment must be two versions, got {variants[0]!r} twice")
    if e.allocation:
        _require(len(e.allocation) == 2, "experiment.allocation", f"needs one share per variant (2), got {len(e.allocation)}")
        _require(all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x < 1 for x in e.allocation),
                 "experiment.allocation", f"each share must be a number in (0, 1), got {list(e.allocation)}")
        _require(abs(sum(e.allocation) - 1) <= 1e-9, "experiment.allocation", f"must sum to 1, got {sum(e.allocation):g} ({list(e.allocation)})")
    _choice(e.unit, "experiment.unit", EXPERIMENT_UNITS)
    _require(bool(e.metrics), "experiment.metrics", f"needs at least one metric: {', '.join(EXPERIMENT_METRICS)}")
    seen: set[str] = set()
    for i, entry in enumerate(e.metrics):
        if isinstance(entry, str):
            name, mde = entry, None
        else:
            _require(isinstance(entry, dict) and "metric" in entry and set(entry) <= {"metric", "mde"}, "experiment.metrics",
                     f"entry {i} must be a metric name or {{metric: NAME, mde: X}}, got {entry!r}")
            name, mde = str(entry["metric"]), entry.get("mde")
        _choice(name, "experiment.metrics", list(EXPERIMENT_METRICS))
        _require(name not in seen, "experiment.metrics", f"{name} appears twice")
        seen.add(name)
        if mde is not None:
            _require(isinstance(mde, (int, float)) and not isinstance(mde, bool) and math.isfinite(mde) and mde > 0, "experiment.metrics",
                     f"{name}: mde must be a number > 0 (the smallest effect worth detecting), got {mde!r}")
            _require(EXPERIMENT_METRICS[name][0] != "proportion" or mde < 1, "experiment.metrics",
                     f"{name}: mde is a difference of proportions, so < 1, got {mde!r}")
        if name == "accuracy" and cfg.model.backend == "emulated":
            unjudged = [v.name for v in version_specs(cfg.model) if v.name in variants and v.accuracy is None]
            _require(not unjudged, "experiment.metrics",
                     f"accuracy needs judged answers, but the emulated backend's version(s) {unjudged} have no accuracy; "
                     f"set model.versions[NAME].accuracy or drop the metric")
    for i, g in enumerate(e.guardrails):
        _require(isinstance(g, dict) and set(g) == {"metric", "max"}, "experiment.guardrails",
                 f"entry {i} must be {{metric: {' | '.join(GUARDRAIL_METRICS)}, max: X}}, got {g!r}")
        _choice(str(g["metric"]), "experiment.guardrails", GUARDRAIL_METRICS)
        limit = g["max"]
        _require(isinstance(limit, (int, float)) and not isinstance(limit, bool) and math.isfinite(limit) and limit > 0,
                 "experiment.guardrails", f"{g['metric']}: max must be a number > 0, got {limit!r}")
        _require(g["metric"] != "error_rate" or limit < 1, "experiment.guardrails", f"error_rate: max must be < 1, got {limit!r}")
    for key, value in (("experiment.alpha", e.alpha), ("experiment.power", e.power)):
        _require(isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1, key, f"must be in (0, 1), got {value}")
    _require(e.min_requests >= 1, "experiment.min_requests", f"must be >= 1, got {e.min_requests}")
    _require(cfg.rollout.strategy == "none", "rollout.strategy",
             f"an experiment and a rollout would both set the traffic split; run one at a time (rollout.strategy=none, or experiment.variants=[])")
    _require(not cfg.gateway.version_weights, "gateway.version_weights",
             "experiment.allocation sets the split between the variants (every other version gets none); drop gateway.version_weights")
    _require(not cfg.gateway.shadow_version, "gateway.shadow_version", "an experiment's variants take all the traffic; drop the shadow")


def validate_explicit(cfg: ScenarioConfig, explicit: set[str]) -> None:
    """Keys the user typed that this config would silently ignore.

    Only the command line knows what was typed (arrival.rate has a default of 200, so its value
    cannot tell): the CLI passes the keys of the user's overrides."""
    kind = cfg.arrival.kind
    if "arrival.rate" in explicit and kind in RATE_SET_BY:
        raise ConfigError("arrival.rate", f"arrival.kind={kind} ignores arrival.rate; its rate is set by {RATE_SET_BY[kind]}")
    _validate_rollout_explicit(cfg, explicit)
    if not cfg.experiment.variants:
        typed = sorted(k for k in explicit if k.startswith("experiment.") and k != "experiment.variants")
        _require(not typed, typed[0] if typed else "", f"experiment.variants is empty (no experiment), so {typed[0] if typed else ''} "
                 "is ignored; set experiment.variants=[CONTROL,TREATMENT]")


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
