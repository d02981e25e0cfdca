"""The gateway routes as the twin does: same seed, config and arrivals, same replica for every request.

DESIGN's "one engine, two clocks": both hold a `Router.from_config(cfg)` and draw from the same
named stream (`make_streams(seed).routing`), so they can only disagree if one of them drew
differently. Here the gateway's `ReplicaPool.pick` is driven in-process, request by request,
with the very load the twin's router saw (each replica's outstanding count at that arrival,
rebuilt from the twin's records), so load-aware policies are compared under load too.
`tests/real/test_gateway.py` checks the same over HTTP, with requests one at a time.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterator, Sequence

import pytest

from real.gateway.pool import ReplicaPool
from sim.config import ScenarioConfig, validate
from sim.policy.split import Router
from sim.records import OK
from sim.twin import Twin

# every lb policy, a two-version weighted split, and sticky users
CASES: dict[str, dict[str, Any]] = {
    "random": {"policy": "random"},
    "round_robin": {"policy": "round_robin"},
    "least_outstanding": {"policy": "least_outstanding"},
    "p2c": {"policy": "p2c"},
    "weighted": {"policy": "weighted", "lb_weights": [1.0, 2.0, 3.0, 0.5]},
    "two_versions_weighted": {"policy": "p2c", "versions": ["1", "2"], "version_weights": [0.3, 0.7]},
    "sticky_users": {"policy": "random", "versions": ["1", "2"], "version_weights": [0.5, 0.5], "sticky": True},
}


def routing_cfg(policy: str, versions: Sequence[str] = ("1",), version_weights: Sequence[float] = (),
                lb_weights: Sequence[float] = (), sticky: bool = False, rate: float = 600.0,
                duration_s: float = 2.0) -> ScenarioConfig:
    """Four replicas, no overheads, no deadline, no queue bound: nothing but routing decides."""
    cfg = ScenarioConfig(replicas=4, seed=11, duration_s=duration_s, warmup_s=0.0, timeout_s=0.0)
    cfg.arrival.kind, cfg.arrival.rate, cfg.arrival.users = "poisson", rate, 50
    cfg.service.kind, cfg.service.base_s, cfg.service.per_item_s = "exponential", 0.004, 0.0
    cfg.batching.max_batch_size = 1
    cfg.lb.policy, cfg.lb.weights = policy, list(lb_weights)
    cfg.model.versions = list(versions)
    cfg.gateway.version_weights, cfg.gateway.sticky = list(version_weights), sticky
    validate(cfg)
    return cfg


def loads_seen(arrival: Sequence[float], finish: Sequence[float], replica: Sequence[int], n: int) -> Iterator[list[int]]:
    """Each replica's outstanding count as request i arrives: the earlier requests sent to it and
    not finished by then (the twin handles every event at or before an arrival first)."""
    running: list[tuple[float, int]] = []
    out = [0] * n
    for i, t in enumerate(arrival):
        while running and running[0][0] <= t:
            out[heapq.heappop(running)[1]] -= 1
        yield list(out)
        out[replica[i]] += 1
        heapq.heappush(running, (finish[i], replica[i]))


@pytest.mark.parametrize("case", CASES)
def test_gateway_picks_the_twins_replica_for_every_request(case: str) -> None:
    cfg = routing_cfg(**CASES[case])
    cols = Twin(cfg).run().columns
    assert set(cols["status"]) == {OK}
    twin_replica = [int(r) for r in cols["replica"]]
    pool = ReplicaPool(cfg, [f"http://replica-{r}" for r in range(cfg.replicas)], Router.from_config(cfg))
    busiest = 0
    seen = loads_seen(list(cols["arrival_s"]), list(cols["finish_s"]), twin_replica, cfg.replicas)
    for i, load in enumerate(seen):
        pool.outstanding[:] = load
        busiest = max(busiest, *load)
        picked = pool.pick(int(cols["user_id"][i]), None, float(cols["arrival_s"][i]))
        assert picked == twin_replica[i], f"request {i}: gateway {picked}, twin {twin_replica[i]} (load {load})"
    assert len(twin_replica) > 500 and busiest >= 2  # enough requests, and under real load
