"""`python -m real.gateway --config run/config.yaml --port P --upstreams URL0,URL1,...`

The process the launcher starts. uvloop + httptools: the gateway's overhead budget is 0.5 ms.
SIGTERM (uvicorn's handler) drains in-flight requests and exits. Every setting (pool, upstream
timeout, health checks) comes from the config file, so a run's config.yaml says how it ran.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from real.gateway.app import create_app
from real.grpc.serve import GrpcBeside
from real.server.transport import CoalescingHttpToolsProtocol
from sim.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m real.gateway", description="servelab gateway: OIP reverse proxy")
    p.add_argument("--config", required=True, help="a run's resolved config.yaml")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstreams", required=True, help="comma-separated replica URLs, index = replica index")
    p.add_argument("--host", default=None, help="bind address (default: gateway.host, 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=None, help="serve GRPCInferenceService on this port too (0 = any free port; default: REST only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(args.config)
    upstreams = [u.strip() for u in args.upstreams.split(",") if u.strip()]
    app = create_app(cfg, upstreams)
    host = args.host or cfg.gateway.host
    config = uvicorn.Config(
        app, host=host, port=args.port, loop="uvloop", http=CoalescingHttpToolsProtocol, lifespan="on",
        log_level="warning", access_log=False, timeout_keep_alive=30, backlog=4096,
    )
    server = GrpcBeside(config)
    if args.grpc_port is not None:  # GRPCInferenceService beside REST, on the same loop and Gateway
        from real.grpc.gateway import GatewayService

        gateway = app.state.gateway
        server.grpc_port, server.grpc_host, server.grpc_label = args.grpc_port, host, "servelab.gateway"
        server.grpc_service = lambda: GatewayService(gateway)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
