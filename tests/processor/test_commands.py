"""The operator's commands of the installed ``fc-stream-processor`` (explain,
redrive, backfill), as child processes on a real SQLite store file (and one on
MongoDB at the wire): what they print, their exit codes, and a long run
stopped by SIGINT and resumed from the line it printed."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from processor.models import SubscriptionFields
from processor.stores.sqlite import Catalog, SqliteStore, timestamp
from tests.fake_mongo import Document
from tests.processor.harness import EXECUTABLE, Publisher, Running, environment, refusal, wait_until
from tests.processor.wire_documents import event, subscription
from tests.wire_mongo import WireMongo

PLACED = "orders:checkout:order:placed"
PAGE = 500  # what the remedies read at a time, and report progress after
DEADLINE = 60.0  # seconds a child may take for anything: generous, never a synchronisation


@pytest.fixture
def catalog(db: Path) -> Iterator[Catalog]:
    catalog = Catalog(db)
    yield catalog
    catalog.close()


def subscribe(catalog: Catalog, name: str, pattern: str = "orders:*:*:*", **fields: Any) -> str:
    fields = {"target": "https://hooks.example.com/in", "pool_code": "default", **fields}
    created = catalog.create_subscription(
        SubscriptionFields(client_id="acme", name=name, event_type_pattern=pattern, **fields)
    )
    return created.id


def placed(count: int, **data: Any) -> list[dict[str, Any]]:
    return [{"type": PLACED, "client_id": "acme", "data": {"n": n, **data}} for n in range(count)]


def command(
    db: Path, *args: str, stdin: str | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXECUTABLE), *args],
        env=environment(FC_MONGO_URL=f"sqlite://{db}", **variables),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a command refuses with, exiting 1."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- explain ------------------------------------------------------------------------------


def test_explain_by_event_id_prints_the_match_and_the_refusal_with_the_value_seen(
    db: Path, catalog: Catalog
) -> None:
    big = subscribe(
        catalog, "big orders", filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]}
    )
    every = subscribe(catalog, "every order")
    (event_id,) = catalog.insert_events([{"type": PLACED, "client_id": "acme", "data": {"amount": 42}}])

    done = command(db, "explain", "--event-id", event_id)

    assert done.returncode == 0, done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header.startswith("subscriptions as of ") and event_id in header
    matching = next(row for row in rows if every in row)
    refusing = next(row for row in rows if big in row)
    assert matching.split()[0] == "yes" and "every order" in matching
    assert refusing.split()[0] == "no" and "big orders" in refusing
    assert "filters.payload[0]" in refusing and "$.amount gte 100" in refusing and "42" in refusing


@pytest.mark.parametrize("way", ["inline", "stdin", "file"])
def test_explain_of_a_typed_event_prints_its_verdicts_as_json(
    db: Path, catalog: Catalog, tmp_path: Path, way: str
) -> None:
    billing = subscribe(catalog, "billing", "billing:*:*:*")
    every = subscribe(catalog, "every order")
    typed = json.dumps({"type": PLACED, "client_id": "acme", "data": {"amount": 7}})
    (tmp_path / "event.json").write_text(typed)
    given = {"inline": typed, "stdin": "-", "file": f"@{tmp_path / 'event.json'}"}[way]

    done = command(db, "explain", "--event", given, "--json", stdin=typed if way == "stdin" else None)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["event"]["stored"] is False and document["matches"] == 1
    verdicts = {verdict["subscription_id"]: verdict for verdict in document["verdicts"]}
    assert verdicts[every]["matches"] is True
    assert verdicts[billing]["matches"] is False and verdicts[billing]["field"] == "event_type_pattern"


def test_explain_of_a_missing_event_names_event_id_and_exits_1(db: Path, catalog: Catalog) -> None:
    line = refused(command(db, "explain", "--event-id", "no-such-event"))
    assert "--event-id: no event with id 'no-such-event'" in line


def test_explain_of_a_stored_invalid_event_says_so_naming_event_id(db: Path, publisher: Publisher) -> None:
    event_id = publisher.publish(PLACED, client_id=None)
    line = refused(command(db, "explain", "--event-id", event_id))
    assert "--event-id: the stored event is invalid: client_id" in line


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ('{"type": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "orders", "client_id": "acme"}', "type"),
        ('{"amount": NaN}', "NaN is no JSON number"),
        ('{"amount": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[" * 50_000 + "]" * 50_000, "too deep"),
    ],
)
def test_explain_of_an_event_that_is_no_valid_json_object_or_event_names_event_and_exits_1(
    db: Path, catalog: Catalog, given: str, said: str
) -> None:
    line = refused(command(db, "explain", "--event", given))
    assert "--event: " in line and said in line, line


def test_an_event_on_stdin_larger_than_the_api_takes_is_refused_unread_naming_event(
    db: Path, catalog: Catalog
) -> None:
    line = refused(command(db, "explain", "--event", "-", stdin='{"data": "' + "x" * (1 << 21) + '"}'))
    assert line == f"fc-stream-processor: --event: is larger than {1 << 20} bytes", line


def test_explain_shows_a_stored_value_holding_a_lone_surrogate_escaped(
    db: Path, catalog: Catalog, publisher: Publisher
) -> None:
    subscribe(catalog, "orders", filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]})
    event_id = publisher.publish(PLACED, data='{"amount": "\\ud800"}')
    done = command(db, "explain", "--event-id", event_id)
    assert done.returncode == 0, done.stderr
    assert 'the event\'s data has "\\ud800" there' in done.stdout, done.stdout


def test_a_command_on_a_store_file_that_does_not_exist_names_fc_mongo_url_and_makes_none(db: Path) -> None:
    line = refusal(
        [str(EXECUTABLE), "explain", "--event-id", "e1"], environment(FC_MONGO_URL=f"sqlite://{db}")
    )
    assert "FC_MONGO_URL" in line and str(db) in line, line
    assert not db.exists()


# -- backfill -----------------------------------------------------------------------------


def test_a_backfill_run_twice_creates_nothing_the_second_time(
    db: Path, catalog: Catalog, publisher: Publisher
) -> None:
    wanted = subscribe(catalog, "orders")
    catalog.insert_events([*placed(3), {"type": "billing:invoice:line:added", "client_id": "acme"}])

    first = command(db, "backfill", wanted)
    second = command(db, "backfill", wanted, "--json")

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("examined 4, created 3, skipped 0, resolved 0, left 0")
    assert "matched against the subscriptions as they stand now" in first.stdout
    assert "--after" not in first.stdout, "a run that ended has nothing to resume"
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["examined"], report["created"], report["skipped"], report["next"]) == (4, 0, 3, None)
    assert publisher.job_count() == 3


def test_a_backfill_of_an_unknown_or_inactive_subscription_names_subscription_id_and_exits_1(
    db: Path, catalog: Catalog
) -> None:
    paused = subscribe(catalog, "paused", active=False)
    catalog.insert_events(placed(1))

    assert "SUBSCRIPTION_ID: no subscription with id 'nope'" in refused(command(db, "backfill", "nope"))
    assert f"SUBSCRIPTION_ID: subscription {paused!r} is inactive" in refused(command(db, "backfill", paused))


def test_a_backfill_after_a_cursor_the_store_cannot_read_names_after_and_exits_1(
    db: Path, catalog: Catalog
) -> None:
    wanted = subscribe(catalog, "orders")
    for cursor in ("not-a-position", "9" * 19):
        line = refused(command(db, "backfill", wanted, "--after", cursor))
        assert line.startswith(f"fc-stream-processor: --after: '{cursor}'"), line


@pytest.mark.parametrize("since", ["garbage", "2024-13-01", "9999-12-31T23:59:59-01:00"])
def test_a_backfill_since_no_time_names_since_and_exits_2(db: Path, since: str) -> None:
    line = refusal(
        [str(EXECUTABLE), "backfill", "s1", "--since", since], environment(FC_MONGO_URL=f"sqlite://{db}")
    )
    assert "--since" in line and since in line, line


def test_a_backfill_since_a_time_takes_the_events_inserted_from_then_a_time_without_offset_as_utc(
    db: Path, catalog: Catalog, publisher: Publisher
) -> None:
    wanted = subscribe(catalog, "orders")
    catalog.insert_events(placed(2))
    for seq, received in (
        (1, datetime(2024, 5, 1, 11, 59, 59, tzinfo=UTC)),
        (2, datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ):
        publisher.sql.execute("UPDATE events SET received_at = ? WHERE seq = ?", (timestamp(received), seq))

    # Nine hours east of UTC: read as local time, the time would take both events.
    done = command(db, "backfill", wanted, "--since", "2024-05-01T12:00:00", "--json", TZ="XYZ-9")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"] == 1
    assert publisher.job_count() == 1


class Packets:
    """A child's stderr through a pipe that holds one write: after each progress
    line the child waits until the test has read the one before, so that it
    cannot run ahead of what the test has seen (Linux: a packet-mode pipe)."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_DIRECT | os.O_CLOEXEC)
        fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, os.sysconf("SC_PAGE_SIZE"))  # one slot
        self.text = ""

    def until(self, wanted: str) -> str:
        """What came, once ``wanted`` has."""
        while wanted not in self.text:
            assert self._more(), f"the end came before {wanted!r}: {self.text!r}"
        return self.text

    def rest(self) -> str:
        """What came, once the child has closed its end."""
        while self._more():
            pass
        return self.text

    def _more(self) -> bool:
        ready, _, _ = select.select([self.read_end], [], [], DEADLINE)
        assert ready, f"nothing more within {DEADLINE}s; so far: {self.text!r}"
        packet = os.read(self.read_end, 65536)
        self.text += packet.decode()
        return bool(packet)


