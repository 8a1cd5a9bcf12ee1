"""The stream's saved position: resume token and cluster time."""

from __future__ import annotations

from dataclasses import dataclass

from bson import json_util
from bson.timestamp import Timestamp

from processor.stores.mongo.documents import Document


@dataclass(frozen=True)
class Checkpoint:
    """What is saved after each batch: the stream's resume token, and the cluster
    time of the last processed event (where a lost stream catches up from)."""

    resume_token: Document | None
    cluster_time: Timestamp | None

    def dumps(self) -> str:
        return json_util.dumps(
            {"resume_token": self.resume_token, "cluster_time": self.cluster_time},
            json_options=json_util.CANONICAL_JSON_OPTIONS,
        )

    @classmethod
    def loads(cls, text: str | None) -> Checkpoint | None:
        if text is None:
            return None
        saved = json_util.loads(text)
        return cls(saved.get("resume_token"), saved.get("cluster_time"))


def newer(durable: str | None, mirror: str | None) -> str | None:
    """Of two saved checkpoints, the one of the later event; the durable one
    when they are as late (it is written first)."""
    if durable is None or mirror is None:
        return durable or mirror
    # A checkpoint without a cluster time (a first start's, before any event)
    # is the oldest: the mirror is written after the durable one, never before.

    def moment(text: str) -> Timestamp:
        checkpoint = Checkpoint.loads(text)
        return (checkpoint.cluster_time if checkpoint else None) or Timestamp(0, 0)

    return mirror if moment(mirror) > moment(durable) else durable
