"""What other services write, as the MongoDB tests write it: events, subscriptions,
and documents in BSON that pymongo refuses to decode."""

from __future__ import annotations

from typing import Any

import bson
from bson import ObjectId
from bson.datetime_ms import DatetimeMS

from tests.fake_mongo import Document

SHIPPED = "orders:fulfillment:shipment:shipped"
UNDECODABLE = ["a date beyond year 9999", "invalid UTF-8 in a string"]
BEYOND_9999 = DatetimeMS(253_402_300_800_000 + 86_400_000)  # 10000-01-02: JavaScript writes these


def event(**fields: Any) -> Document:
    return {"_id": ObjectId(), "type": SHIPPED, "source": "orders-service", "client_id": "acme", **fields}


def subscription(id: str, pattern: str = "*:*:*:*", **fields: Any) -> Document:
    return {
        "_id": id,
        "client_id": "acme",
        "name": f"subscription {id}",
        "event_type_pattern": pattern,
        "target": "https://hooks.example.com/in",
        "pool_code": "default",
        "active": True,
        **fields,
    }


def undecodable(document: Document, kind: str) -> bytes:
    """``document`` as another driver may store it, with ``kind`` in its ``data``
    field, which pymongo refuses to decode."""
    if kind == "a date beyond year 9999":
        return bson.encode({**document, "data": {"at": BEYOND_9999}})
    raw = bson.encode({**document, "data": {"note": "PLACEHOLDER"}})
    return raw.replace(b"PLACEHOLDER", b"\xff" * len("PLACEHOLDER"))
