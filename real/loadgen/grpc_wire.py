"""The load generator's gRPC, without I/O (`loadgen.protocol=grpc`).

The gRPC twin of `wire.py`: a request's bytes from parts serialised once per input
(`GrpcRequestEncoder`: protobuf concatenation merges messages, so the fixed part (input
tensor, raw row, label) is serialised once and only the id and the deadline per request), the
HTTP/2 that carries them (`GrpcH2Client`: one connection's frames for unary calls to one method,
bytes in and out), and an answer read into the fields a record keeps (`read_answer`,
`read_failure`). The Locust side (`locustfile.GrpcDriver`) moves the bytes on gevent's event
loop; tests feed them bytes.

Shared by both sides: protobuf, grpc's status codes, hpack, numpy and the standard library only
(no gevent, no Locust, no grpc channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import unquote

import grpc
import hpack
import numpy as np

from real.grpc import grpc_service_pb2 as pb
from real.grpc.convert import HTTP_STATUS, param_value
from real.loadgen.recordfile import CLIENT_TIMEOUT, CONNECTION_ERROR

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
OK = grpc.StatusCode.OK
# a client-side deadline's details (grpc's own); a server's DEADLINE_EXCEEDED carries its message
CLIENT_DEADLINE_DETAILS = "Deadline Exceeded"
# trailing metadata a servelab server attaches to every refusal: an answer came from it
SERVER_KEYS = frozenset(("x-replica", "x-gateway-s"))


class GrpcRequestEncoder:
    """The serialised ModelInferRequest of one infer: `parts[k]` (model, input k's tensor and
    raw row, its label) once, then per request its id and its deadline (`parameters.timeout`, µs)."""

    def __init__(self, model: str, images: np.ndarray, labels: Sequence[int | None]) -> None:
        self.parts: list[bytes] = []
        for image, label in zip(images, labels):
            msg = pb.ModelInferRequest(model_name=model)
            msg.inputs.add(name="input", datatype="FP32", shape=[1, 64])
            msg.raw_input_contents.append(np.ascontiguousarray(image, dtype="<f4").reshape(-1).tobytes())
            if label is not None:
                msg.parameters["label"].int64_param = int(label)
            self.parts.append(msg.SerializeToString())

    @classmethod
    def for_entities(cls, model: str) -> GrpcRequestEncoder:
        """Input-less requests, each naming its entity (`encode(..., entity_id=)`): the feature
        store's requests (features.store != none), whose input is the entity's feature row."""
        encoder = cls(model, np.empty((0, 64), np.float32), [])
        encoder.parts = [pb.ModelInferRequest(model_name=model).SerializeToString()]
        return encoder

    def encode(self, request_key: str, k: int, micros: int, entity_id: int | None = None) -> bytes:
        tail = pb.ModelInferRequest(id=request_key)
        tail.parameters["timeout"].int64_param = micros
        if entity_id is not None:
            tail.parameters["entity_id"].int64_param = entity_id
        return self.parts[k] + tail.SerializeToString()  # serialised messages concatenate as a merge


def read_answer(data: bytes) -> tuple[dict[str, Any], int | None]:
    """(the answer's parameters, the first row's label output or None) of a serialised
    ModelInferResponse."""
    resp = pb.ModelInferResponse.FromString(data)
    params = {key: param_value(p) for key, p in resp.parameters.items()}
    label = None
    for i, out in enumerate(resp.outputs):
        if out.name == "label" and i < len(resp.raw_output_contents) and len(resp.raw_output_contents[i]) >= 8:
            label = int(np.frombuffer(resp.raw_output_contents[i][:8], dtype="<i8")[0])
    return params, label


def read_failure(code: grpc.StatusCode, details: str | None, trailing: Sequence[tuple[str, Any]] | None) -> tuple[int, int, str]:
    """(the record's status, replica, version) of a failed call: the HTTP status of the server's
    refusal, CLIENT_TIMEOUT for the client's own deadline, CONNECTION_ERROR when no servelab
    server answered (refused, reset: grpc says UNAVAILABLE with no server metadata)."""
    meta = {k: v for k, v in (trailing or ()) if isinstance(v, str)}
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == CLIENT_DEADLINE_DETAILS:
        return CLIENT_TIMEOUT, -1, ""
    if code == grpc.StatusCode.UNAVAILABLE and not SERVER_KEYS & meta.keys():
        return CONNECTION_ERROR, -1, ""
    replica = -1
    try:
        replica = int(meta.get("x-replica", -1))
    except ValueError:
        pass
    return HTTP_STATUS.get(code, 500), replica, meta.get("x-model-version", "")


# -- HTTP/2 for one unary method, without I/O ----------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types and flags (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# settings (§6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
MAX_STREAM_ID = 2**31 - 1
CANCEL = 0x8  # RST_STREAM's error code when the client gives up (its deadline)
DECODED_CACHE_SIZE = 256
# what gRPC makes of an HTTP/2 reset (its doc/PROTOCOL-HTTP2.md) and of an HTTP status without a
# grpc-status (doc/http-grpc-status-mapping.md)
_RST_CODE = {0x7: grpc.StatusCode.UNAVAILABLE, 0x8: grpc.StatusCode.CANCELLED, 0xB: grpc.StatusCode.RESOURCE_EXHAUSTED,
             0xC: grpc.StatusCode.PERMISSION_DENIED}
_HTTP_CODE = {400: grpc.StatusCode.INTERNAL, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
              404: grpc.StatusCode.UNIMPLEMENTED, 429: grpc.StatusCode.UNAVAILABLE, 502: grpc.StatusCode.UNAVAILABLE,
              503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.UNAVAILABLE}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class H2ProtocolError(Exception):
    """The peer broke HTTP/2 or gRPC's framing: the connection cannot be trusted any more."""


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's integer (RFC 7541 §5.1), its first byte or'ed with `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str | int, value: str) -> bytes:
    """A header field as a literal never added to the peer's table (§6.2.2): by its static
    table index, or by name. Our blocks never touch the server's decoder state, so a request's
    bytes depend on nothing but its own headers."""
    head = _hpack_int(name, 4) if isinstance(name, int) else b"\x00" + _hpack_int(len(name), 7) + name.encode()
    raw = value.encode("latin-1")
    return head + _hpack_int(len(raw), 7) + raw


def grpc_timeout(micros: int) -> str:
    """The grpc-timeout header's value: at most 8 digits and a unit (gRPC's PROTOCOL-HTTP2.md)."""
    for unit, per in (("u", 1), ("m", 1000), ("S", 1_000_000), ("M", 60_000_000)):
        if micros < 100_000_000 * per:
            return f"{-(-micros // per)}{unit}"
    return "99999999H"


@dataclass(slots=True)
class GrpcReply:
    """A finished call: its code, its message's bytes (None if it sent none), the status
    details and the trailing metadata (what a failure's record reads)."""

    stream_id: int
    code: grpc.StatusCode
    details: str
    message: bytes | None
    trailing: tuple[tuple[str, str], ...]


class _Stream:
    __slots__ = ("data", "headers", "http_status")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.headers: list[tuple[str, str]] = []
        self.http_status = 0


class GrpcH2Client:
    """The client end of one HTTP/2 connection that makes unary gRPC calls to one method, in
    the style of h11 and `wire.py`: bytes out (`connect`, `call`, `cancel`, then `take_outbound`
    for what the protocol itself must send: settings and ping acks, window updates), bytes in
    (`feed`, which returns the calls it finished). It never touches a socket.

    Why not grpcio: through its gevent integration a call cost the load generator ~0.6 ms of CPU
    (a rendezvous object, a completion-queue poll and a callback greenlet per call), four times the
    HTTP/1.1 driver's. A call here is one write of a HEADERS and a DATA frame built from parts
    computed once (the header block is literals that never touch the server's HPACK table), and
    its answer two or three frames whose header blocks are decoded once and then read from a cache:
    the client's SETTINGS set the server's HPACK table to 0 bytes, so a block's meaning is its
    bytes. HPACK decoding (Huffman) is the `hpack` package's.

    Flow control: the client's receive windows are opened to the maximum at once (and the
    connection's kept open), so the server never waits on it; its own sends respect the server's
    windows and MAX_CONCURRENT_STREAMS (`call` returns None: wait for `feed` to open them).
    """

    def __init__(self, authority: str, path: str = MODEL_INFER) -> None:
        self._fixed = b"".join((b"\x83\x86", _literal(4, path), _literal(1, authority), _literal(31, "application/grpc"),
                                _literal("te", "trailers")))
        self._decoder = hpack.Decoder()
        self._decoded: dict[bytes, list[tuple[str, str]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._out: list[bytes] = []
        self._buffer = b""
        self._block: bytearray | None = None  # a header block continued in CONTINUATION frames
        self._block_stream = 0
        self._block_end = False
        self._unacked_table_size = True  # our SETTINGS (table size 0) not yet acknowledged
        self.send_window = DEFAULT_WINDOW
        self.stream_window = DEFAULT_WINDOW  # the server's initial window per stream
        self.max_frame = DEFAULT_FRAME_SIZE
        self.max_streams = MAX_WINDOW
        self._received = 0  # DATA bytes taken since the last connection WINDOW_UPDATE
        self.goaway: int | None = None  # the last stream id the server will answer, once it said GOAWAY

    # -- sending ---------------------------------------------------------------------------

    def connect(self) -> bytes:
        """The connection's first bytes: the preface, our settings (an HPACK table of 0, no
        push, the largest stream window) and a connection window opened to the maximum."""
        settings = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big")
                            for key, value in ((HEADER_TABLE_SIZE, 0), (ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, MAX_WINDOW)))
        return b"".join((PREFACE, _frame(SETTINGS, 0, 0, settings),
                         _frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))))

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def closing(self) -> bool:
        """No new call on this connection: the server said GOAWAY, or the stream ids ran out."""
        return self.goaway is not None or self._next_id > MAX_STREAM_ID

    def can_call(self, size: int) -> bool:
        """A message of `size` bytes can leave now (a stream is free and the windows fit it)."""
        need = size + 5
        return (not self.closing and len(self._streams) < self.max_streams
                and need <= self.send_window and need <= self.stream_window)

    def call(self, message: bytes, micros: int, metadata: Sequence[tuple[str, str]]) -> tuple[int, bytes]:
        """(the call's stream id, its bytes) of a unary call sending `message` with a deadline of
        `micros` µs (0 = none) and `metadata`. Check `can_call` first."""
        sid = self._next_id
        self._next_id += 2
        parts = [self._fixed]
        if micros > 0:
            parts.append(_literal("grpc-timeout", grpc_timeout(micros)))
        for key, value in metadata:
            parts.append(_literal(key, value))
        block = b"".join(parts)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self.send_window -= len(body)
        self._streams[sid] = _Stream()
        head = _frame(HEADERS, END_HEADERS, sid, block)
        if len(body) <= self.max_frame:
            return sid, head + _frame(DATA, END_STREAM, sid, body)
        step = self.max_frame
        frames = [_frame(DATA, END_STREAM if k + step >= len(body) else 0, sid, body[k:k + step])
                  for k in range(0, len(body), step)]
        return sid, head + b"".join(frames)

    def cancel(self, stream_id: int) -> bytes:
        """Give up a call (its client deadline): RST_STREAM CANCEL, as grpc does; b"" if it is over."""
        if self._streams.pop(stream_id, None) is None:
            return b""
        return _frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big"))

    def take_outbound(self) -> bytes:
        """What the protocol must send after `feed` (acks, window updates), b"" if nothing."""
        if not self._out:
            return b""
        out, self._out = b"".join(self._out), []
        return out

    # -- receiving -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[GrpcReply]:
        """Take what the socket gave; the calls it finished, in order. Raises H2ProtocolError."""
        buf = self._buffer + data if self._buffer else data
        replies: list[GrpcReply] = []
        pos, end = 0, len(buf)
        while end - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if end - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & MAX_STREAM_ID
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            self._frame_in(kind, flags, sid, payload, replies)
        self._buffer = buf[pos:]
        return replies

    def _frame_in(self, kind: int, flags: int, sid: int, payload: bytes, replies: list[GrpcReply]) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise H2ProtocolError("a header block interrupted before END_HEADERS")
        if kind == DATA:
            self._received += len(payload)
            if self._received > MAX_WINDOW // 2:
                self._out.append(_frame(WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
                self._received = 0
            stream = self._streams.get(sid)
            if stream is not None:
                stream.data.append(_unpad(flags, payload))
                if flags & END_STREAM:
                    replies.append(self._finish(sid, ()))
        elif kind == HEADERS:
            block = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                block = block[5:]
            if flags & END_HEADERS:
                self._headers_in(sid, bytes(block), bool(flags & END_STREAM), replies)
            else:
                self._block, self._block_stream, self._block_end = bytearray(block), sid, bool(flags & END_STREAM)
        elif kind == CONTINUATION:
            if self._block is None or sid != self._block_stream:
                raise H2ProtocolError("CONTINUATION without a header block")
            self._block += payload
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), None
                self._headers_in(sid, block, self._block_end, replies)
        elif kind == SETTINGS:
            self._settings_in(flags, payload)
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise H2ProtocolError("WINDOW_UPDATE of a wrong size")
            if sid == 0:
                self.send_window += int.from_bytes(payload, "big") & MAX_WINDOW
        elif kind == PING:
            if not flags & ACK:
                self._out.append(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if sid in self._streams:
                code = _RST_CODE.get(int.from_bytes(payload[:4], "big"), grpc.StatusCode.INTERNAL)
                del self._streams[sid]
                replies.append(GrpcReply(sid, code, f"stream reset by the server (HTTP/2 error {int.from_bytes(payload[:4], 'big')})", None, ()))
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & MAX_STREAM_ID
            self.goaway = last if self.goaway is None else min(self.goaway, last)
            for lost in [s for s in self._streams if s > last]:  # never processed: the client may try again
                del self._streams[lost]
                replies.append(GrpcReply(lost, grpc.StatusCode.UNAVAILABLE, "the server closed the connection (GOAWAY)", None, ()))
        elif kind == PUSH_PROMISE:
            raise H2ProtocolError("PUSH_PROMISE though push is disabled")
        # PRIORITY and unknown frame types are ignored (§5.5)

    def _settings_in(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            if self._unacked_table_size:  # from now on the server keeps no HPACK table
                self._unacked_table_size = False
                self._decoder.max_allowed_table_size = 0
            return
        if len(payload) % 6:
            raise H2ProtocolError("SETTINGS of a wrong size")
        for k in range(0, len(payload), 6):
            key, value = int.from_bytes(payload[k:k + 2], "big"), int.from_bytes(payload[k + 2:k + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                self.stream_window = value
            elif key == MAX_FRAME_SIZE:
                self.max_frame = value
            elif key == MAX_CONCURRENT_STREAMS:
                self.max_streams = value
        self._out.append(_frame(SETTINGS, ACK, 0, b""))

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        """A header block's fields. Once the server's table is 0 bytes (it said so after our
        SETTINGS), a block means the same whenever it comes: decoded once, then looked up."""
        decoder = self._decoder
        pure = decoder.max_allowed_table_size == 0 and decoder.header_table_size == 0
        if pure:
            fields = self._decoded.get(block)
            if fields is not None:
                return fields
        try:
            fields = [(str(k), str(v)) for k, v in decoder.decode(block)]
        except hpack.HPACKError as exc:
            raise H2ProtocolError(f"HPACK: {exc}") from exc
        if pure:
            if len(self._decoded) >= DECODED_CACHE_SIZE:
                self._decoded.clear()
            self._decoded[block] = fields
        return fields

    def _headers_in(self, sid: int, block: bytes, end: bool, replies: list[GrpcReply]) -> None:
        fields = self._decode(block)  # always: a block for a cancelled stream may still change the table
        stream = self._streams.get(sid)
        if stream is None:
            return
        if not stream.http_status:
            for key, value in fields:
                if key == ":status":
                    stream.http_status = int(value)
        stream.headers.extend(fields)
        if end:
            replies.append(self._finish(sid, fields))

    def _finish(self, sid: int, trailers: Sequence[tuple[str, str]]) -> GrpcReply:
        stream = self._streams.pop(sid)
        status: str | None = None
        details = ""
        trailing: list[tuple[str, str]] = []
        for key, value in trailers:
            if key == "grpc-status":
                status = value
            elif key == "grpc-message":
                details = unquote(value) if "%" in value else value
            elif not key.startswith(":"):
                trailing.append((key, value))
        if status is not None:
            code = _CODES.get(int(status), grpc.StatusCode.UNKNOWN) if status.isdigit() else grpc.StatusCode.UNKNOWN
        elif stream.http_status != 200:
            code = _HTTP_CODE.get(stream.http_status, grpc.StatusCode.UNKNOWN)
            details = details or f"HTTP status {stream.http_status} without a gRPC status"
        else:
            code, details = grpc.StatusCode.INTERNAL, "the call ended without a gRPC status"
        message: bytes | None = None
        if stream.data:
            body = stream.data[0] if len(stream.data) == 1 else b"".join(stream.data)
            if len(body) >= 5:
                if body[0] != 0:
                    return GrpcReply(sid, grpc.StatusCode.INTERNAL, "a compressed message (none was asked for)", None, ())
                size = int.from_bytes(body[1:5], "big")
                if len(body) != 5 + size:
                    return GrpcReply(sid, grpc.StatusCode.INTERNAL, "a message cut short or more than one", None, ())
                message = body[5:]
            elif body:
                return GrpcReply(sid, grpc.StatusCode.INTERNAL, "a message shorter than its prefix", None, ())
        return GrpcReply(sid, code, details, message, tuple(trailing))


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise H2ProtocolError("padding longer than its frame")
    return payload[1:len(payload) - payload[0]]
