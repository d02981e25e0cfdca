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

from real.asgi import BodyTooLarge, ClientGone, infer_target, receive_body

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
        target = infer_target(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        await self.infer(scope, receive, send, *target)

    async def infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        from real.gateway.app import error_reply  # import cycle: app builds this layer

        gw = self.gateway
        t0 = perf_counter()
        ctype: str | None = None
        user: str | None = None
        pin: str | None = None
        warmup = False
        header_length: str | None = None
        declared = -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"x-user-id":
                user = value.decode("latin-1")
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif name == b"x-model-version":
                pin = value.decode("latin-1")
            elif name == b"x-servelab-warmup":  # sim.policy.split.WARMUP_HEADER: no part of the run
                warmup = True
            elif name == b"inference-header-content-length":  # binary tensors: forwarded as sent
                header_length = value.decode("latin-1")
        limit = gw.max_body
        try:
            body = await receive_body(receive, declared, limit)
        except ClientGone:
            return
        except BodyTooLarge:
            reply = gw._done(t0, error_reply(413, f"body larger than {limit} bytes"))
        else:
            try:
                reply = await gw.forward("POST", scope["path"], model, version, user, ctype, body, t0, pin, warmup,
                                         header_length)
            except Exception as exc:  # a bug answers 500 in the OIP shape, never a dropped socket
                reply = error_reply(500, f"internal gateway error: {type(exc).__name__}")
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
