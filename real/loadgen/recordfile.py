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
}
# fields a record file may lack (written before they existed), and what they then hold
RECORD_DEFAULTS: dict[str, int] = {"correct": -1}
