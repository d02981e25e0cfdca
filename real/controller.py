"""The real stack's controller loop: a `sim.policy.controller.Controller` ticked on the wall clock.

As Argo Rollouts and Flagger run beside the data plane, this runs outside the gateway: every
`controller.tick_s` it reads `GET /v2/gateway/state` (the deployment, each version's window
metrics and the manual rollout commands queued there), builds the same `View` the twin hands the
controller, calls `on_tick`, and carries out each action: weights and membership through the
gateway's token-guarded control API, a `Fault` at the replica itself (`POST /v2/fault`), and
AddReplica / RemoveReplica with the launcher too, since a replica is a process:
- AddReplica: the launcher starts the process (its index is the next one, as the controller
  expects) and the gateway learns of it at once, inactive; in the background, once it answers
  ready, it is told the run's time 0 and activated, and the gateway's probes bring it into
  rotation, as the twin's do after `rollout.replica_start_s`;
- RemoveReplica: the gateway takes it out at once (no new requests); in the background the
  launcher stops the process once the gateway counts nothing in flight to it.
Neither waits in the tick loop: a replica takes a second or two to start.

Manual control: `POST /v2/gateway/rollout {"command": "promote" | "abort"}` queues a numbered
command at the gateway; before its next `on_tick` the driver calls the controller's `promote()`
or `abort()` for every command it has not carried out yet (those queued before it started are
not its own).

Times are seconds since the loop's time 0 (`run(start=...)`: the load's time 0, so the records,
the controller and the twin share one clock). A tick's time is its due time, k x tick_s, as in
the twin, so a pause of 3 s ends at the same tick in both worlds; the state it reads and the
calls it makes follow within milliseconds (the worst lateness is kept: `tick_lag_max_s`). An action the API refuses (a 4xx: a controller
bug, or a replica that is gone) or a replica that cannot start raises `ControlError`, which ends
the loop: a rollout must not carry on from a state it did not reach.

Before its first tick the driver tells every replica the wall time of time 0 (`POST /v2/fault
{"t0_unix": T}`): a replica applies its version's error rate and `faults` schedule only from
then on. A run without a rollout has no driver, but its replicas need time 0 all the same:
`TimeZeroTeller` does only that, under the same `BackgroundDriver`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping, Protocol, Sequence

import aiohttp

from real.gateway.control import commands_after, replica_action_doc, view_from_doc
from sim.control import Event, ReplicaCount
from sim.policy.controller import Action, Activate, AddReplica, Controller, Drain, Fault, RemoveReplica, SetWeights

log = logging.getLogger("servelab.controller")

STATE_PATH = "/v2/gateway/state"
WEIGHTS_PATH = "/v2/gateway/weights"
REPLICAS_PATH = "/v2/gateway/replicas"
FAULT_PATH = "/v2/fault"
HTTP_TIMEOUT_S = 5.0
T0_POLL_S = 0.01


class ControlError(RuntimeError):
    """The control API refused an action, could not be reached, or a replica did not start."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal, None when nothing answered


class ReplicaLauncher(Protocol):
    """What the driver needs of the launcher (`real.launcher.RunningStack` is one). Blocking
    calls: the driver runs them in threads."""

    def start_replica(self, version: str) -> tuple[int, str]: ...

    def wait_replica(self, index: int, timeout_s: float | None = None) -> None: ...

    def stop_replica(self, index: int) -> int: ...


@dataclass(frozen=True)
class Applied:
    """One action carried out, at the loop's time: a line of the run's events."""

    time_s: float
    action: Action


def action_event(time_s: float, action: Action) -> Event:
    """An action as the twin logs it (`sim.control.ControlPlane.apply`): the same events.json lines."""
    return Event(time_s, "action", {"action": type(action).__name__, **vars(action)})


