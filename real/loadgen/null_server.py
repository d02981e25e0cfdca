"""A server that does nothing: what the load generator measures against it is its own cost.

    python -m real.loadgen.null_server --port 0     # prints "listening on http://127.0.0.1:PORT"

Every latency the generator records is its own time (waking up for the send, building and
writing the request, reading and parsing the answer, recording it) plus the server's and the
network's. To know the generator's own share, point it at a server whose share is as close to
nothing as Python allows: a raw asyncio `Protocol` on uvloop with httptools' C parser, no
framework, no ASGI, answering every `POST .../infer` with a canned, valid Open Inference
Protocol body (the fields the generator's records read: `queue_s`, `service_s`, `server_s`
of 0, a batch of 1 with an id of its own). What is left over the loopback round trip is the
generator's (`scenarios.bench_loadgen`'s "null server" row).

Also: `GET /v2/health/live|ready` answer 200, `GET /v2/null/stats` the number of infers answered
(`{"infers": N}`, so a test can count what arrived); anything else 404 in the OIP error shape.
Loopback only: it refuses to bind another address.

`--grpc` serves the same over gRPC instead (`loadgen.protocol=grpc`'s floor): a grpc.aio server
on uvloop whose `GRPCInferenceService/ModelInfer` answers every call with canned bytes (a
ModelInferResponse with the same zero parameters and its own batch id), never parsing the
request; it prints `listening on grpc://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httptools

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
READY_LINE = "listening on "


def infer_body(model: str, batch_id: int) -> bytes:
    """The canned OIP answer: one label, zero times, a batch of one with its own id (the merge
    groups answers by (replica, batch id): a shared id would make every request one batch)."""
    return (b'{"model_name":"' + model.encode() + b'","model_version":"1","outputs":[{"name":"label",'
            b'"datatype":"INT64","shape":[1],"data":[0]}],"parameters":{"queue_s":0.0,"service_s":0.0,'
            b'"batch_size":1,"batch_id":' + str(batch_id).encode() + b',"replica":0,"version":"1","server_s":0.0}}')


def response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n") + body)


class NullServer:
    """What every connection shares: the model name and the count of infers answered."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.infers = 0

    def answer(self, method: bytes, url: bytes, keep_alive: bool) -> bytes:
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/infer"):
            self.infers += 1
            return response(b"200 OK", infer_body(self.model, self.infers - 1), keep_alive)
        if method == b"GET" and path in (b"/v2/health/live", b"/v2/health/ready"):
            return response(b"200 OK", b"", keep_alive)
        if method == b"GET" and path == b"/v2/null/stats":
            return response(b"200 OK", b'{"infers":' + str(self.infers).encode() + b"}", keep_alive)
        return response(b"404 Not Found", b'{"error":"the null server answers POST .../infer only"}', keep_alive)


class NullProtocol(asyncio.Protocol):
    """One connection: httptools parses, `on_message_complete` answers (keep-alive, pipelining
    in order since every answer is written as its request completes)."""

    def __init__(self, server: NullServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(response(b"400 Bad Request", b'{"error":"malformed HTTP"}', False))
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        assert self.transport is not None
        self.transport.write(self.server.answer(self.parser.get_method(), self.url, keep_alive))
        self.url = b""
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, model: str) -> None:
    if host not in LOOPBACK:
        raise SystemExit(f"the null server binds loopback only, not {host!r}")
    state = NullServer(model)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: NullProtocol(state), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"{READY_LINE}http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


async def serve_grpc(host: str, port: int, model: str) -> None:
    """The gRPC null server: bytes in, canned bytes out (protobuf concatenation merges the batch
    id into the fixed part)."""
    if host not in LOOPBACK:
        raise SystemExit(f"the null server binds loopback only, not {host!r}")
    import grpc

    from real.grpc import grpc_service_pb2 as pb

    fixed = pb.ModelInferResponse(model_name=model, model_version="1")
    fixed.outputs.add(name="label", datatype="INT64", shape=[1])
    fixed.raw_output_contents.append(b"\0" * 8)
    for key, value in (("queue_s", 0.0), ("service_s", 0.0), ("server_s", 0.0)):
        fixed.parameters[key].double_param = value
    fixed.parameters["batch_size"].int64_param = 1
    fixed.parameters["replica"].int64_param = 0
    fixed.parameters["version"].string_param = "1"
    head = fixed.SerializeToString()
    infers = 0

    async def model_infer(request: bytes, context: object) -> bytes:
        nonlocal infers
        tail = pb.ModelInferResponse()
        tail.parameters["batch_id"].int64_param = infers
        infers += 1
        return head + tail.SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=None, response_serializer=None)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{READY_LINE}grpc://{host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--model", default="digits", help="the model_name its answers carry")
    p.add_argument("--grpc", action="store_true", help="serve GRPCInferenceService/ModelInfer instead of HTTP")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the real stack's dependencies
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner((serve_grpc if args.grpc else serve)(args.host, args.port, args.model))


@contextlib.contextmanager
def null_server(model: str = "digits", *, log: Path | None = None, protocol: str = "http") -> Iterator[str]:
    """Run a null server in a subprocess on a free loopback port; yields its URL (with
    protocol="grpc": its gRPC target, host:port), kills it after."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    extra = ["--grpc"] if protocol == "grpc" else []
    proc = subprocess.Popen([sys.executable, "-m", "real.loadgen.null_server", "--model", model, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith(READY_LINE):
            raise RuntimeError(f"the null server did not start (exit {proc.poll()}): {line!r}")
        url = line[len(READY_LINE):].strip()
        yield url.removeprefix("grpc://")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if log is not None:
            out.close()  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
