"""The embedded store: SQLite in WAL mode, for development, tests and ``fc-dev``.

``schema`` holds the tables and transactions, ``rows`` the value codecs, ``feed``
the change feed over ``events``, ``store`` the processor's side, ``claim`` its
one-processor-per-file lock, ``catalog`` the API's side, ``repairs`` the
operator tools'. Outside this package,
only the names below are used."""

from processor.stores.sqlite.catalog import (
    Catalog,
    EventExists,
    InvalidSubscription,
    Page,
    subscription_document,
)
from processor.stores.sqlite.claim import StoreClaimed
from processor.stores.sqlite.feed import FEED_COLUMNS, SqliteFeed
from processor.stores.sqlite.repairs import SqliteRepairs
from processor.stores.sqlite.rows import job_from_row, job_row, timestamp
from processor.stores.sqlite.schema import LEGACY_JOBS_TABLE, connect, transaction
from processor.stores.sqlite.store import FOLD_EVENTS, RESUME_KEY, SqliteStore

__all__ = [
    "FEED_COLUMNS",
    "FOLD_EVENTS",
    "LEGACY_JOBS_TABLE",
    "RESUME_KEY",
    "Catalog",
    "EventExists",
    "InvalidSubscription",
    "Page",
    "SqliteFeed",
    "SqliteRepairs",
    "SqliteStore",
    "StoreClaimed",
    "connect",
    "job_from_row",
    "job_row",
    "subscription_document",
    "timestamp",
    "transaction",
]
