"""`python -m real.asyncq.worker --config run/config.yaml --index I`: an async worker process.

A worker is a replica for the async pattern (and for its cost): it loads the model
(`make_backend`, so the emulated and the numpy backends both work), joins the consumer group and
loops:
- XREADGROUP COUNT=async_jobs.batch_size BLOCK: it takes what is there, up to a batch, as soon as
  there is anything; it never waits for a fuller batch (the queue itself is the batching delay);
- runs the entries as ONE batch (their rows stacked, one `plan` + `run`), judges labelled ones
  as a replica does (real.server.quality), and writes each result with COMPLETE_LUA (acknowledge,
  delete, uncount, SET with the result TTL), all in one pipelined round trip;
- every claim interval, XAUTOCLAIMs entries idle longer than `async_jobs.claim_idle_s`: the
  entries of a worker that died mid-batch are run by another, and COMPLETE_LUA makes sure each id
  still gets exactly one result;
- POSTs a result to its callback URL (loopback only, checked at submit and again here) from a
  small thread pool, bounded by CALLBACK_TIMEOUT_S, best effort: the result stays pollable.

It says it is ready by adding its name to the workers hash (what the launcher waits for), logs
one line per batch (entries, rows, oldest entry's queue time, service time), and on SIGTERM
finishes the batch in hand, leaves the hash and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from real.asyncq.queue import (
    COMPLETE_LUA,
    GROUP,
    AsyncKeys,
    Submission,
    check_callback_url,
    encode_result,
    redact,
    redis_from_env,
)
from real.server.backends import Backend, make_backend
from real.server.protocol import FEATURES, InferRequest, ProtocolError, TensorSpec, parse_infer
from real.server.quality import ReplicaQuality
from sim.config import ScenarioConfig, load_config
from sim.policy.async_jobs import async_version

log = logging.getLogger("servelab.asyncq.worker")

BLOCK_S = 0.2  # longest XREADGROUP wait: how soon a stop request is noticed when idle
CALLBACK_TIMEOUT_S = 2.0
CALLBACK_THREADS = 4
SOCKET_TIMEOUT_S = 5.0  # any Redis call; XREADGROUP's BLOCK is added to it
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Entry = tuple[bytes, dict[bytes, bytes]]  # (stream entry id, fields)


@dataclass
class Finished:
    """One entry's result, ready to be written."""

    entry_id: bytes
    request_id: str
    status: int
    document: bytes
    callback_url: str = ""


def worker_name(index: int) -> str:
    return f"worker-{index}"


def output_specs(cfg: ScenarioConfig) -> dict[str, TensorSpec]:
    """The model's outputs, what a submission may ask for (no model is loaded for this)."""
    return make_backend(cfg, 0, async_version(cfg)).outputs


def result_document(model: str, version: str, req: InferRequest, outputs: dict[str, np.ndarray],
                    specs: dict[str, TensorSpec], params: dict[str, Any]) -> bytes:
    """The OIP infer response a sync answer would be (JSON outputs), with `params`."""
    names = req.outputs if req.outputs is not None else tuple(specs)
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "parameters": params,
        "outputs": [{"name": n, "datatype": specs[n].datatype, "shape": list(outputs[n].shape),
                     "data": outputs[n].reshape(-1)} for n in names],
    }
    if req.id is not None:
        doc["id"] = req.id
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def error_document(message: str) -> bytes:
    return orjson.dumps({"error": message})


