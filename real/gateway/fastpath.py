"""The infer hot path as a bare ASGI layer in front of Starlette.

Profiling put the framework layers (error middleware, router, Request/Response objects, the
body stream) at a sizeable share of the gateway's per-request CPU, and the overhead budget is
0.5 ms. Infer is two fixed URL shapes, so this layer matches them by splitting the path and
speaks ASGI directly; everything else (metadata, health, metrics, control) falls through to
the Starlette app and its routes.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from real.gateway.app import Gateway, Reply


class InferFastPath:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        parts = scope["path"].split("/")
        n = len(parts)
        if n == 5 and parts[4] == "infer" and parts[1] == "v2" and parts[2] == "models":
            version: str | None = None
        elif n == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[1] == "v2" and parts[2] == "models":
            version = parts[5]
        else:
            await self.app(scope, receive, send)
            return
        await self.infer(scope, receive, send, parts[3], version)

    async def infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        from real.gateway.app import error_reply  # import cycle: app builds this layer

        gw = self.gateway
        t0 = perf_counter()
        ctype: str | None = None
        user: str | None = None
        declared = -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"x-user-id":
                user = value.decode("latin-1")
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else -1
        limit = gw.max_body
        reply: Reply | None = None
        if declared > limit:
            reply = gw._done(t0, error_reply(413, f"body larger than {limit} bytes"))
        else:
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    reply = gw._done(t0, error_reply(413, f"body larger than {limit} bytes"))
                    break
                chunks.append(chunk)
                more = message.get("more_body", False)
            if reply is None:
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                try:
                    reply = await gw.forward("POST", scope["path"], model, version, user, ctype, body, t0)
                except Exception as exc:  # a bug answers 500 in the OIP shape, never a dropped socket
                    reply = error_reply(500, f"internal gateway error: {type(exc).__name__}")
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
