"""The production store: MongoDB's change streams and collections.

``feed`` follows the events collection (and catches up from it when the
stream lost its history), ``subscriptions`` keeps the subscriptions current,
``store`` writes jobs, dead letters, projections and the checkpoint,
``checkpoint`` is the saved position, ``tokens`` its mirror in Redis,
``documents`` the codecs, ``indexes`` what the store needs to be correct,
``startup`` what a start checks and creates before the first batch (the
deployment, the collections, the indexes), ``monitoring`` what the driver
does on its own (resumes, new primaries), ``repairs`` the operator tools' side. Outside this package, only the
names below are used."""

from processor.stores.mongo.checkpoint import Checkpoint
from processor.stores.mongo.documents import job_document
from processor.stores.mongo.feed import CATCH_UP_SKEW, MongoFeed
from processor.stores.mongo.indexes import INDEXES, MARKS_KEPT_SECONDS, ensure_indexes
from processor.stores.mongo.monitoring import DriverEvents
from processor.stores.mongo.repairs import MongoRepairs
from processor.stores.mongo.startup import prepare, require_replica_set
from processor.stores.mongo.store import MARKS_PER_TRANSACTION, MongoStore
from processor.stores.mongo.subscriptions import MongoSubscriptions
from processor.stores.mongo.tokens import MemoryTokenStore, RedisTokenStore, TokenStore

__all__ = [
    "CATCH_UP_SKEW",
    "INDEXES",
    "MARKS_KEPT_SECONDS",
    "MARKS_PER_TRANSACTION",
    "Checkpoint",
    "DriverEvents",
    "MemoryTokenStore",
    "MongoFeed",
    "MongoRepairs",
    "MongoStore",
    "MongoSubscriptions",
    "RedisTokenStore",
    "TokenStore",
    "ensure_indexes",
    "job_document",
    "prepare",
    "require_replica_set",
]
