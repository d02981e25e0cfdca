"""Versions that can be good or bad, in the real stack: a replica fails at its version's error
rate (HTTP 500, OIP error body), judges labelled requests (`parameters.correct`, `x-correct`),
follows the fault schedule from the run's time 0 (`POST /v2/fault {"t0_unix": ...}`); the
gateway's windows count accuracy; the load generator's inputs and records carry labels and
correctness; and the numpy models' accuracies, v3 the degraded one, measured."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import requests

from real.gateway import create_app as create_gateway
from real.loadgen.merge import merge
from real.loadgen.plan import input_index, read_inputs, records_path, write_arrays, write_inputs
from real.loadgen.recordfile import CLIENT_TIMEOUT, RECORD_FIELDS
from real.models.digits import VERSIONS, load_model
from real.models.digits import test_split as held_out_digits  # not a test: keep pytest from collecting it
from real.server.app import create_app as create_replica
from real.server.asgi_client import AsgiClient
from sim.config import ArrivalConfig, validate
from sim.policy.versions import CORRECT_DRAW, ERROR_DRAW, NUMPY_DIGITS_ACCURACY, common_unit
from tests.real.conftest import real_cfg
from tests.real.test_gateway import ServerThread, free_port

TOKEN = "quality-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INFER = "/v2/models/digits/infer"


def infer_body(image: np.ndarray | None = None, label: int | list[int] | None = None, rows: int = 1) -> dict[str, Any]:
    data = [1.0] * (64 * rows) if image is None else np.asarray(image).reshape(-1).tolist()
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": data}]}
    if label is not None:
        body["parameters"] = {"label": label}
    return body


def within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def cfg_with(versions: list[Any], backend: str = "emulated", **kw: Any) -> Any:
    cfg = real_cfg(model=dict(versions=versions, backend=backend), server=dict(token=TOKEN), **kw)
    validate(cfg)
    return cfg


def label_of(doc: dict[str, Any]) -> int:
    return int(next(o for o in doc["outputs"] if o["name"] == "label")["data"][0])


# --- the numpy models ----------------------------------------------------------------------


def test_numpy_models_accuracies_are_measured_and_v3_is_clearly_the_worst() -> None:
    """On the held-out digits; the twin's table (sim.policy.versions) must say the same."""
    x, y = held_out_digits()
    right = {v: int((load_model(v).predict(x) == y).sum()) for v in VERSIONS}
    assert set(VERSIONS) == {"1", "2", "3"} == set(NUMPY_DIGITS_ACCURACY)
    accuracy = {v: right[v] / len(y) for v in VERSIONS}
    assert accuracy["3"] < accuracy["2"] - 0.1 and accuracy["3"] < accuracy["1"] - 0.1, accuracy
    for v in VERSIONS:
        assert accuracy[v] == pytest.approx(NUMPY_DIGITS_ACCURACY[v], abs=1.5 / len(y)), (v, accuracy)


# --- one replica ---------------------------------------------------------------------------


def test_replica_fails_at_its_versions_error_rate_with_an_oip_body(serve: Callable[..., AsgiClient]) -> None:
    """Inside the run only: before the replica knows time 0 (warm-up, calibration) nothing fails."""
    c = serve(cfg_with(["1", {"name": "2", "error_rate": 0.3}]), replica=1)
    assert {c.post_json(INFER, infer_body()).status for _ in range(40)} == {200}
    assert c.post_json("/v2/fault", {"t0_unix": time.time()}, headers=AUTH).status == 200
    answers = [c.post_json(INFER, infer_body()) for _ in range(400)]
    failed = [r for r in answers if r.status == 500]
    assert {r.status for r in answers} == {200, 500} and within(len(failed), len(answers), 0.3)
    assert all(set(r.json()) == {"error"} and "error rate" in r.json()["error"] for r in failed)
    assert "500" in c.get("/metrics").body.decode()  # counted as the server's errors


def test_emulated_replica_judges_labelled_requests_with_its_accuracy(serve: Callable[..., AsgiClient]) -> None:
    c = serve(cfg_with(["1", {"name": "2", "accuracy": 0.7}]), replica=1)
    answers = [c.post_json(INFER, infer_body(label=k % 10)) for k in range(400)]
    assert all(r.status == 200 for r in answers)
    verdicts = [r.json()["parameters"]["correct"] for r in answers]
    assert all(r.headers["x-correct"] == ("1" if v else "0") for r, v in zip(answers, verdicts))
    # the label answered is consistent with the verdict: the one sent if right, another if wrong
    assert all((label_of(r.json()) == k % 10) == v for k, (r, v) in enumerate(zip(answers, verdicts)))
    assert within(sum(verdicts), len(verdicts), 0.7)
    plain = c.post_json(INFER, infer_body())  # no label: nothing to judge
    assert "correct" not in plain.json()["parameters"] and "x-correct" not in plain.headers


