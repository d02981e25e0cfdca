"""The worker record file: one row per request a worker attempted, as the worker saw it.

Kept apart from the merge (pandas, the twin's schema) because the Locust side imports it too.
Times are seconds on the worker's clock relative to the run's t0, the same origin as the
schedule's `arrival_s`, so `send_s - intended_s` is the send lag and `finish_s - intended_s`
the latency from the intended send.
"""

from __future__ import annotations

# `http_status` is the HTTP status when an answer came, else one of these
CLIENT_TIMEOUT = 0  # the client deadline (timeout_s from the intended send) passed first
CONNECTION_ERROR = -1  # refused, reset, unparsable answer
CUT_SHORT = -2  # still in flight when the worker was stopped

RECORD_FIELDS: dict[str, str] = {
    "request_id": "int64",  # the schedule's id; -1 in closed loop (the parent numbers them)
    "user_id": "int64",
    "intended_s": "float64",
    "send_s": "float64",
    "finish_s": "float64",  # NaN when cut short
    "http_status": "int64",
    "queue_s": "float64",  # what the replica reported (NaN without an answer)
    "service_s": "float64",
    "server_s": "float64",  # the replica's receive -> answer
    "gateway_s": "float64",  # the gateway's own time (x-gateway-s), NaN without a gateway
    "batch_size": "int64",
    "batch_id": "int64",  # the replica's id of the request's batch; -1 without an answer or from a server that gives none
    "replica": "int64",
    "version": "U32",
    "correct": "int64",  # the answer's label vs the one sent: 1 right, 0 wrong, -1 unknown (unlabelled, not judged, no answer)
    # the feature lookup of the request's batch, as the replica answered (features.store != none)
    "feature_lookup_s": "float64",  # NaN: no lookup (or no answer)
    "feature_hit": "int64",  # 1 the row came from the replica's cache, 0 fetched (or not had), -1 no lookup
    "feature_fallback": "int64",  # 1 served on the default row, 0 not
    "feature_failed": "int64",  # 1 refused because its feature lookup failed (fallback=error: 404 missing, 503 store down), 0 not
}
# fields a record file may lack (written before they existed), and what they then hold
RECORD_DEFAULTS: dict[str, float] = {"correct": -1, "feature_lookup_s": float("nan"), "feature_hit": -1,
                                     "feature_fallback": 0, "feature_failed": 0}
# pattern=async (real.loadgen.async_client): written beside the fields above by the async driver
ASYNC_RECORD_FIELDS: dict[str, str] = {
    "ready_s": "float64",  # when the server had the result (its ready_unix_s on the run's clock); NaN: no result
    "polls": "int64",  # result requests sent (0: sync, refused at once, or told by callback)
}
ASYNC_RECORD_DEFAULTS: dict[str, float] = {"ready_s": float("nan"), "polls": 0}
