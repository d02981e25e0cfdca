"""The gateway against stub replicas, all in this process (uvicorn servers in threads).

In-process stubs keep these tests fast and let a test kill or revive a replica between two
requests; `test_launcher.py` checks the same gateway in front of the real model server.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import requests
import uvicorn
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from real.gateway import create_app
from real.gateway.control import view_from_doc
from real.server.app import served_version
from sim.config import ScenarioConfig, validate
from sim.policy.split import WARMUP_HEADER
from sim.twin import Twin
from tests.test_gateway_routing import CASES, loads_seen, routing_cfg

pytestmark = pytest.mark.real  # binds loopback ports (in-process servers)

TOKEN = "test-token-123"
BODY = {"id": "r", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


# -- stub replicas ------------------------------------------------------------------------------


@dataclass
class StubBehaviour:
    mode: str = "ok"  # ok | slow | shed | notready
    delay_s: float = 0.0
    seen: int = 0


def stub_replica(replica: int, version: str, behaviour: StubBehaviour) -> Starlette:
    """The server's contract in miniature: ready, infer with parameters.replica/version, 4xx on bad JSON."""

    async def ready(request: Request) -> Response:
        return Response(b"", status_code=503 if behaviour.mode == "notready" else 200)

    async def infer(request: Request) -> Response:
        behaviour.seen += 1
        body = await request.body()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Response(orjson.dumps({"error": "malformed JSON"}), status_code=400, media_type="application/json")
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            return Response(orjson.dumps({"error": "inputs missing"}), status_code=400, media_type="application/json")
        if behaviour.mode == "shed":
            return Response(orjson.dumps({"error": "queue full"}), status_code=503, headers={"Retry-After": "2"}, media_type="application/json")
        if behaviour.mode == "slow":
            await asyncio.sleep(behaviour.delay_s)
        params = {"replica": replica, "version": version, "queue_s": 0.0, "service_s": 0.0, "batch_size": 1,
                  "batch_id": behaviour.seen - 1, "server_s": 0.0}
        return Response(orjson.dumps({"id": doc.get("id", ""), "outputs": [], "parameters": params}), media_type="application/json")

    async def model(request: Request) -> Response:
        return Response(orjson.dumps({"name": "digits", "versions": [version]}), media_type="application/json")

    return Starlette(routes=[
        Route("/v2/health/ready", ready),
        Route("/v2/models/{m}/infer", infer, methods=["POST"]),
        Route("/v2/models/{m}/versions/{v}/infer", infer, methods=["POST"]),
        Route("/v2/models/{m}", model),
    ])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn in a thread with its own event loop; `stop()` closes the port (a dead replica)."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http="h11",
                                                    log_level="error", lifespan="on", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "stub server did not start"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class DropServer:
    """Answers health probes, then drops every infer connection without a reply (a broken upstream)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(65536)
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def stop(self) -> None:
        self.closed = True
        self.sock.close()


@dataclass
class Harness:
    gateway: ServerThread
    replicas: list[ServerThread | DropServer]
    behaviours: list[StubBehaviour]
    cfg: ScenarioConfig
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.gateway.url

    def infer(self, version: str | None = None, user: int | None = None, **kw: Any) -> requests.Response:
        path = "/v2/models/digits/infer" if version is None else f"/v2/models/digits/versions/{version}/infer"
        headers = {"x-user-id": str(user)} if user is not None else {}
        return self.http.post(self.url + path, json=BODY, headers=headers, timeout=10, **kw)

    def revive(self, r: int) -> None:
        old = self.replicas[r]
        self.replicas[r] = ServerThread(stub_replica(r, served_version(self.cfg, r), self.behaviours[r]), old.port)

    def replica_state(self) -> list[dict[str, Any]]:
        return list(self.http.get(self.url + "/v2/gateway/replicas", timeout=5).json()["replicas"])


def make_cfg(replicas: int = 2, policy: str = "round_robin", versions: tuple[str, ...] = ("1",),
             version_weights: tuple[float, ...] = (), sticky: bool = False, probe_interval_s: float = 60.0,
             upstream_timeout_s: float = 2.0) -> ScenarioConfig:
    """Probes every minute by default: only a test about health checks wants them to act."""
    cfg = ScenarioConfig(replicas=replicas, seed=7)
    cfg.lb.policy = policy
    cfg.model.versions = list(versions)
    cfg.gateway.version_weights = list(version_weights)
    cfg.gateway.sticky = sticky
    cfg.gateway.upstream_timeout_s = upstream_timeout_s
    cfg.health.probe_interval_s = probe_interval_s
    cfg.health.probe_timeout_s = 0.5
    cfg.server.max_body_bytes = 4096
    return cfg


@contextmanager
def harness(cfg: ScenarioConfig, *, drop: tuple[int, ...] = (), token: str = TOKEN) -> Iterator[Harness]:
    behaviours = [StubBehaviour() for _ in range(cfg.replicas)]
    replicas: list[ServerThread | DropServer] = []
    for r in range(cfg.replicas):
        if r in drop:
            replicas.append(DropServer())
        else:
            replicas.append(ServerThread(stub_replica(r, served_version(cfg, r), behaviours[r]), free_port()))
    app = create_app(cfg, [s.url for s in replicas], token=token)
    gateway = ServerThread(app, free_port())
    h = Harness(gateway, replicas, behaviours, cfg)
    try:
        yield h
    finally:
        h.http.close()
        gateway.stop()
        for s in h.replicas:
            s.stop()


def replica_of(resp: requests.Response) -> int:
    assert resp.status_code == 200, resp.text
    return int(resp.json()["parameters"]["replica"])


# -- routing ------------------------------------------------------------------------------------


def test_round_robin_spreads_evenly_and_reports_gateway_time() -> None:
    with harness(make_cfg(replicas=4, policy="round_robin")) as h:
        responses = [h.infer() for _ in range(40)]
        counts = collections.Counter(replica_of(r) for r in responses)
        assert counts == {0: 10, 1: 10, 2: 10, 3: 10}
        gateway_s = [float(r.headers["x-gateway-s"]) for r in responses]
        assert all(0 <= g < 0.05 for g in gateway_s)
        assert all(r.headers["x-replica"] == str(replica_of(r)) for r in responses)
        # the replica's batch id reaches the client untouched: the load generator's merge needs it
        assert sorted(r.json()["parameters"]["batch_id"] for r in responses if replica_of(r) == 0) == list(range(10))


def test_version_weights_zero_one_send_everything_to_one_version() -> None:
    cfg = make_cfg(replicas=4, policy="p2c", versions=("1", "2"), version_weights=(0.0, 1.0))
    with harness(cfg) as h:
        versions = {h.infer(user=u).json()["parameters"]["version"] for u in range(30)}
        assert versions == {"2"}


def test_sticky_keeps_each_user_on_one_version() -> None:
    cfg = make_cfg(replicas=4, policy="random", versions=("1", "2"), sticky=True)
    with harness(cfg) as h:
        seen: dict[int, set[str]] = collections.defaultdict(set)
        for _ in range(3):
            for user in range(20):
                seen[user].add(h.infer(user=user).json()["parameters"]["version"])
        assert all(len(v) == 1 for v in seen.values())
        assert {v for s in seen.values() for v in s} == {"1", "2"}  # users are split, not all on one


def test_sticky_sends_anonymous_requests_by_weight() -> None:
    """Without x-user-id there is no user to stick to: the weighted split, not one version for all."""
    cfg = make_cfg(replicas=4, policy="random", versions=("1", "2"), sticky=True)
    with harness(cfg) as h:
        versions = collections.Counter(h.infer().json()["parameters"]["version"] for _ in range(40))
        assert set(versions) == {"1", "2"}, versions  # all 40 on one version: p = 2**-39


def test_versioned_infer_only_reaches_that_version() -> None:
    cfg = make_cfg(replicas=4, policy="round_robin", versions=("1", "2"))
    with harness(cfg) as h:
        replicas = {replica_of(h.infer(version="2")) for _ in range(10)}
        assert replicas == {1, 3}  # replica r serves versions[r % 2]
        assert h.infer(version="9").status_code == 404
        assert "error" in h.infer(version="9").json()
        bad_model = h.http.post(h.url + "/v2/models/nope/infer", json=BODY, timeout=5)
        assert bad_model.status_code == 404 and "error" in bad_model.json()


def test_weights_control_needs_the_token_and_changes_the_split() -> None:
    cfg = make_cfg(replicas=2, policy="round_robin", versions=("1", "2"), version_weights=(1.0, 0.0))
    with harness(cfg) as h:
        url = h.url + "/v2/gateway/weights"
        assert h.http.post(url, json={"weights": [0, 1]}, timeout=5).status_code == 401
        assert h.http.post(url, json={"weights": [0, 1]}, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for bad in ({"weights": [0, 0]}, {"weights": [1]}, {"weights": [-1, 2]}, {"weights": ["a", 1]}, [1, 2]):
            r = h.http.post(url, json=bad, headers=auth, timeout=5)
            assert r.status_code == 400 and "error" in r.json()
        assert h.http.post(url, data=b"{not json", headers=auth, timeout=5).status_code == 400
        assert {h.infer().json()["parameters"]["version"] for _ in range(5)} == {"1"}
        ok = h.http.post(url, json={"weights": [0, 1]}, headers=auth, timeout=5)
        assert ok.status_code == 200 and ok.json()["weights"] == [0.0, 1.0]
        assert {h.infer().json()["parameters"]["version"] for _ in range(5)} == {"2"}


def test_control_is_closed_without_a_configured_token() -> None:
    with harness(make_cfg(), token="") as h:
        r = h.http.post(h.url + "/v2/gateway/weights", json={"weights": [1]}, headers={"Authorization": "Bearer "}, timeout=5)
        assert r.status_code == 403


# -- failures -----------------------------------------------------------------------------------


def test_replica_dead_between_requests_is_retried_elsewhere_without_client_error() -> None:
    # health probes every 60 s: only the retry path can save these requests
    with harness(make_cfg(replicas=3, policy="round_robin")) as h:
        assert sorted(replica_of(h.infer()) for _ in range(3)) == [0, 1, 2]  # warm pooled connections
        h.replicas[1].stop()
        responses = [h.infer() for _ in range(12)]
        assert [r.status_code for r in responses] == [200] * 12
        assert 1 not in {replica_of(r) for r in responses}
        metrics = h.http.get(h.url + "/metrics", timeout=5).text
        assert 'servelab_gateway_ejections_total{replica="1"} 1.0' in metrics
        assert "servelab_gateway_retries_total 1.0" in metrics


def test_health_checks_eject_and_bring_back() -> None:
    with harness(make_cfg(replicas=2, policy="round_robin", probe_interval_s=0.1)) as h:
        h.replicas[0].stop()
        deadline = time.monotonic() + 5
        while h.replica_state()[0]["healthy"]:
            assert time.monotonic() < deadline, "dead replica never ejected"
            time.sleep(0.05)
        assert {replica_of(h.infer()) for _ in range(6)} == {1}
        h.revive(0)
        deadline = time.monotonic() + 5
        while not h.replica_state()[0]["healthy"]:
            assert time.monotonic() < deadline, "revived replica never came back"
            time.sleep(0.05)
        assert {replica_of(h.infer()) for _ in range(6)} == {0, 1}
        h.behaviours[1].mode = "notready"  # a replica that says it is not ready leaves rotation too
        deadline = time.monotonic() + 5
        while h.replica_state()[1]["healthy"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert {replica_of(h.infer()) for _ in range(4)} == {0}


def test_no_healthy_replica_is_503_with_retry_after() -> None:
    with harness(make_cfg(replicas=2)) as h:
        for s in h.replicas:
            s.stop()
        first = h.infer()  # both refuse: tried, retried, nothing came back
        assert first.status_code == 502 and "error" in first.json()
        r = h.infer()  # both are now ejected: no one to try
        assert r.status_code == 503 and r.headers["Retry-After"] and "error" in r.json()
        assert h.http.get(h.url + "/v2/health/ready", timeout=5).status_code == 503
        assert h.http.get(h.url + "/v2/health/live", timeout=5).status_code == 200


def test_replica_shed_503_passes_through_with_its_retry_after() -> None:
    with harness(make_cfg(replicas=1)) as h:
        h.behaviours[0].mode = "shed"
        r = h.infer()
        assert r.status_code == 503 and r.headers["Retry-After"] == "2" and r.json() == {"error": "queue full"}


def test_upstream_that_drops_connections_is_502() -> None:
    with harness(make_cfg(replicas=1), drop=(0,)) as h:
        r = h.infer()
        assert r.status_code == 502 and "error" in r.json()


def test_slow_upstream_is_504() -> None:
    with harness(make_cfg(replicas=1, upstream_timeout_s=0.3)) as h:
        h.behaviours[0].mode, h.behaviours[0].delay_s = "slow", 1.0
        r = h.infer()
        assert r.status_code == 504 and "error" in r.json()
        h.behaviours[0].mode = "ok"
        assert h.infer().status_code == 200


# -- bad input ----------------------------------------------------------------------------------


def test_malformed_requests_are_4xx_with_an_error_body() -> None:
    with harness(make_cfg(replicas=2)) as h:
        url = h.url + "/v2/models/digits/infer"
        cases = [
            h.http.post(url, data=b"{oops", headers={"content-type": "application/json"}, timeout=5),
            h.http.post(url, data=b"", timeout=5),
            h.http.post(url, json=BODY, headers={"x-user-id": "alice"}, timeout=5),
            h.http.post(url, json=BODY, headers={"x-user-id": "-3"}, timeout=5),
            h.http.post(url, data=b"x" * 10_000, timeout=5),  # over max_body_bytes
            h.http.get(url, timeout=5),  # wrong method
            h.http.get(h.url + "/v2/nothing/here", timeout=5),
        ]
        assert [r.status_code for r in cases] == [400, 400, 400, 400, 413, 405, 404]
        assert all("error" in r.json() for r in cases)
        assert h.infer().status_code == 200  # still serving


# what an HTTP client can send as a header value: visible ASCII, inner spaces, none at either end
# (requests refuses a leading space; servers strip a trailing one, so it would not be the value sent)
HEADER_VALUES = st.from_regex(r"\A(?:[!-~](?:[ !-~]{0,10}[!-~])?)?\Z")


# database=None: a failing example stored by an earlier run must not be replayed against a
# changed gateway (this layer's inputs are generated valid; a stored one may no longer be)
@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                   st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                                lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                                max_leaves=12).map(lambda d: orjson.dumps(d))),
    ctype=st.sampled_from(["application/json", "text/plain", "", "application/octet-stream; charset=utf-8"]),
    user=st.one_of(st.none(), HEADER_VALUES),
    path=st.sampled_from(["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer",
                          "/v2/models/digits/versions/%00/infer", "/v2/models/x/infer", "/v2/models/digits"]),
)
def test_fuzzed_requests_never_5xx(gateway_for_fuzz: Harness, body: bytes, ctype: str, user: str | None, path: str) -> None:
    headers = {"content-type": ctype}
    if user is not None:
        headers["x-user-id"] = user
    r = gateway_for_fuzz.http.post(gateway_for_fuzz.url + path, data=body, headers=headers, timeout=5)
    assert r.status_code < 500, (r.status_code, r.text)


@pytest.fixture(scope="module")
def gateway_for_fuzz() -> Iterator[Harness]:
    with harness(make_cfg(replicas=2)) as h:
        yield h


def test_metrics_and_metadata() -> None:
    with harness(make_cfg(replicas=2)) as h:
        h.infer()
        text = h.http.get(h.url + "/metrics", timeout=5).text
        for name in ("servelab_gateway_request_seconds_bucket", "servelab_gateway_upstream_seconds_bucket",
                     "servelab_gateway_in_flight", "servelab_gateway_retries_total", "servelab_gateway_ejections_total",
                     'servelab_gateway_responses_total{code="200"}', "servelab_gateway_overhead_seconds"):
            assert name in text
        meta = h.http.get(h.url + "/v2/models/digits", timeout=5)
        assert meta.status_code == 200 and meta.json()["name"] == "digits"
        assert h.http.get(h.url + "/v2", timeout=5).status_code == 200


# -- the same routing as the twin ----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_gateway_over_http_routes_every_request_as_the_twin(case: str) -> None:
    """Same seed, config and arrivals: every request on the twin's replica. Requests go one at
    a time and the twin's are spaced out, so every replica is idle at each decision in both."""
    cfg = routing_cfg(**CASES[case], rate=25.0, duration_s=2.0)
    cfg.arrival.kind, cfg.service.kind = "constant", "deterministic"
    cfg.health.probe_interval_s = 60.0
    cols = Twin(cfg).run().columns
    twin = [int(r) for r in cols["replica"]]
    assert all(not any(load) for load in loads_seen(list(cols["arrival_s"]), list(cols["finish_s"]), twin, cfg.replicas))
    with harness(cfg) as h:
        gateway = [int(h.infer(user=int(u)).headers["x-replica"]) for u in cols["user_id"]]
    assert gateway == twin


