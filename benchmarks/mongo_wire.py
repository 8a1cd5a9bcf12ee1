"""``fc-stream-processor`` on the MongoDB path, against the wire server of the
tests (``tests.wire_mongo``): insert-to-job latency under a trickle, and the
processor's own CPU per event working through a backlog.

Run from the repository's root (about 3 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.mongo_wire [--events 2000] [--trickle 200] [--profile]

The wire server runs in this process (its threads); the processor is a child
process (the console script), so that its CPU time, read from ``/proc/<pid>``
(every thread), is its own. Each phase has a server and a child of its own.
Workload (``benchmarks/workload.py``): 1,000 subscriptions over 50 clients,
stored as ``tests/stores/backends.py`` writes them, exactly two matches per
event, payloads of three fields; batches of 100 (``FC_STREAM_BATCH_SIZE``).

- Latency: one event every 0.3 s, inserted with pymongo on a fixed schedule;
  per event, the time from its insert's return to its first job arriving on a
  change stream of ``dispatch_jobs`` watched from this process (the jobs are
  written, visible to a dispatcher), and to its jobs' ``created_at`` (the
  processor's clock as it built them). Targets: median under 100 ms, p99 under
  the batch deadline (``Settings.max_wait``, 0.5 s) plus 50 ms.
- CPU: once the child has saved its first checkpoint and processed a warm-up
  of 200 events, the backlog is inserted into the engine in one write; the
  child's CPU time (utime + stime, every thread) from its first job to its
  last, over the events whose jobs were written in between. Target: under
  30 us per event. Also given: the busiest thread's part (the processing
  loop) and the other threads' (pymongo's monitors, the watchdog: they wake
  by the clock, so their share per event grows as the server slows).
- ``--profile``: py-spy (``.venv/bin/pip install py-spy``; not a dependency of
  the package) samples the child over the same span, 1,000 times a second,
  only threads holding the GIL (``--gil``), without stopping it
  (``--nonblocking``): the samples add up to the Python CPU time, and the
  child pays nothing for them. Prints the top functions, own and including
  callees, with their share turned into microseconds per event.

The engine is pure Python, and its unique-index check reads every stored job
at each insert: the pace (tens of events per second) is the server's, and
falls as the backlog grows (4,000 events took almost twice as long per event
as 2,000, for the same CPU per event in the child), hence 2,000 by default.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

from benchmarks.figures import machine
from benchmarks.processes import CLOCK_TICKS, ProcessorChild, command
from benchmarks.workload import ACTIONS, CLIENTS, FAMILIES, POOL, client_id, event_type, subscriptions
from processor.loop import Settings
from tests.wire_mongo import WireMongo

BATCH_SIZE = 100
EVENTS = 2_000
WARM_UP = 200
TRICKLE = 200
INTERVAL = 0.3  # seconds between two events of the trickle
IDLE_SECONDS = 5.0
RATE = 1000  # py-spy's samples per second
MATCHES = 2
DEADLINE = Settings().max_wait  # the batch deadline
CPU_TARGET = 30e-6  # seconds per event
MEDIAN_TARGET = 0.100
P99_TARGET = DEADLINE + 0.050

Document = dict[str, Any]


def subscription_documents() -> list[Document]:
    """As ``MongoBackend.put_subscription`` writes them."""
    return [
        {
            "_id": s.id,
            "client_id": s.client_id,
            "name": f"subscription {s.id}",
            "event_type_pattern": s.pattern,
            "target": s.target,
            "pool_code": POOL,
            "active": True,
        }
        for s in subscriptions()
    ]


def events(count: int, seed: int) -> Iterator[Document]:
    """Valid events, each of its client's families: two subscriptions match each."""
    rng = random.Random(seed)
    for number in range(count):
        client = rng.randrange(CLIENTS)
        yield {
            "_id": ObjectId(),
            "type": event_type(client, rng.randrange(FAMILIES), rng.randrange(len(ACTIONS))),
            "client_id": client_id(client),
            "source": "bench",
            "time": datetime.now(UTC),
            "data": {"order": number, "total": 12.5, "currency": "EUR"},
            "subject": f"order-{number}",
        }


