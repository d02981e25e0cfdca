"""One write per response (real.server.transport): uvicorn's two writes of a response (headers,
then body) reach the socket as one, in order, and nothing is held past the loop's turn."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from real.server.transport import CoalescingHttpToolsProtocol, CoalescingTransport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_two_writes_in_one_turn_are_one_write_and_a_lone_one_goes_at_the_turns_end() -> None:
    async def scenario() -> FakeTransport:
        raw = FakeTransport()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"head ")
        t.write(b"body")
        assert raw.writes == [b"head body"]
        t.write(b"alone")
        assert raw.writes == [b"head body"]  # held until the callbacks queued now have run
        await asyncio.sleep(0)
        assert raw.writes == [b"head body", b"alone"]
        t.write(b"last")
        t.close()  # closing sends what is held first
        assert raw.writes[-1] == b"last" and raw.closed
        return raw

    asyncio.run(scenario())


def test_uvicorns_response_leaves_in_one_write() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario() -> list[bytes]:
        config = Config(app, http=CoalescingHttpToolsProtocol, lifespan="off", log_level="warning",
                        server_header=False, date_header=False)
        config.load()
        raw = FakeTransport()
        protocol = CoalescingHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        protocol.connection_made(raw)  # type: ignore[arg-type]
        protocol.data_received(b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        for _ in range(20):
            await asyncio.sleep(0)
        return raw.writes

    writes = asyncio.run(scenario())
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n{}")
