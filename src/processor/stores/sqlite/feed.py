"""The embedded store's change feed: ``events`` read by ``seq``, bounded by bytes, decoded."""

from __future__ import annotations

import codecs
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pydantic_core import from_json

from processor.models import MAX_ID_LENGTH
from processor.stores.base import (
    BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    FeedEntry,
    StoreUnavailable,
)
from processor.stores.sqlite.rows import parse_timestamp
from processor.stores.sqlite.schema import EVENT_COLUMNS, JSON_COLUMNS

POLL_INTERVAL = 0.01  # seconds between looks for new events when idle

FEED_COLUMNS = ("seq", "received_at", *EVENT_COLUMNS)
# The bytes an event takes as stored: what a batch's budget and the size cap count.
EVENT_BYTES = " + ".join(f"coalesce(length(CAST({column} AS BLOB)), 0)" for column in FEED_COLUMNS[1:])
READ_SIZES = f"SELECT seq, {EVENT_BYTES} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
READ_RANGE = f"SELECT {', '.join(FEED_COLUMNS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"
RAW_CHUNK = 1024 * 1024  # bytes of a large value read at a time
# A JSON text decodes to up to 30 times its size ([[],[],...]): a large one is
# decoded only if it holds at most this many values (about 200 MiB of Python).
MAX_JSON_VALUES = 2_000_000
LARGE_JSON = 1024 * 1024  # characters from which a text's values are counted first


def _raw(row: tuple[Any, ...]) -> tuple[str]:
    return (json.dumps(dict(zip(FEED_COLUMNS, row, strict=True)), ensure_ascii=False, default=_bytes_text),)


def _bytes_text(value: bytes) -> str:
    """Bytes as ``b'...'``, escaped byte by byte, so that pieces of a blob read
    apart give the same text as the whole."""
    return f"b'{_escaped(value)}'"


def _escaped(value: bytes) -> str:
    return value.decode("latin-1").encode("unicode_escape").decode("ascii")


class _LongNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    # Python refuses longer integer texts: converting them takes quadratic time.
    if len(text) - text.startswith("-") > sys.get_int_max_str_digits():
        raise _LongNumber
    return int(text)


def _loads(text: str) -> Any:
    """JSON text as Python's ``json`` reads it, about five times faster; a
    ``ValueError`` says what stops it.

    pydantic-core's parser agrees with ``json`` on every text both accept (the
    feed's tests hold it to that); the texts it refuses go to ``json``, which
    accepts a few more (lone surrogate escapes, nesting deeper than 200) and
    words its errors as the dead letters have always said them. NaN and
    Infinity, which ``json`` reads, are taken as it reads them."""
    if len(text) > LARGE_JSON:
        values = text.count(",") + text.count("[") + text.count("{")  # at least, as many as it holds
        if values > MAX_JSON_VALUES:
            raise ValueError(
                f"holds up to {values} JSON values (counting its commas, brackets and braces); "
                f"at most {MAX_JSON_VALUES} are decoded, which bounds the memory an event takes"
            )
    try:
        return from_json(text)
    except (ValueError, TypeError):  # TypeError: a lone surrogate in the text
        pass
    try:
        return json.loads(text, parse_int=_parse_int)
    except _LongNumber:
        limit = sys.get_int_max_str_digits()
        raise ValueError(
            f"valid JSON, but it holds an integer of more than {limit} digits, "
            "which the processor does not read (converting one takes quadratic time)"
        ) from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error})") from None


class NotUtf8(bytes):
    """A stored text that is not UTF-8, as the feed's second read gives it back."""


def _utf8_or_marked(value: bytes) -> str | NotUtf8:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return NotUtf8(value)


def _received_at(value: object) -> datetime | None:
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: past year 9999 in UTC
        return None


def _decode(row: tuple[Any, ...], problem: str | None = None) -> FeedEntry:
    """A row of ``READ_RANGE`` as the loop takes it (a plain tuple, which reads far
    faster than a ``sqlite3.Row``); with a ``problem``, undecodable."""
    seq, received = row[0], row[1]
    received_at = _received_at(received)
    if received_at is None:
        return _undecodable(row, f"received_at: not a time ({received!r})", datetime.now(UTC))
    if problem is not None:
        return _undecodable(row, problem, received_at)
    values = zip(EVENT_COLUMNS, row[2:], strict=True)
    document = {column: value for column, value in values if value is not None}
    for column in JSON_COLUMNS:
        if column not in document:
            continue
        if not isinstance(document[column], str):
            problem = f"{column}: must be JSON text, got {type(document[column]).__name__}"
            return _undecodable(row, problem, received_at)
        try:
            document[column] = _loads(document[column])
        except ValueError as error:
            return _undecodable(row, f"{column}: {error}", received_at)
    return FeedEntry(seq, str(seq), row[2], document, partial(_raw, row), received_at)


def _decode_marked(row: tuple[Any, ...]) -> FeedEntry:
    """``_decode``, for a row read with ``_utf8_or_marked``."""
    for column, value in zip(FEED_COLUMNS, row, strict=True):
        if isinstance(value, NotUtf8):
            return _decode(row, f"{column}: not valid UTF-8 text")
    return _decode(row)


def _undecodable(row: tuple[Any, ...], problem: str, received_at: datetime) -> FeedEntry:
    seq = row[0]
    return FeedEntry(seq, str(seq), row[2], None, partial(_raw, row), received_at, problem)


