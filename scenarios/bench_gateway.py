"""Benchmark: the latency the gateway adds, p50 and p99, at a moderate open-loop rate.

`python -m scenarios.bench_gateway [--rate 300] [--duration 20]`

One stack (one emulated replica with a tiny deterministic service time, no batching wait, so the
replica's own noise is small), one client, one run: requests alternate between the replica
directly and the gateway in front of it, each path at `--rate` req/s on a fixed schedule (open
loop: latency counts from the intended send time, so a stall cannot hide). Added latency =
gateway-path quantile minus direct-path quantile. The client is aiohttp in this process, with
one keep-alive session per path (wrk2, the usual open-loop tool, is not packaged in Debian; wrk is
closed loop). Also printed: the gateway's own `x-gateway-s` (time inside the gateway, upstream
excluded) and the client's send lag, which must stay small for the figures to mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import orjson

from real.launcher import launch
from sim.config import ScenarioConfig

TARGET_P50_ADDED_S = 0.0005
BODY = orjson.dumps({"id": "b", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})


@dataclass
class Samples:
    latency_s: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    gateway_s: list[float] = field(default_factory=list)
    errors: int = 0


def bench_config(seed: int) -> ScenarioConfig:
    cfg = ScenarioConfig(replicas=1, seed=seed, timeout_s=5.0)
    cfg.model.backend = "emulated"
    cfg.service.kind = "deterministic"
    cfg.service.base_s = 0.0005
    cfg.service.per_item_s = 0.0
    cfg.batching.max_batch_size = 1
    cfg.batching.max_queue_delay_s = 0.0
    cfg.lb.policy = "round_robin"
    return cfg


async def one(session: aiohttp.ClientSession, url: str, intended: float, warm_until: float, out: Samples) -> None:
    sent = time.perf_counter()
    try:
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as resp:
            await resp.read()
            ok = resp.status == 200
            gw = resp.headers.get("x-gateway-s")
    except aiohttp.ClientError:
        ok, gw = False, None
    done = time.perf_counter()
    if intended < warm_until:
        return
    if not ok:
        out.errors += 1
        return
    out.latency_s.append(done - intended)
    out.lag_s.append(sent - intended)
    if gw is not None:
        out.gateway_s.append(float(gw))


async def drive(direct_url: str, gateway_url: str, model: str, rate: float, duration_s: float, warmup_s: float) -> tuple[Samples, Samples]:
    path = f"/v2/models/{model}/infer"
    direct, via = Samples(), Samples()
    connector = dict(limit=256, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector), timeout=timeout) as s_direct, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector), timeout=timeout) as s_via:
        interval = 1.0 / (2 * rate)  # the two paths alternate, each at `rate`
        n = int(duration_s * 2 * rate)
        start = time.perf_counter() + 0.05
        warm_until = start + warmup_s
        tasks = []
        for k in range(n):
            intended = start + k * interval
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if k % 2 == 0:
                tasks.append(asyncio.create_task(one(s_direct, direct_url + path, intended, warm_until, direct)))
            else:
                tasks.append(asyncio.create_task(one(s_via, gateway_url + path, intended, warm_until, via)))
        await asyncio.gather(*tasks)
    return direct, via


def q(values: list[float], p: float) -> float:
    return float(np.quantile(np.asarray(values), p)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scenarios.bench_gateway", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=300.0, help="req/s on each path (direct and via gateway)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load, warm-up included")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="exit 1 if the added p50 misses the 0.5 ms target")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cfg = bench_config(args.seed)
    with launch(cfg) as stack:
        direct, via = asyncio.run(drive(stack.replica_urls[0], stack.gateway_url, cfg.model.name,
                                        args.rate, args.duration, args.warmup))
    rows = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
    print(f"gateway overhead, open loop at {args.rate:g} req/s per path, {args.duration:g} s "
          f"({len(direct.latency_s)} direct + {len(via.latency_s)} via gateway measured, warm-up {args.warmup:g} s dropped)")
    print(f"{'':6}{'direct ms':>12}{'gateway ms':>12}{'added ms':>11}{'x-gateway-s ms':>16}")
    for name, p in rows:
        d, g = q(direct.latency_s, p) * 1e3, q(via.latency_s, p) * 1e3
        print(f"{name:6}{d:12.3f}{g:12.3f}{g - d:11.3f}{q(via.gateway_s, p) * 1e3:16.3f}")
    print(f"errors: direct {direct.errors}, gateway {via.errors}; client send lag p99 "
          f"{q(direct.lag_s + via.lag_s, 0.99) * 1e3:.3f} ms")
    added_p50 = q(via.latency_s, 0.5) - q(direct.latency_s, 0.5)
    verdict = "meets" if added_p50 <= TARGET_P50_ADDED_S else "MISSES"
    print(f"added p50 {added_p50 * 1e3:.3f} ms {verdict} the {TARGET_P50_ADDED_S * 1e3:g} ms target")
    return 1 if (args.strict and added_p50 > TARGET_P50_ADDED_S) else 0


if __name__ == "__main__":
    sys.exit(main())
