"""The embedded store: SQLite in WAL mode, for development, tests and `fc-dev`.

The ``events`` table's ``seq`` is the change feed: SQLite lets one writer
commit at a time, so ``seq`` grows in commit order and a reader that has seen
``seq`` N has seen everything committed before it. Any process may insert
events with plain SQL. A batch's jobs, dead letters and resume token are
written in one transaction, so a crash either keeps all of it or none. The
projections are written when the loop's projector says (``fold_events``:
while the feed is behind, every few batches). Marks say what was committed
and what was counted; a start hands the loop what lies between them, so a
crash neither loses a count nor makes one twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from processor.models import DeadLetter, DispatchJob, FilterFailure
from processor.projections import ProjectionDelta, Tally, Uncounted
from processor.stores.base import (
    MAX_EVENT_BYTES,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    ResumeToken,
    StoreUnavailable,
    SubscriptionChange,
)
from processor.stores.sqlite.claim import Claim
from processor.stores.sqlite.feed import FEED_COLUMNS, SqliteFeed, read_entries, select_rows
from processor.stores.sqlite.rows import (
    INSERT_JOB,
    JOB_COLUMNS,
    as_text,
    decode_subscription_row,
    job_from_row,
    job_row,
    sql_value,
    texts_as_found,
    timestamp,
)
from processor.stores.sqlite.schema import JSON_COLUMNS, connect, transaction

RESUME_KEY = "stream-processor"
FOLD_EVENTS = 2_000  # while the feed is behind, projections wait for this many events


class SqliteStore:
    """The processor's side of the embedded store."""

    def __init__(
        self,
        path: str | Path,
        resume_key: str = RESUME_KEY,
        *,
        from_beginning: bool = False,
        fold_events: int = FOLD_EVENTS,
        max_event_bytes: int = MAX_EVENT_BYTES,
        exclusive: bool = True,
    ) -> None:
        """``from_beginning``: a first start takes every event already stored, not
        only those that come after (what ``fc-dev`` wants of a development database).
        ``fold_events``: while the feed is behind, the projections are written once
        this many events wait to be counted, rather than with every batch.
        ``max_event_bytes``: larger events are dead-lettered without being read.
        ``exclusive``: refuse (``StoreClaimed``) while another store processes
        this file, whatever its key (``claim``); off under standby, where the
        leader lock and the epochs keep processors apart."""
        self.path = Path(path)
        self._from_beginning = from_beginning
        on_disk = str(path) not in ("", ":memory:")
        self._claim = Claim(self.path, resume_key) if exclusive and on_disk else None
        try:
            self._connection = connect(path)
        except BaseException:
            self._release()
            raise
        self._resume_key = resume_key
        self._subscriptions_seen = -1  # last subscription_changes.seq handed out; -1: none yet
        self._feed_start = 0
        self._epoch: int | None = None
        self._holder: str | None = None
        self.wakeup = threading.Event()  # set by in-process writers to cut the idle wait short
        self._fold_events = fold_events
        self._max_event_bytes = max_event_bytes

    @property
    def partition(self) -> str:
        return self._resume_key

    @property
    def fold_events(self) -> int:
        return self._fold_events

    def resume_token(self) -> ResumeToken | None:
        try:
            row = self._connection.execute(
                "SELECT token FROM resume_tokens WHERE key = ?", (self._resume_key,)
            ).fetchone()
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"sqlite: {error}") from error
        return None if row is None else str(row["token"])

    def open_feed(self, resume_after: ResumeToken | None) -> SqliteFeed:
        if resume_after is None:
            # A first start begins at the current point, as the spec says, and
            # records it at once: a crash before the first batch must not move it.
            with transaction(self._connection):
                row = self._connection.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                resume_after = "0" if self._from_beginning else str(row[0])
                self._save_token(resume_after)
        self._feed_start = int(resume_after)
        self._subscriptions_seen = -1  # a new feed starts from the subscriptions of its start
        return SqliteFeed(self._connection, self._feed_start, self.wakeup, self._max_event_bytes)

    def _save_token(self, token: ResumeToken) -> None:
        """Within the batch's transaction: refused, and so the whole batch, once a
        leader with a larger epoch, or another holder of the same one, saved its own."""
        saved = self._connection.execute(
            "INSERT INTO resume_tokens (key, token, epoch, holder, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET token = excluded.token, epoch = excluded.epoch, "
            "holder = excluded.holder, updated_at = excluded.updated_at "
            "WHERE resume_tokens.epoch IS NULL OR resume_tokens.epoch < coalesce(excluded.epoch, -1) "
            "OR (resume_tokens.epoch = excluded.epoch AND resume_tokens.holder IS excluded.holder)",
            (self._resume_key, token, self._epoch, self._holder, timestamp(datetime.now(UTC))),
        )
        if saved.rowcount != 1:
            row = self._connection.execute(
                "SELECT epoch, holder FROM resume_tokens WHERE key = ?", (self._resume_key,)
            ).fetchone()
            raise Fenced(
                f"resume token {self._resume_key!r} was saved under epoch {row['epoch']} "
                f"by {row['holder'] or 'an earlier version'}; "
                f"this instance writes under {self._epoch}",
                row["epoch"],
            )

    def fence(self, epoch: int, holder: str) -> None:
        self._epoch, self._holder = epoch, holder
        with transaction(self._connection):
            self._claim_token()

    def _claim_token(self) -> None:
        """Within a transaction: save the stored token again, under this instance's
        epoch; refused, and so the transaction, once a newer leader saved one."""
        token = self.resume_token()
        if token is not None:
            self._save_token(token)

    def subscription_changes(self) -> list[SubscriptionChange]:
        with transaction(self._connection, immediate=False):
            if self._subscriptions_seen < 0:
                changes = self._subscriptions_at(self._feed_start)
            else:
                changes = self._changes(
                    "SELECT * FROM subscription_changes WHERE seq > ? ORDER BY seq", self._subscriptions_seen
                )
            last = self._connection.execute("SELECT coalesce(max(seq), 0) FROM subscription_changes")
            self._subscriptions_seen = int(last.fetchone()[0])
        return changes

    def _subscriptions_at(self, events_seq: int) -> list[SubscriptionChange]:
        """Each subscription as the events after ``events_seq`` see it, then the
        changes that come later."""
        current = self._changes(
            "SELECT * FROM subscription_changes WHERE seq IN (SELECT max(seq) FROM subscription_changes "
            "WHERE events_seq <= ? GROUP BY subscription_id) ORDER BY seq",
            events_seq,
        )
        later = self._changes(
            "SELECT * FROM subscription_changes WHERE events_seq > ? ORDER BY seq", events_seq
        )
        return [SubscriptionChange(c.subscription_id, c.document, -1) for c in current] + later

    def _changes(self, query: str, parameter: int) -> list[SubscriptionChange]:
        with texts_as_found(self._connection) as connection:
            rows = connection.execute(query, (parameter,)).fetchall()
        return [_change(row["subscription_id"], row["document"], row["events_seq"]) for row in rows]

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        token = batch.resume_token
        with transaction(self._connection):
            new_jobs = insert_jobs(self._connection, batch.jobs, batch.orders)
            self._insert_dead_letters(batch.dead_letters)
            insert_filter_failures(self._connection, batch.filter_failures)
            if token is not None:  # a batch without one comes again
                self._connection.execute(
                    "UPDATE projection_marks SET committed_seq = ? WHERE key = ?",
                    (int(token), self._resume_key),
                )
                if batch.tally is not None:
                    new = {job.id for job in new_jobs}
                    self._count(batch.tally, existing={j.id for j in batch.jobs if j.id not in new})
                self._save_token(token)
        return CommitReport(len(new_jobs), len(batch.jobs) - len(new_jobs), new_jobs)

    def uncounted(self) -> Uncounted:
        """The events between the marks that were not dead-lettered, read in pages
        without their payloads, and the jobs stored since the last count."""
        start = str(self._feed_start)
        try:
            marks = self._connection.execute(
                "SELECT committed_seq, counted_seq, jobs_seq FROM projection_marks WHERE key = ?",
                (self._resume_key,),
            ).fetchone()
            if marks is None:  # a first start, or a store from before the marks: nothing is known uncounted
                return Uncounted((), [], start)
            committed, counted, jobs_seq = marks
            jobs = list(map(job_from_row, select_rows(self._connection, READ_UNCOUNTED_JOBS, (jobs_seq,))))
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"sqlite: {error}") from error
        return Uncounted(self._entries_between(counted, committed), jobs, start)

    def _entries_between(self, after: int, through: int) -> Iterator[FeedEntry]:
        while entries := read_entries(self._connection, READ_UNCOUNTED, (after, through)):
            after = entries[-1].order
            yield from entries

    def count(self, tally: Tally) -> None:
        with transaction(self._connection):
            self._count(tally)
            self._claim_token()  # refused, and the count with it, once a newer leader saved one

    def _count(self, tally: Tally, existing: set[str] | frozenset[str] = frozenset()) -> None:
        """Within a transaction: apply the tally and mark it counted. Of its events,
        those after the counted mark (a replay from an earlier token brings back
        events counted already); of its jobs, all but those the batch in hand
        found ``existing`` (what waited was created by its commits), each once.

        The mark then covers every event committed and every event before
        ``through``: what lay between the marks is counted now (the recount at
        start), and what an operator skipped by moving the token forward is
        never counted, even if a later move back has it processed (one mark
        cannot hold a gap)."""
        if tally.through is None:
            raise ValueError("a tally to count says where its events end")
        connection, through = self._connection, int(tally.through)
        marks = connection.execute(
            "SELECT counted_seq FROM projection_marks WHERE key = ?", (self._resume_key,)
        ).fetchone()
        counted = 0 if marks is None else marks[0]
        events = [key for key in tally.events if key[0] > counted]  # key[0]: the event's seq
        jobs = list({job.id: job for job in tally.jobs if job.id not in existing}.values())
        apply_delta(connection, ProjectionDelta.of(events, jobs))
        # What repairs counted apart is behind the marks now: the recount never reads it again.
        connection.execute(
            "DELETE FROM counted_apart WHERE (kind = 'event' AND seq <= ?) "
            f"OR (kind = 'job' AND seq <= ({LAST_JOB}))",
            (through,),
        )
        connection.execute(
            "INSERT INTO projection_marks (key, committed_seq, counted_seq, jobs_seq) "
            f"VALUES (?1, ?2, ?2, ({LAST_JOB})) ON CONFLICT (key) DO UPDATE SET "
            "committed_seq = excluded.committed_seq, "
            "counted_seq = max(counted_seq, committed_seq, excluded.counted_seq), "
            "jobs_seq = excluded.jobs_seq",
            (self._resume_key, through),
        )

    def _insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._connection.executemany(
            "INSERT OR IGNORE INTO dead_letters (position, event_id, reason, raw, received_at, raw_bytes, "
            "raw_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    letter.position,
                    letter.event_id,
                    letter.reason,
                    letter.raw,
                    timestamp(letter.received_at),
                    letter.raw_bytes,
                    letter.raw_sha256,
                )
                for letter in letters
            ],
        )

    def close(self) -> None:
        self._connection.close()
        self._release()

    def _release(self) -> None:
        if self._claim is not None:
            self._claim.release()


