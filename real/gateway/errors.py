"""Gateway-made answers in the Open Inference Protocol's error shape, `{"error": "..."}`.

Clients of KServe/Triton parse that shape for every non-2xx answer; a plain-text 404 or an HTML
500 from the framework would break them, so every answer the gateway makes itself goes through here.
"""

from __future__ import annotations

from typing import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"


def oip_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, headers=dict(headers or {}), media_type=JSON)


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method) in the OIP shape."""
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", "") or "error")
    return oip_error(status, f"{detail}: {request.method} {request.url.path}", getattr(exc, "headers", None))


async def unexpected(request: Request, exc: Exception) -> Response:
    """Last line of defence: a bug answers a JSON 500 rather than dropping the connection."""
    return oip_error(500, f"internal gateway error: {type(exc).__name__}")
