"""The control API's documents: JSON in, shared-policy objects out, and back.

The gateway's control endpoints and the real-side controller driver (`real.controller`) both
speak through these functions, so an action or a view has one wire shape, written once: a
replica action `{"action": "drain"}` / `{"action": "set_version", "version": "2"}`, version
weights `{"weights": [0.9, 0.1]}`, and the state document, which is `View` field for field
(`windows` a list in version order, since JSON keys are strings) plus the version names and
per-replica detail a person reading it wants, and the manual rollout commands received.

Membership at run time: `{"url": URL, "version": NAME}` adds a replica (it joins not ready, as
the twin's AddReplica: the health probes bring it in; `"active": false` keeps it out until an
explicit activate), `{"action": "remove"}` takes one out for good (in-flight requests finish).
Manual rollout control: `{"command": "promote" | "abort"}`; the gateway only queues it, numbered,
in the state document, and the controller driver (outside the data plane) carries it out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from sim.policy.controller import (Action, Activate, Drain, Eject, RemoveReplica, Restore, SetVersion, SetWeights,
                                   VersionWindow, View)
from sim.policy.membership import Membership

# the actions a replica endpoint takes, by the name a body gives them; set_version also needs "version"
_REPLICA_ONLY: dict[str, Callable[[int], Action]] = {"activate": Activate, "drain": Drain, "eject": Eject, "restore": Restore,
                                                     "remove": RemoveReplica}
REPLICA_ACTIONS = (*_REPLICA_ONLY, "set_version")
ROLLOUT_COMMANDS = ("promote", "abort")  # the methods every rollout controller has
MAX_URL_CHARS = 2048


class BadControl(ValueError):
    """A control request that cannot be carried out: the endpoint answers 4xx with this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def replica_action(replica: int, doc: object, membership: Membership) -> Action:
    """The action a replica endpoint's body asks for, checked against the deployment."""
    if not 0 <= replica < len(membership) or membership.removed[replica]:
        raise BadControl(f"no replica {replica}; replicas are 0..{len(membership) - 1}", 404)
    name = doc.get("action") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(name, str) or name not in REPLICA_ACTIONS:
        raise BadControl(f'body must be JSON like {{"action": "drain"}}; actions: {", ".join(REPLICA_ACTIONS)}')
    if name in _REPLICA_ONLY:
        return _REPLICA_ONLY[name](replica)
    version = doc.get("version")
    if not isinstance(version, str) or version not in membership.versions:
        raise BadControl(f'set_version needs "version", one of {", ".join(membership.versions)}; got {version!r}')
    return SetVersion(replica, membership.versions.index(version))


def replica_action_doc(action: Action, versions: Sequence[str]) -> dict[str, Any]:
    """The body that asks a replica endpoint for `action` (the inverse of `replica_action`)."""
    if isinstance(action, SetVersion):
        return {"action": "set_version", "version": versions[action.version]}
    for name, make in _REPLICA_ONLY.items():
        if make is type(action):
            return {"action": name}
    raise TypeError(f"{action!r} is not a replica action")


@dataclass(frozen=True)
class NewReplica:
    """A replica to add: where it listens, the version index it serves, and whether it may take
    requests as soon as its probes pass (`active`) or only once activated."""

    url: str
    version: int
    active: bool = True


def new_replica(doc: object, membership: Membership, urls: Sequence[str]) -> NewReplica:
    """`{"url": "http://127.0.0.1:8001", "version": "2", "active": true}`, checked: an http(s)
    URL with a host and port not already in the membership, a known version name."""
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) or not isinstance(doc.get("version"), str):
        raise BadControl('body must be JSON like {"url": "http://127.0.0.1:8001", "version": "2"}')
    url = doc["url"].rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (len(url) > MAX_URL_CHARS or parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or port is None or parts.path or parts.query or parts.fragment):
        raise BadControl(f"url must be http(s)://HOST:PORT with nothing after the port, got {url[:80]!r}")
    version = doc["version"]
    if version not in membership.versions:
        raise BadControl(f'unknown version {version!r}; "version" must be one of {", ".join(membership.versions)}')
    active = doc.get("active", True)
    if not isinstance(active, bool):
        raise BadControl(f'"active" must be true or false, got {active!r}')
    taken = [r for r, u in enumerate(urls) if u == url and not membership.removed[r]]
    if taken:
        raise BadControl(f"{url} is replica {taken[0]} already", 409)
    return NewReplica(url, membership.versions.index(version), active)


def rollout_command(doc: object) -> str:
    """`{"command": "promote"}` or `{"command": "abort"}`."""
    command = doc.get("command") if isinstance(doc, dict) else None
    if not isinstance(command, str) or command not in ROLLOUT_COMMANDS:
        raise BadControl(f'body must be JSON like {{"command": "promote"}}; commands: {", ".join(ROLLOUT_COMMANDS)}')
    return command


@dataclass(frozen=True)
class Command:
    """A manual rollout command as the state document lists it: numbered in the order received
    (from 1), at the gateway's time."""

    seq: int
    command: str
    received_s: float


def commands_after(doc: Mapping[str, Any], seq: int) -> list[Command]:
    """The commands of a state document numbered above `seq` (those not yet carried out), in order."""
    found = [Command(int(c["seq"]), str(c["command"]), float(c["received_s"])) for c in doc.get("commands", ())]
    return sorted((c for c in found if c.seq > seq), key=lambda c: c.seq)


def set_weights(doc: object, n_versions: int) -> SetWeights:
    """`{"weights": [w0, w1, ...]}`: one per version, finite, >= 0, with a positive sum."""
    if not isinstance(doc, dict) or "weights" not in doc:
        raise BadControl('body must be JSON like {"weights": [0.9, 0.1]}')
    weights = doc["weights"]
    if (
        not isinstance(weights, list) or len(weights) != n_versions
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise BadControl(f"weights must be a list of {n_versions} numbers >= 0 with a positive sum")
    return SetWeights(tuple(float(w) for w in weights))


def state_doc(view: View, membership: Membership, window_s: float, commands: Sequence[Command] = ()) -> dict[str, Any]:
    """GET /v2/gateway/state: the View, plus names, per-replica detail and the rollout commands."""
    return {
        "now": view.now,
        "versions": list(membership.versions),
        "version_weights": list(view.version_weights),
        "replica_versions": list(view.replica_versions),
        "routable": list(view.routable),
        "healthy": list(membership.healthy),
        "active": list(membership.active),
        "removed": list(view.removed),
        "window_s": window_s,
        "windows": [asdict(view.windows.get(v, VersionWindow())) for v in range(len(membership.versions))],
        "commands": [asdict(c) for c in commands],
    }


_WINDOW_KEYS = {f.name for f in fields(VersionWindow)}


def view_from_doc(doc: Mapping[str, Any], now: float) -> View:
    """A state document as the View a controller ticks on, at the caller's `now`. As in the
    twin, only versions that had requests in the window appear in `windows`."""
    windows = {}
    for v, w in enumerate(doc["windows"]):
        window = VersionWindow(**{k: w[k] for k in _WINDOW_KEYS if k in w})
        if window.requests:
            windows[v] = window
    return View(now, tuple(float(w) for w in doc["version_weights"]), tuple(int(v) for v in doc["replica_versions"]),
                tuple(bool(r) for r in doc["routable"]), windows, tuple(bool(r) for r in doc.get("removed", ())))
