"""The index initializer: run at start, idempotent, and content with an index
that exists already under another name, as long as it does the same job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from processor.stores.base import StoreMisconfigured, StoreUnavailable
from processor.stores.mongo.documents import DUPLICATE_KEY

log = logging.getLogger(__name__)

CANNOT_CREATE_INDEX = 67
INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
MARKS_KEPT_SECONDS = 7 * 24 * 3600  # far longer than any oplog window a replay could reach back


@dataclass(frozen=True)
class IndexSpec:
    collection: str
    keys: tuple[tuple[str, int], ...]
    name: str
    unique: bool = False
    expire_after_seconds: int | None = None


INDEXES = (
    IndexSpec("events", (("type", ASCENDING),), "events_type"),
    IndexSpec("events", (("client_id", ASCENDING), ("time", ASCENDING)), "events_client_time"),
    # The guarantee that a job exists at most once per (event, subscription).
    IndexSpec(
        "dispatch_jobs",
        (("event_id", ASCENDING), ("subscription_id", ASCENDING)),
        "dispatch_jobs_event_subscription",
        unique=True,
    ),
    IndexSpec("dispatch_jobs", (("status", ASCENDING), ("scheduled_at", ASCENDING)), "dispatch_jobs_status"),
    IndexSpec("dispatch_jobs", (("client_id", ASCENDING),), "dispatch_jobs_client"),
    IndexSpec("subscriptions", (("client_id", ASCENDING), ("active", ASCENDING)), "subscriptions_client"),
    IndexSpec("dead_letters", (("created_at", ASCENDING),), "dead_letters_created"),
    IndexSpec(
        "projection_marks",
        (("at", ASCENDING),),
        "projection_marks_ttl",
        expire_after_seconds=MARKS_KEPT_SECONDS,
    ),
)


def ensure_indexes(database: Database[dict[str, Any]]) -> list[str]:
    """Create what is missing; returns the names created. Raises ``StoreMisconfigured``
    when an existing index, duplicates or the collection's shard key stand in the
    way (the operator must act), and ``StoreUnavailable`` when the server cannot
    be reached (to be retried)."""
    try:
        return _ensure(database)
    except PyMongoError as error:
        raise StoreUnavailable(f"creating indexes: {error}") from error


def _ensure(database: Database[dict[str, Any]]) -> list[str]:
    created = []
    for spec in INDEXES:
        collection = database[spec.collection]
        existing = {tuple(index["key"].items()): index for index in collection.list_indexes()}
        found = existing.get(spec.keys)
        if found is not None:
            if spec.unique and not found.get("unique"):
                raise StoreMisconfigured(
                    f"{spec.collection}: index {found['name']!r} on {_keys(spec)} is not unique, and jobs "
                    "must be: drop it so that the processor can create the unique one"
                )
            continue
        options: dict[str, Any] = {"name": spec.name, "unique": spec.unique}
        if spec.expire_after_seconds is not None:
            options["expireAfterSeconds"] = spec.expire_after_seconds
        try:
            collection.create_index(list(spec.keys), **options)
        except OperationFailure as error:
            if error.code == CANNOT_CREATE_INDEX:
                raise StoreMisconfigured(_cannot_create(spec, error)) from error
            if error.code in (INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
                raise StoreMisconfigured(
                    f"{spec.collection}: cannot create index {spec.name!r} on {_keys(spec)}: {error}"
                ) from error
            if error.code == DUPLICATE_KEY:
                raise StoreMisconfigured(
                    f"{spec.collection}: duplicates already exist for {_keys(spec)}, so it cannot be "
                    f"made unique: {error}"
                ) from error
            raise
        log.info("created index %s on %s %s", spec.name, spec.collection, _keys(spec))
        created.append(spec.name)
    return created


def _cannot_create(spec: IndexSpec, error: OperationFailure) -> str:
    """Why the server will never build ``spec`` as things stand, and what to change.
    Code 67 does not pass by waiting; through mongos it most often means a unique index
    on a collection sharded on a key it does not begin with, which MongoDB refuses
    because each shard can only check its own documents for duplicates."""
    reason = str((error.details or {}).get("errmsg") or error)
    refused = f"{spec.collection}: cannot create index {spec.name!r} on {_keys(spec)}"
    if not (spec.unique and "shard key" in reason):
        return f"{refused}: {reason}"
    prefixes = " or ".join(
        "{" + ", ".join(f"{field}: 1" for field, _ in spec.keys[:n]) + "}"
        for n in range(1, len(spec.keys) + 1)
    )
    return (
        f"{refused} ({reason}): on a sharded collection, MongoDB builds a unique index only when "
        f"the shard key is a prefix of it. Shard {spec.collection} on the ranged key {prefixes} "
        f"(a hashed shard key cannot back a unique index; sh.reshardCollection changes the key of a "
        f"collection sharded already), or leave {spec.collection} unsharded"
    )


def _keys(spec: IndexSpec) -> str:
    return "(" + ", ".join(field for field, _ in spec.keys) + ")"