def _too_large(connection: sqlite3.Connection, seq: int, size: int, limit: int) -> FeedEntry:
    """An event over the size cap, never read whole: its id and receive time if
    they are short, and its raw document streamed when a dead letter asks."""
    row = connection.execute(
        "SELECT iif(length(CAST(id AS BLOB)) <= ?1, CAST(id AS BLOB), NULL), "
        "iif(length(CAST(received_at AS BLOB)) <= ?1, CAST(received_at AS BLOB), NULL) "
        "FROM events WHERE seq = ?2",
        (4 * MAX_ID_LENGTH, seq),
    ).fetchone()
    event_id, received = (None if value is None else value.decode(errors="replace") for value in row)
    problem = f"document: is {size} bytes as stored, over the limit of {limit} (FC_STREAM_MAX_EVENT_BYTES)"
    received_at = _received_at(received) or datetime.now(UTC)
    return FeedEntry(
        seq, str(seq), event_id, None, partial(_streamed_raw, connection, seq), received_at, problem
    )


def _streamed_raw(connection: sqlite3.Connection, seq: int) -> Iterator[str]:
    """The text ``_raw`` makes of a row, in pieces: text and blobs are read a
    chunk at a time (SQLite's blob I/O), so that no piece is large. Text that
    is not UTF-8 shows replacement characters."""
    kinds = connection.execute(
        f"SELECT {', '.join(f'typeof({c})' for c in FEED_COLUMNS)} FROM events WHERE seq = ?", (seq,)
    ).fetchone()
    if kinds is None:
        raise LookupError(f"event {seq} was deleted before its dead letter was written")
    yield "{"
    for n, (column, kind) in enumerate(zip(FEED_COLUMNS, kinds, strict=True)):
        yield f"{', ' if n else ''}{json.dumps(column)}: "
        pieces: Iterable[str]
        if kind == "text":
            pieces = codecs.iterdecode(_chunks(connection, column, seq), "utf-8", "replace")
            quotes = '"', '"'
        elif kind == "blob":  # as _raw shows bytes
            pieces = map(_escaped, _chunks(connection, column, seq))
            quotes = "\"b'", "'\""
        else:
            (value,) = connection.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,)).fetchone()
            yield json.dumps(value)
            continue
        yield quotes[0]
        for piece in pieces:
            yield json.dumps(piece, ensure_ascii=False)[1:-1]
        yield quotes[1]
    yield "}"


def _chunks(connection: sqlite3.Connection, column: str, seq: int) -> Iterator[bytes]:
    with connection.blobopen("events", column, seq, readonly=True) as blob:
        while chunk := blob.read(RAW_CHUNK):
            yield chunk


def read_entries(connection: sqlite3.Connection, query: str, parameters: tuple[Any, ...]) -> list[FeedEntry]:
    """The rows of ``query`` (columns ``FEED_COLUMNS``) as feed entries."""
    try:
        return [_decode(row) for row in select_rows(connection, query, parameters)]
    except sqlite3.OperationalError:
        pass
    # One text that is not UTF-8 fails the whole read. Read again with each such
    # text marked, so that its event is dead-lettered instead of stopping the
    # feed; a store that is down fails this read too.
    connection.text_factory = _utf8_or_marked
    try:
        return [_decode_marked(row) for row in select_rows(connection, query, parameters)]
    except sqlite3.OperationalError as error:
        raise StoreUnavailable(f"sqlite: {error}") from error
    finally:
        connection.text_factory = str


def select_rows(
    connection: sqlite3.Connection, query: str, parameters: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    cursor.row_factory = None  # tuples, for _decode
    return cursor.execute(query, parameters).fetchall()


class SqliteFeed:
    """Reads ``events`` by ``seq``; when there is nothing new it waits, checking
    ``PRAGMA data_version`` (which changes only when another connection wrote).

    A batch is bounded by bytes as well as by events: the sizes of the next
    events are read first (SQL, no event leaves the database for it), then as
    many events as fit. An event over ``max_event_bytes`` is never read: it
    comes alone, undecodable, and its dead letter streams what it keeps."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        after: int,
        wakeup: threading.Event,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._connection = connection
        self._after = after
        self._wakeup = wakeup
        self._max_event_bytes = max_event_bytes

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        deadline = time.monotonic() + max_wait
        version = None
        while True:
            entries, more = self._read(max_events, max_bytes)
            if entries:
                break
            if time.monotonic() >= deadline:
                break
            while time.monotonic() < deadline:
                self._wakeup.wait(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
                self._wakeup.clear()
                seen = self._data_version()
                if seen != version:
                    version = seen
                    break
        if entries:
            self._after = entries[-1].order
        return Batch(entries, str(self._after), more)

    def _read(self, max_events: int, max_bytes: int) -> tuple[list[FeedEntry], bool]:
        """The next events that fit, and whether more wait. The sizes are read
        row by row, and no further than the budget: SQLite 3.40 reads a text
        to measure it (in its own memory, a row at a time; this process never
        holds an event over the cap)."""
        cursor = self._connection.cursor()
        cursor.row_factory = None
        taken, total, last, more = 0, 0, self._after, False
        try:
            for seq, size in cursor.execute(READ_SIZES, (self._after, max_events)):
                if size > self._max_event_bytes or (taken and total + size > max_bytes):
                    more = True
                    break
                taken, total, last = taken + 1, total + size, seq
            else:
                more = taken == max_events
            if taken:
                return read_entries(self._connection, READ_RANGE, (self._after, last)), more
            if more:  # the next event alone is over the cap
                entry = _too_large(self._connection, seq, size, self._max_event_bytes)
                return [entry], max_events == 1 or cursor.fetchone() is not None
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"sqlite: {error}") from error
        finally:
            cursor.close()
        return [], False

    def _data_version(self) -> int:
        return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        pass
