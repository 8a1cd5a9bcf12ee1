"""One processor per embedded store file, whatever its resume key (the
projections are the file's): a second one is refused, in one line naming the
first, unless both run with standby."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

import pytest

from processor.stores.sqlite import SqliteStore, StoreClaimed
from tests.processor.harness import Publisher, refusal, spawn_processor, wait_until

FC_STREAM_PROCESSOR = Path(sys.executable).parent / "fc-stream-processor"


def token_of(publisher: Publisher, key: str = "stream-processor") -> str | None:
    row = publisher.sql.execute("SELECT token FROM resume_tokens WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def refusal_on(db: Path, **environment: str) -> str:
    """The one line a processor on ``db`` exits 2 with."""
    env = {**os.environ, "FC_MONGO_URL": f"sqlite://{db}", "FC_METRICS_PORT": "0", **environment}
    return refusal([str(FC_STREAM_PROCESSOR)], env)


def test_a_second_processor_on_the_same_store_exits_2_naming_the_first_s_pid(tmp_path: Path) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    publisher = Publisher(db)
    publisher.subscribe("all", "*:*:*:*")
    (tmp_path / "link.db").symlink_to(db)
    with spawn_processor(db, log) as first:
        wait_until(lambda: token_of(publisher) is not None, message=f"the first to start; log: {log}")
        line = refusal_on(db)
        assert f"pid {first.pid}" in line and "resume key 'stream-processor'" in line, line
        assert "FC_STANDBY_ENABLED=true" in line, line
        # Another key would count every event into the same projections; another
        # name of the same file is the same file.
        assert f"pid {first.pid}" in refusal_on(db, FC_STREAM_RESUME_TOKEN_KEY="other")
        assert f"pid {first.pid}" in refusal_on(tmp_path / "link.db")
        event = publisher.publish("orders:fulfillment:shipment:shipped")
        wait_until(lambda: publisher.jobs() == {(event, "all")}, message="the first to process alone")
    assert token_of(publisher, "other") is None


def test_a_processor_killed_with_sigkill_leaves_no_claim_and_the_next_one_resumes(tmp_path: Path) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    publisher = Publisher(db)
    publisher.subscribe("all", "*:*:*:*")
    with spawn_processor(db, log) as first:
        wait_until(lambda: token_of(publisher) is not None, message="the first to start")
        first.send_signal(signal.SIGKILL)
        first.wait()
    while_down = publisher.publish("orders:fulfillment:shipment:shipped")
    with spawn_processor(db, log) as second:
        wait_until(lambda: publisher.jobs() == {(while_down, "all")}, message=f"the restart; log: {log}")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, log.read_text()


def test_a_store_refuses_a_file_another_open_store_processes_until_it_is_closed(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    first = SqliteStore(db)
    with pytest.raises(StoreClaimed, match=rf"pid {os.getpid()} on .*resume key 'stream-processor'"):
        SqliteStore(db, resume_key="other")
    SqliteStore(db, exclusive=False).close()  # as under standby: the leader lock decides
    first.close()
    SqliteStore(db).close()


def test_a_store_dropped_without_closing_it_lets_the_file_go_once_collected(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    SqliteStore(db)
    gc.collect()
    SqliteStore(db).close()
