"""Failover with real processes and the real Redis server: two
``fc-stream-processor`` instances on one embedded store, one lock.

The takeover bounds are the design's (TTL plus one renew interval, and one
renew interval after a clean release), plus ``SCHEDULING`` seconds for the
processes of a loaded machine to be scheduled: a bound far below what a broken
election (waiting for nothing, or for ever) would take.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis

from tests.processor.harness import Publisher, free_port, spawn_processor, wait_until

TTL, RENEW = 5.0, 1.0  # long enough that a loaded machine (two CI runs at once) renews in time
SCHEDULING = 3.0
SHIPPED = "orders:fulfillment:shipment:shipped"


def standby_env(redis_url: str, lock_key: str, instance: str) -> dict[str, str]:
    return {
        "FC_STANDBY_ENABLED": "true",
        "FC_STANDBY_REDIS_URL": redis_url,
        "FC_STANDBY_LOCK_KEY": lock_key,
        "FC_STANDBY_INSTANCE_ID": instance,
        "FC_STANDBY_LOCK_TTL_MS": str(int(TTL * 1000)),
        "FC_STANDBY_RENEW_INTERVAL_MS": str(int(RENEW * 1000)),
        "FC_STREAM_BATCH_SIZE": "200",
    }


class Pair:
    """Instances "a" and "b" on one store and one lock."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.db = tmp_path / "store.db"
        self.logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
        self.redis_url = redis_url
        self.lock_key = f"test-lock-{uuid.uuid4().hex}"
        self.publisher = Publisher(self.db)
        self.publisher.subscribe("all", "*:*:*:*")
        self.publisher.subscribe("orders", "orders:*:*:*")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stack = ExitStack()

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = standby_env(self.redis_url, self.lock_key, name)
        child = self._stack.enter_context(spawn_processor(self.db, self.logs[name], **env))
        self.processes[name] = child
        return child

    def holder(self, client: redis.Redis) -> str | None:
        try:
            value = client.get(self.lock_key)
        except redis.RedisError:
            return None
        if value is None:
            return None
        return (value.decode() if isinstance(value, bytes) else value).split(" ")[0]

    def expected_jobs(self, events: set[str]) -> set[tuple[str, str]]:
        return {(event, subscription) for event in events for subscription in ("all", "orders")}

    def close(self) -> None:
        for child in self.processes.values():
            if child.poll() is None:
                child.send_signal(signal.SIGCONT)
        self._stack.close()


@pytest.fixture
def client() -> redis.Redis:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(f"the Redis server on 127.0.0.1:6379 is not running: {error}")
    return client


@pytest.fixture
def pair(tmp_path: Path, client: redis.Redis) -> Iterator[Pair]:
    pair = Pair(tmp_path, "redis://127.0.0.1:6379/0")
    yield pair
    pair.close()
    client.delete(pair.lock_key, f"{pair.lock_key}:epoch")


