"""The processor loop on the embedded store: throughput against the store's own
limit, insert-to-job latency, idle CPU, and memory under a large backlog.

Run: ``pytest benchmarks/test_loop.py -p no:cacheprovider --benchmark-disable-gc``
(about 100 s on 2 cores). The 1,000,000-event memory run takes about 5 minutes more and
runs only with ``FC_BENCH_MEMORY=1`` in the environment.

Workload (``benchmarks/workload.py``): 1,000 subscriptions over 50 clients,
exactly two matches per event, payloads of three fields, written with plain SQL.

- Throughput: a fresh store file per round holding 20,000 waiting events; the
  first batch (it loads the subscriptions) is processed before the clock starts.
  "reference" is the store's limit: plain ``sqlite3`` on the same schema reads the
  same events a batch at a time and inserts the same job rows (worked out before
  the clock starts) with ``executemany``, one transaction per batch.
  "loop-cython" is ``Processor.process`` fed by ``SqliteStore.open_feed``'s
  ``next_batch``, with the compiled matcher, in this process; it pays for reading,
  decoding, validation, matching, jobs, projections and the resume token.
  "loop-python" is the same with the pure-Python matcher, timed in a process of
  its own (``FASTMATCH_PURE_PYTHON=1`` is read at import), best of fewer rounds.
  Each loop round follows a round of the limit, timed too, on a fresh copy: the
  loop's ratio is to the limit timed in turn with it (``figures.InTurn``); the
  "reference" test gives the limit's rate on its own.
- Latency: ``fc-stream-processor`` as a child process; a publisher inserts one
  event every millisecond for 5 s, each in its own transaction, and notes the
  wall time when the insert returned. Per event: its job's ``created_at`` (the
  processor's clock when it began the batch) minus that time. A trigger added to
  the benchmark's own store file also logs when each batch's resume token was
  written (inside the batch's transaction, just before its commit), which gives
  the time at which the jobs became visible: reported beside it.
- Idle: the same child's CPU time (``/proc/<pid>/stat``, all threads) over 5 s
  with nothing to do, as a share of one core.
- Memory (``FC_BENCH_MEMORY=1``): 1,000,000 waiting events, batches of 100;
  peak resident memory (``VmHWM``) of the child until its resume token reaches
  the last event, and the rate it got there at.
"""

from __future__ import annotations

import bisect
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import fastmatch
from benchmarks.figures import FIGURES, MEASURES, VERDICTS, Figure, InTurn, measure, record
from benchmarks.processes import ProcessorChild
from benchmarks.workload import (
    MATCHES_PER_EVENT,
    LimitRound,
    LoopRound,
    add_subscriptions,
    build,
    event_rows,
    fresh_copy,
    job_rows,
    limit_round,
)
from processor.stores.sqlite import RESUME_KEY, connect

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT = "Events per second, loop vs the store's limit (embedded store)"
LATENCY = "Insert to job, fc-stream-processor on the embedded store"
MEMORY = "1,000,000 waiting events, fc-stream-processor, batches of 100"

EVENTS = 20_000
BATCH_SIZES = (100, 1_000)
ROUNDS = 7  # loop rounds; the limit, quicker, gets more
LIMIT_ROUNDS = 11
PURE_PYTHON_ROUNDS = 3

RATE = 1_000  # events per second
PUBLISH_SECONDS = 5.0
IDLE_SECONDS = 5.0
WARM_UP_EVENTS = 200