def insert_jobs(
    connection: sqlite3.Connection, jobs: Sequence[DispatchJob], orders: Mapping[str, int]
) -> Sequence[DispatchJob]:
    """Insert and return the jobs that were new, each keyed by its event's seq
    (its order in the feed) where ``orders`` has it. The batch insert skips the jobs
    that are there already; when it skipped some, the rows it added (those past
    the largest ``seq`` before it: SQLite gives a new row the largest plus one,
    as long as that is below 2**63, which no row of this store comes near)
    say which were new. No savepoint: one would make SQLite keep a copy of every
    page the insert changes, in case of a rollback."""
    if not jobs:
        return jobs
    (last,) = connection.execute("SELECT coalesce(max(seq), 0) FROM dispatch_jobs").fetchone()
    rows = (job_row(job, orders.get(job.event_id)) for job in jobs)
    if connection.executemany(INSERT_JOB, rows).rowcount == len(jobs):
        return jobs
    written = connection.execute("SELECT event_id, subscription_id FROM dispatch_jobs WHERE seq > ?", (last,))
    added = {(row[0], row[1]) for row in written}
    new_jobs = []
    for job in jobs:  # of equal jobs in one batch, the first was written
        pair = (job.event_id, job.subscription_id)
        if pair in added:
            added.discard(pair)
            new_jobs.append(job)
    return new_jobs


