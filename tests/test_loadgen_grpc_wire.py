"""The load generator's own HTTP/2 for gRPC calls (`grpc_wire.GrpcH2Client`), without sockets:
the bytes a call sends, as a server's HPACK decoder reads them, and the server's frames in (built
here with `hpack`'s encoder as a gRPC server would send them) to the replies a record reads."""

from __future__ import annotations

import grpc
import hpack
import numpy as np
import pytest

from real.loadgen import grpc_wire as gw
from real.loadgen.grpc_wire import GrpcH2Client, GrpcReply, H2ProtocolError, grpc_timeout, read_answer
from real.grpc import grpc_service_pb2 as pb

TARGET = "127.0.0.1:8001"


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in `data`."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big"), data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


class Server:
    """A gRPC server's side of the frames, with a real HPACK encoder (Huffman, its own table)."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def settings(self, *pairs: tuple[int, int]) -> bytes:
        return frame(gw.SETTINGS, 0, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs))

    def ack(self) -> bytes:
        """Acknowledge the client's settings: its HPACK table of 0 applies from the next block."""
        self.encoder.header_table_size = 0
        return frame(gw.SETTINGS, gw.ACK, 0, b"")

    def headers(self, sid: int, fields: list[tuple[str, str]], end: bool = False) -> bytes:
        return frame(gw.HEADERS, gw.END_HEADERS | (gw.END_STREAM if end else 0), sid, self.encoder.encode(fields))

    def answer(self, sid: int, message: bytes, trailing: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
        return (self.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                + frame(gw.DATA, 0, sid, b"\x00" + len(message).to_bytes(4, "big") + message)
                + self.headers(sid, [("grpc-status", "0"), *trailing], end=True))


def response(batch_id: int = 3) -> bytes:
    msg = pb.ModelInferResponse(model_name="digits")
    msg.parameters["batch_id"].int64_param = batch_id
    msg.outputs.add(name="label", datatype="INT64", shape=[1])
    msg.raw_output_contents.append(np.array([7], "<i8").tobytes())
    return msg.SerializeToString()


def test_a_call_is_one_headers_and_one_data_frame_that_a_grpc_server_reads() -> None:
    client = GrpcH2Client(TARGET)
    message = b"\x0a\x06digits"
    sid, data = client.call(message, 1_500_000, (("x-user-id", "42"), ("x-model-version", "2")))
    (k1, f1, s1, block), (k2, f2, s2, body) = frames(data)
    assert (k1, s1, k2, s2) == (gw.HEADERS, sid, gw.DATA, sid) and sid == 1
    assert f1 == gw.END_HEADERS and f2 == gw.END_STREAM
    assert dict(hpack.Decoder().decode(block)) == {
        ":method": "POST", ":scheme": "http", ":path": gw.MODEL_INFER, ":authority": TARGET,
        "content-type": "application/grpc", "te": "trailers", "grpc-timeout": "1500000u",
        "x-user-id": "42", "x-model-version": "2"}
    assert body == b"\x00" + len(message).to_bytes(4, "big") + message
    assert client.call(message, 0, ())[0] == 3  # odd ids, in order; no deadline: no grpc-timeout
    assert "grpc-timeout" not in dict(hpack.Decoder().decode(frames(client.call(message, 0, ())[1])[0][3]))


def test_the_connection_opens_with_the_preface_a_zero_hpack_table_and_open_windows() -> None:
    data = GrpcH2Client(TARGET).connect()
    assert data.startswith(gw.PREFACE)
    (k1, _, _, settings), (k2, _, s2, update) = frames(data[len(gw.PREFACE):])
    pairs = {int.from_bytes(settings[i:i + 2], "big"): int.from_bytes(settings[i + 2:i + 6], "big")
             for i in range(0, len(settings), 6)}
    assert k1 == gw.SETTINGS and pairs == {gw.HEADER_TABLE_SIZE: 0, gw.ENABLE_PUSH: 0, gw.INITIAL_WINDOW_SIZE: gw.MAX_WINDOW}
    assert (k2, s2) == (gw.WINDOW_UPDATE, 0) and int.from_bytes(update, "big") == gw.MAX_WINDOW - gw.DEFAULT_WINDOW


def test_an_answer_fed_byte_by_byte_is_one_ok_reply_with_its_message() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    sid, _ = client.call(b"", 0, ())
    wire = server.answer(sid, response())
    replies = [r for k in range(len(wire)) for r in client.feed(wire[k:k + 1])]
    assert [(r.stream_id, r.code, r.trailing) for r in replies] == [(sid, grpc.StatusCode.OK, ())]
    assert replies[0].message is not None
    params, label = read_answer(replies[0].message)
    assert params["batch_id"] == 3 and label == 7
    assert client.in_flight == 0


def test_a_refusal_carries_its_code_its_details_and_the_servers_trailing_metadata() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    sid, _ = client.call(b"", 0, ())
    trailers_only = server.headers(sid, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14"),
                                         ("grpc-message", "queue full: 8%25 of 8"), ("x-replica", "1"),
                                         ("x-model-version", "2")], end=True)
    (reply,) = client.feed(trailers_only)
    assert reply == GrpcReply(sid, grpc.StatusCode.UNAVAILABLE, "queue full: 8% of 8", None,
                              (("content-type", "application/grpc"), ("x-replica", "1"), ("x-model-version", "2")))
    assert gw.read_failure(reply.code, reply.details, reply.trailing) == (503, 1, "2")