def versions_after_warm_up(cfg: ScenarioConfig, users: list[int], *, marked: bool) -> tuple[list[str], set[int]]:
    """The version each of `users`' requests (ids w0-0, w0-1, ...) reached after a warm-up burst of
    30 requests, as run_real.warm_up sends it, and which of them the gateway copied to the shadow."""
    warm = {WARMUP_HEADER: "1"} if marked else {}
    with harness(cfg) as h:
        for k in range(30):
            assert h.http.post(h.url + "/v2/models/digits/infer", json={"inputs": BODY["inputs"]},
                               headers={"x-user-id": str(k), **warm}, timeout=10).status_code == 200
        versions = []
        for i, user in enumerate(users):
            r = h.http.post(h.url + "/v2/models/digits/infer", json={**BODY, "id": f"w0-{i}"},
                            headers={"x-user-id": str(user)}, timeout=10)
            versions.append(r.json()["parameters"]["version"])
        deadline = time.monotonic() + 5
        while (doc := h.http.get(h.url + "/v2/gateway/shadow", timeout=5).json())["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
    copied = {int(rid.split("-")[1]) for rid in doc["records"]["request_id"] if rid.startswith("w0-")}
    return versions, copied


def test_a_marked_warm_up_leaves_the_runs_routing_and_shadow_draws_as_the_twins() -> None:
    """run_real warms the stack up through the gateway before the load. Marked (WARMUP_HEADER),
    those requests route and decide their copies with a throwaway stream, so the run's request i
    takes the i-th draws of the seed's routing and shadow streams, as the twin's request i does:
    the same version and the same copy for every request. Unmarked, they would take the first
    draws and shift every later decision."""
    cfg = routing_cfg(policy="random", versions=["1", "2", "3"], version_weights=[0.5, 0.5, 0.0], rate=25.0, duration_s=3.0)
    cfg.arrival.kind, cfg.service.kind = "constant", "deterministic"
    cfg.gateway.shadow_version, cfg.gateway.shadow_percent = "3", 40.0
    cfg.health.probe_interval_s = 60.0
    validate(cfg)
    cols = Twin(cfg).run().columns
    primary = ~cols["shadow"]
    twin_versions = [str(v) for v in cols["version"][primary]]
    index_of = {t: i for i, t in enumerate(cols["arrival_s"][primary])}  # constant arrivals: distinct
    twin_copied = {index_of[t] for t in cols["arrival_s"][cols["shadow"]]}
    users = [int(u) for u in cols["user_id"][primary]]
    assert len(users) == 75 and {"1", "2"} == set(twin_versions) and 10 < len(twin_copied) < 60
    versions, copied = versions_after_warm_up(cfg, users, marked=True)
    assert versions == twin_versions and copied == twin_copied
    shifted, shifted_copies = versions_after_warm_up(cfg, users, marked=False)
    assert shifted != twin_versions and shifted_copies != twin_copied


# -- the control API ----------------------------------------------------------------------------


def routed(h: Harness, n: int = 8) -> set[int]:
    return {replica_of(h.infer()) for _ in range(n)}


def act(h: Harness, replica: int | str, body: object, token: str = TOKEN) -> requests.Response:
    return h.http.post(f"{h.url}/v2/gateway/replicas/{replica}", json=body,
                       headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_replica_actions_change_membership_for_the_next_request() -> None:
    cfg = make_cfg(replicas=4, versions=("1", "2"), version_weights=(1.0, 0.0))  # version 1: replicas 0, 2
    with harness(cfg) as h:
        assert routed(h) == {0, 2}
        assert act(h, 0, {"action": "drain"}, token="wrong").status_code == 401
        drained = act(h, 0, {"action": "drain"})
        assert drained.status_code == 200 and drained.json()["routable"] is False and drained.json()["active"] is False
        assert routed(h) == {2}
        assert act(h, 0, {"action": "activate"}).status_code == 200
        assert act(h, 2, {"action": "eject"}).json()["healthy"] is False
        assert routed(h) == {0}
        assert act(h, 2, {"action": "restore"}).status_code == 200
        moved = act(h, 1, {"action": "set_version", "version": "1"})
        assert moved.status_code == 200 and moved.json()["version"] == "1"
        assert routed(h, 12) == {0, 1, 2}
        state = h.http.get(h.url + "/v2/gateway/state", timeout=5).json()
        assert state["replica_versions"] == [0, 0, 0, 1] and state["routable"] == [True] * 4
        assert [r["version"] for r in h.replica_state()] == ["1", "1", "1", "2"]


def test_malformed_control_requests_are_4xx_with_an_error_body() -> None:
    with harness(make_cfg(replicas=2, versions=("1", "2"))) as h:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        bad = [
            act(h, 0, {}), act(h, 0, []), act(h, 0, {"action": "explode"}), act(h, 0, {"action": 3}),
            act(h, 0, {"action": "set_version"}), act(h, 0, {"action": "set_version", "version": "9"}),
            act(h, 0, {"action": "set_version", "version": 1}),
            h.http.post(h.url + "/v2/gateway/replicas/0", data=b"{nope", headers=auth, timeout=5),
            h.http.post(h.url + "/v2/gateway/replicas/0", data=b"x" * 70_000, headers=auth, timeout=5),
            act(h, 9, {"action": "drain"}), act(h, "x", {"action": "drain"}), act(h, -1, {"action": "drain"}),
            h.http.get(h.url + "/v2/gateway/replicas/0", headers=auth, timeout=5),
        ]
        assert [r.status_code for r in bad] == [400] * 8 + [413, 404, 404, 404, 405]
        assert all(isinstance(r.json().get("error"), str) for r in bad)
        assert [r["routable"] for r in h.replica_state()] == [True, True]  # nothing changed


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["action", "version", "weights", "x"]), c, max_size=3),
                         max_leaves=8),
       replica=st.integers(0, 3), path=st.sampled_from(["replicas", "weights"]))
