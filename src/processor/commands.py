"""The operator's commands, ``fc-stream-processor explain``, ``redrive`` and
``backfill``: the store the configuration names, opened for them; what they
print; a run's progress, and its stop on a signal. ``cli`` parses their
arguments; ``explain`` and ``remedies`` do the work.

Exit codes: 0 done, 1 refused (the one line names the flag or argument at
fault), 2 bad usage or configuration (``cli``), 3 the store failed
(unavailable or misconfigured; running again creates nothing twice), and 128
plus the signal's number (130 for SIGINT, 143 for SIGTERM) for a run a signal
stopped before the end, which says how to resume."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from processor.config import Config, ConfigError, redact
from processor.explain import Explanation, explain_stored, explain_unsaved
from processor.http_errors import MAX_BODY_BYTES
from processor.models import InvalidEvent
from processor.remedies import Limits, Report
from processor.runner import mongo_database, opening_store_file
from processor.stores.base import Repairs, StoreMisconfigured, StoreUnavailable
from processor.stores.mongo import MongoRepairs, prepare
from processor.stores.sqlite import SqliteRepairs

PROGRAM = "fc-stream-processor"
DONE, REFUSED, STORE_FAILED = 0, 1, 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Refused(Exception):
    """What was asked cannot be done; the message names the flag or argument at fault."""


@contextmanager
def open_repairs(config: Config, *, writing: bool = True) -> Iterator[Repairs]:
    """The Repairs role of the store FC_MONGO_URL names, beside any live processor.
    ``writing``: first make sure of the store as a processor's start does (on
    MongoDB a repair needs a replica set's transactions, and the unique index
    that keeps one job per pair); a read alone needs nothing created, nor the
    rights to create it."""
    path = config.embedded_path
    if path is not None:
        if not Path(path).is_file():  # opening it would make an empty store, and a refusal misleading
            raise ConfigError(f"FC_MONGO_URL: there is no store file {path!r}")
        with opening_store_file(path):
            repairs: Repairs = SqliteRepairs(path, max_event_bytes=config.stream_max_event_bytes)
        try:
            yield repairs
        finally:
            repairs.close()
        return
    database = mongo_database(config)
    try:
        if writing:
            prepare(database)
        yield MongoRepairs(database, max_event_bytes=config.stream_max_event_bytes)
    finally:
        database.client.close()


def guarded(command: Callable[[], int]) -> int:
    """``command``'s exit code; a refusal or a failed store is one line on stderr."""
    try:
        return command()
    except Refused as error:
        return fail(str(error), REFUSED)
    except StoreUnavailable as error:
        return fail(f"the store is unavailable: {redact(str(error))}", STORE_FAILED)
    except StoreMisconfigured as error:
        return fail(f"the store is misconfigured: {redact(str(error))}", STORE_FAILED)
    except KeyboardInterrupt:  # before a run, or outside one: nothing to report
        return fail("interrupted", 128 + signal.SIGINT)


def fail(message: str, code: int) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return code


# -- explain ------------------------------------------------------------------------------


def explain(config: Config, *, event_id: str | None, event: str | None, as_json: bool) -> int:
    """Print the verdict of every subscription of the event's client: of the
    stored event ``event_id``, or of ``event`` (JSON, ``-`` for stdin, ``@FILE``)."""
    with open_repairs(config, writing=False) as repairs:
        if event_id is not None:
            try:
                explanation = explain_stored(repairs, event_id)
            except LookupError as error:
                raise Refused(f"--event-id: {error}") from None
            except InvalidEvent as error:
                raise Refused(f"--event-id: the stored event is invalid: {error}") from None
        else:
            assert event is not None
            try:
                explanation = explain_unsaved(repairs, event_document(event))
            except InvalidEvent as error:
                raise Refused(f"--event: {error}") from None
    print(json.dumps(explanation.document(), indent=2) if as_json else table(explanation))
    return DONE