def insert_filter_failures(connection: sqlite3.Connection, failures: Sequence[FilterFailure]) -> None:
    connection.executemany(
        "INSERT OR IGNORE INTO filter_failures (event_id, subscription_id, client_id, reason, failed_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(f.event_id, f.subscription_id, f.client_id, f.reason, timestamp(f.failed_at)) for f in failures],
    )


def apply_delta(connection: sqlite3.Connection, delta: ProjectionDelta) -> None:
    connection.executemany(
        "INSERT INTO event_type_counts (type, count) VALUES (?, ?) "
        "ON CONFLICT (type) DO UPDATE SET count = count + excluded.count",
        delta.event_types.items(),
    )
    connection.executemany(
        "INSERT INTO subscription_stats (subscription_id, jobs_created, last_matched_at) "
        "VALUES (?, ?, ?) ON CONFLICT (subscription_id) DO UPDATE SET "
        "jobs_created = jobs_created + excluded.jobs_created, "
        "last_matched_at = max(coalesce(last_matched_at, ''), excluded.last_matched_at)",
        [(key, jobs, timestamp(last)) for key, jobs, last in delta.subscription_rows()],
    )
    connection.executemany(
        "INSERT INTO client_activity (client_id, events, jobs, last_event_time) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (client_id) DO UPDATE SET events = events + excluded.events, "
        "jobs = jobs + excluded.jobs, "
        "last_event_time = nullif(max(coalesce(last_event_time, ''), "
        "coalesce(excluded.last_event_time, '')), '')",
        [(key, events, jobs, sql_value(last)) for key, events, jobs, last in delta.client_rows()],
    )


