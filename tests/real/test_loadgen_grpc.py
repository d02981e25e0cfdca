"""`loadgen.protocol=grpc` end to end against a gRPC server that answers, refuses and stalls on
purpose (grpcio's own server, in this process): every request is recorded once, with the status a
refusal's gRPC code and trailing metadata say, the client's deadline as a timeout, and the
metadata and deadline the server saw."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from real.grpc import grpc_service_pb2 as pb
from real.loadgen.grpc_wire import MODEL_INFER
from real.loadgen.runner import run_load
from sim.config import ArrivalConfig, LoadgenConfig, ScenarioConfig

pytestmark = pytest.mark.real
TIMEOUT_S = 0.3
STALL_S = 0.6


class Behaviour:
    """Request N (its OIP id `w0-N`) by N % 4: 0 answers, 1 refuses (UNAVAILABLE, as a full
    queue), 2 stalls past the client deadline, 3 expires in the queue (DEADLINE_EXCEEDED)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}  # N -> (x-user-id, the call's time remaining)
        self.lock = threading.Lock()

    def infer(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(data)
        n = int(request.id.rsplit("-", 1)[1])
        meta = dict(context.invocation_metadata())
        with self.lock:
            self.seen[n] = (str(meta.get("x-user-id")), context.time_remaining() or 0.0)
        who = (("x-replica", "1"), ("x-model-version", "2"))
        if n % 4 == 1:
            context.abort_with_status(_status(grpc.StatusCode.UNAVAILABLE, "queue full", who))
        if n % 4 == 2:
            time.sleep(STALL_S)
        if n % 4 == 3:
            context.abort_with_status(_status(grpc.StatusCode.DEADLINE_EXCEEDED, "request timeout expired while queued", who))
        answer = pb.ModelInferResponse(model_name="digits", model_version="1", id=request.id)
        answer.parameters["batch_id"].int64_param = n
        answer.parameters["batch_size"].int64_param = 1
        answer.parameters["replica"].int64_param = 0
        answer.parameters["version"].string_param = "1"
        answer.parameters["queue_s"].double_param = n * 1e-6  # the record shows whose answer it read
        return answer.SerializeToString()


def _status(code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]) -> Any:
    class Status(grpc.Status):  # grpc.Status is an interface of three attributes
        pass

    s = Status()
    s.code, s.details, s.trailing_metadata = code, details, trailing  # type: ignore[misc]
    return s


@pytest.fixture
def target() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service, method = MODEL_INFER.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(behaviour.infer, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", behaviour
    finally:
        server.stop(grace=None)


@pytest.mark.slow
def test_answers_refusals_and_deadlines_over_grpc_are_recorded_as_over_rest(tmp_path: Path,
                                                                            target: tuple[str, Behaviour]) -> None:
    url, behaviour = target
    cfg = ScenarioConfig(seed=3, duration_s=2.0, warmup_s=0.0, timeout_s=TIMEOUT_S, replicas=1,
                         arrival=ArrivalConfig(kind="poisson", rate=40.0, users=10),
                         loadgen=LoadgenConfig(workers=1, max_lag_p99_s=0.05, protocol="grpc"))
    result = run_load(cfg, url, tmp_path / "loadgen", path="/v2/models/digits/infer")
    frame = result.merged.requests.set_index("request_id")
    sends = result.merged.sends.set_index("request_id")
    assert result.complete and result.merged.duplicates == 0 and result.merged.never_sent == 0
    kind = frame.index.to_numpy() % 4
    assert len(frame) > 20 and set(kind) == {0, 1, 2, 3}
    assert (frame["status"][kind == 0] == "ok").all()
    np.testing.assert_allclose(frame["queue_s"][kind == 0], frame.index[kind == 0] * 1e-6)  # each answer to its call
    assert (frame["status"][kind == 1] == "shed").all() and (sends["http_status"][kind == 1] == 503).all()
    assert (frame["replica"][kind == 1] == 1).all() and (frame["version"][kind == 1] == "2").all()
    assert (frame["status"][kind == 2] == "timeout").all() and (sends["http_status"][kind == 2] == 0).all()
    stalled = frame["latency_s"][kind == 2].to_numpy()
    assert (stalled >= TIMEOUT_S).all() and (stalled < STALL_S).all()  # the client's deadline, not the answer
    assert (sends["http_status"][kind == 3] == 504).all() and (frame["replica"][kind == 3] == 1).all()
    # what the server saw: every call, its user, and a deadline no later than the client's
    assert set(behaviour.seen) == set(frame.index)
    users = {n: u for n, (u, _) in behaviour.seen.items()}
    assert all(users[n] == str(frame.at[n, "user_id"]) for n in frame.index)
    remaining = np.array([r for _, r in behaviour.seen.values()])
    assert ((remaining > 0) & (remaining <= TIMEOUT_S)).all()


@pytest.mark.slow
def test_a_server_that_is_not_there_is_a_connection_error_for_every_request(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ScenarioConfig(seed=4, duration_s=1.0, warmup_s=0.0, timeout_s=TIMEOUT_S, replicas=1,
                         arrival=ArrivalConfig(kind="poisson", rate=20.0, users=5),
                         loadgen=LoadgenConfig(workers=1, max_lag_p99_s=0.05, protocol="grpc"))
    result = run_load(cfg, f"127.0.0.1:{port}", tmp_path / "loadgen", path="/v2/models/digits/infer")
    assert result.merged.never_sent == 0 and len(result.merged.requests) > 5
    assert (result.merged.sends["http_status"] == -1).all() and (result.merged.requests["status"] == "error").all()


@pytest.mark.slow
def test_closed_loop_users_over_grpc_wait_for_each_outcome(tmp_path: Path, target: tuple[str, Behaviour]) -> None:
    """A closed user sends its next request only after the last one's outcome (an answer, a
    refusal, or its own deadline), so at most `users` calls are ever in flight."""
    url, behaviour = target
    users = 3
    cfg = ScenarioConfig(seed=5, duration_s=2.0, warmup_s=0.0, timeout_s=TIMEOUT_S, replicas=1,
                         arrival=ArrivalConfig(kind="closed", users=users, think_s=0.05),
                         loadgen=LoadgenConfig(workers=1, max_lag_p99_s=0.05, protocol="grpc"))
    result = run_load(cfg, url, tmp_path / "loadgen", path="/v2/models/digits/infer")
    frame = result.merged.requests
    assert result.complete and len(frame) == len(behaviour.seen) > users
    assert set(frame["status"]) <= {"ok", "shed", "timeout"}
    for _, mine in frame.sort_values("arrival_s").groupby("user_id"):
        # each user's next request leaves after its previous one finished
        assert (mine["arrival_s"].to_numpy()[1:] >= mine["finish_s"].to_numpy()[:-1]).all()
