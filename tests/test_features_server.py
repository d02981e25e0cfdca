"""The replica's feature lookup stage (real.server.features) and the server around it, in process.

The stage against a fake store: one round trip per batch, none for an all-hit batch, the
fallback's row or status for a missing entity and for a store that is slow or down. Then the
replica app with the embedded store: the OIP shape of an entity request, where its entity comes
from, the answer's feature parameters, the stats document and /metrics counting the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson
import pytest

from real.features.embedded import EmbeddedStore
from real.features.redis_store import FeatureStoreUnavailable
from real.loadgen.wire import ENTITY_MID, RequestEncoder
from real.server.asgi_client import AsgiClient, Call
from real.server.features import FeatureStage
from real.server.protocol import ProtocolError, parse_infer
from sim.config import FeatureConfig, ModelConfig, ScenarioConfig, ServiceConfig
from sim.policy.features import FallbackPolicy, FeatureCache, FeatureRow

INFER = "/v2/models/digits/infer"
JSON = {"content-type": "application/json"}
OUTPUTS = frozenset({"label", "probabilities"})


class FakeStore:
    """Rows for entities 0..n-1 (features all = the id); records each call's ids."""

    def __init__(self, n: int = 10, delay_s: float = 0.0, down: bool = False) -> None:
        self.n, self.delay_s, self.down = n, delay_s, down
        self.calls: list[tuple[int, ...]] = []

    async def mget(self, ids: Sequence[int]) -> list[FeatureRow | None]:
        self.calls.append(tuple(ids))
        if self.down:
            raise FeatureStoreUnavailable("Redis at redis://127.0.0.1:1/0: connection refused")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [FeatureRow(e, np.full(64, e, np.float32), e % 10) if e < self.n else None for e in ids]

    async def close(self) -> None:
        pass


def stage(store: FakeStore, mode: str = "default", timeout_s: float = 0.05, cache_size: int = 100) -> FeatureStage:
    fallback = FallbackPolicy.zeros(64) if mode == "default" else FallbackPolicy("error")
    return FeatureStage(store, FeatureCache(cache_size, 60.0), fallback, timeout_s, time.perf_counter)


def test_a_batch_makes_one_round_trip_for_its_distinct_misses_and_an_all_hit_batch_none() -> None:
    store = FakeStore()
    s = stage(store)
    first = asyncio.run(s.lookup([1, 2, 1, 3]))
    assert store.calls == [(1, 2, 3)] and first.round_trips == 1
    assert first.hits == [False, False, False, False]  # a duplicate of a miss in one batch is a miss
    assert [o.row.label for o in first.outcomes] == [1, 2, 1, 3]  # type: ignore[union-attr]
    second = asyncio.run(s.lookup([3, 1]))
    assert store.calls == [(1, 2, 3)] and second.round_trips == 0 and second.hits == [True, True]
    assert s.counters.round_trips == 1 and (s.counters.hits, s.counters.misses) == (2, 4)


def test_a_missing_entity_gets_the_default_row_unjudged_or_a_404() -> None:
    lenient = asyncio.run(stage(FakeStore(n=5)).lookup([1, 7]))
    row = lenient.outcomes[1].row
    assert row is not None and row.fallback and row.label is None and not row.features.any()
    assert lenient.reasons == [None, "missing"]
    strict = asyncio.run(stage(FakeStore(n=5), mode="error").lookup([1, 7]))
    assert strict.outcomes[0].ok and strict.outcomes[1].failure is not None
    assert strict.outcomes[1].failure.status_code == 404


@pytest.mark.parametrize("store", [FakeStore(delay_s=5.0), FakeStore(down=True)], ids=["slow", "down"])
def test_a_slow_or_down_store_times_out_every_miss_within_the_timeout(store: FakeStore) -> None:
    s = stage(store, mode="error", timeout_s=0.05)
    s.cache.put_many({4: FeatureRow(4, np.ones(64, np.float32), 4)}, time.perf_counter())
    begun = time.perf_counter()
    result = asyncio.run(s.lookup([4, 8]))
    assert time.perf_counter() - begun < 2.0  # bounded by the timeout, not the store's 5 s
    assert result.outcomes[0].ok and result.reasons == [None, "timeout"]  # the cached row still serves
    assert result.outcomes[1].failure is not None and result.outcomes[1].failure.status_code == 503
    assert s.counters.fallbacks == {"missing": 0, "timeout": 1}


