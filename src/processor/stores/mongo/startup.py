"""What a start makes sure of before the first batch: that the server can serve
a change stream at all, that the collections the transactions write to exist,
and the indexes (``indexes``). ``prepare`` does it all, idempotently; the
runner calls it before processing, retried while it raises ``StoreUnavailable``,
and stops (exit 3) at ``StoreMisconfigured``, whose one line says what to do."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from processor.stores.base import StoreMisconfigured, StoreUnavailable
from processor.stores.mongo.documents import (
    CHECKPOINTS,
    CLIENT_ACTIVITY,
    EVENT_TYPE_COUNTS,
    NAMESPACE_EXISTS,
    PROJECTION_MARKS,
    SUBSCRIPTION_STATS,
)
from processor.stores.mongo.indexes import ensure_indexes

log = logging.getLogger(__name__)

# Every collection a transaction writes to: the claim and the checkpoint, the
# marks and the read models. MongoDB would create a missing one inside the
# transaction, but not in a cross-shard write transaction, and two transactions
# creating the same one conflict; created here, at start, they never have to be.
TRANSACTION_COLLECTIONS = (
    CHECKPOINTS,
    PROJECTION_MARKS,
    EVENT_TYPE_COUNTS,
    SUBSCRIPTION_STATS,
    CLIENT_ACTIVITY,
)


def prepare(database: Database[dict[str, Any]]) -> list[str]:
    """Check the deployment, then create the collections and indexes that are
    missing; returns the names of those created."""
    require_replica_set(database)
    return ensure_collections(database) + ensure_indexes(database)


def require_replica_set(database: Database[dict[str, Any]]) -> None:
    """Refuse a standalone server: change streams, the feed, need a replica set
    (or mongos), and on a standalone every attempt to open one would fail."""
    try:
        hello = database.client.admin.command("hello")
    except PyMongoError as error:
        raise StoreUnavailable(f"asking the server what it is: {error}") from error
    if _standalone(hello):
        raise StoreMisconfigured(
            "FC_MONGO_URL names a standalone MongoDB server, and the processor follows the events "
            "collection through a change stream, which only a replica set or a sharded cluster "
            "serves: point FC_MONGO_URL at a replica set (a single member will do: start mongod "
            "with --replSet and run rs.initiate()) or at a mongos"
        )


def _standalone(hello: Mapping[str, Any]) -> bool:
    """A replica set member names its set, mongos says ``isdbgrid``; a standalone does neither."""
    return "setName" not in hello and hello.get("msg") != "isdbgrid"


def ensure_collections(database: Database[dict[str, Any]]) -> list[str]:
    """Create those of ``TRANSACTION_COLLECTIONS`` that are missing; returns their
    names. One that another instance created meanwhile is as good."""
    try:
        present = set(database.list_collection_names(filter={"name": {"$in": list(TRANSACTION_COLLECTIONS)}}))
        created = []
        for name in TRANSACTION_COLLECTIONS:
            if name in present:
                continue
            try:
                database.create_collection(name, check_exists=False)
            except OperationFailure as error:
                if error.code != NAMESPACE_EXISTS:
                    raise
                continue
            log.info("created collection %s", name)
            created.append(name)
    except PyMongoError as error:
        raise StoreUnavailable(f"creating collections: {error}") from error
    return created
