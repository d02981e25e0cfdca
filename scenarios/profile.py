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
import os
import platform
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from scenarios.config import CompareConfig, ServelabConfig
from sim.config import BatchingConfig, RolloutConfig, ScenarioConfig, version_names, version_specs
from sim.files import write_json
from sim.profile import Profile
from sim.service import capacity_rps

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


def profile_warnings(profile: Profile, cfg: ScenarioConfig) -> list[str]:
    """Differences between where a profile was measured and the run it is loaded into."""
    expected = profile_meta(cfg)
    got = profile.meta
    notes = []
    keys = ["backend", "model", "version"]
    if cfg.service.kind != "empirical":  # a run that replays the profile has no model of its own
        keys.append("service")
    for key in keys:
        if key in got and key in expected and got[key] != expected[key]:
            notes.append(f"profile {key} {got[key]!r} differs from this run's {expected[key]!r}")
    if got.get("max_batch_size", expected["max_batch_size"]) < expected["max_batch_size"]:
        notes.append(f"profile measured batches up to {got['max_batch_size']}, this run allows {expected['max_batch_size']}")
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

    def close(self) -> None:
        self._conn.close()


def _profiling_config(cfg: ScenarioConfig, replicas: int) -> ScenarioConfig:
    # the first version without its fault schedule: the stack as it is, not as a fault turns it
    first = dataclasses.asdict(dataclasses.replace(version_specs(cfg.model)[0], faults=[]))
    return dataclasses.replace(
        cfg,
        replicas=replicas,
        model=dataclasses.replace(cfg.model, versions=[first]),
        # one version: no split, no copies to another one
        gateway=dataclasses.replace(cfg.gateway, version_weights=[], shadow_version="", shadow_percent=0.0),
        # the stack as it is, not as a rollout or a fault drill changes it
        rollout=RolloutConfig(),
        batching=BatchingConfig(max_batch_size=cfg.batching.max_batch_size, max_queue_delay_s=0.0, max_queue_size=0),
        timeout_s=0.0,
    )


def measure_device_times(cfg: ScenarioConfig, run_dir: Path, samples: int, warmup: int) -> dict[int, list[float]]:
    """`samples` device times per batch size, after `warmup` discarded requests (sizes in turn)."""
    from real.launcher import launch

    rng = np.random.default_rng(cfg.seed)
    sizes = list(range(1, cfg.batching.max_batch_size + 1))
    times: dict[int, list[float]] = {b: [] for b in sizes}
    path = f"/v2/models/{cfg.model.name}/infer"
    with launch(_profiling_config(cfg, 1), run_dir=run_dir / "device") as stack:
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
        finally:
            client.close()
    return times


def measure_overheads(cfg: ScenarioConfig, run_dir: Path, samples: int, warmup: int) -> dict[str, list[float]]:
    """Per-request time outside queue and model at batch 1, by hop, through the gateway: `samples`
    of each hop after `warmup` discarded requests."""
    from real.launcher import launch

    rng = np.random.default_rng(cfg.seed + 1)
    path = f"/v2/models/{cfg.model.name}/infer"
    hops: dict[str, list[float]] = {"total_s": [], "gateway_s": [], "server_s": [], "client_network_s": []}
    with launch(_profiling_config(cfg, 1), run_dir=run_dir / "overhead") as stack:
        client = _Client(stack.gateway_url)
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