@dataclass
class ControllerDriver:
    """Ticks `controller` against the gateway at `gateway_url` (and the replicas for faults)."""

    controller: Controller
    gateway_url: str
    token: str
    replica_urls: Sequence[str] | None = None  # None: asked of the gateway when needed
    clock: Callable[[], float] = time.monotonic
    launcher: ReplicaLauncher | None = None  # starts and stops replica processes (AddReplica, RemoveReplica)
    t0_unix: float | None = None  # the wall time of time 0: told to every replica (POST /v2/fault)
    applied: list[Applied] = field(default_factory=list)
    # the twin's vocabulary: actions, eject/restore (the gateway's health verdicts, seen at a tick),
    # plus command (a manual promote/abort), started (a new replica answered ready), stopped
    events: list[Event] = field(default_factory=list)
    # per version, replicas ready (routable) and live (not removed), as the state showed them at a
    # tick, whenever they changed: the twin's counts (sim.control), at the tick's resolution
    replica_counts: list[ReplicaCount] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a reader of the run should know
    started_at: float | None = None  # the clock's reading at time 0, to line other records up with
    tick_lag_max_s: float = 0.0  # how late the latest tick ran after its due time
    _last_command: int = 0
    _healthy: list[bool] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _failure: BaseException | None = None
    _left: set[int] = field(default_factory=set)  # replicas drained or removed: never activated by a start
    _http: aiohttp.ClientSession | None = None

    async def run(self, until_s: float = float("inf"), *, start: float | None = None) -> list[Applied]:
        """Tick at 0, tick_s, 2 tick_s, ... (no drift: each tick is due at a fixed time) until
        `until_s`, the controller is done, or cancellation; the actions carried out. `start`:
        time 0 on `clock` (may be ahead: the replicas hear of it first); default now."""
        start = self.started_at = self.clock() if start is None else start
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {self.token}"}) as http:
            self._http = http
            try:
                state = await self._call(http, "GET", self.gateway_url + STATE_PATH)
                self._last_command = max((c.seq for c in commands_after(state, 0)), default=0)
                self._healthy = list(state["healthy"])
                self._count(state, 0.0)
                if self.t0_unix is not None:
                    await self._tell_t0(http, await self._replica_urls(http, fresh=True))
                k = 0
                while (due := k * self.controller.tick_s) < until_s:
                    await asyncio.sleep(max(start + due - self.clock(), 0.0))
                    self.tick_lag_max_s = max(self.tick_lag_max_s, self.clock() - start - due)
                    await self.tick(http, due)
                    k += 1
                    if getattr(self.controller, "done", False):
                        break
                await self._settle()
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._http = None
        return self.applied

    async def tick(self, http: aiohttp.ClientSession, now: float) -> None:
        """One tick: read the state, hand over manual commands, ask the controller, carry out
        its actions in order."""
        self._raise_failure()
        state = await self._call(http, "GET", self.gateway_url + STATE_PATH)
        self._observe_health(state, now)
        self._count(state, now)
        for command in commands_after(state, self._last_command):
            self._last_command = command.seq
            carry_out = getattr(self.controller, command.command, None)
            if callable(carry_out):
                carry_out()
                self.events.append(Event(now, "command", {"command": command.command, "seq": command.seq}))
            else:
                self._note(f"manual {command.command} (#{command.seq}) ignored: the controller has no {command.command}()")
        actions = self.controller.on_tick(now, view_from_doc(state, now))
        for action in actions:
            await self.act(http, action, state["versions"])
            self.applied.append(Applied(now, action))
            self.events.append(action_event(now, action))
        if actions:  # the counts after the change, as the twin logs them
            self._count(await self._call(http, "GET", self.gateway_url + STATE_PATH), now)

    async def act(self, http: aiohttp.ClientSession, action: Action, versions: Sequence[str]) -> None:
        if isinstance(action, Fault):
            url = (await self._replica_urls(http))[action.replica] + FAULT_PATH
            await self._call(http, "POST", url, {"down": action.down, "slowdown": action.slowdown})
        elif isinstance(action, SetWeights):
            await self._call(http, "POST", self.gateway_url + WEIGHTS_PATH, {"weights": list(action.weights)})
        elif isinstance(action, AddReplica):
            await self._add_replica(http, versions[action.version])
        else:
            if isinstance(action, (Drain, RemoveReplica)):
                self._left.add(action.replica)
            await self._call(http, "POST", f"{self.gateway_url}{REPLICAS_PATH}/{action.replica}",
                             replica_action_doc(action, versions))
            if isinstance(action, RemoveReplica):
                self._stop_replica(action.replica)

    # -- replicas at run time ----------------------------------------------------------------

    def _need_launcher(self, action: str) -> ReplicaLauncher:
        if self.launcher is None:
            raise ControlError(f"{action} needs the launcher: this driver has none")
        return self.launcher

    async def _add_replica(self, http: aiohttp.ClientSession, version: str) -> None:
        """Start the process, tell the gateway at once (inactive: it must not serve before it
        knows the run's time 0), bring it in in the background."""
        launcher = self._need_launcher("AddReplica")
        try:
            index, url = await asyncio.to_thread(launcher.start_replica, version)
        except Exception as exc:
            raise ControlError(f"replica of version {version} did not start: {exc}") from exc
        doc = await self._call(http, "POST", self.gateway_url + REPLICAS_PATH, {"url": url, "version": version, "active": False})
        if doc.get("replica") != index:
            raise ControlError(f"the gateway made the new replica {doc.get('replica')}, the launcher {index}: "
                               "replicas were added behind the driver's back")
        if self.replica_urls is not None:
            self.replica_urls = [*self.replica_urls, url]
        self._background(self._bring_in(index, url, version), f"replica {index} start")

    async def _bring_in(self, index: int, url: str, version: str) -> None:
        launcher = self._need_launcher("AddReplica")
        await asyncio.to_thread(launcher.wait_replica, index)
        if index in self._left:  # drained or removed before it was ready
            return
        http = self._http
        assert http is not None
        if self.t0_unix is not None:
            await self._tell_t0(http, {index: url})
        await self._call(http, "POST", f"{self.gateway_url}{REPLICAS_PATH}/{index}", replica_action_doc(Activate(index), ()))
        self.events.append(Event(self._now(), "started", {"replica": index, "version": version, "url": url}))

    def _stop_replica(self, index: int) -> None:
        if self.launcher is None:
            self._note(f"replica {index} left the gateway; no launcher here to stop its process")
            return
        launcher = self.launcher

        async def stop() -> None:
            code = await asyncio.to_thread(launcher.stop_replica, index)
            self.events.append(Event(self._now(), "stopped", {"replica": index, "exit_status": code}))

        self._background(stop(), f"replica {index} stop")

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run `work` beside the ticks; a failure ends the loop at its next tick."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._failure is None:
                    self._failure = ControlError(f"{what} failed: {exc}")
                    self._failure.__cause__ = exc

        task = asyncio.create_task(guarded(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self) -> None:
        """After the last tick: let starts and stops under way finish (each is bounded by the
        launcher's deadlines), then report what failed."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    # -- what the loop sees ------------------------------------------------------------------

    def _observe_health(self, state: dict[str, Any], now: float) -> None:
        """The gateway's health verdicts since the last tick, as the twin logs its probes'."""
        healthy = list(state["healthy"])
        removed = list(state.get("removed", [False] * len(healthy)))
        for r, ok in enumerate(healthy):
            was = self._healthy[r] if r < len(self._healthy) else False  # a new replica joins not ready
            if ok != was and not removed[r]:
                self.events.append(Event(now, "restore" if ok else "eject", {"replica": r, "reason": "gateway health checks"}))
        self._healthy = healthy

    def _count(self, state: dict[str, Any], now: float) -> None:
        n = len(state["versions"])
        ready, live = [0] * n, [0] * n
        removed = state.get("removed", [False] * len(state["replica_versions"]))
        for v, routable, gone in zip(state["replica_versions"], state["routable"], removed):
            live[v] += not gone
            ready[v] += bool(routable) and not gone
        counted = ReplicaCount(now, tuple(ready), tuple(live))
        last = self.replica_counts[-1] if self.replica_counts else None
        if last is None or (last.ready, last.live) != (counted.ready, counted.live):
            self.replica_counts.append(counted)

    def _now(self) -> float:
        assert self.started_at is not None
        return self.clock() - self.started_at

    def _note(self, message: str) -> None:
        if message not in self.notes:
            log.warning("%s", message)
            self.notes.append(message)

    async def _tell_t0(self, http: aiohttp.ClientSession, urls: dict[int, str]) -> None:
        assert self.t0_unix is not None
        await tell_time_zero(http, urls, self.t0_unix, self._note)

    async def _replica_urls(self, http: aiohttp.ClientSession, fresh: bool = False) -> dict[int, str]:
        """Replica index -> URL (every one not removed, when asked of the gateway)."""
        if self.replica_urls is None or fresh:
            listing = await self._call(http, "GET", self.gateway_url + REPLICAS_PATH)
            replicas = listing["replicas"]
            self.replica_urls = [r["url"] for r in replicas]
            return {r["replica"]: r["url"] for r in replicas if not r.get("removed")}
        return dict(enumerate(self.replica_urls))

    async def _call(self, http: aiohttp.ClientSession, method: str, url: str, body: object = None) -> Any:
        return await call_json(http, method, url, body)


async def call_json(http: aiohttp.ClientSession, method: str, url: str, body: object = None) -> Any:
    """One control call: its JSON answer, or ControlError (with the status of a refusal)."""
    try:
        async with http.request(method, url, json=body) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ControlError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if status >= 400:
        said = doc.get("error", doc) if isinstance(doc, dict) else text[:200]
        raise ControlError(f"{method} {url} answered {status}: {said}", status)
    if doc is None:
        raise ControlError(f"{method} {url} answered {status} with a body that is not JSON: {text[:200]!r}", status)
    return doc


async def tell_time_zero(http: aiohttp.ClientSession, urls: Mapping[int, str], t0_unix: float,
                         note: Callable[[str], None]) -> None:
    """Every replica in `urls` learns the wall time of time 0 (`POST /v2/fault {"t0_unix": T}`),
    so per-version error rates and fault schedules run on the run's clock. A replica that
    refuses the field (an older server) is noted, not fatal: its schedule then runs on its own
    clock, and it fails nothing."""
    body = {"t0_unix": t0_unix}
    for r, url in urls.items():
        try:
            await call_json(http, "POST", url + FAULT_PATH, body)
        except ControlError as exc:
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            note(f"replica {r} did not take t0_unix ({exc}); scheduled faults cannot follow the run's clock there")


@dataclass
class TimeZeroTeller:
    """A run without a rollout: no controller ticks, but the replicas must still learn the
    load's time 0, or their versions' error rates and `faults` never apply. Runs under a
    `BackgroundDriver` as a `ControllerDriver` does, and does only what that driver does before
    its first tick: tells every replica not removed (`GET /v2/gateway/replicas`) time 0."""

    gateway_url: str
    token: str
    clock: Callable[[], float] = time.monotonic
    t0_unix: float | None = None  # set by the BackgroundDriver once the load announces it
    told: list[int] = field(default_factory=list)  # the replicas it sent time 0 to (a refusal is a note)
    notes: list[str] = field(default_factory=list)

    async def run(self, until_s: float = float("inf"), *, start: float | None = None) -> None:
        assert self.t0_unix is not None
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {self.token}"}) as http:
            listing = await call_json(http, "GET", self.gateway_url + REPLICAS_PATH)
            urls = {r["replica"]: r["url"] for r in listing["replicas"] if not r.get("removed")}
            await tell_time_zero(http, urls, self.t0_unix, self._note)
        self.told = sorted(urls)

    def _note(self, message: str) -> None:
        if message not in self.notes:
            log.warning("%s", message)
            self.notes.append(message)


class TimedDriver(Protocol):
    """What a BackgroundDriver runs: a ControllerDriver, or a TimeZeroTeller."""

    clock: Callable[[], float]
    t0_unix: float | None

    async def run(self, until_s: float = ..., *, start: float | None = None) -> Any: ...


class BackgroundDriver:
    """A driver (a ControllerDriver, or a TimeZeroTeller) on an event loop of its own thread,
    beside a blocking load run: it waits until `time_zero()` names the wall time of the load's
    time 0 (polled), then runs with that as its time 0 until `until_s`, the controller is done,
    or `stop()`."""

    def __init__(self, driver: TimedDriver, until_s: float, time_zero: Callable[[], float | None]) -> None:
        self.driver = driver
        self.until_s = until_s
        self.time_zero = time_zero
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="servelab-controller", daemon=True)

    def start(self) -> BackgroundDriver:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        t0 = self.time_zero()
        while t0 is None:
            if self._stopping.is_set():
                return
            await asyncio.sleep(T0_POLL_S)
            t0 = self.time_zero()
        self.driver.t0_unix = t0
        start = self.driver.clock() + (t0 - time.time())
        await self.driver.run(self.until_s, start=start)

    def stop(self, timeout_s: float = 60.0) -> BaseException | None:
        """Cancel what is left of the loop (starts and stops under way are cancelled; the stack's
        own exit stops every process) and wait for the thread; the error that ended it, if any."""
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return self.error or ControlError(f"the controller loop did not stop within {timeout_s:g} s")
        return self.error
