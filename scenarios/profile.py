"""mode=profile: measure the real stack on this machine, for the twin to replay.

Two measurements, each on a freshly launched stack of the scenario's backend and model:
- device (model) time per batch size 1 .. max_batch_size: requests of B rows sent one at a time
  straight to a single replica with no batching delay, so each is one batch of exactly B; the
  replica reports the batch's service time. Sizes are interleaved so drift hits all alike.
- the overhead of each hop at batch 1 through the gateway: client + loopback network, gateway,
  and the server's own parsing and serialisation, i.e. everything that is neither queue nor model.
  The twin replays these samples around the queue (`overhead.profile`); a single clock per
  process cannot split a round trip into its two directions, so each sample is split evenly
  before and after the queue (the split moves no queueing when the overhead is near constant).

The profile (JSON, no pickle) records the machine, backend and config it came from, so loading
it into a run it does not match is a warning (`profile_warnings`).
"""

from __future__ import annotations

import dataclasses
import http.client
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pandas as pd

from scenarios.config import CompareConfig, ServelabConfig
from sim.config import BatchingConfig, ExperimentConfig, RolloutConfig, ScenarioConfig, version_names, version_specs
from sim.features import LookupTimes, load_point
from sim.files import write_json
from sim.host import GATEWAY, LOADGEN, REPLICA, ROLES, CpuPoint, HostCosts, fit_host_costs, stack_capacity
from sim.profile import Profile
from sim.service import capacity_rps

if TYPE_CHECKING:
    from real.cpu import CpuTrace

