"""The real-side controller loop: a `Scheduled` controller against a real gateway on loopback.

What a controller decides at time t must show in the routing of the requests after t, and a
`Fault` reaches the replica itself, whose failing readiness the gateway's health checks then
turn into an ejection, as the twin's simulated probes do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import pytest
import requests

from real.controller import Applied, ControllerDriver
from real.gateway import create_app
from real.server.app import create_app as create_server
from real.server.asgi_client import AsgiClient
from sim.config import ScenarioConfig
from sim.policy.controller import Action, Drain, Eject, Fault, Scheduled, SetWeights
from tests.real.conftest import real_cfg
from tests.real.test_gateway import BODY, TOKEN, ServerThread, free_port, harness, make_cfg

pytestmark = pytest.mark.real  # binds loopback ports (in-process servers)

TICK_S = 0.05


class DriverThread:
    """The controller loop on an event loop of its own, as it runs beside the real stack."""

    def __init__(self, plan: Sequence[tuple[float, Action]], gateway_url: str, until_s: float) -> None:
        self.driver = ControllerDriver(Scheduled(plan, tick_s=TICK_S), gateway_url, TOKEN)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(until_s,), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while self.driver.started_at is None:
            assert self.thread.is_alive() and time.monotonic() < deadline, f"controller did not start: {self.error!r}"
            time.sleep(0.005)

    def _run(self, until_s: float) -> None:
        try:
            asyncio.run(self.driver.run(until_s))
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def since_start(self) -> float:
        assert self.driver.started_at is not None
        return time.monotonic() - self.driver.started_at

    def join(self) -> list[Applied]:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.driver.applied


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `condition` held (polled every 10 ms); fails after `timeout_s`."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.01)
    return time.monotonic() - t0


# -- routing follows the controller --------------------------------------------------------------


@dataclass
class Sent:
    sent_s: float  # controller time at send and at answer
    done_s: float
    replica: int


def test_scheduled_weights_drain_and_eject_show_in_routing_after_their_time() -> None:
    cfg = make_cfg(replicas=4, versions=("1", "2"), version_weights=(1.0, 0.0))  # v1: 0, 2; v2: 1, 3
    plan: list[tuple[float, Action]] = [(0.4, SetWeights((0.0, 1.0))), (0.8, Drain(1)), (1.2, Eject(3))]
    # what each phase routes to; with no v2 replica left, v2's traffic falls back to v1
    expected = [{0, 2}, {1, 3}, {3}, {0, 2}]
    bounds = [0.0] + [t for t, _ in plan] + [1.6]
    margin = TICK_S + 0.1  # an action is due at a tick, then one control call away
    with harness(cfg) as h:
        loop = DriverThread(plan, h.url, until_s=bounds[-1])
        sent: list[Sent] = []
        while loop.since_start() < bounds[-1]:
            t0 = loop.since_start()
            r = h.infer()
            assert r.status_code == 200, r.text
            sent.append(Sent(t0, loop.since_start(), int(r.headers["x-replica"])))
        applied = loop.join()
    assert [a.action for a in applied] == [a for _, a in plan]
    for a, (due, _) in zip(applied, plan):
        assert due <= a.time_s < due + TICK_S + 0.05
    for k, replicas in enumerate(expected):
        checked = [s for s in sent if bounds[k] + (margin if k else 0) <= s.sent_s and s.done_s < bounds[k + 1]]
        assert len(checked) >= 5, f"phase {k}: too few requests to judge"
        assert {s.replica for s in checked} == replicas, f"phase {k} from {bounds[k]} s"


# -- faults reach the replica, health checks do the rest ------------------------------------------


def fault_cfg() -> ScenarioConfig:
    cfg = make_cfg(replicas=2, probe_interval_s=0.1)
    cfg.health.failure_threshold = 2
    cfg.server.token = TOKEN
    cfg.model.backend = "emulated"
    cfg.service.kind, cfg.service.base_s, cfg.service.per_item_s = "deterministic", 0.002, 0.0
    cfg.batching.max_batch_size = 1
    return cfg


@dataclass
class RealStack:
    gateway: ServerThread
    replicas: list[ServerThread]
    http: requests.Session

    def state(self) -> dict[str, object]:
        return dict(self.http.get(self.gateway.url + "/v2/gateway/state", timeout=5).json())

    def routable(self, r: int) -> bool:
        flags = self.state()["routable"]
        assert isinstance(flags, list)
        return bool(flags[r])

    def infer(self, base: str) -> requests.Response:
        return self.http.post(base + "/v2/models/digits/infer", json=BODY, timeout=5)


@contextmanager
def real_stack(cfg: ScenarioConfig) -> Iterator[RealStack]:
    """The real model server (emulated backend) behind the real gateway, all in this process."""
    replicas = [ServerThread(create_server(cfg, r), free_port()) for r in range(cfg.replicas)]
    gateway = ServerThread(create_app(cfg, [s.url for s in replicas], token=TOKEN), free_port())
    stack = RealStack(gateway, replicas, requests.Session())
    try:
        yield stack
    finally:
        stack.http.close()
        for s in [gateway, *replicas]:
            s.stop()


def test_fault_down_gets_the_replica_ejected_by_health_checks_and_clearing_it_restores() -> None:
    cfg = fault_cfg()
    h = cfg.health
    with real_stack(cfg) as stack:
        assert stack.routable(0)
        loop = DriverThread([(0.1, Fault(0, down=True))], stack.gateway.url, until_s=0.15)
        applied = loop.join()
        assert [a.action for a in applied] == [Fault(0, down=True)]
        bound = h.probe_interval_s * h.failure_threshold + 0.5  # + slack: the probe round's phase, 2 shared cores
        wait_for(lambda: not stack.routable(0), bound, "ejected")
        assert loop.driver.started_at is not None
        assert time.monotonic() - (loop.driver.started_at + applied[0].time_s) <= bound  # from the fault on
        assert {int(stack.infer(stack.gateway.url).headers["x-replica"]) for _ in range(6)} == {1}
        down = stack.replicas[0].url
        assert stack.http.get(down + "/v2/health/ready", timeout=5).status_code == 503
        assert stack.infer(down).status_code == 503 and "error" in stack.infer(down).json()

        DriverThread([(0.0, Fault(0))], stack.gateway.url, until_s=0.01).join()
        wait_for(lambda: stack.routable(0), h.probe_interval_s * h.success_threshold + 0.5, "restored")
        assert {int(stack.infer(stack.gateway.url).headers["x-replica"]) for _ in range(6)} == {0, 1}


def test_fault_slowdown_stretches_the_emulated_device_time() -> None:
    cfg = fault_cfg()
    with real_stack(cfg) as stack:
        replica = stack.replicas[1].url
        before = stack.infer(replica).json()["parameters"]["service_s"]
        DriverThread([(0.0, Fault(1, slowdown=5.0))], stack.gateway.url, until_s=0.01).join()
        after = stack.infer(replica).json()["parameters"]["service_s"]
        assert before < 0.004 and 0.009 < after < 0.02, (before, after)
        assert stack.routable(1)  # slow, not down


def test_fault_endpoint_needs_the_token_and_a_well_formed_body(serve: Callable[..., AsgiClient]) -> None:
    c = serve(real_cfg(server=dict(token=TOKEN)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.post_json("/v2/fault", {"down": True}).status == 401
    for bad in ({"down": "yes"}, {"slowdown": 0}, {"slowdown": -1.0}, {"slowdown": True}, {"x": 1}, [True]):
        r = c.post_json("/v2/fault", bad, headers=auth)
        assert r.status == 400 and "error" in r.json(), bad
    assert c.request("POST", "/v2/fault", b"{nope", {**auth, "content-type": "application/json"}).status == 400
    ok = c.post_json("/v2/fault", {"down": True, "slowdown": 2}, headers=auth)
    assert ok.status == 200 and ok.json() == {"replica": 0, "down": True, "slowdown": 2.0}
    assert c.get("/v2/health/ready").status == 503 and c.get("/v2/models/digits/ready").status == 503
    assert c.post_json("/v2/fault", {}, headers=auth).json()["down"] is False  # {} clears the fault
    assert c.get("/v2/health/ready").status == 200