class Trickle:
    """Publishes events in the background, as traffic does during a failover."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = Publisher(publisher.sql.execute("PRAGMA database_list").fetchone()[2])
        self.events: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.events.add(self.publisher.publish(SHIPPED))
            time.sleep(0.005)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def started_leader(pair: Pair, client: redis.Redis) -> None:
    pair.start("a")
    wait_until(lambda: pair.holder(client) == "a", message="a to lead")
    wait_until(lambda: pair.publisher.token() is not None, message="a to open its feed")
    pair.start("b")
    time.sleep(RENEW * 2)  # b is up and trying
    assert pair.holder(client) == "a"


def test_a_killed_leader_is_replaced_within_ttl_and_every_job_exists_once(
    pair: Pair, client: redis.Redis
) -> None:
    started_leader(pair, client)
    with Trickle(pair.publisher) as trickle:
        wait_until(lambda: pair.publisher.job_count() > 50, message="a to process")
        pair.processes["a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: pair.holder(client) == "b", timeout=TTL + RENEW + 10, message="b to lead")
        takeover = time.monotonic() - killed
        published = len(trickle.events)  # traffic goes on under the new leader
        wait_until(lambda: len(trickle.events) >= published + 50, message="events after the takeover")
    assert takeover <= TTL + RENEW + SCHEDULING, f"b took {takeover:.2f}s to take over"
    wait_until(pair.publisher.caught_up, timeout=30, message="b to catch up")
    assert pair.publisher.jobs() == pair.expected_jobs(trickle.events)
    assert pair.publisher.job_count() == len(pair.expected_jobs(trickle.events))


def test_a_leader_paused_past_its_ttl_steps_down_when_resumed(pair: Pair, client: redis.Redis) -> None:
    started_leader(pair, client)
    epoch_before = int(client.get(f"{pair.lock_key}:epoch") or 0)
    with Trickle(pair.publisher) as trickle:
        wait_until(lambda: pair.publisher.job_count() > 20, message="a to process")
        pair.processes["a"].send_signal(signal.SIGSTOP)
        wait_until(lambda: pair.holder(client) == "b", timeout=TTL + RENEW + 10, message="b to lead")
        wait_until(
            lambda: (
                pair.publisher.sql.execute("SELECT epoch FROM resume_tokens").fetchone()[0] > epoch_before
            ),
            message="b to claim the token",
        )
        pair.processes["a"].send_signal(signal.SIGCONT)
        wait_until(lambda: "standing by" in pair.logs["a"].read_text(), message="a to step down")
        time.sleep(RENEW * 3)
    assert pair.holder(client) == "b", "the resumed leader did not take the lock back"
    wait_until(pair.publisher.caught_up, timeout=30, message="b to catch up")
    token_epoch = pair.publisher.sql.execute("SELECT epoch FROM resume_tokens").fetchone()[0]
    assert token_epoch == int(client.get(f"{pair.lock_key}:epoch") or 0), "only b's epoch saved the token"
    assert pair.publisher.jobs() == pair.expected_jobs(trickle.events)


def test_a_clean_sigterm_releases_the_lock_and_the_standby_leads_at_once(
    pair: Pair, client: redis.Redis
) -> None:
    started_leader(pair, client)
    leader = pair.processes["a"]
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(timeout=10) == 0
    released = time.monotonic()
    wait_until(lambda: pair.holder(client) == "b", timeout=TTL + 10, message="b to lead")
    takeover = time.monotonic() - released
    assert takeover <= RENEW + SCHEDULING, f"b took {takeover:.2f}s, as if the lock had not been released"
    event = pair.publisher.publish(SHIPPED)
    wait_until(pair.publisher.caught_up, message="b to process")
    assert pair.publisher.jobs() >= pair.expected_jobs({event})


@contextmanager
def redis_server(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server of the test's own, to be taken away and brought back."""
    child = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        wait_until(lambda: _answers(client), message="the test's Redis server")
        yield child
    finally:
        child.kill()
        child.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_without_redis_the_leader_steps_down_by_its_deadline_and_work_resumes(tmp_path: Path) -> None:
    port = free_port()
    pair = Pair(tmp_path, f"redis://127.0.0.1:{port}/0")
    client = redis.Redis(port=port, socket_timeout=0.5)
    try:
        with redis_server(port, tmp_path):
            started_leader(pair, client)
            before = pair.publisher.publish(SHIPPED)
            wait_until(pair.publisher.caught_up, message="a to process")
        lost = time.monotonic()  # Redis is gone
        margin = max(RENEW, TTL / 5)
        wait_until(
            lambda: "no longer the leader" in pair.logs["a"].read_text(),
            timeout=TTL + 10,
            message="a to step down",
        )
        stepped_down = time.monotonic() - lost
        assert stepped_down <= TTL - margin + SCHEDULING, f"a kept leading {stepped_down:.2f}s without Redis"
        during = {pair.publisher.publish(SHIPPED) for _ in range(20)}
        time.sleep(RENEW * 3)
        assert not pair.publisher.caught_up(), "nobody leads while Redis is away"
        with redis_server(port, tmp_path):
            wait_until(lambda: pair.holder(client) in ("a", "b"), timeout=10, message="a new leader")
            wait_until(pair.publisher.caught_up, timeout=30, message="the backlog")
        assert pair.publisher.jobs() == pair.expected_jobs({before} | during)
    finally:
        pair.close()


def log_lines(pair: Pair) -> int:
    return sum(len(path.read_text().splitlines()) for path in pair.logs.values() if path.exists())


