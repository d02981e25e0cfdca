"""Rollouts on the real stack: replicas added and removed while traffic flows, manual promote and
abort through the gateway, and the control API refusing what it cannot do without changing state.

The membership test runs the launcher's real processes (model servers on the emulated backend,
the gateway) under a steady closed-loop load from this process, and a `Scheduled` controller
adding and removing replicas through the driver: every request must be answered 200.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pytest
import requests

from real.controller import BackgroundDriver, ControllerDriver
from real.gateway.control import commands_after
from real.launcher import LaunchError, RunningStack, launch, launch_with, server_command
from sim.config import ScenarioConfig, ServiceConfig
from sim.policy.controller import Action, AddReplica, RemoveReplica, Scheduled, SetWeights
from sim.policy.rollout import controller_from_config
from tests.real.conftest import alive
from tests.real.test_gateway import BODY, TOKEN, harness, make_cfg

pytestmark = pytest.mark.real  # binds loopback ports, starts processes

INFER = "/v2/models/digits/infer"


def stack_cfg(replicas: int = 2) -> ScenarioConfig:
    cfg = ScenarioConfig(replicas=replicas, seed=5, service=ServiceConfig(kind="deterministic", base_s=0.004, per_item_s=0.0))
    cfg.model.versions = ["1", "2"]
    cfg.health.probe_interval_s = 0.1
    cfg.health.retries = 0  # no retry may hide a request sent to a replica that is gone
    return cfg


@dataclass
class Answer:
    sent_s: float  # wall clock (time.monotonic)
    status: int
    replica: int


class SteadyLoad:
    """`clients` closed-loop clients, each sending as soon as its last answer came back (with a
    short think time), until stopped: a load that never pauses while the membership changes."""

    def __init__(self, url: str, clients: int = 6, think_s: float = 0.005) -> None:
        self.url = url + INFER
        self.think_s = think_s
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, k: int) -> None:
        with requests.Session() as http:
            user = k
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post(self.url, json=BODY, headers={"x-user-id": str(user)}, timeout=10)
                    answer = Answer(sent, r.status_code, int(r.headers.get("x-replica", -1)))
                except requests.RequestException as exc:  # a lost request: the test fails on it
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.answers.append(answer)
                user += 100
                time.sleep(self.think_s)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self.answers


def run_driver(driver: ControllerDriver, until_s: float) -> BaseException | None:
    """The driver on its own thread, time 0 now; the error that ended it, if any."""
    background = BackgroundDriver(driver, until_s, lambda: time.time()).start()
    deadline = time.monotonic() + until_s + 30
    while background._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return background.stop()


def gateway_replicas(stack: RunningStack) -> list[dict[str, Any]]:
    return list(requests.get(stack.gateway_url + "/v2/gateway/replicas", timeout=5).json()["replicas"])


def test_replicas_added_and_removed_under_load_lose_no_request(tmp_path: Path) -> None:
    cfg = stack_cfg()
    # replica 0 serves v1, 1 serves v2; add a v1 (index 2) and a v2 (index 3), then retire 0 and 1
    plan: Sequence[tuple[float, Action]] = [(0.2, AddReplica(0)), (0.2, AddReplica(1)),
                                            (3.0, RemoveReplica(0)), (3.5, RemoveReplica(1))]
    with launch(cfg, run_dir=tmp_path) as stack:
        old = [stack.replicas[0], stack.replicas[1]]
        load = SteadyLoad(stack.gateway_url)
        time.sleep(0.3)  # traffic flows before anything changes
        driver = ControllerDriver(Scheduled(plan, tick_s=0.1), stack.gateway_url, stack.token, launcher=stack)
        error = run_driver(driver, until_s=3.7)
        time.sleep(0.5)  # and after the last change
        answers = load.stop()
        listing = gateway_replicas(stack)
        assert error is None, error
        new_alive = all(p.poll() is None for p in stack.replicas[2:])
    assert load.failures == []
    statuses = Counter(a.status for a in answers)
    assert statuses == {200: len(answers)} and len(answers) > 200, statuses
    assert len(stack.replica_urls) == 4 and new_alive
    assert all(p.returncode == 0 for p in old)  # stopped gracefully, and reaped
    # the new replicas took traffic; the retired ones none once the last answers were in
    assert {a.replica for a in answers} == {0, 1, 2, 3}
    assert driver.started_at is not None
    removed_at = {int(e.detail["replica"]): driver.started_at + e.time_s for e in driver.events
                  if e.kind == "action" and e.detail["action"] == "RemoveReplica"}
    assert set(removed_at) == {0, 1}
    for r, t in removed_at.items():
        assert not [a for a in answers if a.replica == r and a.sent_s > t + 0.05], f"replica {r} served after removal"
    assert [d["removed"] for d in listing] == [True, True, False, False] and all(d["in_flight"] == 0 for d in listing[:2])
    assert driver.notes == []  # every replica, the new ones before they joined, took the run's time 0
    kinds = Counter(e.kind for e in driver.events)
    assert kinds["started"] == 2 and kinds["stopped"] == 2 and kinds["restore"] == 2, driver.events


def test_a_replica_added_from_a_passing_thread_outlives_it_and_dies_with_the_stack(tmp_path: Path) -> None:
    """The kernel kills a child when the *thread* that forked it ends (PR_SET_PDEATHSIG): a
    controller's thread must not take the replicas it started with it."""
    with launch(stack_cfg(), run_dir=tmp_path) as stack:
        added: list[tuple[int, str]] = []
        worker = threading.Thread(target=lambda: added.append(stack.add_replica("2")))
        worker.start()
        worker.join(timeout=60)
        assert added and added[0][0] == 2 and not worker.is_alive()
        time.sleep(0.3)
        proc = stack.replicas[2]
        assert proc.poll() is None and requests.get(added[0][1] + "/v2/health/ready", timeout=5).status_code == 200
        assert requests.get(added[0][1] + "/v2/models/digits", timeout=5).json()["versions"] == ["2"]
        assert proc.pid in stack.pids and stack.replica_urls[2] == added[0][1]
    assert proc.returncode is not None and not alive(proc.pid)


