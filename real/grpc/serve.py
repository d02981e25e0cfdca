"""A uvicorn server with the GRPCInferenceService beside it, on one event loop.

Both transports are adapters over the same objects (the replica's batcher, the gateway's
router), so they share the process's loop (uvloop): the gRPC server starts before the REST port
listens, so a process that answers REST readiness also answers gRPC, and stops (in-flight calls
finish) before the lifespan shutdown takes down what those calls wait on.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Callable, Sequence

import grpc
import uvicorn

from real.grpc import grpc_service_pb2_grpc as pb_grpc

GRACE_S = 5.0


class GenericHandlersOnly:
    """The server as the generated `add_GRPCInferenceServiceServicer_to_server` sees it: the
    service's methods are served through its generic handler (a dict lookup by method name)
    and never also registered one by one.

    grpc.aio keeps one pending request-call per registered method and `asyncio.wait`s on all of
    them for every incoming call: for the 20 methods of GRPCInferenceService that is 21 futures
    to arm and disarm per RPC, on the event loop the model also runs on. A generic handler is a
    single pending call, as the bare grpc.aio echo of scenarios.bench_server uses; every method
    answers as before."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Left out on purpose (see the class): the generic handler serves these methods."""


async def start_grpc(service: pb_grpc.GRPCInferenceServiceServicer, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server for `service` on host:port (0 = a free port): (server, port).
    Call it from the loop that serves REST."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, GenericHandlersOnly(server))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises RuntimeError for a port it cannot bind
        raise OSError(f"cannot bind gRPC on {address}: {exc}") from None
    await server.start()
    return server, bound


class GrpcBeside(uvicorn.Server):
    """uvicorn's Server; with `grpc_port` set (0 = any free port), `grpc_service()` is served
    over gRPC on `grpc_host` too, and the bound port printed on stderr after `grpc_label`."""

    grpc_port: int | None = None
    grpc_host: str = "127.0.0.1"
    grpc_label: str = "servelab"
    grpc_service: Callable[[], pb_grpc.GRPCInferenceServiceServicer] | None = None
    grpc_server: Any = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc_port is not None and self.grpc_service is not None:
            self.grpc_server, port = await start_grpc(self.grpc_service(), self.grpc_host, self.grpc_port)
            print(f"{self.grpc_label} grpc on {self.grpc_host}:{port}", file=sys.stderr, flush=True)
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(GRACE_S)
        await super().shutdown(sockets)
