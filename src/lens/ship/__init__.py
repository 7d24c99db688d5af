"""Shard shipping: indexers publish each new shard generation, searcher replicas install it.

- :mod:`lens.ship.publisher` -- snapshot a live shard and publish it to a shard store
  (Lens role ``indexer`` after each index job; Mimir's pipeline when NATS is configured).
- :mod:`lens.ship.sync` -- :class:`~lens.ship.sync.ShardSync`, the searcher's follower: catch up
  on start, then watch the store and install every new ref, atomically, with retries.
- :mod:`lens.ship.install` -- download, verify and import one ref (shared by both).
- :mod:`lens.ship.runtime` -- what a Lens server does about shipping, by role.

The store itself (:mod:`infra.shardstore`) is a Protocol with a directory and a NATS JetStream
implementation.
"""
