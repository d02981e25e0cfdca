"""The async queue's Redis layout: one stream per model, its consumer group, results, encodings.

Keys (model `m`):
- `servelab:async:m` — the stream; one entry per submission (fields below). The workers share it
  through the consumer group `workers`: each entry goes to one worker, stays in the group's
  pending list until that worker acknowledges it, and an entry idle there longer than
  `async_jobs.claim_idle_s` (its worker crashed) is claimed by another (XAUTOCLAIM).
- `servelab:async:m:pending` — submissions queued or running: the admission count.
- `servelab:async:m:result:{id}` — `pending` from the submission on, then the result (kept
  `async_jobs.result_ttl_s`, a key TTL); no key = an unknown or expired id.
- `servelab:async:m:workers` — a hash, worker name -> the wall time it became ready.

Why admission and results live in Redis rather than in `sim.policy.async_jobs.AsyncJobs`: the
submissions are accepted by the gateway but completed by worker processes, so no one process
sees both ends; the count and the states must be where both write. The decisions are the same
as AsyncJobs' (refuse when `max_pending` are queued or running; pending / done / unknown, expiry
`ttl` after the result is ready), made atomically by two Lua scripts:
- SUBMIT: refuse if the count is at `max_pending`, else count it, mark the id pending and XADD;
  one round trip, so two gateways (or two requests) can never both take the last place.
- COMPLETE: XACK; only if this acknowledgement removed the entry from the pending list (it was
  not already completed by another worker that had claimed it) write the result, XDEL the entry
  and uncount it. Each id gets exactly one result however many workers ran it.

Entries and results are bytes, never pickles: an entry holds the OIP request body as the client
sent it (re-parsed by the worker with the same parser that validated it at the gateway) and a
result is `STATUS:` then the JSON answer document.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from real.features.redis_store import redact  # noqa: F401 -- one redaction for every Redis URL we print
from real.launcher import REDIS_PASSWORD_ENV, REDIS_URL_ENV  # the names the launcher hands its children

GROUP = "workers"
PENDING_VALUE = b"pending"
REDIS_TIMEOUT_S = 2.0  # one Redis call at the gateway, at most: an unreachable Redis is a 503, never a hang
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CALLBACK_RULE = "a loopback http URL: http://127.0.0.1[:port]/... or http://localhost[:port]/..."

# KEYS: pending count, result key, stream; ARGV: max_pending, id, body, header length, submitted, callback
SUBMIT_LUA = """
local queued = tonumber(redis.call('GET', KEYS[1]) or '0')
if queued >= tonumber(ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], 'pending')
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'body', ARGV[3], 'hl', ARGV[4], 't', ARGV[5], 'cb', ARGV[6])
return 1
"""

# KEYS: stream, pending count, result key; ARGV: group, entry id, result value, ttl ms
COMPLETE_LUA = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DECR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

SUBMITTED, REFUSED, DUPLICATE = 1, 0, -1  # SUBMIT_LUA's answers


@dataclass(frozen=True)
class AsyncKeys:
    """The Redis keys of one model's queue."""

    model: str

    @property
    def stream(self) -> str:
        return f"servelab:async:{self.model}"

    @property
    def pending(self) -> str:
        return f"{self.stream}:pending"

    @property
    def workers(self) -> str:
        return f"{self.stream}:workers"

    def result(self, request_id: str) -> str:
        return f"{self.stream}:result:{request_id}"


@dataclass(frozen=True)
class Submission:
    """One stream entry: the request as the client sent it, when, and where to call back."""

    request_id: str
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length (binary inputs), None = all JSON
    submitted_unix_s: float
    callback_url: str = ""

    def lua_args(self) -> list[bytes | str]:
        return [self.request_id, self.body, "" if self.header_length is None else str(self.header_length),
                repr(self.submitted_unix_s), self.callback_url]

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Submission:
        """An entry's fields (as redis-py returns them, bytes -> bytes) back as a Submission;
        KeyError/ValueError for an entry that is not one."""
        hl = fields[b"hl"]
        return cls(fields[b"id"].decode(), fields[b"body"], int(hl) if hl else None, float(fields[b"t"]),
                   fields.get(b"cb", b"").decode())


def encode_result(status: int, document: bytes) -> bytes:
    """A result's stored value: the HTTP status the poll answers, then the JSON document."""
    return b"%d:" % status + document


def decode_result(value: bytes) -> tuple[int, bytes] | None:
    """(status, JSON document) of a stored result, or None while it is still pending."""
    if value == PENDING_VALUE:
        return None
    head, sep, document = value.partition(b":")
    if not sep or not head.isdigit():
        raise ValueError(f"not a stored async result: {value[:40]!r}")
    return int(head), document


def check_callback_url(url: object) -> str:
    """The callback URL if it is one the worker may call (loopback http only: a worker must never
    be made to send requests elsewhere); ValueError naming the rule otherwise."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"parameters.callback_url must be {CALLBACK_RULE}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"parameters.callback_url must be {CALLBACK_RULE}, got {url[:80]!r}") from None
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.username or parts.password:
        raise ValueError(f"parameters.callback_url must be {CALLBACK_RULE}, got {url[:80]!r}")
    return url


def redis_from_env() -> tuple[str, str | None]:
    """(URL, password) of the run's Redis, as the launcher hands them to its children."""
    url = os.environ.get(REDIS_URL_ENV, "")
    if not url:
        raise RuntimeError(f"pattern=async needs Redis: ${REDIS_URL_ENV} is not set (the launcher sets it)")
    return url, os.environ.get(REDIS_PASSWORD_ENV) or None
