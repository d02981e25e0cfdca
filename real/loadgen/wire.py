"""The load generator's HTTP/1.1, without I/O: request bytes out, answers in.

The generator shares two cores with the stack it measures, so every microsecond it spends per
request is taken from the server and shows up as its own share of each latency. A general HTTP
client (headers objects, validation, cookie jars, per-request greenlets) cost ~250 µs of CPU per
request here; an infer request is one fixed shape, so this module builds its bytes from parts
computed once (`RequestEncoder`) and reads answers with httptools' C parser, keeping only the
few headers the records use (`AnswerReader`). Like h11, it never touches a socket: the Locust
side (`locustfile.py`) moves the bytes on gevent's event loop, and the tests feed it bytes.

Shared by both sides: it imports httptools and the standard library only (no gevent, no Locust).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import httptools

BODY_HEAD = b'{"id":"'
BODY_TAIL = b"}}"
# an input-less request naming its entity (features.store != none): the replica looks its row up
ENTITY_MID = b'","inputs":[],"parameters":{"entity_id":'
TIMEOUT_KEY = b',"timeout":'
# the headers a record reads (the gateway's own time, and who answered a failure)
GATEWAY_S, REPLICA, MODEL_VERSION = b"x-gateway-s", b"x-replica", b"x-model-version"
# a refusal because the request's feature lookup failed (features.fallback=error): missing | timeout
FEATURE_FAILURE = b"x-feature-failure"
_KEPT = frozenset((GATEWAY_S, REPLICA, MODEL_VERSION, FEATURE_FAILURE))


class RequestEncoder:
    """The bytes of one infer request: the request line and fixed headers once, the body's
    parts per input once (`mids[k]`: everything between the id and the timeout's value), so a
    request costs one join of a few short byte strings."""

    def __init__(self, host: str, path: str, mids: Sequence[bytes]) -> None:
        self._start = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                       "x-user-id: ").encode("latin-1")
        self._mids = list(mids)

    def encode(self, request_key: str, user_id: int, k: int, micros: int, pin: str | None = None,
               entity: bool = False) -> bytes:
        """Request `request_key` (its OIP id) of user `user_id` with input `k`, a server-side
        deadline of `micros` µs (0 = none), and `pin` in x-model-version when given. `entity`:
        the request names its entity instead (the feature store's input), `mids[k]` ending in
        ENTITY_MID's `"entity_id":`, the user id its value."""
        if entity:
            body = b"".join((BODY_HEAD, request_key.encode(), self._mids[k], str(user_id).encode(), TIMEOUT_KEY,
                             str(micros).encode(), BODY_TAIL))
        else:
            body = b"".join((BODY_HEAD, request_key.encode(), self._mids[k], str(micros).encode(), BODY_TAIL))
        version = b"" if pin is None else b"\r\nx-model-version: " + pin.encode("latin-1")
        return b"".join((self._start, str(user_id).encode(), version, b"\r\ncontent-length: ",
                         str(len(body)).encode(), b"\r\n\r\n", body))


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    gateway_s: bytes | None  # x-gateway-s
    replica: bytes | None  # x-replica
    version: bytes | None  # x-model-version
    keep_alive: bool  # the connection may carry the next request
    feature_failure: bytes | None = None  # x-feature-failure: the refusal was the feature lookup's


class AnswerReader:
    """One connection's answers, in order: feed it what the socket gave, get the answers it
    completed (keep-alive: one parser for the connection's life). Raises
    `httptools.HttpParserError` on bytes that are not HTTP."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._done: list[Answer] = []
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}

    def feed(self, data: bytes) -> Sequence[Answer]:
        self._parser.feed_data(data)
        if not self._done:
            return ()
        done, self._done = self._done, []
        return done

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEPT:
            self._headers[name] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        h = self._headers
        parser = self._parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._done.append(Answer(parser.get_status_code(), body, h.get(GATEWAY_S), h.get(REPLICA),
                                 h.get(MODEL_VERSION), parser.should_keep_alive(), h.get(FEATURE_FAILURE)))
        self._body = []
        self._headers = {}