def test_a_replica_that_fails_to_start_at_run_time_says_why(tmp_path: Path) -> None:
    def command(config: Path, replica: int, port: int, host: str) -> list[str]:
        if replica < 2:
            return server_command(config, replica, port, host)
        return [sys.executable, "-c", "import sys; print('no model for', sys.argv[1:]); sys.exit(3)"]

    with launch_with(stack_cfg(), run_dir=tmp_path, replica_command=command) as stack:
        with pytest.raises(LaunchError) as err:
            stack.add_replica("2")
    message = str(err.value)
    assert "replica 2 exited with status 3" in message and "no model for ['--version', '2'" in message  # then --grpc-port


# -- the control API: manual commands, bad tokens and bodies ---------------------------------


def canary_cfg(**rollout: Any) -> ScenarioConfig:
    cfg = make_cfg(replicas=2, versions=("1", "2"))
    cfg.rollout.strategy = "canary"
    for key, value in rollout.items():
        setattr(cfg.rollout, key, value)
    return cfg


@contextmanager
def driven(cfg: ScenarioConfig, until_s: float) -> Iterator[tuple[Any, ControllerDriver, BackgroundDriver]]:
    """In-process stub replicas behind a real gateway, and the config's controller driving it."""
    controller = controller_from_config(cfg)
    assert controller is not None
    with harness(cfg) as h:
        driver = ControllerDriver(controller, h.url, TOKEN)
        background = BackgroundDriver(driver, until_s, lambda: time.time()).start()
        try:
            yield h, driver, background
        finally:
            background.stop()


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.02)


@pytest.mark.parametrize("command, outcome, weights", [("promote", "promoted", (0.0, 1.0)), ("abort", "aborted", (1.0, 0.0))])
def test_a_manual_command_reaches_the_controller_at_its_next_tick(command: str, outcome: str, weights: tuple[float, ...]) -> None:
    cfg = canary_cfg(steps=[{"set_weight": 20}, {"pause_s": math.inf}], interval_s=0.1)
    with driven(cfg, until_s=10.0) as (h, driver, background):
        wait_until(lambda: driver.controller.state == "paused", 5, "the canary pauses")  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        queued = h.http.post(h.url + "/v2/gateway/rollout", json={"command": command}, headers=auth, timeout=5)
        assert queued.status_code == 202 and queued.json()["command"] == command and queued.json()["seq"] == 1
        wait_until(lambda: driver.controller.state == outcome, 2, f"{outcome} after the command")  # type: ignore[attr-defined]
        background._thread.join(timeout=5)  # a decided rollout ends its loop
        assert background.stop() is None
        assert h.http.get(h.url + "/v2/gateway/weights", headers=auth, timeout=5).json()["weights"] == list(weights)
    assert [a.action for a in driver.applied] == [SetWeights((0.8, 0.2)), SetWeights(weights)]
    [event] = [e for e in driver.events if e.kind == "command"]
    assert event.detail == {"command": command, "seq": 1}
    by_hand = driver.controller.decisions[-1]  # type: ignore[attr-defined]
    assert by_hand.kind == outcome and "hand" in by_hand.reason and by_hand.time_s >= event.time_s


