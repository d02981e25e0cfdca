"""Shadow (mirror) traffic and header version pins: the policy, its config, and the twin.

The gateway's side over HTTP is tests/real/test_gateway_shadow.py.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scenarios.cli import preflight
from sim.config import ArrivalConfig, ConfigError, GatewayConfig, ModelConfig, ScenarioConfig, validate
from sim.policy.membership import Membership
from sim.policy.shadow import NO_REPLICA, NOT_MIRRORED, Mirror
from sim.policy.split import BadPin, Router, pinned_version
from sim.records import primary, requests_frame, summarize
from sim.twin import Twin


def shadow_cfg(percent: float = 30.0, *, shadow: str = "2", rate: float = 400.0, duration_s: float = 5.0,
               replicas: int = 3, **gateway: Any) -> ScenarioConfig:
    """Versions 1 and 2, every primary request on 1 (weights [1, 0]), copies to `shadow`."""
    return ScenarioConfig(
        seed=3, duration_s=duration_s, warmup_s=0.5, replicas=replicas, timeout_s=0.0,
        arrival=ArrivalConfig(kind="poisson", rate=rate),
        model=ModelConfig(versions=["1", "2"]),
        gateway=GatewayConfig(version_weights=[1.0, 0.0], shadow_version=shadow, shadow_percent=percent, **gateway),
    )


def run(cfg: ScenarioConfig) -> tuple[Twin, pd.DataFrame]:
    validate(cfg)
    twin = Twin(cfg)
    return twin, requests_frame(twin.run().columns)


# -- the policy ---------------------------------------------------------------------------------


def test_pinned_version_resolves_path_and_header_alike() -> None:
    versions = ["1", "2"]
    assert pinned_version(versions, None, None) is None
    assert pinned_version(versions, None, "") is None  # an empty header (a trace row with no version)
    assert pinned_version(versions, "2", None) == 1
    assert pinned_version(versions, None, "2") == 1
    assert pinned_version(versions, "2", "2") == 1


def test_unknown_pin_is_404_naming_the_known_versions_and_a_conflict_is_400() -> None:
    with pytest.raises(BadPin) as unknown:
        pinned_version(["1", "2"], None, "7", "digits")
    assert unknown.value.status == 404 and "'7'" in str(unknown.value) and "known: 1, 2" in str(unknown.value)
    with pytest.raises(BadPin) as conflict:
        pinned_version(["1", "2"], "1", "2")
    assert conflict.value.status == 400 and "'1'" in str(conflict.value) and "'2'" in str(conflict.value)


def test_mirror_draws_once_per_request_and_never_copies_to_the_primarys_own_version() -> None:
    membership = Membership(["1", "2"], [0, 0, 1])
    router = Router(membership, "p2c", version_weights=[1.0, 0.0])
    mirror = Mirror(router, version=1, percent=100.0, rng=random.Random(1), max_in_flight=8)
    assert mirror.target(0, [0, 0, 0], 0.0) == 2  # the only replica of version 2
    assert mirror.target(1, [0, 0, 0], 0.0) == NOT_MIRRORED  # already served by the shadow version
    assert mirror.target(-1, [0, 0, 0], 0.0) == NOT_MIRRORED  # the primary reached no replica
    membership.drain(2)
    assert mirror.target(0, [0, 0, 0], 0.0) == NO_REPLICA
    # one decision draw per call, mirrored or not: the stream stays aligned request by request
    counted = CountingRandom(5)
    zero = Mirror(router, version=1, percent=0.0, rng=counted, max_in_flight=8)
    for primary_version in (0, 1, -1, 0):
        zero.target(primary_version, [0, 0, 0], 0.0)
    assert counted.calls == 4


class CountingRandom(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return super().random()


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        (["gateway.shadow_version=3"], "gateway.shadow_version", "'3' is not one of model.versions"),
        (["gateway.shadow_percent=101"], "gateway.shadow_percent", "must be in [0, 100]"),
        (["gateway.shadow_percent=-1"], "gateway.shadow_percent", "must be in [0, 100]"),
        (["gateway.shadow_percent=nan"], "gateway.shadow_percent", "finite"),
        (["gateway.shadow_max_in_flight=0"], "gateway.shadow_max_in_flight", "must be >= 1"),
        (["gateway.version_weights=[]"], "gateway.version_weights", "gateway.version_weights=[1,0]"),
        (["gateway.version_weights=[1,1]"], "gateway.version_weights", "must start with weight 0"),
    ],
)
def test_bad_shadow_config_is_one_line_naming_its_key(overrides: list[str], key: str, fragment: str) -> None:
    base = ["model.versions=[1,2]", "gateway.version_weights=[1,0]", "gateway.shadow_version=2", "gateway.shadow_percent=10"]
    with pytest.raises(ConfigError) as info:
        preflight(base + overrides)
    assert info.value.key == key and fragment in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_shadow_percent_without_a_version_and_a_lone_version_are_refused() -> None:
    with pytest.raises(ConfigError) as no_version:
        preflight(["gateway.shadow_percent=10"])
    assert no_version.value.key == "gateway.shadow_percent" and "gateway.shadow_version" in str(no_version.value)
    with pytest.raises(ConfigError) as alone:
        preflight(["gateway.shadow_version=1", "gateway.shadow_percent=10"])
    assert alone.value.key == "gateway.shadow_version" and "only version" in str(alone.value)


def test_a_good_shadow_config_passes() -> None:
    validate(shadow_cfg())


# -- the twin -----------------------------------------------------------------------------------


def test_shadow_share_matches_config() -> None:
    percent = 30.0
    _, frame = run(shadow_cfg(percent))
    shadow = frame[frame["shadow"]]
    offered = len(primary(frame))
    p = percent / 100
    assert abs(len(shadow) - offered * p) < 4 * math.sqrt(offered * p * (1 - p))  # a binomial draw, 4 sigma
    assert set(shadow["version"]) == {"2"} and set(primary(frame)["version"]) == {"1"}


@pytest.mark.parametrize("policy", ["random", "round_robin"])
def test_primary_routing_is_identical_with_shadow_on_and_off(policy: str) -> None:
    """The copies draw from their own stream, so the routing stream's draws are the same. (With
    a load-aware policy, p2c or least_outstanding, choices follow the replicas' load, and the
    copies' batches take their service times from the shared service stream: the same
    distribution, another realisation.)"""
    off = shadow_cfg(0.0, shadow="")
    off.gateway.shadow_percent = 0.0
    on = shadow_cfg(50.0)
    off.lb.policy = on.lb.policy = policy
    _, without = run(off)
    _, with_shadow = run(on)
    assert with_shadow["shadow"].any() and not without["shadow"].any()
    primaries = primary(with_shadow)
    assert len(primaries) == len(without)
    for column in ("request_id", "user_id", "arrival_s", "replica", "version"):
        assert primaries[column].tolist() == without[column].tolist(), column


def test_shadow_rows_are_never_offered_load() -> None:
    cfg = shadow_cfg(100.0)
    _, frame = run(cfg)
    assert frame["shadow"].sum() == len(primary(frame))  # 100%: a copy of every primary
    figures = dict(warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, replicas=cfg.replicas, concurrency=cfg.concurrency)
    with_copies = summarize(frame, **figures)
    primaries_only = summarize(primary(frame).reset_index(drop=True), **figures)
    for key in ("offered_rate", "throughput", "status_counts", "requests"):
        if key in primaries_only:
            assert with_copies[key] == primaries_only[key], key


def test_shadow_copies_consume_the_shadow_replicas_capacity() -> None:
    """Replicas 0 and 2 serve version 1, replica 1 version 2: only copies keep replica 1 busy."""
    off = shadow_cfg(0.0, shadow="")
    off.gateway.shadow_percent = 0.0
    idle, _ = run(off)
    twin, frame = run(shadow_cfg(60.0))
    assert idle.replicas[1].busy_s == 0.0
    on_shadow = frame[frame["replica"] == 1]
    assert len(on_shadow) and on_shadow["shadow"].all()
    batches = on_shadow.drop_duplicates("batch_id")
    assert twin.replicas[1].busy_s == pytest.approx(batches["service_s"].sum())
    assert twin.replicas[1].busy_s > 0


def test_in_flight_copies_stay_within_the_bound_and_the_rest_are_dropped() -> None:
    cfg = shadow_cfg(100.0, rate=300.0, duration_s=2.0, shadow_max_in_flight=3)
    cfg.model.versions = ["1", {"name": "2", "service_factor": 8.0}]  # a slow shadow version
    twin, frame = run(cfg)
    assert twin.shadow_dropped > 0
    copies = frame[frame["shadow"]]
    assert len(copies) + twin.shadow_dropped == len(primary(frame))
    # at no instant more than 3 copies between their send and their answer
    t = np.concatenate([copies["arrival_s"].to_numpy(), copies["finish_s"].to_numpy()])
    step = np.concatenate([np.ones(len(copies)), -np.ones(len(copies))])
    order = np.lexsort((step, t))  # an answer at the instant of a send frees its slot first
    assert np.cumsum(step[order]).max() <= 3


def test_a_trace_version_column_pins_those_requests(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,user_id,version\n0.1,1,\n0.2,2,2\n0.3,3,1\n0.4,4,2\n0.5,5,\n")
    cfg = ScenarioConfig(seed=1, duration_s=1.0, warmup_s=0.0, replicas=2, timeout_s=0.0,
                         arrival=ArrivalConfig(kind="trace", path=str(trace)), model=ModelConfig(versions=["1", "2"]),
                         gateway=GatewayConfig(version_weights=[1.0, 0.0]))
    _, frame = run(cfg)
    assert frame["version"].tolist() == ["1", "2", "1", "2", "1"]  # weight 0 for 2, but pinned rows get it


def test_a_trace_pinning_an_unknown_version_stops_before_the_run(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,version\n0.1,1\n0.2,9\n")
    cfg = ScenarioConfig(duration_s=1.0, warmup_s=0.0, replicas=2, arrival=ArrivalConfig(kind="trace", path=str(trace)),
                         model=ModelConfig(versions=["1", "2"]))
    with pytest.raises(ConfigError) as info:
        Twin(cfg).run()
    assert info.value.key == "arrival.path" and "row 2 pins version '9'" in str(info.value)
    trace.write_text("arrival_s,version\n0.1,a/b\n")
    with pytest.raises(ConfigError) as bad:
        Twin(cfg).run()
    assert bad.value.key == "arrival.path" and "'a/b'" in str(bad.value)


def test_the_preflight_refuses_a_trace_pinning_an_unknown_version(tmp_path: Path) -> None:
    """Before any mode runs (mode=real would otherwise send it and count 404s)."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,version\n0.1,2\n0.2,3\n")
    with pytest.raises(ConfigError) as info:
        preflight(["model.versions=[1,2]", "arrival.kind=trace", f"arrival.path={trace}", "mode=real"])
    assert info.value.key == "arrival.path" and "row 2 pins version '3'" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_the_load_generators_schedule_carries_a_traces_pins(tmp_path: Path) -> None:
    """What the Locust workers read to send x-model-version: only the pinned rows, by request id."""
    from real.loadgen.plan import read_schedule_pins
    from real.loadgen.runner import make_plan

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,version\n0.1,\n0.2,2\n0.3,1\n0.4,\n")
    cfg = ScenarioConfig(duration_s=1.0, warmup_s=0.0, replicas=2, arrival=ArrivalConfig(kind="trace", path=str(trace)),
                         model=ModelConfig(versions=["1", "2"]))
    plan = make_plan(cfg, "http://127.0.0.1:9", tmp_path)
    assert read_schedule_pins(plan.schedule) == {1: "2", 2: "1"}
    trace.write_text("arrival_s\n0.1\n0.2\n")
    assert read_schedule_pins(make_plan(cfg, "http://127.0.0.1:9", tmp_path).schedule) == {}