class MongoChild(ProcessorChild):
    """``fc-stream-processor`` on the wire server: no ops server, the token's
    mirror in memory (no ``FC_REDIS_URL``)."""

    def __init__(self, wire: WireMongo, log: Path) -> None:
        super().__init__(log, log, BATCH_SIZE)
        self.environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FC_", "RUST_LOG"))},
            "FC_MONGO_URL": wire.uri,
            "FC_MONGO_DB": wire.engine.name,
            "FC_STREAM_BATCH_SIZE": str(BATCH_SIZE),
            "FC_METRICS_PORT": "0",
            "FC_LOG_LEVEL": "warn",
        }

    def user_system(self) -> tuple[float, float]:
        """User and system CPU time of the whole process so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS

    def thread_seconds(self) -> dict[int, float]:
        """CPU time of each of the process's threads so far."""
        found = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended
            found[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return found


def count(wire: WireMongo, collection: str) -> int:
    """Documents in a collection of the engine, read without its lock."""
    return len(wire.engine.collection_data(collection).documents)


def start(stack: ExitStack, workdir: Path, name: str) -> tuple[WireMongo, MongoChild]:
    """A server holding the subscriptions, and a child that has saved its first checkpoint."""
    wire = stack.enter_context(WireMongo())
    wire.engine.database["subscriptions"].insert_many(subscription_documents())
    child = MongoChild(wire, workdir / f"{name}.log")
    stack.enter_context(child)
    child.wait(lambda: count(wire, "stream_checkpoints") > 0, "the first checkpoint", timeout=120)
    return wire, child


def warm_up(wire: WireMongo, child: MongoChild) -> None:
    """A first backlog, not measured: the matcher's caches and the server's connections."""
    wire.engine.database["events"].insert_many(list(events(WARM_UP, seed=1)))
    child.wait(lambda: count(wire, "dispatch_jobs") >= WARM_UP * MATCHES, "the warm-up", timeout=300)


def idle_share(child: MongoChild, seconds: float) -> float:
    """The child's CPU over ``seconds`` with nothing to do, as a share of one core."""
    time.sleep(1.0)
    cpu, started = child.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (child.cpu_seconds() - cpu) / (time.monotonic() - started)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency(workdir: Path, trickle: int, interval: float) -> dict[str, float]:
    with ExitStack() as stack:
        wire, child = start(stack, workdir, "latency")
        warm_up(wire, child)
        client = stack.enter_context(wire.client())
        database = client[wire.engine.name]
        seen: dict[str, float] = {}  # event id -> when its first job arrived on the stream
        created: dict[str, datetime] = {}  # event id -> its first job's created_at
        stop = threading.Event()
        ready = threading.Event()

        def watch() -> None:
            with database["dispatch_jobs"].watch(max_await_time_ms=200) as stream:
                ready.set()
                while not stop.is_set():
                    change = stream.try_next()
                    if change is None:
                        continue
                    arrived = time.time()
                    job = change["fullDocument"]
                    seen.setdefault(job["event_id"], arrived)
                    at = job["created_at"]
                    created[job["event_id"]] = min(created.get(job["event_id"], at), at)

        watcher = threading.Thread(target=watch, name="jobs-watcher", daemon=True)
        watcher.start()
        ready.wait(30)
        inserted: dict[str, float] = {}  # event id -> when its insert returned
        longest = 0.0
        began = time.perf_counter()
        for number, document in enumerate(events(trickle, seed=2)):
            delay = began + number * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            document["time"] = datetime.now(UTC)
            sent = time.perf_counter()
            database["events"].insert_one(document)
            longest = max(longest, time.perf_counter() - sent)
            inserted[str(document["_id"])] = time.time()
        child.wait(lambda: set(inserted) <= set(seen), "the trickle's jobs", timeout=120)
        stop.set()
        watcher.join(5)
        wire.check()
        assert child.stop() == 0, child.output()
    to_job = [seen[e] - at for e, at in inserted.items()]
    to_created = [created[e].timestamp() - at for e, at in inserted.items()]
    return {
        "events": len(to_job),
        "longest insert": longest,
        "median": statistics.median(to_job),
        "p99": percentile(to_job, 0.99),
        "max": max(to_job),
        "created median": statistics.median(to_created),
        "created p99": percentile(to_created, 0.99),
    }


def backlog(workdir: Path, total: int, spy: str | None = None) -> dict[str, float]:
    """The child's CPU from the backlog's first job to its last; with ``spy``, the
    path of py-spy, its samples of the child over the same span, in ``workdir``."""
    with ExitStack() as stack:
        wire, child = start(stack, workdir, "backlog")
        warm_up(wire, child)
        idle = idle_share(child, IDLE_SECONDS)
        before = count(wire, "dispatch_jobs")
        wire.engine.database["events"].insert_many(list(events(total, seed=3)))
        inserted_at = time.monotonic()
        last = before + total * MATCHES
        child.wait(lambda: count(wire, "dispatch_jobs") > before, "the backlog's first job", timeout=600)
        first = count(wire, "dispatch_jobs")
        (user0, system0), threads0, t0 = child.user_system(), child.thread_seconds(), time.monotonic()
        sampler = None if spy is None else stack.enter_context(Sampler(spy, child.pid, workdir / "spy.txt"))
        child.wait(lambda: count(wire, "dispatch_jobs") >= last, "the backlog's last job", timeout=7200)
        (user1, system1), threads1, t1 = child.user_system(), child.thread_seconds(), time.monotonic()
        if sampler is not None:
            sampler.stop()
        wire.check()
        assert child.stop() == 0, child.output()
    measured = (last - first) / MATCHES
    cpu = user1 + system1 - user0 - system0
    grown = sorted((threads1[t] - threads0.get(t, 0.0) for t in threads1), reverse=True)
    return {
        "events": measured,
        "seconds": t1 - t0,
        "to first job": t0 - inserted_at,
        "cpu": cpu,
        "per event": cpu / measured,
        "system": (system1 - system0) / measured,
        "idle share": idle,
        "busiest thread": grown[0] / measured if grown else 0.0,
        "other threads": sum(grown[1:]) / measured,
        "threads": len(threads1),
    }


class Sampler:
    """py-spy attached to the child, sampling without stopping it (``--nonblocking``:
    it reads the child's memory, which costs the child nothing), until ``stop()``."""

    def __init__(self, spy: str, pid: int, output: Path) -> None:
        self.output = output
        self.command = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--gil", "--nonblocking"]
        self.command += ["--format", "raw", "--output", str(output)]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
            self.process.wait(60)


def frame_name(frame: str) -> str:
    """``function (path:line)`` as ``function (path)``, the path from its package on."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"


def read_samples(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Samples by function: where they were taken (own), and anywhere on the stack (within)."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = [frame_name(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            within[name] += samples
    return own, within, total


def floor(total: int) -> dict[str, float]:
    """CPU per event of ``benchmarks.mongo_floor``: reading only, then reading and
    writing the jobs; each in a child of its own on a server of its own."""
    found = {}
    for mode in ("read", "write"):
        with WireMongo() as wire:
            arguments = [wire.uri, wire.engine.name, str(total), mode]
            child = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.mongo_floor", *arguments],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", "the floor's child did not start"
            wire.engine.database["events"].insert_many(list(events(total, seed=3)))
            output, _ = child.communicate(timeout=600)
            assert child.returncode == 0, output
            found[mode] = float(output.split()[-1]) * 1e-6
            wire.check()
    return found


def print_floor(found: dict[str, float], total: int) -> None:
    print(
        f"\nthe floor, pymongo alone ({total:,} events, batches of {BATCH_SIZE}, benchmarks/mongo_floor.py):"
    )
    print(f"  reading and decoding the change events  {found['read'] * 1e6:>8.1f} us per event")
    below = found["write"] < CPU_TARGET
    print(
        f"  and inserting their two jobs            {found['write'] * 1e6:>8.1f} us per event"
        f"  (the target, {CPU_TARGET * 1e6:.0f} us, is {'above' if below else 'below'} it)"
    )


def show_samples(path: Path, per_event: float, lines: int) -> None:
    own, within, total = read_samples(path)
    if not total:
        print("\npy-spy took no samples")
        return
    print(
        f"\nwhere the child's CPU goes (py-spy, {total:,} samples, all threads; "
        f"us of the {per_event * 1e6:.0f} per event):"
    )
    for title, counts in (("own time", own), ("including callees", within)):
        print(f"\n  {title}:")
        for name, samples in counts.most_common(lines):
            share = samples / total
            print(f"  {share * 100:6.1f} % {share * per_event * 1e6:7.1f} us  {name}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    spy = str(found) if found.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return spy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mongo_wire", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--events", type=int, default=EVENTS, help="events of the backlog (0: none)")
    parser.add_argument("--trickle", type=int, default=TRICKLE, help="events of the trickle (0: none)")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between two of them")
    parser.add_argument("--profile", action="store_true", help="sample the child with py-spy in the backlog")
    parser.add_argument("--lines", type=int, default=25, help="entries of each profile table")
    parser.add_argument("--floor", action="store_true", help="also measure pymongo's own floor")
    options = parser.parse_args(argv)
    spy = py_spy() if options.profile else None
    print(f"fc-stream-processor ({' '.join(command())}) on the wire server, on {machine()}")
    with tempfile.TemporaryDirectory(prefix="mongo-wire-") as name:
        workdir = Path(name)
        if options.trickle:
            print_latency(latency(workdir, options.trickle, options.interval), options.interval)
        if options.events:
            found = backlog(workdir, options.events, spy)
            print_backlog(found, options.events)
            if spy is not None:
                show_samples(workdir / "spy.txt", found["per event"], options.lines)
    if options.floor:
        print_floor(floor(options.events or EVENTS), options.events or EVENTS)
    return 0


def print_latency(found: dict[str, float], interval: float) -> None:
    median, p99 = found["median"], found["p99"]
    print(f"\ninsert to job, one event every {interval:g} s, batches of {BATCH_SIZE}:")
    print(f"  events                                  {found['events']:>8,.0f}")
    print(f"  longest insert                          {found['longest insert'] * 1000:>8.1f} ms")
    print(
        f"  to its first job on a change stream, median {median * 1000:>6.1f} ms"
        f"  (target under {MEDIAN_TARGET * 1000:.0f} ms: {verdict(median < MEDIAN_TARGET)})"
    )
    print(
        f"  to its first job on a change stream, p99    {p99 * 1000:>6.1f} ms"
        f"  (target under {P99_TARGET * 1000:.0f} ms: {verdict(p99 < P99_TARGET)})"
    )
    print(f"  to its first job on a change stream, max    {found['max'] * 1000:>6.1f} ms")
    print(f"  to its jobs' created_at, median         {found['created median'] * 1000:>8.1f} ms")
    print(f"  to its jobs' created_at, p99            {found['created p99'] * 1000:>8.1f} ms")


def print_backlog(found: dict[str, float], total: int) -> None:
    per_event = found["per event"]
    print(f"\nbacklog of {total:,} events, batches of {BATCH_SIZE}, 1,000 subscriptions, 2 matches each:")
    print(f"  events measured (first job to last)     {found['events']:>8,.0f}")
    print(f"  seconds                                 {found['seconds']:>8.1f} s")
    print(f"  events per second (the server's pace)   {found['events'] / found['seconds']:>8,.0f}")
    print(f"  insert to the first job                 {found['to first job']:>8.2f} s")
    print(
        f"  child CPU                               {found['cpu']:>8.2f} s ({found['threads']:.0f} threads)"
    )
    print(
        f"  child CPU per event                     {per_event * 1e6:>8.1f} us"
        f"  (target under {CPU_TARGET * 1e6:.0f} us: {verdict(per_event < CPU_TARGET)})"
    )
    print(f"    of which system time                  {found['system'] * 1e6:>8.1f} us")
    print(f"    its busiest thread (processing)       {found['busiest thread'] * 1e6:>8.1f} us")
    print(f"    its other threads                     {found['other threads'] * 1e6:>8.1f} us")
    print(f"  idle CPU before the backlog, of a core  {found['idle share'] * 100:>8.2f} %")


if __name__ == "__main__":
    sys.exit(main())
