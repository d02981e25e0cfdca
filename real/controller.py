"""The real stack's controller loop: a `sim.policy.controller.Controller` ticked on the wall clock.

As Argo Rollouts and Flagger run beside the data plane, this runs outside the gateway: every
`controller.tick_s` it reads `GET /v2/gateway/state` (the deployment and each version's window
metrics), builds the same `View` the twin hands the controller, calls `on_tick`, and carries
out each action through the token-guarded control API: weights and membership at the gateway,
a `Fault` at the replica itself (`POST /v2/fault`), since a fault is about the process, not
routing. The twin ticks the very same controller object on SimPy's clock (`sim.control`).

Times are seconds since the loop started, the twin's `now` for a run that starts with it. An
action the API refuses (a 4xx: a controller bug, or a replica that is gone) raises
`ControlError`, which ends the loop: a rollout must not carry on from a state it did not reach.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

from real.gateway.control import replica_action_doc, view_from_doc
from sim.policy.controller import Action, Controller, Fault, SetWeights

STATE_PATH = "/v2/gateway/state"
WEIGHTS_PATH = "/v2/gateway/weights"
REPLICAS_PATH = "/v2/gateway/replicas"
FAULT_PATH = "/v2/fault"
HTTP_TIMEOUT_S = 5.0


class ControlError(RuntimeError):
    """The control API refused an action, or could not be reached."""


@dataclass(frozen=True)
class Applied:
    """One action carried out, at the loop's time: a line of the run's events."""

    time_s: float
    action: Action


@dataclass
class ControllerDriver:
    """Ticks `controller` against the gateway at `gateway_url` (and the replicas for faults)."""

    controller: Controller
    gateway_url: str
    token: str
    replica_urls: Sequence[str] | None = None  # None: asked of the gateway at the first Fault
    clock: Callable[[], float] = time.monotonic
    applied: list[Applied] = field(default_factory=list)
    started_at: float | None = None  # the clock's reading at time 0, to line other records up with

    async def run(self, until_s: float = float("inf")) -> list[Applied]:
        """Tick at 0, tick_s, 2 tick_s, ... (no drift: each tick is due at a fixed time) until
        `until_s` or cancellation; the actions carried out."""
        start = self.started_at = self.clock()
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {self.token}"}) as http:
            k = 0
            while (due := k * self.controller.tick_s) < until_s:
                await asyncio.sleep(max(start + due - self.clock(), 0.0))
                await self.tick(http, self.clock() - start)
                k += 1
        return self.applied

    async def tick(self, http: aiohttp.ClientSession, now: float) -> None:
        """One tick: read the state, ask the controller, carry out its actions in order."""
        state = await self._call(http, "GET", self.gateway_url + STATE_PATH)
        for action in self.controller.on_tick(now, view_from_doc(state, now)):
            await self.act(http, action, state["versions"])
            self.applied.append(Applied(now, action))

    async def act(self, http: aiohttp.ClientSession, action: Action, versions: Sequence[str]) -> None:
        if isinstance(action, Fault):
            url = (await self._replica_urls(http))[action.replica] + FAULT_PATH
            await self._call(http, "POST", url, {"down": action.down, "slowdown": action.slowdown})
        elif isinstance(action, SetWeights):
            await self._call(http, "POST", self.gateway_url + WEIGHTS_PATH, {"weights": list(action.weights)})
        else:
            await self._call(http, "POST", f"{self.gateway_url}{REPLICAS_PATH}/{action.replica}",
                             replica_action_doc(action, versions))

    async def _replica_urls(self, http: aiohttp.ClientSession) -> Sequence[str]:
        if self.replica_urls is None:
            listing = await self._call(http, "GET", self.gateway_url + REPLICAS_PATH)
            self.replica_urls = [r["url"] for r in listing["replicas"]]
        return self.replica_urls

    async def _call(self, http: aiohttp.ClientSession, method: str, url: str, body: object = None) -> Any:
        try:
            async with http.request(method, url, json=body) as resp:
                doc = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise ControlError(f"{method} {url} answered {resp.status}: {doc.get('error', doc) if isinstance(doc, dict) else doc}")
                return doc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
