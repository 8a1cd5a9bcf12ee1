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
    return {"_data": f"{position:016x}"}


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
    document: Document | None = None  # insert and replace: the document as written
    update: Document | None = None  # update: its updateDescription
