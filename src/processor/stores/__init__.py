"""Stores: what the processor reads events and subscriptions from and writes
jobs and progress to. ``base`` is the contract (roles, entries, the three
errors); each store is a package that implements it and is used through its
public names only. ``tests/stores/test_contract.py`` is the definition of a
correct store: a new store implements the roles and joins its fixture."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from pymongo import MongoClient

from processor.stores.base import Store
from processor.stores.mongo import MemoryTokenStore, MongoStore, RedisTokenStore, TokenStore, ensure_indexes
from processor.stores.sqlite import SqliteStore

if TYPE_CHECKING:  # the configuration names the store's limits, which base defines
    from processor.config import Config


def open_store(
    config: Config, lock_epoch_key: str | None = None
) -> tuple[Store, Callable[[], object] | None]:
    """The store ``FC_MONGO_URL`` names (``sqlite:///PATH``: the embedded one), and
    what must run before processing starts. ``lock_epoch_key``: the leader lock's
    epoch counter, when it lives on the token mirror's Redis."""
    if config.embedded_path is not None:
        embedded = SqliteStore(
            config.embedded_path,
            resume_key=config.stream_resume_token_key,
            max_event_bytes=config.stream_max_event_bytes,
        )
        return embedded, None
    client: MongoClient[dict[str, Any]] = MongoClient(config.mongo_url, tz_aware=True, connect=False)
    database = client[config.mongo_db]
    tokens: TokenStore
    if config.redis_url is None:
        tokens = MemoryTokenStore()
    else:
        tokens = RedisTokenStore(
            # A mirror that hangs must not hold back the commits it follows.
            redis.Redis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0),
            config.stream_resume_token_key,
            instance=config.standby_instance_id,
            # With the lock on the same Redis, a token write is refused as soon as a newer
            # leader acquired the lock, not only once it saved a token of its own.
            epoch_key=lock_epoch_key,
        )
    store = MongoStore(
        database,
        tokens,
        max_event_bytes=config.stream_max_event_bytes,
        checkpoint_key=config.stream_resume_token_key,
    )
    return store, lambda: ensure_indexes(database)


__all__ = ["open_store"]