def test_a_backfill_stopped_by_sigint_prints_the_command_that_resumes_it_and_each_job_is_made_once(
    db: Path, catalog: Catalog, publisher: Publisher
) -> None:
    wanted = subscribe(catalog, "orders")
    catalog.insert_events(placed(5 * PAGE))  # five pages: it is stopped within the first three
    stderr = Packets()
    child = subprocess.Popen(
        [str(EXECUTABLE), "backfill", wanted],
        env=environment(FC_MONGO_URL=f"sqlite://{db}"),
        stdout=subprocess.PIPE,
        stderr=stderr.write_end,
        text=True,
    )
    os.close(stderr.write_end)
    try:
        assert "examined 500, created 500" in stderr.until("\n")
        child.send_signal(signal.SIGINT)
        progress = stderr.rest()
        code = child.wait(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(stderr.read_end)
    assert child.stdout is not None
    stopped = child.stdout.read()
    assert code == 130, (stopped, progress)
    assert "SIGINT stopped the run before the end; to resume:" in stopped
    resume = shlex.split(stopped.strip().splitlines()[-1])
    assert resume[:3] == ["fc-stream-processor", "backfill", "--after"] and resume[-2:] == ["--", wanted]
    made = publisher.job_count()
    assert 0 < made < 5 * PAGE

    rest = command(db, resume[1], "--json", *resume[2:])

    assert rest.returncode == 0, rest.stderr
    report = json.loads(rest.stdout)
    assert report["created"] == 5 * PAGE - made and report["skipped"] == 0 and report["next"] is None
    assert publisher.job_count() == len(publisher.jobs()) == 5 * PAGE


def test_on_a_terminal_the_progress_is_a_live_bar_and_the_report_goes_to_stdout(
    db: Path, catalog: Catalog
) -> None:
    wanted = subscribe(catalog, "orders")
    catalog.insert_events(placed(PAGE + 1))
    terminal, side = pty.openpty()
    try:
        child = subprocess.Popen(
            [str(EXECUTABLE), "backfill", wanted],
            env=environment(FC_MONGO_URL=f"sqlite://{db}", TERM="xterm"),
            stdout=subprocess.PIPE,
            stderr=side,
            text=True,
        )
        os.close(side)
        shown = b""
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            shown += chunk
        report, _ = child.communicate(timeout=DEADLINE)
    finally:
        os.close(terminal)
    assert child.returncode == 0
    assert b"\x1b[" in shown, "no terminal control sequences: no live bar"
    assert not re.search(rb"^examined \d+", shown, re.MULTILINE), "plain progress lines on a terminal"
    assert report.startswith(f"examined {PAGE + 1}, created {PAGE + 1}")


# -- redrive ------------------------------------------------------------------------------


def test_redriving_a_mended_dead_letter_creates_its_job_and_removes_the_letter(
    db: Path, catalog: Catalog, publisher: Publisher
) -> None:
    wanted = subscribe(catalog, "orders")
    broken = publisher.publish(PLACED, client_id=None)
    store = SqliteStore(db, from_beginning=True)
    with Running(store, publisher):
        wait_until(publisher.caught_up, message="the processor to dead-letter the event")
    store.close()
    assert list(publisher.dead_letters()) == [broken]
    publisher.sql.execute("UPDATE events SET client_id = 'acme' WHERE id = ?", (broken,))

    done = command(db, "redrive", "dead-letters", "--reason", "client_id")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("examined 1, created 1, skipped 0, resolved 1, left 0"), done.stdout
    assert publisher.jobs() == {(broken, wanted)}
    assert publisher.dead_letters() == {}


def test_redriving_a_letter_still_invalid_leaves_it_and_counts_it_by_reason(
    db: Path, publisher: Publisher
) -> None:
    broken = publisher.publish(PLACED, client_id=None)
    store = SqliteStore(db, from_beginning=True)
    with Running(store, publisher):
        wait_until(publisher.caught_up, message="the processor to dead-letter the event")
    store.close()

    done = command(db, "redrive", "dead-letters", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["examined"], report["resolved"], report["left"]) == (1, 0, 1)
    assert [reason.startswith("still invalid: client_id") for reason in report["reasons"]] == [True]
    assert list(publisher.dead_letters()) == [broken]


def test_redriving_filter_failures_once_the_filter_is_fixed_creates_the_job_and_clears_the_failure(
    db: Path, publisher: Publisher
) -> None:
    costly = publisher.subscribe("costly", "*:*:*:*", filters={"payload": ["$[?search(@, 'a{1000}')]"]})
    event_id = publisher.publish(PLACED, data=["b" * 1_000_000])
    store = SqliteStore(db, from_beginning=True)
    with Running(store, publisher):
        wait_until(publisher.caught_up, message="the processor to record the filter failure")
    store.close()

    def failures() -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in publisher.sql.execute("SELECT event_id, subscription_id FROM filter_failures")
        ]

    assert failures() == [(event_id, costly)]
    fixed = json.dumps({"payload": ["$[?search(@, 'b')]"]})
    publisher.sql.execute("UPDATE subscriptions SET filters = ? WHERE id = ?", (fixed, costly))

    done = command(db, "redrive", "filter-failures", "--subscription-id", costly)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("examined 1, created 1, skipped 0, resolved 1, left 0"), done.stdout
    assert publisher.jobs() == {(event_id, costly)}
    assert failures() == []


