"""The control API's documents: JSON in, shared-policy objects out, and back.

The gateway's control endpoints and the real-side controller driver (`real.controller`) both
speak through these functions, so an action or a view has one wire shape, written once: a
replica action `{"action": "drain"}` / `{"action": "set_version", "version": "2"}`, version
weights `{"weights": [0.9, 0.1]}`, and the state document, which is `View` field for field
(`windows` a list in version order, since JSON keys are strings) plus the version names and
per-replica detail a person reading it wants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, Callable, Mapping, Sequence

from sim.policy.controller import Action, Activate, Drain, Eject, Restore, SetVersion, SetWeights, VersionWindow, View
from sim.policy.membership import Membership

# the actions a replica endpoint takes, by the name a body gives them; set_version also needs "version"
_REPLICA_ONLY: dict[str, Callable[[int], Action]] = {"activate": Activate, "drain": Drain, "eject": Eject, "restore": Restore}
REPLICA_ACTIONS = (*_REPLICA_ONLY, "set_version")


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


def state_doc(view: View, membership: Membership, window_s: float) -> dict[str, Any]:
    """GET /v2/gateway/state: the View, plus names and per-replica detail."""
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