def test_a_load_generator_request_fails_and_is_judged_by_the_twins_common_numbers(serve: Callable[..., AsgiClient]) -> None:
    """Request i of the schedule (OIP id `w<worker>-<i>`, whichever worker sent it) fails exactly
    when the twin's request i on that version does, and is right exactly when the twin's is:
    both read common_unit(seed, i, version, purpose). Ids that name no schedule index draw from
    the replica's own stream, at the configured rates."""
    cfg = cfg_with(["1", {"name": "2", "error_rate": 0.3, "accuracy": 0.6}], seed=4)
    c = serve(cfg, replica=1)
    assert c.post_json("/v2/fault", {"t0_unix": time.time()}, headers=AUTH).status == 200
    for i in range(300):
        r = c.post_json(INFER, {**infer_body(label=i % 10), "id": f"w{i % 3}-{i}"})
        fails = common_unit(4, i, 1, ERROR_DRAW) < 0.3
        assert (r.status == 500) == fails, i
        if not fails:
            assert r.json()["id"] == f"w{i % 3}-{i}"
            assert r.json()["parameters"]["correct"] == (common_unit(4, i, 1, CORRECT_DRAW) < 0.6), i
    others = [c.post_json(INFER, {**infer_body(label=3), **({"id": rid} if rid else {})}).status
              for rid in [None, "req-7", "w0-x"] * 100]
    assert within(others.count(500), len(others), 0.3)


def test_a_closed_loop_run_has_no_schedule_ids_and_draws_from_the_replicas_stream(serve: Callable[..., AsgiClient]) -> None:
    cfg = cfg_with(["1", {"name": "2", "error_rate": 0.5}], seed=4, arrival=ArrivalConfig(kind="closed", users=4))
    c = serve(cfg, replica=1)
    assert c.post_json("/v2/fault", {"t0_unix": time.time()}, headers=AUTH).status == 200
    # the same id over and over: the common number would decide it the same way every time
    statuses = {c.post_json(INFER, {**infer_body(), "id": "w0-1"}).status for _ in range(60)}
    assert statuses == {200, 500}


def test_a_version_without_accuracy_is_not_judged_and_bad_labels_are_400(serve: Callable[..., AsgiClient]) -> None:
    c = serve(cfg_with(["1"]))
    r = c.post_json(INFER, infer_body(label=3))
    assert r.status == 200 and "correct" not in r.json()["parameters"] and "x-correct" not in r.headers
    for bad in (10, -1, "3", True, [1, 2], []):
        r = c.post_json(INFER, infer_body(label=bad))
        assert r.status == 400 and "parameters.label" in r.json()["error"], bad
    assert c.post_json(INFER, infer_body(label=[1, 2], rows=2)).status == 200


def test_numpy_replica_judges_its_real_prediction(serve: Callable[..., AsgiClient]) -> None:
    """Every held-out digit through the v3 replica: right exactly when the model is."""
    x, y = held_out_digits()
    c = serve(cfg_with(["3"], backend="numpy"))
    answers = [c.post_json(INFER, infer_body(x[i], int(y[i]))) for i in range(len(y))]
    verdicts = np.array([r.json()["parameters"]["correct"] for r in answers])
    np.testing.assert_array_equal(verdicts, load_model("3").predict(x) == y)
    assert all(r.headers["x-correct"] == ("1" if v else "0") for r, v in zip(answers, verdicts))


def test_numpy_accuracy_drop_makes_right_answers_wrong_in_proportion(serve: Callable[..., AsgiClient]) -> None:
    x, y = held_out_digits()
    c = serve(cfg_with([{"name": "2", "faults": [{"at_s": 1.0, "accuracy_drop": 0.5}]}], backend="numpy"))
    assert c.post_json("/v2/fault", {"t0_unix": time.time() - 5.0}, headers=AUTH).status == 200
    answers = [c.post_json(INFER, infer_body(x[i], int(y[i]))) for i in range(len(y))]
    right = sum(r.json()["parameters"]["correct"] for r in answers)
    assert within(right, len(y), NUMPY_DIGITS_ACCURACY["2"] - 0.5)