def test_after_redis_loses_its_data_the_leader_takes_an_epoch_above_the_stores_in_one_step(
    tmp_path: Path,
) -> None:
    port = free_port()
    pair = Pair(tmp_path, f"redis://127.0.0.1:{port}/0")
    client = redis.Redis(port=port, socket_timeout=0.5)
    epoch = f"{pair.lock_key}:epoch"
    try:
        with redis_server(port, tmp_path):
            client.set(epoch, 100_000)  # a long-lived deployment's counter
            started_leader(pair, client)
            before = pair.publisher.publish(SHIPPED)
            wait_until(pair.publisher.caught_up, message="a to process")
            claimed = pair.publisher.sql.execute("SELECT epoch FROM resume_tokens").fetchone()[0]
            assert claimed == 100_001
        lines = log_lines(pair)
        with redis_server(port, tmp_path):  # back, without its data: the counter starts again
            restarted = time.monotonic()

            def token_epoch() -> int:
                return int(pair.publisher.sql.execute("SELECT epoch FROM resume_tokens").fetchone()[0])

            wait_until(
                lambda: token_epoch() > claimed, timeout=60, message="a leader to claim the store again"
            )
            took = time.monotonic() - restarted
            assert int(client.get(epoch) or 0) == token_epoch(), "the counter goes on from the store's epoch"
            after = pair.publisher.publish(SHIPPED)
            wait_until(pair.publisher.caught_up, message="the new leader to process")
        assert took <= TTL + RENEW + 1 + SCHEDULING, f"{took:.2f}s to lead again after Redis lost its data"
        assert log_lines(pair) - lines < 50, "recovery is a few steps, not one per epoch"
        assert pair.publisher.jobs() == pair.expected_jobs({before, after})
    finally:
        pair.close()


COMMIT_LOG = """
CREATE TABLE commits (n INTEGER PRIMARY KEY, before TEXT, after TEXT, epoch INTEGER, holder TEXT);
CREATE TRIGGER commit_logged AFTER UPDATE ON resume_tokens BEGIN
    INSERT INTO commits (before, after, epoch, holder) VALUES (old.token, new.token, new.epoch, new.holder);
END;
"""


def test_three_instances_through_redis_restarts_without_data_commit_each_batch_once(tmp_path: Path) -> None:
    port = free_port()
    pair = Pair(tmp_path, f"redis://127.0.0.1:{port}/0")
    pair.logs["c"] = tmp_path / "c.log"
    pair.publisher.sql.executescript(COMMIT_LOG)
    publisher = pair.publisher
    try:
        server = ExitStack()
        server.enter_context(redis_server(port, tmp_path))
        for name in ("a", "b", "c"):
            pair.start(name)
        wait_until(lambda: publisher.token() is not None, timeout=30, message="a leader to open its feed")

        def epoch() -> int:
            return int(publisher.sql.execute("SELECT epoch FROM resume_tokens").fetchone()[0])

        claimed = epoch()
        with Trickle(publisher) as trickle:
            for restart in range(4):  # Redis killed at the end of each, back without its data
                if restart:
                    server.enter_context(redis_server(port, tmp_path))
                    wait_until(
                        lambda: epoch() > claimed,  # noqa: B023
                        timeout=TTL + RENEW + 30,
                        message=f"a leader to claim the store under Redis number {restart + 1}",
                    )
                claimed = epoch()
                done = publisher.job_count()
                wait_until(
                    lambda: publisher.job_count() >= done + 20,  # noqa: B023
                    timeout=TTL + RENEW + 30,
                    message=f"progress under Redis number {restart + 1}",
                )
                server.close()
        with redis_server(port, tmp_path):
            wait_until(publisher.caught_up, timeout=60, message="the backlog")
        commits = publisher.sql.execute("SELECT before, after FROM commits ORDER BY n").fetchall()
        moves = [(int(before), int(after)) for before, after in commits if before != after]
        assert all(after > before for before, after in moves), f"the token went backwards: {moves}"
        ranges = sorted(moves)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges)), "a batch was committed twice"
        assert publisher.jobs() == pair.expected_jobs(trickle.events)
        assert publisher.job_count() == len(pair.expected_jobs(trickle.events))
        counted = publisher.sql.execute("SELECT count FROM event_type_counts WHERE type = ?", (SHIPPED,))
        assert counted.fetchone()[0] == len(trickle.events), "the projections equal a recount"
        activity = publisher.sql.execute("SELECT events, jobs FROM client_activity").fetchall()
        assert [tuple(row) for row in activity] == [(len(trickle.events), 2 * len(trickle.events))]
    finally:
        pair.close()
