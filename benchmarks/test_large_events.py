"""Memory with events of 10 MB: the processor's batches and the API's pages are
bounded by bytes, so memory follows the budgets, not the events.

Run: ``pytest benchmarks/test_large_events.py -p no:cacheprovider`` (about a minute).

- Processing: ``fc-stream-processor`` on the embedded store, default settings
  (batches of 100 events or 8 MiB), works through 100 waiting events of 10 MB
  each, inserted with plain SQL, half of them invalid JSON (dead-lettered, each
  keeping the first 64 KiB of its raw document). Peak resident memory
  (``VmHWM``) of the child; target under 400 MiB.
- Page walk: ``fc-dev`` serves a store holding fifty dead letters of 10 MB each,
  as a store written before dead letters were bounded holds them; a client
  walks ``GET /api/dead-letters?limit=1000`` to the end. Peak resident memory
  of the ``fc-dev`` process; target under 150 MiB.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.figures import MEASURES, VERDICTS, Figure, measure
from benchmarks.processes import ProcessorChild
from processor.stores.sqlite import RESUME_KEY, connect

TABLE = "Events of 10 MB"
EVENTS = 100
EVENT_BYTES = 10 * 1000 * 1000
DEAD_LETTERS = 50


def payload(size: int) -> str:
    """About ``size`` bytes of JSON, wide (many small objects) and long (one string)."""
    items = [{"sku": f"sku-{n}", "qty": n % 7, "note": "x" * 40} for n in range(size // 200)]
    text = json.dumps({"items": items, "blob": ""})
    return text[:-2] + "y" * (size - len(text)) + '"}'


def peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def test_processing_events_of_10_mb(tmp_path: Path) -> None:
    db = tmp_path / "large.db"
    connection = connect(db)
    connection.execute(
        "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code) "
        "VALUES ('all', 'acme', 'all', '*:*:*:*', 'https://hooks.example.com/in', 'p')"
    )
    connection.execute(
        "INSERT INTO resume_tokens (key, token, updated_at) VALUES (?, '0', 'now')", (RESUME_KEY,)
    )
    text = payload(EVENT_BYTES)
    for n in range(EVENTS):
        connection.execute(
            "INSERT INTO events (type, client_id, data) VALUES ('orders:a:b:c', 'acme', ?)",
            (text if n % 2 == 0 else text[:-1],),
        )
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def done() -> bool:
        row = connection.execute("SELECT token FROM resume_tokens").fetchone()
        return int(row[0]) >= EVENTS

    with ProcessorChild(db, tmp_path / "processor.log") as child:
        started = time.monotonic()
        child.wait(done, "the large events", timeout=600)
        elapsed = time.monotonic() - started
        peak = peak_mib(child.pid)
        assert child.stop() == 0, child.output()
    jobs = connection.execute("SELECT count(*) FROM dispatch_jobs").fetchone()[0]
    letters, largest = connection.execute("SELECT count(*), max(length(raw)) FROM dead_letters").fetchone()
    connection.close()
    assert (jobs, letters) == (EVENTS // 2, EVENTS // 2)
    measure(TABLE, "processing: peak resident memory (VmHWM)", peak, "MiB")
    measure(TABLE, "processing: events per second", EVENTS / elapsed, "ev/s")
    measure(TABLE, "processing: largest raw kept by a dead letter", largest / 1024, "KiB")


def test_walking_pages_of_dead_letters_of_10_mb(tmp_path: Path) -> None:
    db, log = tmp_path / "fc-dev.db", tmp_path / "fc-dev.log"
    connection = connect(db)
    connection.executemany(
        "INSERT INTO dead_letters (position, reason, raw, received_at) VALUES (?, 'unbounded', ?, '')",
        [(str(n), payload(EVENT_BYTES)) for n in range(DEAD_LETTERS)],
    )
    connection.close()
    port = free_port()
    with log.open("wb") as output:
        command = [str(Path(sys.executable).with_name("fc-dev")), "--db", str(db), "--port", str(port)]
        child = subprocess.Popen(command, stdout=output, stderr=output)
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            deadline = time.monotonic() + 30
            while not answers(http):
                assert child.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            seen, pages, after, largest = 0, 0, None, 0
            while True:
                response = http.get(
                    "/api/dead-letters", params={"limit": 1000, **({"after": after} if after else {})}
                )
                page = response.json()
                seen, pages = seen + len(page["items"]), pages + 1
                largest = max(largest, len(response.content))
                after = page["next"]
                if after is None:
                    break
            peak = peak_mib(child.pid)
        finally:
            child.terminate()
            child.wait(timeout=30)
    assert seen == DEAD_LETTERS
    measure(TABLE, "page walk: peak resident memory of fc-dev (VmHWM)", peak, "MiB")
    measure(TABLE, "page walk: pages", pages, "")
    measure(TABLE, "page walk: largest response", largest / 1024 / 1024, "MiB")


def answers(http: httpx.Client) -> bool:
    try:
        return http.get("/live").status_code == 200
    except httpx.TransportError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def verdicts(figures: list[Figure]) -> list[str]:
    value = {m.name: m.value for m in MEASURES if m.table == TABLE}
    lines = []
    for name, target in (
        ("processing: peak resident memory (VmHWM)", 400),
        ("page walk: peak resident memory of fc-dev (VmHWM)", 150),
    ):
        if name in value:
            met = "met" if value[name] < target else "NOT met"
            lines.append(f"  {name}: {value[name]:,.0f} MiB (target < {target}) {met}")
    return ["Targets of the large events (from this run):", *lines] if lines else []


VERDICTS.append(verdicts)
