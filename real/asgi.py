"""Bare-ASGI pieces for the infer hot path, shared by the model server and the gateway.

Infer is two fixed URL shapes and the bulk of all traffic; matching them by splitting the path
and speaking ASGI directly skips the framework's middleware, router and Request/Response objects,
a sizeable share of the per-request CPU of a Python server. Everything else goes to Starlette.
"""

from __future__ import annotations

from starlette.types import Receive


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) for /v2/models/{m}[/versions/{v}]/infer, else None."""
    parts = path.split("/")
    n = len(parts)
    if n == 5 and parts[4] == "infer" and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        return parts[3], None
    if n == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[1] == "v2" and parts[2] == "models" and parts[3] and parts[5]:
        return parts[3], parts[5]
    return None


def header_values(headers: list[tuple[bytes, bytes]], *names: bytes) -> dict[bytes, str]:
    """The named request headers (lower-case names), decoded; absent ones are left out."""
    wanted = set(names)
    return {k: v.decode("latin-1") for k, v in headers if k in wanted}


async def receive_body(receive: Receive, declared: int, limit: int) -> bytes:
    """The request body, refusing past `limit` bytes without buffering the excess."""
    if declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