# Without the payloads, which the projections do not count (and events whose
# payload was invalid were dead-lettered): read in pages, memory stays small.
READ_UNCOUNTED = (
    f"SELECT {', '.join('NULL' if c in JSON_COLUMNS else c for c in FEED_COLUMNS)} "
    "FROM events WHERE seq > ? AND seq <= ? "
    "AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE position = CAST(events.seq AS TEXT)) "
    "AND NOT EXISTS (SELECT 1 FROM counted_apart WHERE kind = 'event' AND seq = events.seq) "
    "ORDER BY seq LIMIT 500"
)
READ_UNCOUNTED_JOBS = (
    f"SELECT {', '.join(JOB_COLUMNS)} FROM dispatch_jobs WHERE seq > ? "
    "AND NOT EXISTS (SELECT 1 FROM counted_apart c WHERE c.kind = 'job' AND c.seq = dispatch_jobs.seq) "
    "ORDER BY seq"
)
LAST_JOB = "SELECT coalesce(max(seq), 0) FROM dispatch_jobs"


def _change(
    subscription_id: str | bytes, document: str | bytes | None, events_seq: int
) -> SubscriptionChange:
    """A logged change; a row whose text is not UTF-8 is unreadable, with why."""
    if isinstance(subscription_id, bytes) or isinstance(document, bytes):
        problem = "the stored row holds text that is not UTF-8"
        return SubscriptionChange(as_text(subscription_id), None, events_seq, problem=problem)
    return SubscriptionChange(
        subscription_id,
        None if document is None else decode_subscription_row(json.loads(document)),
        events_seq,
    )