def test_fuzzed_control_bodies_never_5xx(control_for_fuzz: Harness, body: object, replica: int, path: str) -> None:
    url = f"{control_for_fuzz.url}/v2/gateway/{path}" + (f"/{replica}" if path == "replicas" else "")
    r = control_for_fuzz.http.post(url, data=orjson.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


@pytest.fixture(scope="module")
def control_for_fuzz() -> Iterator[Harness]:
    with harness(make_cfg(replicas=3, versions=("1", "2"))) as h:
        yield h


def test_state_is_the_controllers_view_with_window_metrics() -> None:
    cfg = make_cfg(replicas=2, versions=("1", "2"), version_weights=(1.0, 1.0))
    cfg.window_s = 30.0
    with harness(cfg) as h:
        for _ in range(6):
            assert h.infer(version="1").status_code == 200
        h.behaviours[1].mode = "shed"
        for _ in range(3):
            assert h.infer(version="2").status_code == 503
        h.infer(version="9")  # a 404 names no version: in no window
        doc = h.http.get(h.url + "/v2/gateway/state", timeout=5).json()  # read-only: no token needed
        assert doc["versions"] == ["1", "2"] and doc["version_weights"] == [1.0, 1.0] and doc["window_s"] == 30.0
        assert doc["replica_versions"] == [0, 1] and doc["routable"] == [True, True] and doc["healthy"] == [True, True]
        v1, v2 = doc["windows"]
        assert (v1["requests"], v1["ok"], v1["errors"]) == (6, 6, 0)
        assert 0 < v1["latency_p50_s"] <= v1["latency_p99_s"] < 1
        assert (v2["requests"], v2["ok"], v2["errors"]) == (3, 0, 3) and v2["latency_p99_s"] is None
        view = view_from_doc(doc, now=1.5)
        assert view.now == 1.5 and view.routable == (True, True) and view.windows[1].errors == 3


def test_openapi_describes_every_gateway_endpoint() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "real" / "openapi.yaml").read_text())
    app = create_app(make_cfg(replicas=1), ["http://127.0.0.1:9"], token=TOKEN)
    own = {re.sub(r":\w+}", "}", r.path) for r in app.routes if r.path.startswith("/v2/gateway")}  # type: ignore[attr-defined]
    assert set(spec["x-gateway-paths"]) == own
