"""`python -m real.server --config RUN/config.yaml --replica R --port P [--host 127.0.0.1]`

The launcher's contract: one process = one replica. The port opens only after the model has
loaded (uvicorn runs the lifespan startup before it listens), so `GET /v2/health/ready` == 200
means ready. SIGTERM and SIGINT stop it cleanly (uvicorn's handlers: stop accepting, finish
in-flight requests, run the lifespan shutdown). Port 0 picks a free port; the chosen port is
printed on stderr as `servelab.server replica=R version=V listening on http://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
from typing import Iterator

import uvicorn

from real.grpc.serve import GrpcBeside
from real.server.app import create_app, served_version
from real.server.transport import CoalescingHttpToolsProtocol
from sim.config import ConfigError, load_config, version_names


class _Server(GrpcBeside):
    """uvicorn re-raises a caught SIGTERM/SIGINT after its graceful shutdown, so the process
    dies "by signal" (exit -15). A stop the launcher asked for is a success: exit 0 instead.

    With `grpc_port` set, the replica's GRPCInferenceService (real.grpc.replica) starts on the
    same loop before the REST port listens, and stops (in-flight calls finish) before the
    lifespan shutdown stops the batcher they wait on (real.grpc.serve)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m real.server", description="servelab model server (one replica)")
    p.add_argument("--config", required=True, help="a run's resolved config.yaml")
    p.add_argument("--replica", type=int, required=True, help="replica index (chooses the model version)")
    p.add_argument("--version", default=None, help="the model version to serve (a replica added at run time; default: by --replica)")
    p.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--grpc-port", type=int, default=None, help="serve GRPCInferenceService on this port too (0 = any free port; default: REST only)")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"servelab.server: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.replica < 0:
        print("servelab.server: --replica must be >= 0", file=sys.stderr)
        return 2
    if args.version is not None and args.version not in version_names(cfg.model):
        print(f"servelab.server: --version {args.version!r} is not one of model.versions {version_names(cfg.model)}", file=sys.stderr)
        return 2
    app = create_app(cfg, args.replica, args.version)

    # Bind first so port 0 resolves to a number we can print; listen() only happens after
    # startup, so nothing connects to a replica whose model is still loading.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"servelab.server: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,  # one write per response (real.server.transport)
        lifespan="on",
        log_level=args.log_level,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    if args.grpc_port is not None:
        from real.grpc.replica import ReplicaService

        replica = app.state.replica
        server.grpc_port, server.grpc_host = args.grpc_port, args.host
        server.grpc_label = f"servelab.server replica={args.replica}"
        server.grpc_service = lambda: ReplicaService(replica)
    version = args.version if args.version is not None else served_version(cfg, args.replica)
    print(
        f"servelab.server replica={args.replica} version={version} backend={cfg.model.backend} "
        f"listening on http://{args.host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
