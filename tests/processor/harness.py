"""A processor on a real SQLite file, and the SQL a publisher would write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from processor.api import create_app
from processor.health import Health
from processor.loop import Processor, Settings
from processor.metrics import Metrics
from processor.stores.base import Repairs, Store
from processor.stores.sqlite import Catalog, connect

FAST = Settings(batch_size=50, max_wait=0.05, backoff_initial=0.01, backoff_max=0.2)
EXECUTABLE = Path(sys.executable).parent / "fc-stream-processor"


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any FC_ variable or RUST_LOG, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FC_") and k != "RUST_LOG"}
    return {**clean, **variables}


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.01)


def answers(url: str) -> bool:
    """Whether a server answers at ``url`` (any status): an ops server starts
    beside the processing, and may come up after the first events are processed."""
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def assert_refused(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """The one error shape, naming exactly ``fields``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "fields"} and body["error"]
    assert [problem["field"] for problem in body["fields"]] == list(fields), body
    assert all(problem["problem"] for problem in body["fields"])
    return body


def refusal(command: list[str], env: Mapping[str, str] | None = None) -> str:
    """The one line a console script refuses its configuration with, exiting 2."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(catalog: Catalog, repairs: Repairs) -> Iterator[httpx.Client]:
    """The API on a free port, until the block ends; a client that opens a
    connection per request, since the server may close one after a refusal."""
    app = create_app(catalog, repairs, Metrics(), Health(), alive=lambda: True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )
    try:
        wait_until(lambda: server.started, timeout=30, message="the API to serve")
        yield http
    finally:
        http.close()
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Publisher:
    """Writes to the store as other processes would: plain SQL."""

    def __init__(self, path: Path) -> None:
        self.sql = connect(path)
        self.sql.execute("PRAGMA busy_timeout = 10000")  # a publisher waits out a processor's lock

    def subscribe(
        self,
        id: str,
        pattern: str,
        client_id: str = "acme",
        *,
        active: bool = True,
        filters: dict[str, Any] | None = None,
        target: str = "https://hooks.example.com/in",
    ) -> str:
        self.sql.execute(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code, "
            "active, filters) VALUES (?, ?, ?, ?, ?, 'default', ?, ?)",
            (id, client_id, f"subscription {id}", pattern, target, int(active), _json(filters)),
        )
        return id

    def publish(self, type: Any, client_id: Any = "acme", data: Any = None, **columns: Any) -> str:
        """Insert one event; ``data`` and ``metadata`` are encoded as JSON unless
        given as ``str`` (so a test can store text that is not JSON)."""
        values = {"type": type, "client_id": client_id, "data": _json(data), **columns}
        if "metadata" in values and not isinstance(values["metadata"], str):
            values["metadata"] = _json(values["metadata"])
        names = ", ".join(values)
        row = self.sql.execute(
            f"INSERT INTO events ({names}) VALUES ({', '.join('?' * len(values))}) RETURNING id",
            tuple(values.values()),
        ).fetchone()
        return str(row[0])

    def max_seq(self) -> int:
        return int(self.sql.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def jobs(self) -> set[tuple[str, str]]:
        return {(r[0], r[1]) for r in self.sql.execute("SELECT event_id, subscription_id FROM dispatch_jobs")}

    def job_count(self) -> int:
        return int(self.sql.execute("SELECT count(*) FROM dispatch_jobs").fetchone()[0])

    def token(self) -> str | None:
        row = self.sql.execute("SELECT token FROM resume_tokens").fetchone()
        return None if row is None else str(row[0])

    def dead_letters(self) -> dict[str, str]:
        """event id (or position when the id is unknown) -> reason"""
        return {
            r["event_id"] or r["position"]: r["reason"]
            for r in self.sql.execute("SELECT event_id, position, reason FROM dead_letters")
        }

    def caught_up(self) -> bool:
        return self.token() == str(self.max_seq())


def _json(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else json.dumps(value)


class Running:
    """A processor thread on ``store``; started, it has opened its feed."""

    def __init__(self, store: Store, publisher: Publisher, settings: Settings = FAST) -> None:
        self.processor = Processor(store, settings)
        self.publisher = publisher
        self._thread = threading.Thread(target=self.processor.run, daemon=True)

    def __enter__(self) -> Processor:
        self._thread.start()
        wait_until(lambda: self.publisher.token() is not None, message="the feed to open")
        return self.processor

    def __exit__(self, *exc: object) -> None:
        self.processor.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the processor did not stop"


@contextmanager
def spawn_processor(db: Path, log: Path, **environment: str) -> Iterator[subprocess.Popen[bytes]]:
    """``fc-stream-processor`` as operators run it, on the embedded store; killed
    at the end if it is still running."""
    command = [str(EXECUTABLE)]
    env = {**os.environ, "FC_MONGO_URL": f"sqlite://{db}", "FC_METRICS_PORT": "0", **environment}
    with log.open("ab") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
