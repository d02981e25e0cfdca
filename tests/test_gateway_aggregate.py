"""The gateway's repository index and statistics: its replicas' documents merged (no I/O)."""

from __future__ import annotations

from typing import Any

from real.gateway.aggregate import NO_ANSWER, merge_index, merge_stats


def stats(version: str, n: int, batches: dict[int, int], last: int = 0) -> dict[str, Any]:
    """A replica's stats document: n successes of 10 ns, batches {size: count} of 100 ns each."""
    return {"model_stats": [{
        "name": "digits", "version": version, "last_inference": last, "inference_count": n, "execution_count": sum(batches.values()),
        "inference_stats": {"success": {"count": n, "ns": 10 * n}, "fail": {"count": 0, "ns": 0}, "queue": {"count": n, "ns": n}},
        "batch_stats": [{"batch_size": s, "compute_infer": {"count": c, "ns": 100 * c}} for s, c in batches.items()],
    }]}


def test_index_is_the_union_ready_if_any_replica_of_the_version_is() -> None:
    answers = [[{"name": "digits", "version": "1", "state": "UNAVAILABLE"}],
               [{"name": "digits", "version": "1", "state": "READY"}],
               [{"name": "digits", "version": "2", "state": "UNAVAILABLE"}]]
    assert merge_index("digits", ["1", "2"], answers) == [
        {"name": "digits", "version": "1", "state": "READY"},
        {"name": "digits", "version": "2", "state": "UNAVAILABLE"},
    ]
    assert merge_index("digits", ["1", "2"], answers, ready_only=True) == [{"name": "digits", "version": "1", "state": "READY"}]


def test_a_deployed_version_no_replica_answered_for_is_listed_unavailable() -> None:
    index = merge_index("digits", ["1", "2"], [[{"name": "digits", "version": "1", "state": "READY"}], "junk", [7]])
    assert index[1] == {"name": "digits", "version": "2", "state": "UNAVAILABLE", "reason": NO_ANSWER}


def test_stats_sum_counts_and_durations_per_version_and_batch_size() -> None:
    doc = merge_stats("digits", ["1", "2"], [stats("1", 3, {1: 3}, last=5), stats("1", 4, {1: 2, 2: 1}, last=9),
                                              stats("2", 1, {1: 1})])
    v1, v2 = doc["model_stats"]
    assert (v1["version"], v1["inference_count"], v1["execution_count"], v1["last_inference"]) == ("1", 7, 6, 9)
    assert v1["inference_stats"]["success"] == {"count": 7, "ns": 70} and v1["inference_stats"]["queue"] == {"count": 7, "ns": 7}
    assert v1["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 5, "ns": 500}},
                                 {"batch_size": 2, "compute_infer": {"count": 1, "ns": 100}}]
    assert (v2["inference_count"], v2["batch_stats"]) == (1, [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 100}}])


def test_stats_of_a_version_nobody_answered_for_are_zero() -> None:
    (only,) = merge_stats("digits", ["3"], [None, {"model_stats": "junk"}])["model_stats"]
    assert only["version"] == "3" and only["inference_count"] == 0 and only["batch_stats"] == []
    assert only["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_stats_sum_the_replicas_feature_store_counters_and_fallbacks() -> None:
    def replica(lookups: int, hits: int, fallbacks: dict[str, int]) -> dict[str, Any]:
        doc = stats("1", lookups, {1: lookups})
        doc["model_stats"][0]["feature_store"] = {
            "store": "redis", "fallback": "default", "cache_rows": hits, "cache_size": 100, "lookups": lookups, "hits": hits,
            "misses": lookups - hits, "round_trips": 2, "batches": lookups, "lookup_ns": 1000 * lookups, "fallbacks": fallbacks}
        return doc

    (v1,) = merge_stats("digits", ["1"], [replica(10, 7, {"missing": 1}), replica(6, 2, {"missing": 2, "timeout": 3}), None])["model_stats"]
    assert v1["feature_store"] == {"store": "redis", "fallback": "default", "cache_rows": 9, "cache_size": 200, "lookups": 16,
                                   "hits": 9, "misses": 7, "round_trips": 4, "batches": 16, "lookup_ns": 16000,
                                   "fallbacks": {"missing": 3, "timeout": 3}}
    assert "feature_store" not in merge_stats("digits", ["1"], [stats("1", 3, {1: 3})])["model_stats"][0]