def test_commands_queued_before_the_driver_started_are_not_its_own() -> None:
    cfg = canary_cfg(steps=[{"set_weight": 20}, {"pause_s": math.inf}], interval_s=0.1)
    controller = controller_from_config(cfg)
    assert controller is not None
    with harness(cfg) as h:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert h.http.post(h.url + "/v2/gateway/rollout", json={"command": "promote"}, headers=auth, timeout=5).status_code == 202
        driver = ControllerDriver(controller, h.url, TOKEN)
        asyncio.run(driver.run(until_s=0.35))
    assert controller.state == "paused" and not [e for e in driver.events if e.kind == "command"]


def state_without_clock(h: Any) -> dict[str, Any]:
    doc = dict(h.http.get(h.url + "/v2/gateway/state", timeout=5).json())
    doc.pop("now")
    return doc


def test_control_calls_with_a_bad_token_or_body_are_refused_and_change_nothing() -> None:
    cfg = make_cfg(replicas=2, versions=("1", "2"))
    with harness(cfg) as h:
        before = state_without_clock(h)
        listing = h.http.get(h.url + "/v2/gateway/replicas", timeout=5).json()
        good = {"Authorization": f"Bearer {TOKEN}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for path, body in (("/v2/gateway/replicas", {"url": "http://127.0.0.1:1", "version": "1"}),
                               ("/v2/gateway/replicas/0", {"action": "remove"}),
                               ("/v2/gateway/rollout", {"command": "abort"})):
                r = h.http.post(h.url + path, json=body, headers=headers, timeout=5)
                assert r.status_code == 401 and "error" in r.json(), (path, headers)
        bad_adds = [
            ({"version": "1"}, 400), ({"url": "http://127.0.0.1:1"}, 400), ([], 400), ("x", 400),
            ({"url": "ftp://127.0.0.1:1", "version": "1"}, 400), ({"url": "http://127.0.0.1", "version": "1"}, 400),
            ({"url": "http://127.0.0.1:1/v2", "version": "1"}, 400), ({"url": "http://127.0.0.1:99999", "version": "1"}, 400),
            ({"url": "http://127.0.0.1:1", "version": "9"}, 400), ({"url": "http://127.0.0.1:1", "version": 1}, 400),
            ({"url": "http://127.0.0.1:1", "version": "1", "active": "no"}, 400),
            ({"url": listing["replicas"][0]["url"], "version": "1"}, 409),  # that is replica 0 already
        ]
        for body, status in bad_adds:
            r = h.http.post(h.url + "/v2/gateway/replicas", json=body, headers=good, timeout=5)
            assert r.status_code == status and "error" in r.json(), (body, r.status_code, r.text)
        for body in ({}, {"command": "rollback"}, {"command": ["promote"]}, ["promote"]):
            r = h.http.post(h.url + "/v2/gateway/rollout", json=body, headers=good, timeout=5)
            assert r.status_code == 400 and "error" in r.json(), body
        assert h.http.post(h.url + "/v2/gateway/rollout", data=b"{nope", headers=good, timeout=5).status_code == 400
        assert h.http.post(h.url + "/v2/gateway/replicas/7", json={"action": "remove"}, headers=good, timeout=5).status_code == 404
        assert h.http.post(h.url + "/v2/gateway/replicas/0", json={"action": "retire"}, headers=good, timeout=5).status_code == 400
        assert state_without_clock(h) == before
        assert h.http.get(h.url + "/v2/gateway/replicas", timeout=5).json() == listing
        # and the same calls, well formed and with the token, do change it
        removed = h.http.post(h.url + "/v2/gateway/replicas/0", json={"action": "remove"}, headers=good, timeout=5)
        assert removed.status_code == 200 and removed.json()["removed"] is True
        added = h.http.post(h.url + "/v2/gateway/replicas", json={"url": "http://127.0.0.1:1", "version": "1"}, headers=good, timeout=5)
        assert added.status_code == 201 and added.json()["replica"] == 2 and added.json()["routable"] is False
        after = state_without_clock(h)
        assert after["removed"] == [True, False, False] and after["replica_versions"] == [0, 1, 0]
        assert h.http.post(h.url + "/v2/gateway/replicas/0", json={"action": "remove"}, headers=good, timeout=5).status_code == 404
        assert commands_after(after, 0) == []