# -- help ---------------------------------------------------------------------------------


def test_the_help_lists_the_commands_beside_the_environment_and_each_command_describes_itself() -> None:
    def help_of(*args: str) -> str:
        done = subprocess.run(
            [str(EXECUTABLE), *args, "--help"], env=environment(), capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    top = help_of()
    assert all(name in top for name in ("explain", "redrive", "backfill", "FC_MONGO_URL"))
    assert "--event-id" in help_of("explain") and "--event" in help_of("explain")
    assert "dead-letters" in help_of("redrive") and "filter-failures" in help_of("redrive")
    assert "--reason" in help_of("redrive", "dead-letters")
    assert "--subscription-id" in help_of("redrive", "filter-failures")
    backfill = help_of("backfill")
    assert "SUBSCRIPTION_ID" in backfill and "--since" in backfill and "as they stand now" in backfill


# -- MongoDB ------------------------------------------------------------------------------


def test_a_backfill_on_mongodb_at_the_wire_creates_the_jobs_once(
    wire: WireMongo, database: Database[Document]
) -> None:
    database["subscriptions"].insert_one(subscription("s1", "orders:*:*:*"))
    database["events"].insert_many([event(type=PLACED, data={"n": n}) for n in range(3)])
    variables = environment(FC_MONGO_URL=wire.uri, FC_MONGO_DB=wire.engine.name)

    def backfill() -> dict[str, Any]:
        done = subprocess.run(
            [str(EXECUTABLE), "backfill", "s1", "--json"],
            env=variables,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    assert backfill()["created"] == 3
    assert backfill()["skipped"] == 3
    assert database["dispatch_jobs"].count_documents({}) == 3


@pytest.mark.parametrize("args", [["explain", "--event-id", "e1"], ["backfill", "s1"]])
def test_a_store_that_cannot_be_reached_is_one_line_and_exit_3_without_the_password(args: list[str]) -> None:
    done = subprocess.run(
        [str(EXECUTABLE), *args],
        env=environment(FC_MONGO_URL="mongodb://user:s3cret@127.0.0.1:9/?serverSelectionTimeoutMS=200"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fc-stream-processor: the store is unavailable: ") and "s3cret" not in line
