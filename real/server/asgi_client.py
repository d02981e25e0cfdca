"""An in-process ASGI client with lifespan, for tests (of this server and of anything in front).

Why not starlette.testclient: it needs httpx, which servelab does not depend on. This one runs
the app on its own event loop in a background thread (as a real server would), so the
batcher's threads and timers behave as in production, and many requests can be in flight at
once (`many`) to exercise batching.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

import orjson

Asgi = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class AsgiClient:
    def __init__(self, app: Asgi, timeout_s: float = 30.0) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi-client", daemon=True)
        self._lifespan_in: asyncio.Queue[dict[str, Any]] | None = None
        self._lifespan_task: asyncio.Future[None] | None = None
        self._lifespan_events: asyncio.Queue[dict[str, Any]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> AsgiClient:
        self._thread.start()
        self._run(self._startup())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    async def _startup(self) -> None:
        self._lifespan_in = asyncio.Queue()
        self._lifespan_events = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._lifespan_task = asyncio.ensure_future(self.app(scope, self._lifespan_in.get, self._lifespan_events.put))
        await self._lifespan_in.put({"type": "lifespan.startup"})
        event = await self._lifespan_events.get()
        if event["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"app startup failed: {event}")

    async def _shutdown(self) -> None:
        assert self._lifespan_in is not None and self._lifespan_events is not None
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        await self._lifespan_events.get()
        if self._lifespan_task is not None:
            await self._lifespan_task

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout_s)  # type: ignore[arg-type]

    # -- requests ----------------------------------------------------------------------------

    async def arequest(self, call: Call) -> Reply:
        path, _, query = call.path.partition("?")
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in call.headers.items()]
        if call.body and not any(k == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(call.body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": call.method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        sent = False
        disconnected = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": call.body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        reply = Reply(status=0)
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                reply.status = message["status"]
                reply.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, send)
        finally:
            disconnected.set()
        reply.body = b"".join(chunks)
        return reply

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
        return self._run(self.arequest(Call(method, path, body, headers or {})))  # type: ignore[no-any-return]

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post_json(self, path: str, doc: Any, headers: dict[str, str] | None = None) -> Reply:
        return self.request("POST", path, orjson.dumps(doc), {**JSON_HEADERS, **(headers or {})})

    def many(self, calls: Iterable[Call]) -> list[Reply]:
        """All calls in flight at once; replies in call order."""

        async def all_() -> list[Reply]:
            return list(await asyncio.gather(*(self.arequest(c) for c in calls)))

        return self._run(all_())  # type: ignore[no-any-return]