def test_replica_applies_the_fault_schedule_from_the_time_0_it_is_told(serve: Callable[..., AsgiClient]) -> None:
    """Deterministic 2 ms device: from 5 s of run time 3x slower, from 100 s every request fails.
    Before time 0 is known the version is as configured; a time 0 alone keeps a drill as it is."""
    faults = [{"at_s": 5.0, "slowdown": 3.0}, {"at_s": 100.0, "error_rate": 1.0}]
    c = serve(cfg_with([{"name": "1", "faults": faults}], duration_s=300.0))

    def service_s() -> float:
        r = c.post_json(INFER, infer_body())
        assert r.status == 200, r.body
        return float(r.json()["parameters"]["service_s"])

    assert service_s() < 0.0055
    told = c.post_json("/v2/fault", {"t0_unix": time.time() - 1.0}, headers=AUTH)  # run time 1 s: not yet
    assert told.status == 200 and told.json()["down"] is False and told.json()["t0_unix"] > 0
    assert service_s() < 0.0055
    assert c.post_json("/v2/fault", {"t0_unix": time.time() - 10.0}, headers=AUTH).status == 200
    assert service_s() >= 0.006
    assert c.post_json("/v2/fault", {"t0_unix": time.time() - 200.0}, headers=AUTH).status == 200
    assert {c.post_json(INFER, infer_body()).status for _ in range(20)} == {500}
    assert c.post_json("/v2/fault", {"down": True}, headers=AUTH).status == 200
    assert c.post_json("/v2/fault", {"t0_unix": time.time()}, headers=AUTH).json()["down"] is True


def test_a_bad_time_0_is_refused_and_changes_nothing(serve: Callable[..., AsgiClient]) -> None:
    c = serve(cfg_with([{"name": "1", "faults": [{"at_s": 1.0, "error_rate": 1.0}]}]))
    assert c.post_json("/v2/fault", {"t0_unix": time.time() - 5.0}).status == 401  # no token
    for bad in ("soon", -1, 0, True, [1.0]):
        r = c.post_json("/v2/fault", {"t0_unix": bad}, headers=AUTH)
        assert r.status == 400 and "t0_unix" in r.json()["error"], bad
    assert c.post_json(INFER, infer_body()).status == 200  # still as configured: time 0 never known


# --- through the gateway -------------------------------------------------------------------


def test_gateway_window_counts_each_versions_accuracy_from_x_correct() -> None:
    cfg = cfg_with([{"name": "1", "accuracy": 0.9}, {"name": "2", "accuracy": 0.3}], window_s=60.0)
    cfg.health.probe_interval_s = 60.0
    replicas = [ServerThread(create_replica(cfg, r), free_port()) for r in range(2)]
    gateway = ServerThread(create_gateway(cfg, [s.url for s in replicas], token=TOKEN), free_port())
    try:
        with requests.Session() as http:
            for k in range(300):
                version = "1" if k % 2 else "2"
                r = http.post(f"{gateway.url}/v2/models/digits/versions/{version}/infer", json=infer_body(label=k % 10), timeout=10)
                assert r.status_code == 200 and r.headers["x-correct"] in ("0", "1")
            w1, w2 = http.get(gateway.url + "/v2/gateway/state", timeout=5).json()["windows"]
    finally:
        gateway.stop()
        for s in replicas:
            s.stop()
    assert w1["judged"] == w2["judged"] == 150
    assert within(w1["correct"], 150, 0.9) and within(w2["correct"], 150, 0.3)


# --- the load generator's inputs and records ------------------------------------------------


def test_load_inputs_are_the_held_out_digits_in_a_seeded_order(tmp_path: Path) -> None:
    x, y = held_out_digits()
    write_inputs(tmp_path / "a.npz", x, y, seed=3)
    write_inputs(tmp_path / "b.npz", x, y, seed=3)
    images, labels = read_inputs(tmp_path / "a.npz")
    again, _ = read_inputs(tmp_path / "b.npz")
    np.testing.assert_array_equal(images, again)
    assert sorted(labels.tolist()) == sorted(y.tolist()) and images.dtype.kind == "i"
    pairs = {(tuple(im), int(lab)) for im, lab in zip(x.astype(np.int64), y)}
    assert all((tuple(im), int(lab)) in pairs for im, lab in zip(images, labels))  # each image keeps its label
    assert [input_index(r, len(labels)) for r in (0, 1, len(labels), len(labels) + 2)] == [0, 1, 0, 2]


def test_merge_carries_correct_only_for_answers(tmp_path: Path) -> None:
    times, users = np.array([0.0, 0.1, 0.2, 0.3]), np.array([1, 2, 3, 4])
    nan = float("nan")

    def row(i: int, status: int, correct: int) -> tuple[object, ...]:
        ok = status == 200
        return (i, int(users[i]), times[i], times[i], times[i] + 0.01, status, 0.0 if ok else nan, 0.005 if ok else nan,
                0.006 if ok else nan, nan, 1 if ok else 0, i if ok else -1, 0 if ok else -1, "1" if ok else "", correct)

    rows = [row(0, 200, 1), row(1, 200, 0), row(2, 500, 1), row(3, CLIENT_TIMEOUT, 0)]  # the last two: not answers
    write_arrays(records_path(tmp_path, 0), {name: np.asarray(c, dtype=dt) for (name, dt), c in zip(RECORD_FIELDS.items(), zip(*rows))})
    frame = merge([records_path(tmp_path, 0)], schedule=(times, users), timeout_s=1.0).requests
    assert frame["correct"].tolist()[:2] == [True, False] and frame["correct"][2:].isna().all()
