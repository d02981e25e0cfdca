"""Loose ends of the rollouts work (issue 10): time 0 without a rollout, per-version figures in
config order, shadow drops in the summary, shadows under replica-replacing strategies, the
twin's `stopped` events, and the capacity dip in req/s."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from real.controller import BackgroundDriver, TimeZeroTeller
from scenarios.cli import preflight
from scenarios.run_real import load_time_zero
from scenarios.run_sim import simulate, throughput_dip
from sim.config import ConfigError
from sim.records import requests_frame
from sim.twin import Twin

TOKEN = "t0ken"


# -- 1. time 0 without a rollout ----------------------------------------------------------------


class FakeStack:
    """A gateway listing three replicas (one removed) and the replicas' /v2/fault, on one
    loopback server in a thread of its own; replica 2 refuses t0_unix as an old server would."""

    def __init__(self) -> None:
        self.told: dict[int, Any] = {}
        self.auth: set[str] = set()
        self.base = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _replicas(self, request: web.Request) -> web.Response:
        doc = [{"replica": r, "url": f"{self.base}/r{r}", "removed": r == 1} for r in range(3)]
        return web.json_response({"replicas": doc})

    async def _fault(self, request: web.Request) -> web.Response:
        r = int(request.match_info["r"])
        self.auth.add(request.headers.get("Authorization", ""))
        if r == 2:
            return web.json_response({"error": "body must be JSON like {\"down\": false}"}, status=400)
        self.told[r] = await request.json()
        return web.json_response({"replica": r, "down": False, "slowdown": 1.0, **self.told[r]})

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/gateway/replicas", self._replicas)
        app.router.add_post("/r{r}/v2/fault", self._fault)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> FakeStack:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_without_a_rollout_every_live_replica_is_told_the_loads_time_0(tmp_path: Path) -> None:
    """The time 0 the load generator announces in started-<i>.json (what the rollout driver
    waits for) reaches every replica not removed, with the token; a refusal is a note."""
    with FakeStack() as stack:
        teller = TimeZeroTeller(stack.base, TOKEN)
        background = BackgroundDriver(teller, 5.0, load_time_zero(tmp_path, time.time())).start()
        time.sleep(0.1)
        assert stack.told == {}  # nothing announced yet: nothing told
        t0 = time.time() + 0.5
        (tmp_path / "started-0.json").write_text(json.dumps({"worker": 0, "t0_wall": t0}))
        deadline = time.monotonic() + 10
        while not teller.told and time.monotonic() < deadline:
            time.sleep(0.02)
        assert background.stop() is None
    assert stack.told == {0: {"t0_unix": t0}}  # replica 1 is removed; 2 refused
    assert teller.told == [0, 2] and stack.auth == {f"Bearer {TOKEN}"}
    assert len(teller.notes) == 1 and "replica 2 did not take t0_unix" in teller.notes[0]


# -- 2. per-version figures in config order -----------------------------------------------------


def test_summary_and_series_list_versions_in_config_order() -> None:
    cfg = preflight(["model.versions=[2,1]", "replicas=2", "duration_s=2", "arrival.rate=100"])
    _, summary, series = simulate(cfg)
    assert list(summary["versions"]) == ["2", "1"]  # not sorted
    per_version = [c.split("@")[1] for c in series.columns if c.startswith("offered_rate@")]
    assert per_version == ["2", "1"]


# -- 3. shadow drops in the summary -------------------------------------------------------------


def test_the_twins_shadow_drops_go_into_the_summary_only_with_a_shadow() -> None:
    shadow = ["model.versions=[1,2]", "replicas=2", "gateway.version_weights=[1,0]", "gateway.shadow_version=2",
              "gateway.shadow_percent=100", "gateway.shadow_max_in_flight=1", "arrival.rate=800", "duration_s=2",
              "model.versions=[1,{name:2,service_factor:4}]"]
    frame, summary, _ = simulate(preflight(shadow))
    copies = int(frame["shadow"].sum())
    primaries = int((~frame["shadow"]).sum())
    assert summary["shadow_dropped"] > 0 and copies + summary["shadow_dropped"] == primaries  # every primary: copied or dropped
    _, plain, _ = simulate(preflight(["model.versions=[1,2]", "replicas=2", "duration_s=2"]))
    assert "shadow_dropped" not in plain


# -- 4. stale texts: mode=rehearse names every strategy -----------------------------------------


def test_rehearse_without_a_strategy_names_every_strategy() -> None:
    with pytest.raises(ConfigError) as err:
        preflight(["mode=rehearse"])
    assert err.value.key == "rollout.strategy"
    assert all(s in str(err.value) for s in ("canary", "linear", "blue_green", "rolling", "recreate"))


# -- 5. a shadow under the strategies that start every replica on stable -------------------------

SHADOW_OF_2 = ["model.versions=[1,2]", "gateway.shadow_version=2", "gateway.shadow_percent=50"]


@pytest.mark.parametrize("strategy", ["blue_green", "rolling"])
def test_a_shadow_of_the_candidate_is_allowed_where_the_rollout_starts_its_replicas(strategy: str) -> None:
    cfg = preflight([*SHADOW_OF_2, f"rollout.strategy={strategy}", "replicas=1"])  # 1 replica: on stable
    assert cfg.gateway.shadow_version == "2"


def test_one_replica_may_roll_out_a_second_version_only_where_the_rollout_starts_its_replicas() -> None:
    assert preflight(["model.versions=[1,2]", "replicas=1", "rollout.strategy=rolling"]).replicas == 1
    with pytest.raises(ConfigError) as err:  # replica r on versions[r % 2]: version 2 would have none
        preflight(["model.versions=[1,2]", "replicas=1", "rollout.strategy=canary", "rollout.steps=[{set_weight:50}]"])
    assert err.value.key == "model.versions"


def test_a_shadow_that_cannot_get_a_replica_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:  # recreate never runs stable and the candidate side by side
        preflight([*SHADOW_OF_2, "rollout.strategy=recreate"])
    assert err.value.key == "gateway.shadow_version" and "recreate" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a third version: no replica ever
        preflight(["model.versions=[1,2,3]", "replicas=3", "rollout.strategy=blue_green", "gateway.shadow_version=3",
                   "gateway.shadow_percent=50"])
    assert err.value.key == "gateway.shadow_version" and "starts every replica on stable" in str(err.value)


def test_blue_green_mirrors_to_green_before_the_switch_and_counts_the_copies_it_could_not_send() -> None:
    cfg = preflight([*SHADOW_OF_2, "rollout.strategy=blue_green", "replicas=2", "arrival.rate=200",
                     "duration_s=6", "rollout.scale_down_delay_s=2"])
    frame, summary, _ = simulate(cfg)
    switch = next(d["time_s"] for d in json_decisions(summary) if d["reason"].startswith("switch"))
    copies = frame[frame["shadow"]]
    assert (copies["version"] == "2").all()
    assert (copies["arrival_s"] < switch).all()  # after the switch version 2 is primary: nothing to copy
    assert summary["shadow_dropped"] > 0  # due before the green set was ready


def json_decisions(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return list(summary["rollout"]["decisions"])


# -- 7. the twin's stopped events ----------------------------------------------------------------


def test_the_twin_logs_stopped_once_a_removed_replica_has_emptied() -> None:
    cfg = preflight(["model.versions=[1,2]", "replicas=3", "rollout.strategy=rolling", "arrival.rate=300",
                     "duration_s=10", "gateway.hop_s=0", "timeout_s=0"])
    from sim.policy.rollout import controller_from_config

    result = Twin(cfg, controller=controller_from_config(cfg)).run()
    frame = requests_frame(result.columns)
    removed = {e.detail["replica"]: e.time_s for e in result.events
               if e.kind == "action" and e.detail["action"] == "RemoveReplica"}
    stopped = [e for e in result.events if e.kind == "stopped"]
    assert len(removed) == 3 and sorted(e.detail["replica"] for e in stopped) == sorted(removed)
    for event in stopped:
        r = event.detail["replica"]
        last = frame.loc[frame["replica"] == r, "finish_s"].max()
        # the instant it held nothing more: its last answer, or its removal if it held none then
        assert event.time_s == pytest.approx(max(removed[r], last))


# -- 8. the capacity dip in req/s ---------------------------------------------------------------


def completions(per_window: list[int], window_s: float = 1.0) -> pd.DataFrame:
    """Answers spread evenly in each window, each sent 10 ms before it finished."""
    finish = [(w + (k + 0.5) / n) * window_s for w, n in enumerate(per_window) for k in range(n)]
    n = len(finish)
    return requests_frame({
        "request_id": np.arange(n), "user_id": np.zeros(n, dtype=np.int64), "arrival_s": np.array(finish) - 0.01,
        "start_s": np.array(finish) - 0.01, "finish_s": finish, "latency_s": np.full(n, 0.01),
        "queue_s": np.zeros(n), "service_s": np.full(n, 0.01), "replica": np.zeros(n, dtype=np.int64),
        "version": ["1"] * n, "batch_id": np.arange(n), "batch_size": np.ones(n, dtype=np.int64), "status": ["ok"] * n,
    })


def test_throughput_dip_is_the_lowest_window_during_the_rollout_against_the_windows_before() -> None:
    frame = completions([10, 10, 4, 8, 2])  # the last window is past duration_s: the load stopped
    dip = throughput_dip(frame, 1.0, duration_s=4.0, start_s=2.0)
    assert dip == {"throughput_before_rps": 10.0, "throughput_baseline": "before the rollout",
                   "throughput_min_rps": 4.0, "throughput_min_at_s": 2.0, "throughput_min_fraction": 0.4}
    ended = throughput_dip(frame, 1.0, duration_s=4.0, start_s=1.0, end_s=1.5)  # over within window 1
    assert ended["throughput_min_rps"] == 10.0 and ended["throughput_before_rps"] == 10.0
    at_once = throughput_dip(frame, 1.0, duration_s=4.0, start_s=0.0)  # nothing before: the offered rate
    assert at_once["throughput_baseline"] == "offered during the rollout"
    assert at_once["throughput_before_rps"] == pytest.approx(32 / 4) and at_once["throughput_min_rps"] == 4.0
    assert throughput_dip(frame, 1.0, duration_s=4.0, start_s=4.5) == {}  # began after the last whole window


def test_recreates_gap_shows_in_the_summarys_capacity_dip_in_req_per_s() -> None:
    cfg = preflight(["model.versions=[1,2]", "replicas=2", "rollout.strategy=recreate", "arrival.rate=200",
                     "duration_s=10"])
    _, summary, _ = simulate(cfg)
    dip = summary["rollout"]["capacity_dip"]
    assert dip["ready_min"] == 0 and dip["throughput_baseline"] == "before the rollout"
    assert dip["throughput_before_rps"] == pytest.approx(200, rel=0.2)
    assert dip["throughput_min_fraction"] < 0.5 and math.isfinite(dip["throughput_min_at_s"])
