"""Stock Locust, as the reference the servelab load generator is compared against (bench only).

`FastHttpUser`s with `wait_time = constant_throughput(rate / users)`: the usual way to ask Locust
for a rate. Each user waits for its answer before its next request, so the offered load depends
on the server (coordinated omission) and the arrivals are not Poisson. Latency here is Locust's
own: from the actual send. Runs only inside `locust -f`; the start time of every request is
written to $SERVELAB_REF_OUT (npy) when Locust quits, for the bench to compute rate and spread.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from locust import FastHttpUser, constant_throughput, events, task

RATE_PER_USER = float(os.environ.get("SERVELAB_REF_RATE_PER_USER", "10"))
PATH = os.environ.get("SERVELAB_REF_PATH", "/v2/models/digits/infer")
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.5] * 64}]}
_starts: list[float] = []
_latencies: list[float] = []


class ConstantThroughputUser(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER)
    concurrency = 1

    @task
    def infer(self) -> None:
        self.client.post(PATH, json=BODY, headers={"x-user-id": str(id(self) % 1000)})


@events.request.add_listener
def _on_request(start_time: float, response_time: float, **_: Any) -> None:
    _starts.append(start_time)
    _latencies.append(response_time / 1e3)


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    out = os.environ.get("SERVELAB_REF_OUT")
    if out:
        tmp = out + ".tmp.npy"
        np.save(tmp, np.column_stack([np.asarray(_starts, dtype=float), np.asarray(_latencies, dtype=float)])
                if _starts else np.empty((0, 2)))
        os.replace(tmp, out)
