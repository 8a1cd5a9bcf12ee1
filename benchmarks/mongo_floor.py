"""The floor under the MongoDB path's CPU per event: what any processor written
on pymongo pays, whatever its design, with nothing of ours in it.

Run as a child by ``benchmarks.mongo_wire --floor``, against its wire server::

    python -m benchmarks.mongo_floor URI DATABASE EVENTS (read | write)

It opens a change stream on ``events`` as the feed does (raw BSON, batches of
100), says ``ready`` and reads ``EVENTS`` inserts, decoding each event; with
``write``, it inserts two job documents per event (the processor's twelve
fields), one ``insert_many`` per 100 events. No validation, matching,
projections, checkpoint or subscriptions. It prints the CPU time per event
(``time.process_time``, every thread) from the first event to the last.
"""

from __future__ import annotations

import hashlib
import sys
import time
from datetime import UTC, datetime
from typing import cast

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection

BATCH = 100
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
STRICT: CodecOptions[dict[str, object]] = CodecOptions(tz_aware=True)


def jobs(events: list[dict[str, object]]) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        {
            "_id": hashlib.sha256(f"{event['_id']}:{n}".encode()).hexdigest()[:32],
            "event_id": str(event["_id"]),
            "subscription_id": f"subscription-{n}",
            "client_id": event["client_id"],
            "status": "PENDING",
            "target": "https://hooks.example/orders",
            "pool_code": "default",
            "scheduled_at": now,
            "attempts": 0,
            "last_attempt_at": None,
            "last_error": None,
            "created_at": now,
        }
        for event in events
        for n in (1, 2)
    ]


def main(uri: str, database: str, total: int, mode: str) -> None:
    client: MongoClient[dict[str, object]]
    with MongoClient(uri) as client:
        # pymongo types the collection by the client's documents, whatever the codec says.
        events = cast(
            "Collection[RawBSONDocument]", client[database].get_collection("events", codec_options=RAW)
        )
        sink: Collection[dict[str, object]] = client[database]["dispatch_jobs"]
        stream: ChangeStream[RawBSONDocument]
        with events.watch([{"$match": {"operationType": "insert"}}], batch_size=BATCH) as stream:
            print("ready", flush=True)
            batch: list[dict[str, object]] = []
            read, started = 0, 0.0
            while read < total:
                change = stream.try_next()
                if change is None:
                    continue
                if not read:
                    started = time.process_time()
                batch.append(bson.decode(change["fullDocument"].raw, STRICT))
                read += 1
                if len(batch) == BATCH or read == total:
                    if mode == "write":
                        sink.insert_many(jobs(batch), ordered=False)
                    batch = []
            spent = time.process_time() - started
    print(f"{spent / total * 1e6:.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