def test_without_a_grpc_status_the_http_status_decides_and_a_missing_status_is_internal() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    a, _ = client.call(b"", 0, ())
    b, _ = client.call(b"", 0, ())
    (r1,) = client.feed(server.headers(a, [(":status", "503")], end=True))
    (r2,) = client.feed(server.headers(b, [(":status", "200")]) + frame(gw.DATA, gw.END_STREAM, b, b""))
    assert r1.code == grpc.StatusCode.UNAVAILABLE and r2.code == grpc.StatusCode.INTERNAL


def test_settings_are_applied_and_acknowledged_and_pings_answered() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    assert client.feed(server.settings((gw.MAX_CONCURRENT_STREAMS, 1), (gw.MAX_FRAME_SIZE, 32768))) == []
    assert client.feed(frame(gw.PING, 0, 0, b"12345678")) == []
    assert frames(client.take_outbound()) == [(gw.SETTINGS, gw.ACK, 0, b""), (gw.PING, gw.ACK, 0, b"12345678")]
    assert client.take_outbound() == b"" and client.max_frame == 32768


def test_no_call_beyond_the_servers_stream_limit_or_its_window() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    client.feed(server.settings((gw.MAX_CONCURRENT_STREAMS, 1)))
    assert client.can_call(10)
    sid, _ = client.call(b"x" * 10, 0, ())
    assert not client.can_call(10)  # one stream open: the limit
    client.feed(server.answer(sid, b""))
    assert client.can_call(10)
    assert not client.can_call(client.send_window)  # the connection's window is what is left of 65,535 bytes
    client.feed(frame(gw.WINDOW_UPDATE, 0, 0, (100).to_bytes(4, "big")))
    assert client.send_window == gw.DEFAULT_WINDOW - 15 + 100


def test_a_large_message_leaves_in_frames_of_the_servers_size() -> None:
    client = GrpcH2Client(TARGET)
    message = bytes(range(256)) * 100  # 25,600 bytes > 16,384
    _, data = client.call(message, 0, ())
    data_frames = [(flags, payload) for kind, flags, _, payload in frames(data) if kind == gw.DATA]
    assert [len(p) for _, p in data_frames] == [gw.DEFAULT_FRAME_SIZE, len(message) + 5 - gw.DEFAULT_FRAME_SIZE]
    assert [f for f, _ in data_frames] == [0, gw.END_STREAM] and b"".join(p for _, p in data_frames)[5:] == message


def test_a_cancelled_call_resets_its_stream_and_its_late_answer_is_read_but_not_replied() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    a, _ = client.call(b"", 0, ())
    b, _ = client.call(b"", 0, ())
    assert frames(client.cancel(a)) == [(gw.RST_STREAM, 0, a, gw.CANCEL.to_bytes(4, "big"))]
    assert client.cancel(a) == b""  # once
    # the late answer's blocks still go through the decoder (they may index into its table)
    replies = client.feed(server.answer(a, response(1), [("x-late", "1")]) + server.answer(b, response(2), [("x-late", "1")]))
    assert [r.stream_id for r in replies] == [b] and replies[0].trailing == (("x-late", "1"),)


