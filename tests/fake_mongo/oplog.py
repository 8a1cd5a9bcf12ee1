"""The oplog's entries, their positions and resume tokens, and the error for a
resume point that has left it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from tests.fake_mongo.query import Document

HISTORY_LOST = 286


def position_of(cluster_time: Timestamp) -> int:
    return (cluster_time.time << 32) | cluster_time.inc


def token_of(position: int) -> Document:
    """A resume token as MongoDB writes one: its key string begins with the
    timestamp type byte (0x82) and the cluster time, big-endian."""
    return {"_data": f"82{position:016X}0104"}


def position_of_token(token: Any) -> int | None:
    """The oplog position a token stands at; None for one this server never made."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or not data.startswith("82"):
        return None
    try:
        return int(data[2:18], 16)
    except ValueError:
        return None


def history_lost() -> OperationFailure:
    message = (
        "Executor error during getMore :: caused by :: Resume of change stream was not possible, "
        "as the resume point may no longer be in the oplog."
    )
    return OperationFailure(
        message,
        code=HISTORY_LOST,
        details={"ok": 0.0, "errmsg": message, "code": HISTORY_LOST, "codeName": "ChangeStreamHistoryLost"},
    )


@dataclass(frozen=True)
class Change:
    """One oplog entry."""

    position: int
    cluster_time: Timestamp
    collection: str | None  # None: a no-op, which moves the oplog but belongs to no collection
    operation: str
    key: Any = None
    # Insert and replace: the document as written; an update: the document as it
    # left it, where the collection keeps post-images.
    document: Document | None = None
    update: Document | None = None  # update: its updateDescription
    before: Document | None = None  # update, replace, delete: the pre-image, where the collection keeps them