FIRST_POINT_MAX_RPS = 200.0  # the first CPU point: light for any stack this project has run on 2 cores
FEATURES = 64  # the digits models' input width; the emulated backend takes the same tensors
# How much is measured (samples, warm-up, seconds per point) are config keys: compare.profile_*
# and compare.overhead_fractions (mode=profile is also mode=compare's calibration).


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def profile_meta(cfg: ScenarioConfig) -> dict[str, Any]:
    """What a profile must agree with to stand for a run."""
    meta: dict[str, Any] = {
        "machine": machine_info(),
        "backend": cfg.model.backend,
        "model": cfg.model.name,
        "version": version_names(cfg.model)[0],  # a name: versions may be spelt 1 or {name: 1, ...}
        "max_batch_size": cfg.batching.max_batch_size,
        "concurrency": cfg.concurrency,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cfg.model.backend == "emulated":
        meta["service"] = dataclasses.asdict(cfg.service) | {"profile": ""}
    return meta


def invalid_load_points(profile: Profile) -> list[str]:
    """One line per load point whose measurement was flagged invalid (the load generator fell
    behind, requests never sent): its overheads are not the stack's at that rate. mode=profile
    exits 3 on them; a run that loads the profile carries them as warnings."""
    return [f"profile load point {point['rate']:.0f} req/s: INVALID: " + ("; ".join(point.get("invalid_reasons") or []) or "flagged invalid")
            for point in profile.overhead_by_rate if not point.get("valid", True)]


def profile_warnings(profile: Profile, cfg: ScenarioConfig) -> list[str]:
    """Differences between where a profile was measured and the run it is loaded into, and the
    profile's own load points measured invalid."""
    expected = profile_meta(cfg)
    got = profile.meta
    notes = invalid_load_points(profile)
    keys = ["backend", "model", "version"]
    # a run that replays the profile's device times has no model of its own; one with the host
    # model and the emulated device has its own, and takes only the host from the profile
    if cfg.service.kind != "empirical" and profile.host is None:
        keys.append("service")
    for key in keys:
        if key in got and key in expected and got[key] != expected[key]:
            notes.append(f"profile {key} {got[key]!r} differs from this run's {expected[key]!r}")
    if cfg.service.kind == "empirical" and got.get("max_batch_size", expected["max_batch_size"]) < expected["max_batch_size"]:
        notes.append(f"profile measured batches up to {got['max_batch_size']}, this run allows {expected['max_batch_size']}")
    lookups = profile.feature_lookups
    if lookups is not None and cfg.features.store != "none" and lookups.store != cfg.features.store:
        notes.append(f"profile measured feature lookups of store {lookups.store!r}, this run's is {cfg.features.store!r}")
    theirs, ours = got.get("machine", {}), expected["machine"]
    for key in ("cpu", "cores"):
        if key in theirs and theirs[key] != ours[key]:
            notes.append(f"profile was measured on another machine ({key}: {theirs[key]!r}, here {ours[key]!r})")
    return notes


class _Client:
    """A keep-alive HTTP/1.1 client: one connection, one request at a time, no client pool to
    add its own queueing to what is measured."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)

    def infer(self, path: str, rows: np.ndarray) -> tuple[float, dict[str, Any], dict[str, str]]:
        body = orjson.dumps({"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                          "data": rows.reshape(-1).tolist()}]})
        start = time.perf_counter()
        self._conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = self._conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"profile request to {path} answered {response.status}: {payload[:200]!r}")
        return elapsed, orjson.loads(payload), {k.lower(): v for k, v in response.getheaders()}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[float, int, bytes]:
        """One exchange, timed from the send to the whole answer read: (seconds, status, body)."""
        start = time.perf_counter()
        self._conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = self._conn.getresponse()
        payload = response.read()
        return time.perf_counter() - start, response.status, payload

    def close(self) -> None:
        self._conn.close()


class _GrpcClient:
    """`_Client` over the gateway's GRPCInferenceService (loadgen.protocol=grpc): one channel,
    one call at a time; the answer's parameters in the same shape."""

    def __init__(self, target: str, model: str) -> None:
        import grpc

        from real.grpc import grpc_service_pb2_grpc as pb_grpc

        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._model = model

    def infer(self, path: str, rows: np.ndarray) -> tuple[float, dict[str, Any], dict[str, str]]:
        from real.grpc import grpc_service_pb2 as pb
        from real.grpc.convert import param_value

        msg = pb.ModelInferRequest(model_name=self._model)
        msg.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
        msg.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        start = time.perf_counter()
        resp = self._stub.ModelInfer(msg, timeout=30)
        elapsed = time.perf_counter() - start
        return elapsed, {"parameters": {k: param_value(v) for k, v in resp.parameters.items()}}, {}

    def close(self) -> None:
        self._channel.close()


def _profiling_config(cfg: ScenarioConfig, replicas: int, version: int = 0) -> ScenarioConfig:
    # one version (the first unless asked) without its fault schedule: the stack as it is, not as a fault turns it
    only = dataclasses.asdict(dataclasses.replace(version_specs(cfg.model)[version], faults=[]))
    return dataclasses.replace(
        cfg,
        replicas=replicas,
        model=dataclasses.replace(cfg.model, versions=[only]),
        # one version: no split, no copies to another one
        gateway=dataclasses.replace(cfg.gateway, version_weights=[], shadow_version="", shadow_percent=0.0),
        # the stack as it is, not as a rollout, an experiment or a fault drill changes it
        rollout=RolloutConfig(),
        experiment=ExperimentConfig(),
        batching=BatchingConfig(max_batch_size=cfg.batching.max_batch_size, max_queue_delay_s=0.0, max_queue_size=0),
        timeout_s=0.0,
    )


def measure_version_times(cfg: ScenarioConfig, run_dir: Path, samples: int, warmup: int) -> dict[str, dict[int, list[float]]]:
    """The numpy backend's other versions, each measured as the first is: a real model's compute
    is its own (the MLP costs more per batch than the softmax), where an emulated version's is
    the service model times its service_factor, known without measuring."""
    if cfg.model.backend != "numpy":
        return {}
    names = version_names(cfg.model)
    return {names[v]: measure_device_times(cfg, run_dir, samples, warmup, version=v)[0] for v in range(1, len(names))}


def measure_device_times(cfg: ScenarioConfig, run_dir: Path, samples: int,
                         warmup: int, version: int = 0) -> tuple[dict[int, list[float]], list[float]]:
    """`samples` device times per batch size of one version (the first unless asked), after
    `warmup` discarded requests (sizes in turn), and each request's queue time: with one request
    at a time and no batching delay, that is the instance's thread waking for its batch (the
    host model's `handoff_s`)."""
    from real.launcher import launch

    rng = np.random.default_rng(cfg.seed)
    sizes = list(range(1, cfg.batching.max_batch_size + 1))
    times: dict[int, list[float]] = {b: [] for b in sizes}
    handoffs: list[float] = []
    path = f"/v2/models/{cfg.model.name}/infer"
    where = run_dir / ("device" if version == 0 else f"device-{version_names(cfg.model)[version]}")
    with launch(_profiling_config(cfg, 1, version), run_dir=where) as stack:
        client = _Client(stack.replica_urls[0])
        try:
            for k in range(warmup):  # first calls pay for lazy initialisation
                b = sizes[k % len(sizes)]
                client.infer(path, rng.uniform(0, 16, (b, FEATURES)).astype(np.float32))
            for _ in range(samples):
                for b in sizes:
                    _, doc, _ = client.infer(path, rng.uniform(0, 16, (b, FEATURES)).astype(np.float32))
                    params = doc["parameters"]
                    if params["batch_size"] != b:
                        raise RuntimeError(f"profiling expected a batch of {b}, the replica formed {params['batch_size']}")
                    times[b].append(float(params["service_s"]))
                    handoffs.append(float(params["queue_s"]))
        finally:
            client.close()
    return times, handoffs


def measure_overheads(cfg: ScenarioConfig, run_dir: Path, samples: int, warmup: int) -> dict[str, list[float]]:
    """Per-request time outside queue and model at batch 1, by hop, through the gateway: `samples`
    of each hop after `warmup` discarded requests."""
    from real.launcher import launch

    rng = np.random.default_rng(cfg.seed + 1)
    path = f"/v2/models/{cfg.model.name}/infer"
    hops: dict[str, list[float]] = {"total_s": [], "gateway_s": [], "server_s": [], "client_network_s": []}
    with launch(_profiling_config(cfg, 1), run_dir=run_dir / "overhead") as stack:
        grpc = cfg.loadgen.protocol == "grpc"  # the hops as the load generator's requests take them
        client = _GrpcClient(stack.grpc_gateway_url, cfg.model.name) if grpc else _Client(stack.gateway_url)
        try:
            for k in range(samples + warmup):
                elapsed, doc, headers = client.infer(path, rng.uniform(0, 16, (1, FEATURES)).astype(np.float32))
                if k < warmup:
                    continue
                p = doc["parameters"]
                gateway = float(p.get("gateway_s", headers.get("x-gateway-s", 0.0)))
                server = float(p["server_s"]) - float(p["queue_s"]) - float(p["service_s"])
                total = elapsed - float(p["queue_s"]) - float(p["service_s"])
                hops["total_s"].append(total)
                hops["gateway_s"].append(gateway)
                hops["server_s"].append(server)
                hops["client_network_s"].append(total - gateway - server)
        finally:
            client.close()
    hops["before_s"] = [t / 2 for t in hops["total_s"]]
    hops["after_s"] = list(hops["before_s"])
    return hops


ASYNC_POLL_WAIT_S = 0.002  # between polls of a result not ready yet (those polls are not timed)
ASYNC_WAY_SAMPLES = 150  # each takes a sync request and an async one through the model: enough for a median ratio


def measure_async_ways(cfg: ScenarioConfig, run_dir: Path, samples: int, warmup: int) -> dict[str, list[float]]:
    """The async path's round trips at idle, beside a sync request's, through the same gateway with
    the same client, one request at a time: `async_submit_s` (a submit to its 202: gateway,
    one Redis script), `async_poll_s` (a poll that finds the result: gateway, one Redis read)
    and `async_sync_s` (a sync request's way through gateway and replica, outside queue and
    model). The twin scales the sync overhead it replays at the run's rate by the async/sync
    ratios (sim.async_serving): the load's effect stays the measured one, only the path differs,
    where drawing the submit and the poll as sync requests gave them a replica hop they never make."""
    from real.launcher import launch

    rng = np.random.default_rng(cfg.seed + 2)
    path = f"/v2/models/{cfg.model.name}/infer"
    acfg = dataclasses.replace(_profiling_config(cfg, 1), pattern="async",
                               async_jobs=dataclasses.replace(cfg.async_jobs, workers=1, callback=False))
    ways: dict[str, list[float]] = {"async_submit_s": [], "async_poll_s": [], "async_sync_s": []}
    with launch(acfg, run_dir=run_dir / "async") as stack:
        client = _Client(stack.gateway_url)
        try:
            for k in range(samples + warmup):
                rows = rng.uniform(0, 16, (1, FEATURES)).astype(np.float32)
                elapsed, doc, _ = client.infer(path, rows)
                p = doc["parameters"]
                sync_s = elapsed - float(p["queue_s"]) - float(p["service_s"])
                body = orjson.dumps({"parameters": {"async": True}, "inputs": [
                    {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": rows.reshape(-1).tolist()}]})
                submit_s, status, payload = client.request("POST", path, body)
                if status != 202:
                    raise RuntimeError(f"profile: an async submit answered {status}: {payload[:200]!r}")
                result_path = f"/v2/models/{cfg.model.name}/results/{orjson.loads(payload)['id']}"
                while True:
                    poll_s, status, payload = client.request("GET", result_path)
                    if status == 200:
                        break
                    if status != 202:
                        raise RuntimeError(f"profile: a poll answered {status}: {payload[:200]!r}")
                    time.sleep(ASYNC_POLL_WAIT_S)
                if k >= warmup:
                    ways["async_submit_s"].append(submit_s)
                    ways["async_poll_s"].append(poll_s)
                    ways["async_sync_s"].append(sync_s)
        finally:
            client.close()
    return ways


def _t0_wall(loadgen_dir: Path, workers: int) -> float | None:
    """The load's time 0 on the wall clock, as the local workers wrote it when they started."""
    from real.loadgen.plan import started_path

    try:
        return min(float(orjson.loads(started_path(loadgen_dir, i).read_bytes())["t0_wall"]) for i in range(workers))
    except (OSError, ValueError, KeyError):
        return None


def _cpu_point(cfg: ScenarioConfig, frame: pd.DataFrame, trace: CpuTrace, t0_wall: float) -> CpuPoint:
    """What each role of the stack used of the host over a point's measurement window, per
    second, and the rates of requests and batches sent in it. A CPU backend's model time is
    the replica's compute, not its framework's: taken out (the twin runs it as the batch)."""
    span = cfg.duration_s - cfg.warmup_s
    used = trace.between(t0_wall + cfg.warmup_s, t0_wall + cfg.duration_s)
    window = frame[(frame["arrival_s"] >= cfg.warmup_s) & (frame["arrival_s"] < cfg.duration_s)]
    batches = window.loc[window["batch_id"] >= 0].drop_duplicates(["replica", "batch_id"])
    cores = {role: used[role] / span for role in ROLES}
    if cfg.model.backend == "numpy":
        cores[REPLICA] = max(cores[REPLICA] - float(batches["service_s"].sum()) / span, 0.0)
    return CpuPoint(requests_per_s=len(window) / span, batches_per_s=len(batches) / span, cores_used=cores)


def measure_overhead_under_load(cfg: ScenarioConfig, run_dir: Path, rates: list[float], point_s: float,
                                warmup_s: float, first_rate: float | None = None) -> list[dict[str, Any]]:
    """The stack's per-request overhead (latency less queue and model time) and each process's
    CPU at each rate, driven by the same load generator as a measurement, on seeds of its own
    (never the schedule a comparison will replay). `rates` may be a function of the first
    point (`first_rate`, measured first): the host's capacity is known only once its CPU costs
    are. The points are calibration, not the run: their replicas are told the load's time 0 as
    any measurement's are, so no version fails (its error_rate) or turns bad (its faults) here."""
    from real.cpu import CpuSampler
    from scenarios.run_real import measure

    healthy = [dataclasses.asdict(dataclasses.replace(v, error_rate=0.0, faults=[])) for v in version_specs(cfg.model)]
    # an experiment's split as deployed, its controller watching only: it must not end the split mid-point
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, versions=healthy),
                              experiment=dataclasses.replace(cfg.experiment, stop_early=False))
    points = []
    for k, rate in enumerate(rates):
        # a fresh stack runs ~1.5x slower for its first seconds (connection pools filling,
        # the interpreter specialising): those seconds are warm-up, not the steady state
        point_cfg = dataclasses.replace(
            cfg, seed=cfg.seed + 1000 + k, warmup_s=warmup_s, duration_s=warmup_s + point_s,
            arrival=dataclasses.replace(cfg.arrival, kind="poisson", rate=rate),
        )
        out = run_dir / f"load-{rate:.0f}"
        with CpuSampler() as sampler:
            frame, summary, _ = measure(point_cfg, out)
        ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= point_cfg.warmup_s)]
        # with a feature store, its lookup is the twin's own stage (sim.features), not overhead
        lookup = ok["feature_lookup_s"].fillna(0.0) if "feature_lookup_s" in ok else 0.0
        total = (ok["latency_s"] - ok["queue_s"] - ok["service_s"] - lookup).to_numpy(dtype=float)
        total = total[np.isfinite(total)]
        t0 = _t0_wall(out / "loadgen", cfg.loadgen.workers - cfg.loadgen.remote_workers)
        if len(total):
            point: dict[str, Any] = {"rate": float(rate), "total_s": np.clip(total, 0.0, None).tolist(),
                                     "send_lag_p99_s": summary.get("send_lag_s", {}).get("p99"), "valid": summary.get("valid", True)}
            if not point["valid"]:  # why, as mode=real says it (the run's warnings)
                point["invalid_reasons"] = list(summary.get("warnings", []))
            if cfg.features.store != "none":  # for the lookups under load (measure_profile)
                point["feature_batches"] = feature_batches(ok)
            if t0 is not None:
                cpu = _cpu_point(point_cfg, frame, sampler.trace, t0)
                point |= {"requests_per_s": cpu.requests_per_s, "batches_per_s": cpu.batches_per_s, "cores_used": cpu.cores_used}
            points.append(point)
    return points


def host_costs(points: list[dict[str, Any]], cores: int, cfg: ScenarioConfig) -> HostCosts | None:
    """The host model from the valid points' CPU (sim.host.fit_host_costs), and its non-CPU part
    from the lightest point (the least queueing for a loop or a core): its overhead less the
    CPU its request spends on the way is the wake-ups of the processes it passes, asleep at
    that rate with the odds each was idle (1 - its busy share), and what is left (loopback,
    the odd late wake-up), replayed as samples."""
    cpu = [p for p in points if "cores_used" in p and p.get("valid", True)]
    if not cpu:
        return None
    fitted = fit_host_costs([CpuPoint(p["requests_per_s"], p["batches_per_s"], p["cores_used"]) for p in cpu], cores, [0.0])
    lightest = min(cpu, key=lambda p: p["rate"])
    batch = lightest["requests_per_s"] / max(lightest["batches_per_s"], 1e-9)
    on_path = fitted.per_request_s(batch) * fitted.slowdown
    fixed = np.clip(np.asarray(lightest["total_s"], dtype=float) - on_path, 0.0, None)
    used = lightest["cores_used"]
    busy = {LOADGEN: used[LOADGEN] / max(cfg.loadgen.workers, 1), GATEWAY: used[GATEWAY], REPLICA: used[REPLICA] / max(cfg.replicas, 1)}
    idle = {role: 1.0 - min(share, 0.95) for role, share in busy.items()}
    # per request: the generator twice, the gateway twice, the replica's loop once in; per
    # batch: the loop taking the batch back (sim.host_path)
    wakes = 2 * idle[LOADGEN] + 2 * idle[GATEWAY] + idle[REPLICA] + idle[REPLICA] / batch
    wake = float(np.median(fixed)) / wakes
    rest = np.clip(fixed - wake * wakes, 0.0, None)
    return dataclasses.replace(fitted, fixed_s=rest.tolist(), wake_s=wake)


def measure_profile(cfg: ScenarioConfig, run_dir: Path, settings: CompareConfig | None = None, async_ways: bool = False) -> Profile:
    """The whole profile, measured as `settings` (the compare.* keys; default their defaults) ask:
    device times, idle overheads, and overheads and CPU under load at compare.overhead_fractions
    of the stack's capacity: the first point at the first fraction of the devices' capacity (at
    most FIRST_POINT_MAX_RPS), the others at fractions of the stack capacity it predicts."""
    s = settings if settings is not None else CompareConfig()
    lookups = measure_feature_lookups(cfg) if cfg.features.store != "none" else None
    async_ways = async_ways or cfg.pattern == "async"  # asked for, or the scenario serves async itself
    # The stack with its feature store: its load points measure the lookups under load (the
    # twin's own stage, so their time is taken out of the overhead there). And served
    # synchronously: what is measured is a request's way through the stack, which an async
    # run's latency (polls) is not; the twin of async serving builds on these (sim.async_serving)
    cfg = dataclasses.replace(cfg, pattern="sync")
    times, handoffs = measure_device_times(cfg, run_dir, s.profile_samples, s.profile_device_warmup)
    version_times = measure_version_times(cfg, run_dir, s.profile_samples, s.profile_device_warmup)
    overheads = measure_overheads(cfg, run_dir, s.profile_idle_samples, s.profile_idle_warmup) | {"handoff_s": handoffs}
    if async_ways:
        overheads |= measure_async_ways(cfg, run_dir, min(s.profile_idle_samples, ASYNC_WAY_SAMPLES), s.profile_idle_warmup)
    meta = profile_meta(cfg) | {"replicas": cfg.replicas}
    device_only = Profile(times_s=times, overheads_s=overheads, meta=meta, version_times_s=version_times)
    fractions = sorted(s.overhead_fractions)
    cores = len(os.sched_getaffinity(0))  # the cores this process (and the stack it starts) may run on
    first = min(fractions[0] * capacity_rps(cfg, device_only), FIRST_POINT_MAX_RPS)
    by_rate = measure_overhead_under_load(cfg, run_dir, [first], s.profile_point_duration_s, s.profile_point_warmup_s)
    host = host_costs(by_rate, cores, cfg)
    capacity = stack_capacity(cfg, dataclasses.replace(device_only, host=host)).rps
    rest = [f * capacity for f in fractions[1:]]
    by_rate += measure_overhead_under_load(cfg, run_dir, rest, s.profile_point_duration_s, s.profile_point_warmup_s)
    host = host_costs(by_rate, cores, cfg)
    if host is not None:  # an idle instance's thread wakes for its batch: the device measurement's queue time
        host = dataclasses.replace(host, handoff_s=float(np.median(handoffs)))
    if host is not None and cfg.model.backend == "emulated":
        host = dataclasses.replace(host, device_wake_s=device_wake_s(cfg, times))
    if lookups is not None:  # the store's lookups as the stack's batches made them at each point
        lookups = dataclasses.replace(lookups, by_rate=[load_point(p["rate"], p.pop("feature_batches", []), lookups) for p in by_rate])
    return Profile(times_s=times, overheads_s=overheads, meta=meta, overhead_by_rate=by_rate, host=host, version_times_s=version_times,
                   feature_lookups=lookups)


def feature_batches(answered: pd.DataFrame) -> list[tuple[int, float]]:
    """The answered requests' batches that looked features up, each as (distinct ids its round
    trip fetched: its requests' entities that missed the cache, its lookup time)."""
    rows = answered[answered["feature_hit"].notna() & (answered["batch_id"] >= 0)]
    if not len(rows):
        return []
    missed = rows["user_id"].where(~rows["feature_hit"].astype(bool))
    per_batch = pd.DataFrame({"batch_id": rows["batch_id"], "missed": missed, "lookup_s": rows["feature_lookup_s"]}) \
        .groupby("batch_id").agg(fetched=("missed", "nunique"), lookup_s=("lookup_s", "first"))
    return [(int(n), float(t)) for n, t in zip(per_batch["fetched"], per_batch["lookup_s"]) if math.isfinite(t)]


FEATURE_LOOKUP_SAMPLES = 300  # per number of ids fetched: p99 rests on the 3 slowest
FEATURE_LOOKUP_WARMUP = 30  # lookups sent and discarded first (connection, first allocations)


def feature_fetch_sizes(max_batch_size: int) -> list[int]:
    """The numbers of ids per round trip to measure: 1, 2, 4, ... and max_batch_size itself
    (the twin interpolates between them, sim.features.LookupTimes)."""
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return sizes + [max_batch_size]


async def _time_lookups(store: Any, sizes: list[int], entities: int, samples: int, warmup: int,
                        rng: np.random.Generator) -> tuple[dict[int, list[float]], list[float]]:
    """The batch's whole lookup as the server runs it on its instance, timed: the plan against
    the replica's cache, one mget for the misses, the fetched rows joined and cached. Per size:
    distinct ids the cache lacks (a fresh cache each time: every id a miss, all in the store);
    hit-only: the largest batch against a cache that holds it all (no round trip). Sizes in
    turn, so drift hits them all alike."""
    from sim.policy.features import FallbackPolicy, FeatureCache, LookupPlan

    policy = FallbackPolicy.zeros(FEATURES)
    clock = time.perf_counter
    fetch: dict[int, list[float]] = {n: [] for n in sizes}
    hit_only: list[float] = []
    largest = max(sizes)
    for k in range(warmup + samples):
        for n in sizes:
            ids = rng.choice(entities, size=min(n, entities), replace=False).tolist()
            cache: FeatureCache[Any] = FeatureCache(largest, math.inf)
            start = clock()
            plan = LookupPlan.make(ids, cache, 0.0)
            rows = await store.mget(plan.fetch)
            cache.put_many(plan.found(rows), 0.0)
            plan.join(rows, policy)
            took = clock() - start
            if k >= warmup:
                fetch[n].append(took)
        ids = rng.integers(0, entities, size=largest).tolist()
        cache = FeatureCache(largest, math.inf)
        cache.put_many(dict(zip(ids, await store.mget(ids))), 0.0)
        start = clock()
        plan = LookupPlan.make(ids, cache, 0.0)
        if plan.fetch:  # never: the cache holds every id
            raise RuntimeError("a hit-only lookup missed the cache")
        plan.join([], policy)
        took = clock() - start
        if k >= warmup:
            hit_only.append(took)
    return fetch, hit_only


def measure_feature_lookups(cfg: ScenarioConfig, samples: int = FEATURE_LOOKUP_SAMPLES,
                            warmup: int = FEATURE_LOOKUP_WARMUP) -> LookupTimes:
    """The configured store's lookup times for the twin (sim.features.MeasuredLookup): the
    offline table of features.entities rows materialised into it (embedded: in this process;
    redis: server.redis_url with $SERVELAB_REDIS_PASSWORD, else a private redis-server started
    for this and stopped after), then `samples` lookups per number of ids fetched (1, 2, 4,
    ... max_batch_size) and of a hit-only batch, from this process, one at a time."""
    import asyncio
    import contextlib

    from real.features.offline import generate_table

    f = cfg.features
    if f.store not in ("embedded", "redis"):
        raise ValueError(f"no feature store to measure (features.store={f.store})")
    sizes = feature_fetch_sizes(cfg.batching.max_batch_size)
    table = generate_table(f.entities, f.seed)
    rng = np.random.default_rng(cfg.seed + 2)
    meta: dict[str, Any] = {"entities": f.entities, "samples": samples, "machine": machine_info()}
    if f.store == "embedded":
        from real.features.embedded import EmbeddedStore

        store: Any = EmbeddedStore()
        store.materialise(table)
        fetch, hit_only = asyncio.run(_time_lookups(store, sizes, f.entities, samples, warmup, rng))
        return LookupTimes(f.store, fetch, hit_only, meta)
    from real.features.redis_server import start_redis_server
    from real.features.redis_store import RedisStore, redact

    with contextlib.ExitStack() as stack:
        if cfg.server.redis_url:
            url, password = cfg.server.redis_url, os.environ.get("SERVELAB_REDIS_PASSWORD")
        else:
            server = stack.enter_context(start_redis_server())
            url, password = server.url, server.password
        # the profile's own timeout: a slow lookup is a sample here, not a failure
        redis_store = RedisStore(url, password, timeout_s=max(f.timeout_s, 5.0), key="server.redis_url")
        redis_store.check()
        redis_store.materialise(table)

        async def timed() -> tuple[dict[int, list[float]], list[float]]:
            await redis_store.connect()
            try:
                return await _time_lookups(redis_store, sizes, f.entities, samples, warmup, rng)
            finally:
                await redis_store.close()

        fetch, hit_only = asyncio.run(timed())
        meta["redis_url"] = redact(url) if cfg.server.redis_url else "private redis-server"
    return LookupTimes(f.store, fetch, hit_only, meta)


def device_wake_s(cfg: ScenarioConfig, times: dict[int, list[float]]) -> float:
    """How much later than its service model the emulated device answers, on average over
    the measured batch sizes: the sleep's overshoot and the hand-back to the server's loop."""
    factor = version_specs(cfg.model)[0].service_factor
    late = [float(np.mean(v)) - (cfg.service.base_s + cfg.service.per_item_s * b) * factor for b, v in times.items()]
    return max(float(np.mean(late)), 0.0)


def format_profile(profile: Profile) -> str:
    lines = ["device time per batch size (ms):", f"  {'batch':>5} {'mean':>8} {'p50':>8} {'p99':>8} {'n':>5}"]
    for b, samples in sorted(profile.times_s.items()):
        a = np.asarray(samples) * 1e3
        lines.append(f"  {b:>5} {a.mean():>8.3f} {np.percentile(a, 50):>8.3f} {np.percentile(a, 99):>8.3f} {len(a):>5}")
    for name, times in sorted(profile.version_times_s.items()):
        means = ", ".join(f"{b}: {np.mean(samples) * 1e3:.3f}" for b, samples in sorted(times.items()))
        lines.append(f"version {name}'s own device time, mean per batch size (ms): {means}")
    lines.append("overhead per request at batch 1, outside queue and model (ms):")
    for hop in ("client_network_s", "gateway_s", "server_s", "total_s"):
        if hop in profile.overheads_s:
            a = np.asarray(profile.overheads_s[hop]) * 1e3
            lines.append(f"  {hop[:-2]:<15} p50 {np.percentile(a, 50):.3f}  p99 {np.percentile(a, 99):.3f}  mean {a.mean():.3f}")
    if profile.overhead_by_rate:
        lines.append("overhead per request under load, outside queue and model (ms):")
        for point in profile.overhead_by_rate:
            a = np.asarray(point["total_s"]) * 1e3
            cpu = point.get("cores_used")
            used = "" if cpu is None else "  cores used " + " ".join(f"{role} {cpu[role]:.2f}" for role in ROLES)
            lines.append(f"  {point['rate']:>7.0f} req/s  p50 {np.percentile(a, 50):.3f}  p90 {np.percentile(a, 90):.3f}  "
                         f"p99 {np.percentile(a, 99):.3f}  (n {len(a)}){used}{'' if point.get('valid', True) else '  INVALID'}")
    host = profile.host
    if host is not None:
        fixed = np.asarray(host.fixed_s) * 1e3
        lines.append(f"host: {host.cores} cores, {host.background_cores:.2f} of them busy without requests; CPU per request (ms): "
                     + ", ".join(f"{role} {host.cpu_per_request_s[role] * 1e3:.3f}" for role in ROLES)
                     + f", replica per batch {host.replica_cpu_per_batch_s * 1e3:.3f}; "
                     f"a sleeping process wakes in {host.wake_s * 1e3:.3f}; the rest, not CPU (loopback) "
                     f"p50 {np.percentile(fixed, 50):.3f} p99 {np.percentile(fixed, 99):.3f}")
    lookups = profile.feature_lookups
    if lookups is not None:
        lines.append(f"feature lookup of a batch, {lookups.store} store (ms): ids fetched in its round trip, p50 / p99")
        hit = np.asarray(lookups.hit_only_s) * 1e3
        lines.append(f"  {'hit-only':>8}  {np.percentile(hit, 50):.3f} / {np.percentile(hit, 99):.3f}")
        for n, samples in sorted(lookups.fetch_s.items()):
            a = np.asarray(samples) * 1e3
            lines.append(f"  {n:>8}  {np.percentile(a, 50):.3f} / {np.percentile(a, 99):.3f}")
        for point in lookups.by_rate:  # the stack's own batches under load
            hit, excess = (np.asarray(point[k]) * 1e3 for k in ("hit_only_s", "excess_s"))
            hit_text = f"hit-only p50 {np.percentile(hit, 50):.3f}" if len(hit) else "no hit-only batch"
            excess_text = (f"a round trip's excess over idle p50 {np.percentile(excess, 50):.3f} p99 {np.percentile(excess, 99):.3f}"
                           if len(excess) else "no round trip")
            lines.append(f"  under load, {point['rate']:>7.0f} req/s: {hit_text}; {excess_text} "
                         f"({len(hit)} + {len(excess)} batches)")
    return "\n".join(lines)


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    print(f"profiling the {cfg.model.backend} backend ({cfg.model.name} v{cfg.model.versions[0]}), "
          f"batch sizes 1..{cfg.batching.max_batch_size} ...", flush=True)
    profile = measure_profile(cfg, out_dir / "stack", cfg.compare)
    path = out_dir / "profile.json"
    write_json(path, profile.to_json())
    print(format_profile(profile))
    print(f"profile: {path}")
    print(f"use it:  servelab service.kind=empirical service.profile={path} overhead.profile={path}")
    invalid = invalid_load_points(profile)
    for line in invalid:
        print(line)
    if invalid:  # written and marked, but not a profile CI should pass: exit 3, as real and compare
        print(f"servelab: {len(invalid)} of {len(profile.overhead_by_rate)} profile load points INVALID (exit status 3)")
        return 3
    return 0
