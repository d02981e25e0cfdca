"""uvicorn's httptools protocol, writing a response's head and body in one socket write.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and
the body in a second write. On loopback each write is a syscall that delivers data and wakes
the peer, which then finds a head without its body and sleeps again: two wakeups per response
where one will do. Profiling the gateway put those writes at the top of its per-request cost,
so the head is held back and joined to the first body chunk (or flushed alone when the response
streams more body or the connection closes).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Collect:
    """Stands in for the transport while uvicorn writes one message: keeps the bytes, delegates the rest."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def flush(self) -> None:
        if self.chunks:
            data = b"".join(self.chunks)
            self.chunks.clear()
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    _held: _Collect | None = None

    async def send(self, message: Any) -> None:
        kind = message.get("type")
        if kind == "http.response.start" and not self.response_started:
            real = self.transport
            held = _Collect(real)
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = real
            self._held = held
            return
        held, self._held = self._held, None
        if held is None or kind != "http.response.body":
            if held is not None:
                held.flush()
            await super().send(message)
            return
        real = self.transport
        self.transport = held  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
            held.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = None
        super().connection_lost(exc)