def test_goaway_fails_the_calls_the_server_never_took_and_stops_new_ones() -> None:
    client = GrpcH2Client(TARGET)
    ids = [client.call(b"", 0, ())[0] for _ in range(3)]  # 1, 3, 5
    replies = client.feed(frame(gw.GOAWAY, 0, 0, (3).to_bytes(4, "big") + (0).to_bytes(4, "big")))
    assert [(r.stream_id, r.code) for r in replies] == [(5, grpc.StatusCode.UNAVAILABLE)]
    assert gw.read_failure(replies[0].code, replies[0].details, replies[0].trailing)[0] == gw.CONNECTION_ERROR
    assert client.in_flight == 2 and ids[:2] == [1, 3] and not client.can_call(0)


def test_a_reset_from_the_server_ends_its_call() -> None:
    client = GrpcH2Client(TARGET)
    sid, _ = client.call(b"", 0, ())
    (reply,) = client.feed(frame(gw.RST_STREAM, 0, sid, (0x7).to_bytes(4, "big")))  # REFUSED_STREAM
    assert reply.code == grpc.StatusCode.UNAVAILABLE and reply.message is None


def test_header_blocks_are_cached_only_once_the_servers_table_is_zero() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    sid, _ = client.call(b"", 0, ())
    client.feed(server.answer(sid, response()))  # before the ack: the server may index into its table
    assert client._decoded == {}
    client.feed(server.ack())
    for _ in range(3):
        sid, _ = client.call(b"", 0, ())
        (reply,) = client.feed(server.answer(sid, response(), [("x-gateway-s", "0.001")]))
        assert reply.code == grpc.StatusCode.OK and reply.trailing == (("x-gateway-s", "0.001"),)
    assert len(client._decoded) == 2  # the headers and the trailers, decoded once each


def test_broken_framing_is_a_protocol_error() -> None:
    client = GrpcH2Client(TARGET)
    with pytest.raises(H2ProtocolError):
        client.feed(frame(gw.CONTINUATION, gw.END_HEADERS, 1, b""))
    with pytest.raises(H2ProtocolError):
        GrpcH2Client(TARGET).feed(frame(gw.PUSH_PROMISE, gw.END_HEADERS, 1, b"\x00\x00\x00\x02"))


def test_a_compressed_or_cut_message_is_internal() -> None:
    client, server = GrpcH2Client(TARGET), Server()
    sid, _ = client.call(b"", 0, ())
    wire = (server.headers(sid, [(":status", "200")]) + frame(gw.DATA, 0, sid, b"\x01\x00\x00\x00\x01x")
            + server.headers(sid, [("grpc-status", "0")], end=True))
    (reply,) = client.feed(wire)
    assert reply.code == grpc.StatusCode.INTERNAL and reply.message is None
    sid, _ = client.call(b"", 0, ())
    (reply,) = client.feed(server.headers(sid, [(":status", "200")]) + frame(gw.DATA, 0, sid, b"\x00\x00\x00\x00\x09x")
                           + server.headers(sid, [("grpc-status", "0")], end=True))
    assert reply.code == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("micros", "value"), [(1, "1u"), (99_999_999, "99999999u"), (100_000_000, "100000m"),
                                               (100_000_000_001, "100001S")])
def test_grpc_timeout_fits_eight_digits(micros: int, value: str) -> None:
    assert grpc_timeout(micros) == value


def test_a_connection_whose_stream_ids_ran_out_takes_no_new_call() -> None:
    client = GrpcH2Client(TARGET)
    client._next_id = gw.MAX_STREAM_ID  # the last odd id
    assert client.can_call(0) and not client.closing
    client.call(b"", 0, ())
    assert client.closing and not client.can_call(0)


def test_long_metadata_values_use_hpacks_multi_byte_lengths() -> None:
    client = GrpcH2Client("h" * 130 + ":1")
    _, data = client.call(b"", 0, (("x-model-version", "v" * 300),))
    fields = dict(hpack.Decoder().decode(frames(data)[0][3]))
    assert fields[":authority"] == "h" * 130 + ":1" and fields["x-model-version"] == "v" * 300