@dataclass
class Worker:
    """One worker's loop, driven by `run` (its process) or step by step (`step`, in tests)."""

    cfg: ScenarioConfig
    index: int
    client: redis.Redis
    backend: Backend
    quality: ReplicaQuality | None = None
    name: str = ""
    batches: int = 0
    stopping: bool = False
    _next_claim: float = 0.0
    _callbacks: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(CALLBACK_THREADS, thread_name_prefix="callback"))

    def __post_init__(self) -> None:
        self.name = self.name or worker_name(self.index)
        self.model = self.cfg.model.name
        self.version = async_version(self.cfg)
        self.keys = AsyncKeys(self.model)
        self.jobs = self.cfg.async_jobs
        self.ttl_ms = max(int(self.jobs.result_ttl_s * 1000), 1)
        self.claim_every_s = max(self.jobs.claim_idle_s / 2, 0.05)
        self.specs = self.backend.outputs
        self.output_names = frozenset(self.specs)
        self._complete = self.client.register_script(COMPLETE_LUA)

    # -- lifecycle ---------------------------------------------------------------------------

    def join(self) -> None:
        """Model loaded, consumer group there: say so in the workers hash (the launcher waits)."""
        try:
            self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client.hset(self.keys.workers, self.name, repr(time.time()))

    def leave(self) -> None:
        try:
            self.client.hdel(self.keys.workers, self.name)
        except (redis.RedisError, OSError) as exc:
            log.warning("%s: could not leave the workers hash: %s", self.name, exc)
        self._callbacks.shutdown(wait=True)

    def run(self) -> None:
        """Until `stopping`: claim, read, run, write. A Redis that stops answering is retried
        (with a pause), never fatal: the entries wait in the stream."""
        while not self.stopping:
            try:
                self.step(BLOCK_S)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("%s: Redis unavailable (%s); retrying", self.name, exc)
                time.sleep(0.5)

    # -- one turn ----------------------------------------------------------------------------

    def step(self, block_s: float = BLOCK_S) -> int:
        """Claim idle entries if due, else read new ones (waiting up to `block_s`), and run what
        came as one batch. Returns the entries run. A stream or group that vanished (a flushed
        Redis) is created again, from the stream's start."""
        entries: list[Entry] = []
        now = time.monotonic()
        try:
            if now >= self._next_claim:
                self._next_claim = now + self.claim_every_s
                entries = self.claim()
            if not entries:
                answer = self.client.xreadgroup(GROUP, self.name, {self.keys.stream: ">"}, count=self.jobs.batch_size,
                                                block=max(int(block_s * 1000), 1))
                entries = answer[0][1] if answer else []
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("%s: the consumer group is gone (%s); joining again", self.name, exc)
            self.join()
            return 0
        if entries:
            self.run_batch(entries)
        return len(entries)

    def claim(self) -> list[Entry]:
        """Entries another worker took and left idle past claim_idle_s, now this one's."""
        answer = self.client.xautoclaim(self.keys.stream, GROUP, self.name, min_idle_time=int(self.jobs.claim_idle_s * 1000),
                                        start_id="0-0", count=self.jobs.batch_size)
        claimed = [(entry_id, fields) for entry_id, fields in answer[1] if fields]  # deleted ones come back empty
        if claimed:
            log.info("%s: claimed %d idle entries", self.name, len(claimed))
        return claimed

    def run_batch(self, entries: list[Entry]) -> int:
        """Run `entries` as one batch and write their results; how many this worker wrote."""
        batch_id = self.batches
        self.batches += 1
        parsed: list[tuple[bytes, Submission, InferRequest]] = []
        finished: list[Finished] = []
        for entry_id, fields in entries:
            try:
                sub = Submission.from_fields(fields)
            except (KeyError, ValueError):  # not ours to answer: no id to answer it under
                log.error("%s: entry %s is not a submission; dropped", self.name, entry_id)
                self.client.xack(self.keys.stream, GROUP, entry_id)
                continue
            try:
                parsed.append((entry_id, sub, parse_infer(sub.body, self.cfg.batching.max_batch_size, self.output_names,
                                                          sub.header_length)))
            except ProtocolError as exc:  # validated at the gateway; only a hand-made entry gets here
                finished.append(Finished(entry_id, sub.request_id, exc.status, error_document(exc.message), sub.callback_url))
        rows = sum(req.n for _, _, req in parsed)
        service_s = 0.0
        started_unix, started = time.time(), time.perf_counter()  # the batch starts on the model: queue_s ends
        if parsed:
            x = np.concatenate([req.rows for _, _, req in parsed]) if len(parsed) > 1 else parsed[0][2].rows
            try:
                outputs = self.backend.run(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, FEATURES),
                                           self.backend.plan(rows))
                failure = ""
            except Exception as exc:  # the model failed: every request of the batch answers 500
                outputs, failure = {}, f"model failed: {type(exc).__name__}: {exc}"
            service_s = time.perf_counter() - started
            ready_unix = time.time()
            offset = 0
            for entry_id, sub, req in parsed:
                if failure:
                    finished.append(Finished(entry_id, sub.request_id, 500, error_document(failure), sub.callback_url))
                    continue
                mine = {k: v[offset:offset + req.n] for k, v in outputs.items()}
                offset += req.n
                judged = self.quality.judge(mine, req.label, req.id) if self.quality is not None else None
                params: dict[str, Any] = {
                    "submitted_unix_s": sub.submitted_unix_s,
                    "ready_unix_s": ready_unix,
                    "queue_s": max(started_unix - sub.submitted_unix_s, 0.0),
                    "service_s": service_s,
                    "batch_size": rows,
                    "batch_id": batch_id,
                    "worker": self.index,
                    "replica": self.index,
                    "version": self.version,
                }
                if judged is not None and judged.correct is not None:
                    params["correct"] = judged.correct
                doc = result_document(self.model, self.version, req, mine, self.specs, params)
                finished.append(Finished(entry_id, sub.request_id, 200, doc, sub.callback_url))
        written = self.write(finished)
        oldest = min((sub.submitted_unix_s for _, sub, _ in parsed), default=started_unix)
        log.info("%s batch %d: %d entries, %d rows, oldest queued %.4f s, service %.4f s, %d results written",
                 self.name, batch_id, len(entries), rows, max(started_unix - oldest, 0.0), service_s, written)
        return written

    def write(self, finished: list[Finished]) -> int:
        """Each result through COMPLETE_LUA, one pipelined round trip; callbacks for the ones this
        worker wrote (not for an entry another worker had completed first). Returns how many."""
        if not finished:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for f in finished:
            self._complete(keys=[self.keys.stream, self.keys.pending, self.keys.result(f.request_id)],
                           args=[GROUP, f.entry_id, encode_result(f.status, f.document), self.ttl_ms], client=pipe)
        answers = pipe.execute()
        written = 0
        for f, answer in zip(finished, answers):
            if answer != 1:
                log.info("%s: %s was already completed by another worker; result not written", self.name, f.request_id)
                continue
            written += 1
            if f.callback_url:
                self._callbacks.submit(call_back, f.callback_url, f.request_id, f.status, f.document)
        return written