MEMORY_EVENTS = 1_000_000
MEMORY_SWITCH = "FC_BENCH_MEMORY"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store file with the subscriptions and ``EVENTS`` waiting events."""
    path = tmp_path_factory.mktemp("loop") / "template.db"
    build(path, EVENTS)
    return path


def group(batch_size: int) -> str:
    return f"{EVENTS:,} events, batch {batch_size:>5,}"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_store_limit(benchmark: Any, template: Path, tmp_path: Path, batch_size: int) -> None:
    batches = job_rows(template, batch_size)
    assert sum(map(len, batches)) == EVENTS * MATCHES_PER_EVENT
    rounds: list[LimitRound] = []

    def setup() -> tuple[tuple[LimitRound], dict[str, Any]]:
        for done in rounds:
            done.close()
        rounds.append(LimitRound(fresh_copy(template, tmp_path / "limit.db"), batches, batch_size))
        return (rounds[-1],), {}

    benchmark.group = f"loop throughput, {group(batch_size)}"
    benchmark.pedantic(LimitRound.run, setup=setup, rounds=LIMIT_ROUNDS)
    rounds[-1].close()
    assert rounds[-1].events == EVENTS - batch_size
    record(THROUGHPUT, group(batch_size), "reference", EVENTS - batch_size, benchmark)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_loop_throughput(benchmark: Any, template: Path, tmp_path: Path, batch_size: int) -> None:
    rounds: list[LoopRound] = []
    batches = job_rows(template, batch_size)
    limit = InTurn(EVENTS - batch_size)

    def setup() -> tuple[tuple[LoopRound], dict[str, Any]]:
        for done in rounds:
            done.close()
        limit_round(template, tmp_path, batches, batch_size, limit)
        rounds.append(LoopRound(fresh_copy(template, tmp_path / "loop.db"), batch_size))
        return (rounds[-1],), {}

    benchmark.group = f"loop throughput, {group(batch_size)}"
    benchmark.pedantic(LoopRound.run, setup=setup, rounds=ROUNDS)
    last = rounds[-1]
    last.close()
    assert last.events == EVENTS - batch_size
    assert last.jobs() == EVENTS * MATCHES_PER_EVENT, "the loop did not write every job"
    assert last.counted() == EVENTS, "the loop did not count every event in the projections"
    record(
        THROUGHPUT,
        group(batch_size),
        f"loop-{fastmatch.IMPLEMENTATION}",
        EVENTS - batch_size,
        benchmark,
        reference=limit,
    )


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_loop_throughput_pure_python(template: Path, tmp_path: Path, batch_size: int) -> None:
    """Timed by ``benchmarks.workload`` in a process that imported the pure-Python matcher."""
    if fastmatch.IMPLEMENTATION == "python":
        pytest.skip("the compiled matcher is not installed: the loop above ran the pure-Python one")
    environment = {**os.environ, "FASTMATCH_PURE_PYTHON": "1"}
    arguments = [str(template), str(tmp_path), str(batch_size), str(PURE_PYTHON_ROUNDS)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.workload", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["implementation"] == "python"
    assert result["events"] == EVENTS - batch_size
    assert result["counted"] == EVENTS, "the loop did not count every event in the projections"
    limit_rate = result["events"] / result["limit_seconds"]
    FIGURES.append(
        Figure(
            THROUGHPUT,
            group(batch_size),
            "loop-python",
            result["events"],
            min(result["seconds"]),
            limit_rate,
        )
    )


# Logs each write of the resume token with the time of its transaction: the
# benchmark's own instrument, added to its own store file.
COMMIT_LOG = """
CREATE TABLE IF NOT EXISTS bench_commits (token INTEGER NOT NULL, at REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS bench_token_inserted AFTER INSERT ON resume_tokens BEGIN
    INSERT INTO bench_commits VALUES (CAST(NEW.token AS INTEGER), (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER IF NOT EXISTS bench_token_updated AFTER UPDATE ON resume_tokens BEGIN
    INSERT INTO bench_commits VALUES (CAST(NEW.token AS INTEGER), (julianday('now') - 2440587.5) * 86400.0);
END;
"""
INSERT_EVENT = (
    "INSERT INTO events (id, type, client_id, source, time, data, subject) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Publisher:
    """Inserts events one by one with plain SQL, each its own transaction."""

    def __init__(self, db: Path) -> None:
        self.sql = connect(db)
        self.rows = event_rows(10 * RATE * int(PUBLISH_SECONDS) + WARM_UP_EVENTS, seed=7)
        self.inserted: dict[str, float] = {}  # event id -> wall time when its insert returned
        self.longest_insert = 0.0

    def publish(self) -> None:
        event_id = uuid4().hex
        type_, client, source, _, data, subject = next(self.rows)
        moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        started = time.perf_counter()
        self.sql.execute(INSERT_EVENT, (event_id, type_, client, source, moment, data, subject))
        self.longest_insert = max(self.longest_insert, time.perf_counter() - started)
        self.inserted[event_id] = time.time()

    def publish_steadily(self, rate: float, seconds: float) -> float:
        """One event every ``1 / rate`` s on a fixed schedule; returns the rate achieved."""
        count = int(rate * seconds)
        started = time.perf_counter()
        for number in range(count):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.publish()
        return count / (time.perf_counter() - started)

    def token(self) -> int | None:
        row = self.sql.execute("SELECT token FROM resume_tokens WHERE key = ?", (RESUME_KEY,)).fetchone()
        return None if row is None else int(row[0])

    def caught_up(self) -> bool:
        last = int(self.sql.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        return self.token() == last

    def since(self, after: int) -> Iterator[sqlite3.Row]:
        """Each event after ``after`` with the creation times of its jobs."""
        return iter(
            self.sql.execute(
                "SELECT e.id, e.seq, group_concat(j.created_at, ' ') AS created FROM events e "
                "LEFT JOIN dispatch_jobs j ON j.event_id = e.id WHERE e.seq > ? GROUP BY e.seq",
                (after,),
            )
        )

    def commits(self) -> tuple[list[int], list[float]]:
        rows = self.sql.execute("SELECT token, min(at) FROM bench_commits GROUP BY token ORDER BY token")
        tokens, times = [], []
        for token, at in rows:
            tokens.append(int(token))
            times.append(float(at))
        return tokens, times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def test_latency_and_idle(tmp_path: Path) -> None:
    db = tmp_path / "latency.db"
    setup = connect(db)
    add_subscriptions(setup)
    setup.executescript(COMMIT_LOG)
    setup.close()
    publisher = Publisher(db)
    with ProcessorChild(db, tmp_path / "processor.log", batch_size=100) as child:
        child.wait(lambda: publisher.token() is not None, "the feed to open")
        for _ in range(WARM_UP_EVENTS):  # loads the subscriptions; not measured
            publisher.publish()
        child.wait(publisher.caught_up, "the warm-up events")
        warm = publisher.token() or 0
        publisher.inserted.clear()

        time.sleep(1.0)
        cpu, started = child.cpu_seconds(), time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle = (child.cpu_seconds() - cpu) / (time.monotonic() - started)

        achieved = publisher.publish_steadily(RATE, PUBLISH_SECONDS)
        child.wait(publisher.caught_up, "the processor to catch up", timeout=120)
        code = child.stop()
    assert code == 0, f"fc-stream-processor exited with {code}:\n{child.output()}"

    tokens, committed = publisher.commits()
    to_job: list[float] = []
    to_commit: list[float] = []
    for row in publisher.since(warm):
        created = (row["created"] or "").split()
        assert len(created) == MATCHES_PER_EVENT, f"event {row['id']}: {len(created)} jobs"
        inserted = publisher.inserted[row["id"]]
        to_job.append(min(datetime.fromisoformat(c).timestamp() for c in created) - inserted)
        to_commit.append(committed[bisect.bisect_left(tokens, row["seq"])] - inserted)
    assert len(to_job) == len(publisher.inserted)

    measure(LATENCY, f"published: events per second (target {RATE:,})", achieved, "ev/s")
    measure(LATENCY, "publisher: longest single insert", publisher.longest_insert * 1000, "ms")
    measure(LATENCY, "insert -> job created_at, median", statistics.median(to_job) * 1000, "ms")
    measure(LATENCY, "insert -> job created_at, p99", percentile(to_job, 0.99) * 1000, "ms")
    measure(LATENCY, "insert -> job created_at, max", max(to_job) * 1000, "ms")
    measure(
        LATENCY, "insert -> batch committed (jobs visible), median", statistics.median(to_commit) * 1000, "ms"
    )
    measure(
        LATENCY, "insert -> batch committed (jobs visible), p99", percentile(to_commit, 0.99) * 1000, "ms"
    )
    measure(LATENCY, f"idle: CPU over {IDLE_SECONDS:g} s, share of one core", idle * 100, "%")


@pytest.mark.skipif(
    os.environ.get(MEMORY_SWITCH) != "1",
    reason=f"1,000,000 events take minutes: set {MEMORY_SWITCH}=1 to run it",
)
def test_memory_under_backlog(tmp_path: Path) -> None:
    db = tmp_path / "backlog.db"
    built = time.monotonic()
    build(db, MEMORY_EVENTS)
    measure(MEMORY, "building the backlog (not part of the figures)", time.monotonic() - built, "s")
    watch = sqlite3.connect(db)
    last = int(watch.execute("SELECT max(seq) FROM events").fetchone()[0])

    def token() -> int:
        row = watch.execute("SELECT token FROM resume_tokens WHERE key = ?", (RESUME_KEY,)).fetchone()
        return int(row[0])

    peak_rss = 0
    try:
        with ProcessorChild(db, tmp_path / "processor.log", batch_size=100) as child:
            started = time.monotonic()

            def done() -> bool:
                nonlocal peak_rss
                peak_rss = max(peak_rss, child.memory_kb().get("VmRSS", 0))
                return token() >= last

            child.wait(done, "the backlog to be processed", timeout=3_600)
            elapsed = time.monotonic() - started
            high_water = child.memory_kb()["VmHWM"]
            code = child.stop()
        assert code == 0, f"fc-stream-processor exited with {code}:\n{child.output()}"
        jobs = int(watch.execute("SELECT count(*) FROM dispatch_jobs").fetchone()[0])
        assert jobs == MEMORY_EVENTS * MATCHES_PER_EVENT
    finally:
        watch.close()
        for suffix in ("", "-wal", "-shm"):  # about a gigabyte: do not leave it in the temp dir
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    measure(MEMORY, "peak resident memory (VmHWM)", high_water / 1024, "MiB")
    measure(MEMORY, "largest VmRSS sampled", peak_rss / 1024, "MiB")
    measure(MEMORY, "events per second, start of the process to the last event", last / elapsed, "ev/s")


def verdicts(figures: list[Figure]) -> list[str]:
    """The issue's targets for the loop, from this run."""
    found = {(f.group, f.contender): f for f in figures if f.table == THROUGHPUT}
    value = {m.name: m.value for m in MEASURES if m.table in (LATENCY, MEMORY)}
    lines = ["Targets of the loop (from this run):"]

    def check(label: str, figure: float | None, target: float, *, below: bool = False) -> None:
        if figure is None:
            lines.append(f"  {label}: not measured in this run")
            return
        met = figure < target if below else figure >= target
        sign = "<" if below else ">="
        lines.append(f"  {label}: {figure:,.3g} (target {sign} {target:g}) {'met' if met else 'NOT met'}")

    def ratio(batch_size: int, contender: str) -> float | None:
        top = found.get((group(batch_size), contender))
        return top.ratio(found.get((group(batch_size), "reference"))) if top else None

    for contender in ("loop-cython", "loop-python"):
        check(f"{contender} / store limit, batch 100 (the default)", ratio(100, contender), 0.5)
    for contender in ("loop-cython", "loop-python"):
        measured = ratio(1_000, contender)
        shown = "not measured in this run" if measured is None else f"{measured:,.3g} (reported, no target)"
        lines.append(f"  {contender} / store limit, batch 1,000: {shown}")
    check(
        "insert -> job created_at, median, ms",
        value.get("insert -> job created_at, median"),
        50,
        below=True,
    )
    check(
        "insert -> batch committed, median, ms (stricter)",
        value.get("insert -> batch committed (jobs visible), median"),
        50,
        below=True,
    )
    check(
        "idle CPU, % of one core",
        value.get(f"idle: CPU over {IDLE_SECONDS:g} s, share of one core"),
        5,
        below=True,
    )
    check(
        "1,000,000-event backlog, peak resident memory, MiB",
        value.get("peak resident memory (VmHWM)"),
        200,
        below=True,
    )
    return lines


VERDICTS.append(verdicts)
