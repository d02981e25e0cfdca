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

from typing import TYPE_CHECKING, Protocol, Sequence

from sim.policy.features import FeatureRow

if TYPE_CHECKING:
    from sim.config import FeatureConfig

STORES = ("embedded", "redis")


class FeatureStore(Protocol):
    """An online store of feature rows by entity id."""

    async def mget(self, ids: Sequence[int]) -> list[FeatureRow | None]:
        """One round trip: the rows of `ids`, aligned with them, None for an entity it lacks."""
        ...

    async def close(self) -> None:
        """Release the connection (or memory); later calls may fail."""
        ...


def make_store(features: FeatureConfig, *, redis_url: str = "", redis_password: str | None = None) -> FeatureStore:
    """The store a replica looks its rows up in (`features.store`), ready to answer:
    - embedded: a fresh `EmbeddedStore` holding the offline table (`generate_table(features.entities,
      features.seed)`): each replica materialises its own copy at start;
    - redis: a `RedisStore` on `redis_url` (the launcher's, which materialised the table once for
      the run before any replica started), its lookups bounded by `features.timeout_s`.
    A store name it does not know, or redis without a URL, is a ConfigError on `features.store`."""
    from sim.config import ConfigError

    if features.store == "embedded":
        from real.features.embedded import EmbeddedStore
        from real.features.offline import generate_table

        store = EmbeddedStore()
        store.materialise(generate_table(features.entities, features.seed))
        return store
    if features.store == "redis":
        if not redis_url:
            raise ConfigError("features.store", "redis needs the run's Redis URL ($SERVELAB_REDIS_URL, set by the launcher, "
                                                "or server.redis_url)")
        from real.features.redis_store import RedisStore

        return RedisStore(redis_url, redis_password, timeout_s=features.timeout_s, key="server.redis_url")
    raise ConfigError("features.store", f"{features.store!r} has no store to look rows up in; one of {', '.join(STORES)}")


def materialise_for_run(features: FeatureConfig, redis_url: str, redis_password: str | None) -> int:
    """The materialisation step of a run with `features.store=redis`: check the server (a
    ConfigError naming the URL when it is down or refuses the password), then write the offline
    table into it, once, before any replica serves. Returns the rows written."""
    from real.features.offline import generate_table
    from real.features.redis_store import RedisStore

    store = RedisStore(redis_url, redis_password, timeout_s=features.timeout_s, key="server.redis_url")
    store.check()
    return store.materialise(generate_table(features.entities, features.seed))


__all__ = ["FeatureRow", "FeatureStore", "STORES", "make_store", "materialise_for_run"]