def event_document(given: str) -> dict[str, Any]:
    """The JSON object ``--event`` gives: inline, ``-`` read from stdin, ``@FILE``
    read from FILE; at most as large as fc-dev's API takes, and JSON as it
    takes it (no ``NaN`` or ``Infinity``)."""
    if given == "-":
        text = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
    elif given.startswith("@"):
        try:
            with Path(given[1:]).open("rb") as file:
                text = file.read(MAX_BODY_BYTES + 1)
        except OSError as error:
            raise Refused(f"--event: cannot read {given[1:]!r}: {error.strerror}") from None
    else:
        text = given.encode(errors="surrogateescape")
    if len(text) > MAX_BODY_BYTES:
        raise Refused(f"--event: is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(text, parse_constant=_not_a_number)
    except RecursionError:
        raise Refused("--event: nests arrays and objects too deep") from None
    except ValueError as error:  # not JSON, not UTF-8, or a number too long to read
        raise Refused(f"--event: not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise Refused(f"--event: must be a JSON object, not {type(document).__name__}")
    return document


def _not_a_number(constant: str) -> object:
    raise ValueError(f"{constant} is no JSON number")


def table(explanation: Explanation) -> str:
    """A header, then a line per subscription: matches or not, name, id, field, reason."""
    event = explanation.event
    which = f"event {event.id}" if explanation.stored else "the event given (not stored)"
    matches = sum(verdict.matches for verdict in explanation.verdicts)
    header = (
        f"subscriptions as of {explanation.as_of.isoformat()}; {which}, type {event.type}, "
        f"client {event.client_id}: {matches} of {len(explanation.verdicts)} subscriptions match"
    )
    rows = [
        ["yes" if v.matches else "no", v.name or "-", v.subscription_id, v.field or "-", v.reason or "-"]
        for v in explanation.verdicts
    ]
    if not rows:
        return f"{header}\n(the client {event.client_id!r} has no subscription)"
    return "\n".join([header, *columns([["matches", "name", "id", "field", "reason"], *rows])])


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` aligned, the last column as long as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]


# -- re-drive and backfill ------------------------------------------------------------------


def run_remedy(
    config: Config,
    *,
    check: Callable[[Repairs], object],
    remedy: Callable[[Repairs, Limits], Report],
    limit: int | None,
    resume: Callable[[str | None], list[str]],
    as_json: bool,
) -> int:
    """Run ``remedy`` on the store, its progress shown and SIGINT or SIGTERM its
    stop, then print its report. ``check``: a first read at the ``--after``
    given, so that a cursor the store cannot read is refused before the run,
    and told from its refusals; ``resume``: this command's arguments for the
    line that goes on, from the ``next`` it is given (None: from where this
    run started)."""
    stop = threading.Event()
    with open_repairs(config) as repairs:
        try:
            check(repairs)
        except ValueError as error:
            raise Refused(f"--after: {error}") from None
        pages = 0
        with progress() as shown, stopped_by_signals(stop) as signals:

            def heard(page: Report) -> None:
                nonlocal pages
                pages += 1
                shown(page)

            report = remedy(repairs, Limits(items=limit, stop=stop, progress=heard))
    # Without a page, a stop and an end say the same (no ``next``): then the run
    # is taken as stopped, and running it again is the way on.
    stopped_by = signals[0] if signals and (report.next is not None or not pages) else None
    if as_json:
        print(json.dumps(report.document(), indent=2))
    else:
        go_on = report.next is not None or stopped_by is not None
        command = shlex.join([PROGRAM, *resume(report.next)]) if go_on else None
        print(summary(report, command, stopped_by))
    return DONE if stopped_by is None else 128 + stopped_by


def counts(report: Report) -> str:
    return (
        f"examined {report.examined}, created {report.created}, skipped {report.skipped}, "
        f"resolved {report.resolved}, left {report.left}"
    )


def summary(report: Report, resume: str | None, stopped_by: signal.Signals | None) -> str:
    """The report for a person: the counts, why what is left is, that the
    subscriptions were taken as they stand, and the command that goes on."""
    lines = [counts(report) + " (skipped: the job existed already)"]
    if report.reasons:
        lines.append("left, by reason:")
        lines += [f"  {count:>8}  {reason}" for reason, count in report.reasons.most_common()]
    lines.append(
        "Jobs were matched against the subscriptions as they stand now (as of "
        f"{report.as_of.isoformat()}), not as they stood when the events were inserted."
    )
    if resume is not None:
        why = f"{stopped_by.name} stopped the run" if stopped_by else "--limit was reached"
        lines.append(f"{why} before the end; to resume:\n  {resume}")
    return "\n".join(lines)


@contextmanager
def progress() -> Iterator[Callable[[Report], None]]:
    """What a run hears of each page: on a terminal, a live bar; otherwise one
    line on stderr a page, which a log keeps."""
    if not sys.stderr.isatty():
        yield lambda report: print(counts(report), file=sys.stderr, flush=True)
        return
    parts = (SpinnerColumn(), TextColumn("{task.fields[counts]}"), BarColumn(), TimeElapsedColumn())
    with Progress(*parts, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None, counts="starting")
        yield lambda report: bar.update(task, counts=counts(report))


@contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[list[signal.Signals]]:
    """SIGINT and SIGTERM set ``stop``: the run ends after its current page and
    reports where to resume. A second signal ends the process at once, as it
    would by default (safe: a run again creates nothing twice). Yields the
    signals received."""
    received: list[signal.Signals] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    previous = {number: signal.signal(number, handle) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