def call_back(url: str, request_id: str, status: int, document: bytes) -> bool:
    """POST the result document to the client's loopback URL (headers say the id and status);
    best effort, bounded. True if it answered 2xx."""
    try:
        check_callback_url(url)
    except ValueError:
        return False
    request = urllib.request.Request(url, data=document, method="POST", headers={
        "Content-Type": "application/json", "x-request-id": request_id, "x-result-status": str(status)})
    try:
        with _NO_PROXY.open(request, timeout=CALLBACK_TIMEOUT_S) as resp:
            return 200 <= resp.status < 300
    except (OSError, ValueError) as exc:
        log.info("callback to %s for %s failed: %s", url, request_id, exc)
        return False


def connect(url: str, password: str | None) -> redis.Redis:
    return redis.Redis.from_url(url, password=password, socket_timeout=SOCKET_TIMEOUT_S + BLOCK_S,
                                socket_connect_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def build(cfg: ScenarioConfig, index: int, client: redis.Redis) -> Worker:
    """A worker with its model loaded (blocking), not yet joined."""
    version = async_version(cfg)
    backend = make_backend(cfg, index, version)
    backend.load()
    return Worker(cfg, index, client, backend, ReplicaQuality.from_config(cfg, version, index))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m real.asyncq.worker", description="servelab async worker")
    p.add_argument("--config", required=True, help="a run's resolved config.yaml")
    p.add_argument("--index", type=int, required=True, help="this worker's index (its name: worker-INDEX)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(args.config)
    url, password = redis_from_env()
    client = connect(url, password)
    worker = build(cfg, args.index, client)

    def stop(signum: int, frame: object) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.join()
    except (redis.RedisError, OSError) as exc:  # the launcher shows this line in its LaunchError
        log.error("%s cannot join the queue: Redis at %s unavailable (%s)", worker.name, redact(url), exc)
        return 1
    log.info("%s ready: model %s version %s (%s backend), stream %s, Redis %s", worker.name, worker.model,
             worker.version, cfg.model.backend, worker.keys.stream, redact(url))
    try:
        worker.run()
    finally:
        worker.leave()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
