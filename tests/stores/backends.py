"""The stores the contract suite runs against, each behind a small driver: what
a test needs of a store's data, in the contract's terms, and nothing of how
the store keeps it.

A driver opens stores on its data (``open``: a fresh ``Store``, as a restart
makes one), writes what other services would (events, subscriptions), and
reads back what the processor wrote (jobs, dead letters, filter failures,
the projections). A new store gets a driver here and a name in the one
fixture, ``tests/stores/conftest.py``'s ``backend``.

``known_defects`` names the contract behaviours a store is known to get
wrong (see ``expect_defect``): the test still runs, as an expected failure
with the reason, and passes again, unexpectedly, once the store is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import pytest
from bson import ObjectId
from pymongo.database import Database

from processor.models import DispatchJob, Event
from processor.stores.base import MAX_EVENT_BYTES, Repairs, Store
from processor.stores.mongo import MongoRepairs, MongoStore, ensure_indexes
from processor.stores.sqlite import SqliteRepairs, SqliteStore, connect, job_from_row, timestamp
from tests.fake_mongo import Document, Tokens

TARGET = "https://hooks.example.com/in"
EVENT_FIELDS = tuple(Event.model_fields)  # the contract's names, which every store keeps
JOB_FIELDS = tuple(f.name for f in fields(DispatchJob))


class Letter(NamedTuple):
    """A dead letter: the event (when known), why, and the raw document as kept."""

    event_id: str | None
    reason: str
    raw: str


class Failure(NamedTuple):
    """A filter failure: the pair, its client, and why."""

    event_id: str
    subscription_id: str
    client_id: str
    reason: str


Moment = datetime | str | None
"""A time as a projection holds it: None when it holds none, and what a store
stored that is not a time, as it stored it."""


@dataclass(frozen=True)
class Projections:
    """The three read models, in one shape whatever the store."""

    # type -> events
    event_types: dict[str, int] = field(default_factory=dict)
    # subscription -> (jobs created, when the last was)
    subscriptions: dict[str, tuple[int, Moment]] = field(default_factory=dict)
    # client -> (events, jobs, the time of the latest event; None while it has none)
    clients: dict[str, tuple[int, int, Moment]] = field(default_factory=dict)


@dataclass(frozen=True)
class Defect:
    """A contract behaviour a store gets wrong: ``reason`` says how. ``strict``:
    the failure is certain (the test is known to fail on this store); not
    strict where no run here could confirm it (a real server's timing)."""

    reason: str
    raises: type[BaseException] = AssertionError  # how the test fails: for no other reason
    strict: bool = True


class Backend(Protocol):
    """A store under the contract, and the data it works on."""

    name: str
    known_defects: Mapping[str, Defect]

    def open(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> Store:
        """A new store on this backend's data, as a restart opens one."""

    def publish(self, document: Mapping[str, Any]) -> str:
        """Insert an event as a publisher would (fields as the contract names them:
        ``EVENT_FIELDS``, ``time`` a datetime, ``data`` and ``metadata`` any JSON
        value; an ``id`` is made when none is given, and any field may be missing
        or wrong: invalid events are inserted too); returns the event's id."""

    def put_subscription(
        self,
        id: str,
        pattern: str = "*:*:*:*",
        client_id: str = "acme",
        *,
        active: bool = True,
        filters: dict[str, Any] | None = None,
        target: str = TARGET,
    ) -> str:
        """Create the subscription, or replace it whole; returns its id."""

    def update_subscription(self, id: str, **fields: Any) -> None:
        """Set some of a subscription's fields (``event_type_pattern``, ``active``...)."""

    def mend_event(self, id: str, **fields: Any) -> None:
        """Set some of a stored event's fields, as an operator mends one (``publish``'s values)."""

    def repairs(self) -> Repairs:
        """The operator tools' side of the store, on this backend's data."""

    def delete_subscription(self, id: str) -> None: ...

    def jobs(self) -> list[tuple[str, str]]:
        """(event id, subscription id) of every stored job."""

    def stored_jobs(self) -> list[DispatchJob]:
        """Every stored job, read back as the job it was written from."""

    def dead_letters(self) -> list[Letter]: ...

    def filter_failures(self) -> list[Failure]: ...

    def projections(self) -> Projections: ...

    def close(self) -> None:
        """Close every store opened, and what the backend holds itself."""


# Behaviours some store is known to get wrong, by the name ``expect_defect`` takes.
COUNTED_ONCE_WHEN_REPLAYED = "an event replayed is counted once"
A_JOB_TWICE_IN_ONE_BATCH = "a job twice in one batch is written and counted once"
FIRST_START_AT_THE_CURRENT_POINT = "a first start takes no event inserted before it"
SUBSCRIPTIONS_AS_OF_INSERT_AFTER_A_RESTART = "a restart matches the backlog as of each event's insert"
NO_EVENT_TIME_WITHOUT_EVENTS = "a client with jobs and no events has no latest event time"

SQLITE_DEFECTS: dict[str, Defect] = {}
# SUBSCRIPTIONS_AS_OF_INSERT_AFTER_A_RESTART: no longer a defect where the subscriptions
# collection keeps pre- and post-images, which the store turns on (MongoDB 6.0).
MONGO_DEFECTS: dict[str, Defect] = {}


def unconfirmed(defects: Mapping[str, Defect]) -> dict[str, Defect]:
    """``defects`` as expected of a store that no run here could confirm them on."""
    return {name: replace(defect, strict=False) for name, defect in defects.items()}


def expect_defect(request: pytest.FixtureRequest, backend: Backend, behaviour: str) -> None:
    """Mark the calling test an expected failure on ``backend`` when its store is
    known to get ``behaviour`` wrong."""
    defect = backend.known_defects.get(behaviour)
    if defect is not None:
        marker = pytest.mark.xfail(reason=defect.reason, raises=defect.raises, strict=defect.strict)
        request.applymarker(marker)


class _Closes(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closes)


class _Stores:
    """The stores a driver opened, closed with it."""

    def __init__(self) -> None:
        self._opened: list[_Closes] = []

    def keep(self, store: C) -> C:
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()
        self._opened.clear()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _time(text: str | None) -> datetime | str | None:
    """A stored time; text that is not one as it is, for the test to see."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return text


class SqliteBackend:
    """The embedded store: a SQLite file, written to with plain SQL, as any process may."""

    def __init__(self, path: Path, known_defects: Mapping[str, Defect] | None = None) -> None:
        self.name = "sqlite"
        self.known_defects: Mapping[str, Defect] = dict(known_defects or {})
        self.path = path
        self._sql = connect(path)
        self._sql.execute("PRAGMA busy_timeout = 10000")  # a publisher waits out a processor's lock
        self._stores = _Stores()

    def open(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> Store:
        # Not exclusive: the contracts open several at once, to look at what one
        # saved and to fence one off with another, as under standby.
        return self._stores.keep(SqliteStore(self.path, max_event_bytes=max_event_bytes, exclusive=False))

    def publish(self, document: Mapping[str, Any]) -> str:
        values = dict(document)
        for name in ("data", "metadata"):
            if name in values:
                values[name] = _json(values[name])
        if isinstance(values.get("time"), datetime):
            values["time"] = timestamp(values["time"])
        unknown = set(values) - set(EVENT_FIELDS)
        assert not unknown, f"not fields of an event: {unknown}"
        assert values, "an event with no field at all"
        names, marks = ", ".join(values), ", ".join("?" * len(values))
        row = self._sql.execute(
            f"INSERT INTO events ({names}) VALUES ({marks}) RETURNING id", tuple(values.values())
        ).fetchone()
        return str(row[0])

    def put_subscription(
        self,
        id: str,
        pattern: str = "*:*:*:*",
        client_id: str = "acme",
        *,
        active: bool = True,
        filters: dict[str, Any] | None = None,
        target: str = TARGET,
    ) -> str:
        self._sql.execute(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code, active, "
            "filters) VALUES (?, ?, ?, ?, ?, 'default', ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "client_id = excluded.client_id, name = excluded.name, "
            "event_type_pattern = excluded.event_type_pattern, target = excluded.target, "
            "pool_code = excluded.pool_code, active = excluded.active, filters = excluded.filters",
            (id, client_id, f"subscription {id}", pattern, target, int(active), _json(filters)),
        )
        return id

    def update_subscription(self, id: str, **fields: Any) -> None:
        columns = {
            name: int(value) if name == "active" else _json(value) if name == "filters" else value
            for name, value in fields.items()
        }
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self._sql.execute(f"UPDATE subscriptions SET {assignments} WHERE id = ?", (*columns.values(), id))

    def delete_subscription(self, id: str) -> None:
        self._sql.execute("DELETE FROM subscriptions WHERE id = ?", (id,))

    def mend_event(self, id: str, **fields: Any) -> None:
        columns = {
            name: _json(value) if name in ("data", "metadata") else value for name, value in fields.items()
        }
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self._sql.execute(f"UPDATE events SET {assignments} WHERE id = ?", (*columns.values(), id))

    def repairs(self) -> Repairs:
        return self._stores.keep(SqliteRepairs(self.path))

    def jobs(self) -> list[tuple[str, str]]:
        return [
            (r[0], r[1]) for r in self._sql.execute("SELECT event_id, subscription_id FROM dispatch_jobs")
        ]

    def stored_jobs(self) -> list[DispatchJob]:
        rows = self._sql.execute(f"SELECT {', '.join(JOB_FIELDS)} FROM dispatch_jobs ORDER BY seq")
        return [job_from_row(tuple(row)) for row in rows]

    def dead_letters(self) -> list[Letter]:
        rows = self._sql.execute("SELECT event_id, reason, raw FROM dead_letters ORDER BY seq")
        return [Letter(*row) for row in rows]

    def filter_failures(self) -> list[Failure]:
        rows = self._sql.execute(
            "SELECT event_id, subscription_id, client_id, reason FROM filter_failures ORDER BY seq"
        )
        return [Failure(*row) for row in rows]

    def projections(self) -> Projections:
        sql = self._sql
        types = {row[0]: row[1] for row in sql.execute("SELECT type, count FROM event_type_counts")}
        subscriptions = {
            row[0]: (row[1], _time(row[2]))
            for row in sql.execute(
                "SELECT subscription_id, jobs_created, last_matched_at FROM subscription_stats"
            )
        }
        clients = {
            row[0]: (row[1], row[2], _time(row[3]))
            for row in sql.execute("SELECT client_id, events, jobs, last_event_time FROM client_activity")
        }
        return Projections(types, subscriptions, clients)

    def close(self) -> None:
        self._stores.close()
        self._sql.close()


class MongoBackend:
    """The MongoDB store on ``database`` (the test double's, or a real replica
    set's), written to with the driver's own calls. Its token mirror is one
    ``Tokens`` for every store opened: a restart finds what the last run saved."""

    def __init__(
        self, name: str, database: Database[Document], known_defects: Mapping[str, Defect] | None = None
    ) -> None:
        self.name = name
        self.known_defects: Mapping[str, Defect] = dict(known_defects or {})
        self.database = database
        self.tokens = Tokens()
        self._stores = _Stores()
        ensure_indexes(database)  # as a start does, before processing

    def open(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> Store:
        return self._stores.keep(MongoStore(self.database, self.tokens, max_event_bytes=max_event_bytes))

    def publish(self, document: Mapping[str, Any]) -> str:
        stored: Document = dict(document)
        identifier = stored.pop("id", None)
        stored["_id"] = ObjectId() if identifier is None else identifier
        self.database["events"].insert_one(stored)
        return str(stored["_id"])

    def put_subscription(
        self,
        id: str,
        pattern: str = "*:*:*:*",
        client_id: str = "acme",
        *,
        active: bool = True,
        filters: dict[str, Any] | None = None,
        target: str = TARGET,
    ) -> str:
        document: Document = {
            "client_id": client_id,
            "name": f"subscription {id}",
            "event_type_pattern": pattern,
            "target": target,
            "pool_code": "default",
            "active": active,
        }
        if filters is not None:
            document["filters"] = filters
        self.database["subscriptions"].replace_one({"_id": id}, document, upsert=True)
        return id

    def update_subscription(self, id: str, **fields: Any) -> None:
        self.database["subscriptions"].update_one({"_id": id}, {"$set": fields})

    def delete_subscription(self, id: str) -> None:
        self.database["subscriptions"].delete_one({"_id": id})

    def mend_event(self, id: str, **fields: Any) -> None:
        key = ObjectId(id) if ObjectId.is_valid(id) else id
        self.database["events"].update_one({"_id": key}, {"$set": fields})

    def repairs(self) -> Repairs:
        return self._stores.keep(MongoRepairs(self.database))

    def jobs(self) -> list[tuple[str, str]]:
        return [(d["event_id"], d["subscription_id"]) for d in self.database["dispatch_jobs"].find()]

    def stored_jobs(self) -> list[DispatchJob]:
        return [
            DispatchJob(**{name: d["_id" if name == "id" else name] for name in JOB_FIELDS})
            for d in self.database["dispatch_jobs"].find()
        ]

    def dead_letters(self) -> list[Letter]:
        return [Letter(d["event_id"], d["reason"], d["raw"]) for d in self.database["dead_letters"].find()]

    def filter_failures(self) -> list[Failure]:
        return [
            Failure(d["event_id"], d["subscription_id"], d["client_id"], d["reason"])
            for d in self.database["filter_failures"].find()
        ]

    def projections(self) -> Projections:
        database = self.database
        types = {d["_id"]: d["count"] for d in database["event_type_counts"].find()}
        subscriptions = {
            d["_id"]: (d["jobs_created"], d.get("last_matched_at"))
            for d in database["subscription_stats"].find()
        }
        clients = {
            d["_id"]: (d["events"], d["jobs"], d.get("last_event_time"))
            for d in database["client_activity"].find()
        }
        return Projections(types, subscriptions, clients)

    def close(self) -> None:
        self._stores.close()
