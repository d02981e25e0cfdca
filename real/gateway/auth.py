"""Bearer-token guard for the control endpoints (run-time weights).

Safe by default: with no token configured the guarded paths are closed (403), never open.
The comparison is constant-time so the token cannot be guessed byte by byte from timings.
"""

from __future__ import annotations

import hmac
from typing import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from real.gateway.errors import oip_error


class BearerAuth:
    """Only requests under `prefixes` are checked, so the infer hot path pays one `startswith`."""

    def __init__(self, app: ASGIApp, token: str, prefixes: Sequence[str]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else b""
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        if not self.expected:
            response = oip_error(403, "control endpoints are disabled: start the gateway with SERVELAB_TOKEN set")
            await response(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            response = oip_error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