# -- mode=real and mode=compare with a canary (CLI, end to end) ------------------------------

ROOT = Path(__file__).resolve().parents[2]
SMALL_PROFILE = ROOT / "tests" / "data" / "profile_quickstart_small.json"
SERVELAB = [sys.executable, "-c", "from scenarios.cli import main; main()"]
# quickstart's load over four replicas (two per version): 40 req/s reach a 30% canary, so every
# 1 s window holds well over min_requests answers and the analysis decides at the same ticks
CANARY = ["scenario=quickstart", "replicas=4", "duration_s=8", "warmup_s=1", "progress=false",
          "rollout.strategy=canary", "rollout.steps=[{set_weight:30},{pause_s:3},{set_weight:60},{pause_s:3}]",
          "rollout.failure_limit=1", "rollout.max_p99_ratio=2"]
SLOW_CANARY = "model.versions=[1,{name:2,service_factor:3}]"
GOOD_CANARY = "model.versions=[1,2]"


def servelab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*SERVELAB, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # 3: a busy box's send lag flags the measurement; the rollout and its outputs are still written
    assert done.returncode in (0, 3), done.stdout[-3000:] + done.stderr[-3000:]
    return done


def rollout_of(run: Path) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    summary = json.loads((run / "summary.json").read_text())
    return summary["rollout"], json.loads((run / "events.json").read_text()), pd.read_parquet(run / "rollout.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("versions, outcome", [(SLOW_CANARY, "aborted"), (GOOD_CANARY, "promoted")], ids=["slow", "good"])
def test_a_canary_in_mode_real_rolls_back_a_slow_version_and_promotes_a_good_one(tmp_path: Path, versions: str, outcome: str) -> None:
    out = tmp_path / "run"
    done = servelab(tmp_path, "mode=real", *CANARY, versions, f"out_dir={out}")
    rollout, events, windows = rollout_of(out)
    assert rollout["strategy"] == "canary" and rollout["outcome"] == outcome, rollout
    assert f"canary {outcome} at" in done.stdout
    assert rollout["during"]["not_ok"] == {} and "error" not in rollout
    final = [e["detail"]["weights"] for e in events["events"] if e["detail"].get("action") == "SetWeights"][-1]
    assert final == ([1.0, 0.0] if outcome == "aborted" else [0.0, 1.0])
    decided = [d for d in events["decisions"] if d["kind"] == outcome]
    assert len(decided) == 1 and decided[0]["time_s"] == rollout["decided_s"]
    if outcome == "aborted":  # the canary served nothing sent after the rollback
        requests = pd.read_parquet(out / "requests.parquet")
        late = requests[(requests["version"] == "2") & (requests["arrival_s"] > rollout["decided_s"] + 0.05)]
        assert late.empty and rollout["candidate_requests"] > 0
    else:  # every step ran: the weight followed them
        canary = windows[windows["version"] == "2"].set_index("window_start_s")["weight"]
        assert canary.loc[0.0] == pytest.approx(0.3) and canary.loc[3.0] == pytest.approx(0.6)
    assert (out / "figures" / "rollout.png").is_file() and "rollout.png" in (out / "report.md").read_text()


@pytest.mark.slow
def test_compare_of_a_slow_canary_agrees_on_the_decision_its_time_and_the_exposure(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    done = servelab(tmp_path, "mode=compare", *CANARY, SLOW_CANARY, "compare.load_fractions=[]",
                    f"overhead.profile={SMALL_PROFILE}", f"out_dir={out}")
    comparison = json.loads((out / "comparison.json").read_text())
    rows = comparison["metrics"]
    assert rows["rollout_decision"]["predicted"] == rows["rollout_decision"]["measured"] == "aborted"
    for key in ("rollout_decision", "rollout_decision_time", "rollout_candidate_requests"):
        assert comparison["within_target"][key] is True, rows[key]
    assert comparison["targets"]["rollout_decision_time"] == 1.0  # rollout.interval_s
    assert "rollout decision time" in done.stdout and (out / "figures" / "rollout_compare.png").is_file()
    for side in ("sim", "real"):
        assert (out / side / "events.json").is_file() and (out / side / "rollout.parquet").is_file()