def test_an_input_less_request_names_its_entity_by_parameter_else_header() -> None:
    def parse(doc: dict[str, Any], header: str | None = None, features: bool = True):  # type: ignore[no-untyped-def]
        return parse_infer(orjson.dumps(doc), 8, OUTPUTS, None, features, header)

    assert parse({"inputs": [], "parameters": {"entity_id": 7}}, header="3").entity_id == 7
    assert parse({"id": "a"}, header="3").entity_id == 3
    with pytest.raises(ProtocolError, match="must name an entity") as no_entity:
        parse({"inputs": []})
    assert no_entity.value.status == 400
    with pytest.raises(ProtocolError, match="entity_id"):
        parse({"parameters": {"entity_id": -1}})
    own = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}],
           "parameters": {"entity_id": 7}}
    assert parse(own).entity_id is None  # carries its input: served on it, no lookup
    assert parse(own, features=False).entity_id is None  # no store: the parameter is ignored
    with pytest.raises(ProtocolError, match="inputs"):
        parse({"parameters": {"entity_id": 7}}, features=False)


def test_the_load_generator_encodes_an_entity_request_the_server_parses() -> None:
    raw = RequestEncoder("h:1", INFER, [ENTITY_MID]).encode("w0-5", 42, 0, 1500, entity=True)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert b"x-user-id: 42" in raw
    req = parse_infer(body, 8, OUTPUTS, None, True, None)
    assert (req.entity_id, req.id, req.timeout_s) == (42, "w0-5", pytest.approx(0.0015))


# -- the replica app ----------------------------------------------------------------------------


def feature_cfg(**features: Any) -> ScenarioConfig:
    return ScenarioConfig(replicas=1, model=ModelConfig(backend="numpy"),
                          service=ServiceConfig(kind="deterministic", base_s=0.001, per_item_s=0.0),
                          features=FeatureConfig(**{"store": "embedded", "entities": 50, **features}))


@pytest.fixture
def serve_features():  # type: ignore[no-untyped-def]
    from real.server.app import create_app

    clients: list[AsgiClient] = []

    def start(cfg: ScenarioConfig, store: EmbeddedStore | None = None) -> AsgiClient:
        app = create_app(cfg, 0)
        if store is not None:
            app.state.replica.features.store = store
        client = AsgiClient(app).__enter__()
        clients.append(client)
        return client

    yield start
    for c in clients:
        c.__exit__(None, None, None)


def entity_call(entity: int, **params: Any) -> Call:
    return Call("POST", INFER, orjson.dumps({"inputs": [], "parameters": {"entity_id": entity, **params}}), JSON)


