"""The gateway's repository index and statistics: its replicas' documents merged, with no I/O.

A client pointed at the gateway asks it what a Triton server would answer: which models and
versions it holds (`POST /v2/repository/index`) and how much each has served
(`GET /v2/models/{m}/stats`). The gateway holds nothing itself; every replica serves one version,
so the answers are the union of the replicas' indexes and the sum of their statistics, per
(model, version). Both transports' gateways (REST, gRPC) read these documents, in Triton's REST
shapes; a version no replica answered for is still listed (UNAVAILABLE, zero counts), so the
gateway never hides a version it is configured to serve.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
NO_ANSWER = "no replica of this version answered"


def merge_index(model: str, versions: Sequence[str], answers: Iterable[Any], ready_only: bool = False) -> list[dict[str, Any]]:
    """Triton's repository index over the replicas: one entry per (name, version), READY if any
    replica holding it is; `versions` (the deployment's) appear even if no replica answered.
    `answers` are the replicas' index documents (lists of {name, version, state}); anything
    else in them is ignored. `ready_only`: Triton's `{"ready": true}`, only READY entries."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in answers:
        for entry in doc if isinstance(doc, list) else ():
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            key = (entry["name"], str(entry.get("version", "")))
            state = entry.get("state") if isinstance(entry.get("state"), str) else UNAVAILABLE
            seen = merged.get(key)
            if seen is None:
                merged[key] = {"name": key[0], "version": key[1], "state": state}
            elif state == READY:
                seen["state"] = READY
    for version in versions:
        merged.setdefault((model, version), {"name": model, "version": version, "state": UNAVAILABLE, "reason": NO_ANSWER})
    entries = [merged[key] for key in sorted(merged)]
    return [e for e in entries if e["state"] == READY] if ready_only else entries


def _duration(doc: Any) -> tuple[int, int]:
    if not isinstance(doc, dict):
        return 0, 0
    return _int(doc.get("count")), _int(doc.get("ns"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _add(into: dict[str, Any], key: str, doc: Any) -> None:
    count, ns = _duration(doc)
    have = into.setdefault(key, {"count": 0, "ns": 0})
    have["count"] += count
    have["ns"] += ns


def empty_stats(model: str, version: str) -> dict[str, Any]:
    """One version's statistics before it has served anything."""
    return {"name": model, "version": version, "last_inference": 0, "inference_count": 0, "execution_count": 0,
            "inference_stats": {"success": {"count": 0, "ns": 0}, "fail": {"count": 0, "ns": 0},
                                "queue": {"count": 0, "ns": 0}},
            "batch_stats": []}


# a replica's `feature_store` stats entry (real.server.features.FeatureStage.document): what
# the replicas' caches and lookups add up to; the rest (store, fallback) is the same on each
FEATURE_STORE_COUNTS = ("cache_rows", "cache_size", "lookups", "hits", "misses", "round_trips", "batches", "lookup_ns")


def _add_feature_store(into: dict[str, Any], doc: dict[str, Any]) -> None:
    have = into.setdefault("feature_store", {"store": doc.get("store"), "fallback": doc.get("fallback"),
                                             **{name: 0 for name in FEATURE_STORE_COUNTS}, "fallbacks": {}})
    for name in FEATURE_STORE_COUNTS:
        have[name] += _int(doc.get(name))
    fallbacks = doc.get("fallbacks")
    for reason, count in (fallbacks.items() if isinstance(fallbacks, dict) else ()):
        have["fallbacks"][reason] = have["fallbacks"].get(reason, 0) + _int(count)


def merge_stats(model: str, versions: Sequence[str], answers: Iterable[Any]) -> dict[str, Any]:
    """Triton's `{"model_stats": [...]}` over the replicas: per (name, version), counts and
    durations summed (inference, execution, every inference_stats and batch_stats duration),
    `last_inference` the latest, and with a feature store its `feature_store` counters summed
    (each replica has its own cache: rows and sizes add up too). `versions` each get an entry,
    zero if no replica answered; `answers` are the replicas' stats documents."""
    merged: dict[tuple[str, str], dict[str, Any]] = {(model, v): empty_stats(model, v) for v in versions}
    by_size: dict[tuple[str, str], dict[int, dict[str, Any]]] = {key: {} for key in merged}
    for doc in answers:
        stats = doc.get("model_stats") if isinstance(doc, dict) else None
        for entry in stats if isinstance(stats, list) else ():
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            key = (entry["name"], str(entry.get("version", "")))
            into = merged.setdefault(key, empty_stats(*key))
            sizes = by_size.setdefault(key, {})
            into["last_inference"] = max(into["last_inference"], _int(entry.get("last_inference")))
            into["inference_count"] += _int(entry.get("inference_count"))
            into["execution_count"] += _int(entry.get("execution_count"))
            infer = entry.get("inference_stats")
            for name, value in (infer.items() if isinstance(infer, dict) else ()):
                _add(into["inference_stats"], name, value)
            if isinstance(entry.get("feature_store"), dict):
                _add_feature_store(into, entry["feature_store"])
            for batch in entry.get("batch_stats") or ():
                if not isinstance(batch, dict) or _int(batch.get("batch_size")) <= 0:
                    continue
                row = sizes.setdefault(batch["batch_size"], {"batch_size": batch["batch_size"]})
                for name, value in batch.items():
                    if name != "batch_size":
                        _add(row, name, value)
    for key, into in merged.items():
        into["batch_stats"] = [by_size[key][size] for size in sorted(by_size.get(key, {}))]
    return {"model_stats": [merged[key] for key in sorted(merged)]}
