"""`python -m real.gateway --config run/config.yaml --port P --upstreams URL0,URL1,...`

The process the launcher starts. uvloop + httptools: the gateway's overhead budget is 0.5 ms.
SIGTERM (uvicorn's handler) drains in-flight requests and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from real.gateway.app import create_app
from real.gateway.pool import PoolOptions
from sim.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m real.gateway", description="servelab gateway: OIP reverse proxy")
    p.add_argument("--config", required=True, help="a run's resolved config.yaml")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstreams", required=True, help="comma-separated replica URLs, index = replica index")
    p.add_argument("--host", default=None, help="bind address (default: gateway.host, 127.0.0.1)")
    p.add_argument("--health-interval", type=float, default=0.5, help="seconds between readiness probes")
    p.add_argument("--upstream-timeout", type=float, default=None, help="seconds (default: timeout_s of the scenario)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(args.config)
    upstreams = [u.strip() for u in args.upstreams.split(",") if u.strip()]
    timeout = args.upstream_timeout if args.upstream_timeout is not None else (cfg.timeout_s if cfg.timeout_s > 0 else 60.0)
    app = create_app(cfg, upstreams, options=PoolOptions(health_interval_s=args.health_interval, upstream_timeout_s=timeout))
    host = args.host or cfg.gateway.host
    uvicorn.run(
        app, host=host, port=args.port, loop="uvloop", http="httptools", lifespan="on",
        log_level="warning", access_log=False, timeout_keep_alive=30, backlog=4096,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
