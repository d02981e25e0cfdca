"""The load generator's HTTP/1.1 without I/O (real.loadgen.wire): what it writes is the request
a server parses, and it reads answers however the bytes are split. No Locust, no sockets."""

from __future__ import annotations

import httptools
import orjson
import pytest

from real.loadgen.wire import Answer, AnswerReader, RequestEncoder

MID = b'","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[1.5]}],"parameters":{"label":3,"timeout":'


class _Parsed:
    """What a server's parser (httptools, as uvicorn's) makes of the bytes."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def parse_request(data: bytes) -> tuple[httptools.HttpRequestParser, _Parsed]:
    seen = _Parsed()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(data)
    return parser, seen


@pytest.mark.parametrize("pin", [None, "2"])
def test_an_encoded_request_is_the_infer_a_server_parses(pin: str | None) -> None:
    encoder = RequestEncoder("127.0.0.1:8000", "/v2/models/digits/infer", [b"unused", MID])
    parser, seen = parse_request(encoder.encode("w1-42", 17, 1, 250_000, pin))
    assert seen.complete == 1 and parser.get_method() == b"POST" and parser.should_keep_alive()
    assert seen.url == b"/v2/models/digits/infer"
    assert seen.headers[b"x-user-id"] == b"17" and seen.headers[b"content-type"] == b"application/json"
    assert seen.headers.get(b"x-model-version") == (None if pin is None else pin.encode())
    assert seen.headers[b"host"] == b"127.0.0.1:8000"
    doc = orjson.loads(seen.body)
    assert doc["id"] == "w1-42" and doc["parameters"] == {"label": 3, "timeout": 250_000}
    assert doc["inputs"][0]["shape"] == [1, 64]


BODY_1 = b'{"parameters":{"queue_s":0}}'
ANSWER_1 = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Gateway-S: 0.000031\r\nx-replica: 1\r\n"
            b"x-model-version: 2\r\ncontent-length: 28\r\n\r\n" + BODY_1)
ANSWER_2 = (b"HTTP/1.1 503 Service Unavailable\r\nx-replica: 0\r\nx-model-version: 1\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n\r\n5\r\n{\"err\r\n4\r\nor\":\r\n3\r\n\"x\"\r\n1\r\n}\r\n0\r\n\r\n")


def test_answers_read_the_same_however_the_bytes_are_split() -> None:
    """A keep-alive connection's answers, cut at every byte: each comes out once, whole, in
    order, with the headers the records read (any case) and whether the connection stays open."""
    stream = ANSWER_1 + ANSWER_2
    expected = [Answer(200, BODY_1, b"0.000031", b"1", b"2", True),
                Answer(503, b'{"error":"x"}', None, b"0", b"1", False)]
    for cut in range(1, len(stream)):
        reader = AnswerReader()
        got = [*reader.feed(stream[:cut]), *reader.feed(stream[cut:])]
        assert got == expected, cut


def test_bytes_that_are_not_http_are_refused() -> None:
    with pytest.raises(httptools.HttpParserError):
        AnswerReader().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
