"""The online feature store's stores: where a replica fetches an entity's feature row from.

A request names an entity (a user id); the replica looks its row up (through its cache,
sim.policy.features.FeatureCache, one round trip per batch, sim.policy.features.LookupPlan)
in a `FeatureStore`. Every store is filled by materialising the offline table
(real.features.offline) and answers the same two calls, so the server does not care which one
it has:
- `EmbeddedStore` (real.features.embedded): in the replica's own process, no server to start,
  the default (the two-command promise holds);
- a Redis store (`real.features.redis_store.RedisStore`): the same rows behind one `MGET` per batch,
  on a private, password-protected redis-server bound to loopback (`real.features.redis_server`).

The calls are coroutines because the replica's batcher runs on asyncio and a networked store
must not block its event loop; a lookup timeout is then the caller's `asyncio.wait_for`.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from sim.policy.features import FeatureRow


class FeatureStore(Protocol):
    """An online store of feature rows by entity id."""

    async def mget(self, ids: Sequence[int]) -> list[FeatureRow | None]:
        """One round trip: the rows of `ids`, aligned with them, None for an entity it lacks."""
        ...

    async def close(self) -> None:
        """Release the connection (or memory); later calls may fail."""
        ...


__all__ = ["FeatureRow", "FeatureStore"]