def measure_overhead_under_load(cfg: ScenarioConfig, run_dir: Path, rates: list[float], point_s: float,
                                warmup_s: float) -> list[dict[str, Any]]:
    """The stack's per-request overhead (latency less queue and model time) at each rate, driven
    by the same load generator as a measurement, on seeds of its own (never the schedule a
    comparison will replay). On a shared host the overhead grows with the rate: this is the
    twin's model of the host's CPU contention. The points are calibration, not the run: their
    replicas are told the load's time 0 as any measurement's are, so no version fails (its
    error_rate) or turns bad (its faults) here."""
    from scenarios.run_real import measure

    healthy = [dataclasses.asdict(dataclasses.replace(v, error_rate=0.0, faults=[])) for v in version_specs(cfg.model)]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, versions=healthy))
    points = []
    for k, rate in enumerate(rates):
        # a fresh stack runs ~1.5x slower for its first seconds (connection pools filling,
        # the interpreter specialising): those seconds are warm-up, not the steady state
        point_cfg = dataclasses.replace(
            cfg, seed=cfg.seed + 1000 + k, warmup_s=warmup_s, duration_s=warmup_s + point_s,
            arrival=dataclasses.replace(cfg.arrival, kind="poisson", rate=rate),
        )
        frame, summary, _ = measure(point_cfg, run_dir / f"load-{rate:.0f}")
        ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= point_cfg.warmup_s)]
        total = (ok["latency_s"] - ok["queue_s"] - ok["service_s"]).to_numpy(dtype=float)
        total = total[np.isfinite(total)]
        if len(total):
            points.append({"rate": float(rate), "total_s": np.clip(total, 0.0, None).tolist(),
                           "send_lag_p99_s": summary.get("send_lag_s", {}).get("p99"), "valid": summary.get("valid", True)})
    return points


def measure_profile(cfg: ScenarioConfig, run_dir: Path, settings: CompareConfig | None = None) -> Profile:
    """The whole profile, measured as `settings` (the compare.* keys; default their defaults) ask:
    device times, idle overheads, and overheads under load at compare.overhead_fractions."""
    s = settings if settings is not None else CompareConfig()
    times = measure_device_times(cfg, run_dir, s.profile_samples, s.profile_device_warmup)
    overheads = measure_overheads(cfg, run_dir, s.profile_idle_samples, s.profile_idle_warmup)
    by_rate = measure_overhead_under_load(cfg, run_dir, overhead_rates(cfg, s.overhead_fractions),
                                          s.profile_point_duration_s, s.profile_point_warmup_s)
    meta = profile_meta(cfg) | {"replicas": cfg.replicas}
    return Profile(times_s=times, overheads_s=overheads, meta=meta, overhead_by_rate=by_rate)


def format_profile(profile: Profile) -> str:
    lines = ["device time per batch size (ms):", f"  {'batch':>5} {'mean':>8} {'p50':>8} {'p99':>8} {'n':>5}"]
    for b, samples in sorted(profile.times_s.items()):
        a = np.asarray(samples) * 1e3
        lines.append(f"  {b:>5} {a.mean():>8.3f} {np.percentile(a, 50):>8.3f} {np.percentile(a, 99):>8.3f} {len(a):>5}")
    lines.append("overhead per request at batch 1, outside queue and model (ms):")
    for hop in ("client_network_s", "gateway_s", "server_s", "total_s"):
        if hop in profile.overheads_s:
            a = np.asarray(profile.overheads_s[hop]) * 1e3
            lines.append(f"  {hop[:-2]:<15} p50 {np.percentile(a, 50):.3f}  p99 {np.percentile(a, 99):.3f}  mean {a.mean():.3f}")
    if profile.overhead_by_rate:
        lines.append("overhead per request under load, outside queue and model (ms):")
        for point in profile.overhead_by_rate:
            a = np.asarray(point["total_s"]) * 1e3
            lines.append(f"  {point['rate']:>7.0f} req/s  p50 {np.percentile(a, 50):.3f}  p90 {np.percentile(a, 90):.3f}  "
                         f"p99 {np.percentile(a, 99):.3f}  (n {len(a)})")
    return "\n".join(lines)


def overhead_rates(cfg: ScenarioConfig, fractions: list[float]) -> list[float]:
    """Rates at which to measure overhead under load: fractions of the scenario's capacity."""
    capacity = capacity_rps(cfg)
    return [f * capacity for f in fractions]


def run(cfg: ServelabConfig, out_dir: Path) -> int:
    print(f"profiling the {cfg.model.backend} backend ({cfg.model.name} v{cfg.model.versions[0]}), "
          f"batch sizes 1..{cfg.batching.max_batch_size} ...", flush=True)
    profile = measure_profile(cfg, out_dir / "stack", cfg.compare)
    path = out_dir / "profile.json"
    write_json(path, profile.to_json())
    print(format_profile(profile))
    print(f"profile: {path}")
    print(f"use it:  servelab service.kind=empirical service.profile={path} overhead.profile={path}")
    return 0
