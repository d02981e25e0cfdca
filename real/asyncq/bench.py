"""`python -m real.asyncq.bench --rates 100,300 --duration 10`: the async stack's submit-to-ready time.

For each rate: launch the real stack with pattern=async (the emulated backend, the config's
defaults otherwise), submit open loop at Poisson times, then read every result once the
schedule is done (no polling during the run: what is measured is when a result became ready,
not when a client learnt of it) and print, per rate:
- submit-to-ready p50/p99 from the result's own times (`ready_unix_s - submitted_unix_s`: the
  gateway's acceptance to the worker's write) and from the intended send time (the client's view,
  without the poll interval);
- throughput: results ready inside [warmup, duration) per second, against the offered rate (the
  reference measured in the same run);
- batch size per batch, refused and failed submissions, the client's send lag p99.
Run it under `flock /tmp/cpu.lock` (it measures a CPU-sensitive stack).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time

import aiohttp
import numpy as np
import orjson

from real.launcher import launch
from sim.config import ArrivalConfig, AsyncJobsConfig, ScenarioConfig

BODY = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}],
                     "parameters": {"async": True}})
HEADERS = {"Content-Type": "application/json"}


async def drive(url: str, model: str, arrivals: np.ndarray) -> tuple[float, list[tuple[float, float, int]], list[float]]:
    """Submit at `arrivals` (s after t0), then fetch every result: (t0 wall time,
    [(intended send s, status, location)...], send lags)."""
    connector = aiohttp.TCPConnector(limit=256)
    submitted: list[tuple[float, int, str]] = []
    lags: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(at: float) -> None:
            lags.append(time.perf_counter() - start - at)
            async with session.post(url + f"/v2/models/{model}/infer", data=BODY, headers=HEADERS) as resp:
                await resp.read()
                submitted.append((at, resp.status, resp.headers.get("Location", "")))

        t0_unix, start = time.time(), time.perf_counter()
        tasks = []
        for at in arrivals:
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(float(at))))
        await asyncio.gather(*tasks)
        results = []
        deadline = time.monotonic() + 60
        for at, status, location in submitted:
            if status != 202:
                results.append((at, status, {}))
                continue
            while True:
                async with session.get(url + location) as resp:
                    body = await resp.read()
                    if resp.status != 202 or time.monotonic() > deadline:
                        results.append((at, resp.status, orjson.loads(body) if resp.status == 200 else {}))
                        break
                await asyncio.sleep(0.05)
    return t0_unix, results, lags  # type: ignore[return-value]


def measure(cfg: ScenarioConfig) -> dict[str, float]:
    rng = np.random.default_rng(cfg.seed)
    n = int(cfg.arrival.rate * cfg.duration_s * 1.5) + 10
    arrivals = np.cumsum(rng.exponential(1 / cfg.arrival.rate, n))
    arrivals = arrivals[arrivals < cfg.duration_s]
    with launch(cfg) as stack:
        t0_unix, results, lags = asyncio.run(drive(stack.gateway_url, cfg.model.name, arrivals))
    ok = [(at, doc["parameters"]) for at, status, doc in results if status == 200]
    server = np.array([p["ready_unix_s"] - p["submitted_unix_s"] for _, p in ok])
    client = np.array([p["ready_unix_s"] - (t0_unix + at) for at, p in ok])
    ready = np.array([p["ready_unix_s"] - t0_unix for _, p in ok])
    window = cfg.duration_s - cfg.warmup_s
    batches = {(p["worker"], p["batch_id"]): p["batch_size"] for _, p in ok}
    return {
        "offered_rps": len(arrivals) / cfg.duration_s,
        "throughput_rps": float(((ready >= cfg.warmup_s) & (ready < cfg.duration_s)).sum() / window),
        "ready_p50_ms": float(np.percentile(server, 50) * 1e3),
        "ready_p99_ms": float(np.percentile(server, 99) * 1e3),
        "intended_to_ready_p50_ms": float(np.percentile(client, 50) * 1e3),
        "intended_to_ready_p99_ms": float(np.percentile(client, 99) * 1e3),
        "batch_size_per_batch": float(np.mean(list(batches.values()))),
        "refused": float(sum(1 for _, s, _ in results if s == 503)),
        "failed": float(sum(1 for _, s, _ in results if s not in (200, 503))),
        "send_lag_p99_ms": float(np.percentile(lags, 99) * 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m real.asyncq.bench", description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="100,300", help="offered rates, req/s, comma-separated")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    base = ScenarioConfig(replicas=1, pattern="async", duration_s=args.duration, warmup_s=1.0,
                          async_jobs=AsyncJobsConfig(workers=args.workers, batch_size=args.batch_size))
    print(f"emulated backend, service {base.service.kind} base {base.service.base_s * 1e3:g} ms + "
          f"{base.service.per_item_s * 1e3:g} ms/row; {args.workers} workers, batch <= {args.batch_size}")
    for rate in (float(r) for r in args.rates.split(",")):
        cfg = dataclasses.replace(base, arrival=ArrivalConfig(rate=rate))
        m = measure(cfg)
        print(f"rate {rate:g}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items())
              + f"; throughput/offered {m['throughput_rps'] / m['offered_rps']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