def test_an_entity_request_is_served_on_its_row_and_says_how_it_was_looked_up(serve_features) -> None:  # type: ignore[no-untyped-def]
    c = serve_features(feature_cfg())
    first = c.request("POST", INFER, entity_call(3).body, JSON)
    assert first.status == 200, first.body
    p = first.json()["parameters"]
    assert p["feature_hit"] is False and p["feature_fallback"] is False and p["feature_lookup_s"] >= 0
    assert isinstance(p["correct"], bool)  # judged by the table's label
    assert p["queue_s"] + p["feature_lookup_s"] + p["service_s"] <= p["server_s"]
    again = c.request("POST", INFER, b'{"inputs":[]}', {**JSON, "x-user-id": "3"}).json()["parameters"]
    assert again["feature_hit"] is True
    own = c.post_json(INFER, {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    assert own.status == 200 and "feature_hit" not in own.json()["parameters"]
    nothing = c.post_json(INFER, {"inputs": []})
    assert nothing.status == 400 and "entity" in nothing.json()["error"]


def test_concurrent_entity_requests_share_one_round_trip_per_batch(serve_features) -> None:  # type: ignore[no-untyped-def]
    cfg = feature_cfg()
    cfg = dataclasses.replace(cfg, batching=dataclasses.replace(cfg.batching, max_batch_size=8, max_queue_delay_s=0.05))
    c = serve_features(cfg)
    replies = c.many([entity_call(e) for e in (1, 2, 3, 4, 5, 6, 7, 8)])
    params = [r.json()["parameters"] for r in replies]
    store = c.app.state.replica.features.store  # type: ignore[attr-defined]
    assert store.round_trips == len({p["batch_id"] for p in params})
    assert len({p["feature_lookup_s"] for p in params if p["batch_id"] == params[0]["batch_id"]}) == 1


def test_a_missing_entity_is_a_fallback_or_a_404_never_a_500(serve_features) -> None:  # type: ignore[no-untyped-def]
    lenient = serve_features(feature_cfg()).request("POST", INFER, entity_call(999).body, JSON)
    assert lenient.status == 200 and lenient.json()["parameters"]["feature_fallback"] is True
    assert "correct" not in lenient.json()["parameters"]  # a default row is never judged
    strict = serve_features(feature_cfg(fallback="error")).request("POST", INFER, entity_call(999).body, JSON)
    assert strict.status == 404 and "999" in strict.json()["error"]


def test_a_slow_store_falls_back_or_fails_503_with_retry_after(serve_features) -> None:  # type: ignore[no-untyped-def]
    slow = EmbeddedStore(latency_s=2.0)
    lenient = serve_features(feature_cfg(timeout_s=0.02), slow).request("POST", INFER, entity_call(1).body, JSON)
    assert lenient.status == 200 and lenient.json()["parameters"]["feature_fallback"] is True
    strict = serve_features(feature_cfg(timeout_s=0.02, fallback="error"), slow).request("POST", INFER, entity_call(1).body, JSON)
    assert strict.status == 503 and "Retry-After".lower() in {k.lower() for k in strict.headers}
    assert strict.headers.get("x-feature-failure") == "timeout"  # told apart from a full queue's 503


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


def test_stats_and_metrics_count_the_lookups_the_answers_report(serve_features) -> None:  # type: ignore[no-untyped-def]
    c = serve_features(feature_cfg())
    params = [c.request("POST", INFER, entity_call(e).body, JSON).json()["parameters"] for e in (1, 1, 2, 999)]
    hits = sum(p["feature_hit"] for p in params)
    doc = c.get("/v2/models/digits/stats").json()["model_stats"][0]["feature_store"]
    assert (doc["hits"], doc["misses"], doc["fallbacks"]["missing"]) == (hits, 4 - hits, 1)
    text = c.get("/metrics").body.decode()
    assert metric(text, 'servelab_feature_lookups_total{result="hit"}') == hits
    assert metric(text, 'servelab_feature_lookups_total{result="miss"}') == 4 - hits
    assert metric(text, 'servelab_feature_fallbacks_total{reason="missing"}') == 1
    assert metric(text, "servelab_feature_round_trips_total") == doc["round_trips"]


def test_a_grpc_entity_request_parses_alike_at_the_replica_and_through_the_gateway() -> None:
    from real.grpc import convert
    from real.grpc import grpc_service_pb2 as pb
    from real.loadgen.grpc_wire import GrpcRequestEncoder

    msg = pb.ModelInferRequest.FromString(GrpcRequestEncoder.for_entities("digits").encode("w0-9", 0, 2000, entity_id=11))
    direct = convert.infer_request(msg, 8, OUTPUTS, True, "3")
    body, header_length = convert.rest_request(msg)  # what the gRPC gateway sends the replica
    forwarded = parse_infer(body, 8, OUTPUTS, header_length, True, "3")
    assert (direct.entity_id, direct.id) == (forwarded.entity_id, forwarded.id) == (11, "w0-9")
    by_metadata = pb.ModelInferRequest.FromString(GrpcRequestEncoder.for_entities("digits").encode("w0-9", 0, 2000))
    assert convert.infer_request(by_metadata, 8, OUTPUTS, True, "3").entity_id == 3


def test_failed_lookups_leave_the_batch_which_still_reports_its_formed_size() -> None:
    """fallback=error on the batcher's fake clock: the missing entity's request fails with 404
    and the model runs the rest, who report the batch as formed (the twin's batch_size); an
    all-failed batch frees its instance without running the model."""
    from real.server.batcher import AsyncBatcher, FeatureLookupFailed
    from real.server.protocol import InferRequest
    from sim.policy.batching import DynamicBatcher
    from tests.test_differential import FakeBackend, FakeWorld

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def main() -> None:
        world = FakeWorld()
        batcher = AsyncBatcher(DynamicBatcher(4, 0.01), FakeBackend(lambda rows: 0.005), instances=1,
                               clock=world.clock, timer=world.timer, run_on=world.instances,
                               features=FeatureStage(FakeStore(n=5), FeatureCache(10, 60.0), FallbackPolicy("error"),
                                                     0.05, world.clock))
        batcher.start()

        async def submit(i: int, entity: int) -> asyncio.Task[Any]:
            req = InferRequest(np.zeros((1, 64), np.float32), id=str(i), entity_id=entity)
            task = asyncio.create_task(batcher.submit(req, 0.0))
            await asyncio.sleep(0)
            return task

        tasks = [await submit(i, e) for i, e in enumerate((1, 7, 2))]
        world.run_until(0.01)  # the batching delay: one batch of three, its lookup starts
        await settle()
        world.run_until(math.inf)
        await settle()
        with pytest.raises(FeatureLookupFailed) as missing:
            await tasks[1]
        assert missing.value.status == 404
        served = [await tasks[0], await tasks[2]]
        assert [r.batch_size for r in served] == [3, 3] and [r.extra["feature_fallback"] for r in served] == [False, False]
        assert [b.members for b in world.batches] == [(0, 2)]  # the model ran the two it had rows for
        lost = [await submit(10 + i, e) for i, e in enumerate((8, 9))]
        world.run_until(world.now + 0.01)
        await settle()
        for task in lost:
            with pytest.raises(FeatureLookupFailed):
                await task
        assert batcher.busy == 0 and len(world.batches) == 1  # freed, and no model ran for it
        batcher.stop()

    asyncio.run(main())


def test_the_merge_records_the_lookup_and_counts_a_store_down_503_as_an_error(tmp_path: Path) -> None:
    from real.loadgen.merge import merge
    from real.loadgen.plan import records_path, write_arrays
    from real.loadgen.recordfile import RECORD_FIELDS

    nan = float("nan")
    times, users = np.array([0.0, 0.1, 0.2, 0.3]), np.array([4, 5, 6, 7])
    rows = [  # request_id .. correct, then feature_lookup_s, feature_hit, feature_fallback, feature_failed
        (0, 4, 0.0, 0.001, 0.02, 200, 0.002, 0.004, 0.012, nan, 1, 0, 0, "1", 1, 0.0003, 1, 0, 0),
        (1, 5, 0.1, 0.101, 0.12, 200, 0.002, 0.004, 0.012, nan, 1, 1, 0, "1", -1, 0.0005, 0, 1, 0),
        (2, 6, 0.2, 0.201, 0.22, 503, nan, nan, nan, nan, 0, -1, 0, "1", -1, nan, -1, 0, 1),  # store down
        (3, 7, 0.3, 0.301, 0.31, 503, nan, nan, nan, nan, 0, -1, 0, "1", -1, nan, -1, 0, 0),  # queue full
    ]
    write_arrays(records_path(tmp_path, 0), {name: np.asarray(c, dtype=dt) for (name, dt), c in zip(RECORD_FIELDS.items(), zip(*rows))})
    f = merge([records_path(tmp_path, 0)], schedule=(times, users), timeout_s=1.0).requests
    assert f["status"].tolist() == ["ok", "ok", "error", "shed"]
    assert f["feature_lookup_s"].tolist()[:2] == [0.0003, 0.0005] and f["feature_lookup_s"][2:].isna().all()
    assert f["feature_hit"].tolist()[:2] == [True, False] and f["feature_hit"][2:].isna().all()
    assert f["feature_fallback"].tolist() == [False, True, False, False]
