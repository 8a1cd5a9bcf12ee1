"""The leader lock and fenced token writes, against the real Redis server."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from processor.leader import LeaderLock, Renewer, epoch_key
from processor.loop import Processor, Settings
from processor.models import PENDING, DispatchJob
from processor.runner import lead, process
from processor.stores.base import Fenced, ProcessedBatch
from processor.stores.mongo import RedisTokenStore
from processor.stores.sqlite import SqliteStore
from tests.processor.harness import Clock, Publisher, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:  # .ci/run starts it; say so if it is gone
        pytest.fail(f"the Redis server at {REDIS_URL} is not running: {error}")
    return client


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    client.delete(name, epoch_key(name), f"{name}:token")


def test_only_one_instance_acquires_and_each_acquisition_gets_a_larger_epoch(
    client: redis.Redis, key: str
) -> None:
    first = LeaderLock(client, key, "a", ttl=2.0, renew_interval=0.5)
    second = LeaderLock(client, key, "b", ttl=2.0, renew_interval=0.5)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert client.get(key).decode().startswith("a ")  # type: ignore[union-attr]
    first.release()
    assert client.get(key) is None, "a clean release deletes the lock"
    assert second.try_acquire()
    assert first.epoch is None and second.epoch is not None and second.epoch == 2


def test_renewal_extends_only_the_holders_lock(client: redis.Redis, key: str) -> None:
    lock = LeaderLock(client, key, "a", ttl=2.0, renew_interval=0.5)
    assert lock.try_acquire()
    assert lock.renew()
    assert 1500 < client.pttl(key) <= 2000
    client.set(key, "b someone-else", px=2000)  # the lock expired and another took it
    assert not lock.renew()
    assert not lock.held()
    lock.release()
    assert client.get(key) == b"b someone-else", "release never deletes another's lock"


def test_the_lease_ends_before_the_lock_can_expire(client: redis.Redis, key: str) -> None:
    clock = Clock()
    lock = LeaderLock(client, key, "a", ttl=10.0, renew_interval=3.0, clock=clock)
    assert lock.try_acquire()
    clock.now += 10.0 - lock.margin - 0.01
    assert lock.held()
    clock.now += 0.02
    assert not lock.held(), "past its deadline a leader stops, whatever Redis says"
    assert client.pttl(key) > 0


def test_a_deposed_leaders_token_write_is_refused(client: redis.Redis, key: str) -> None:
    token_key = f"{key}:token"
    old = RedisTokenStore(client, token_key, instance="a", epoch_key=epoch_key(key))
    new = RedisTokenStore(client, token_key, instance="b", epoch_key=epoch_key(key))
    first = LeaderLock(client, key, "a", ttl=2.0, renew_interval=0.5)
    assert first.try_acquire() and first.epoch is not None
    old.fence(first.epoch, first.holder)
    old.save(json.dumps({"seq": 1}))
    client.delete(key)  # a's lock expired while it was paused
    second = LeaderLock(client, key, "b", ttl=2.0, renew_interval=0.5)
    assert second.try_acquire() and second.epoch is not None
    new.fence(second.epoch, second.holder)
    with pytest.raises(Fenced):
        old.save(json.dumps({"seq": 99}))
    saved = json.loads(client.get(token_key))  # type: ignore[arg-type]
    assert saved["checkpoint"] == {"seq": 1} and saved["epoch"] == second.epoch and saved["instance"] == "b"
    new.save(json.dumps({"seq": 2}))
    assert new.load() == json.dumps({"seq": 2})


def test_a_deposed_leader_cannot_write_to_the_embedded_store(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    publisher = Publisher(db)
    old, new = SqliteStore(db, exclusive=False), SqliteStore(db, exclusive=False)
    old.fence(1, "old")
    old.open_feed(None)
    new.fence(2, "new")
    now = datetime.now(UTC)
    job = DispatchJob("j", "e", "s", "c", PENDING, "https://x.example", "p", now, 0, None, None, now)
    with pytest.raises(Fenced):
        old.commit(ProcessedBatch([job], [], "5"))
    assert publisher.job_count() == 0, "the refused batch wrote nothing"
    assert publisher.token() == "0"
    new.commit(ProcessedBatch([job], [], "5"))
    assert publisher.job_count() == 1 and publisher.token() == "5"


def test_a_leader_whose_processing_stalled_lets_its_lock_lapse(client: redis.Redis, key: str) -> None:
    lock = LeaderLock(client, key, "a", ttl=1.0, renew_interval=0.2)
    assert lock.try_acquire()
    stall: list[str] = []
    renewals: list[bool] = []
    renew = lock.renew

    def counted_renew() -> bool:
        renewals.append(renew())
        return renewals[-1]

    lock.renew = counted_renew  # type: ignore[method-assign]
    with Renewer(lock, lambda: stall[0] if stall else None):
        wait_until(lambda: len(renewals) >= 2 and all(renewals), message="renewals while processing moves on")
        stall.append("stalled for 61s processing, at event 7")
        wait_until(lambda: client.get(key) is None, message="the lock to expire, unrenewed")
    assert not lock.held()
    standby = LeaderLock(client, key, "b", ttl=1.0, renew_interval=0.2)
    assert standby.try_acquire(), "a standby takes over"


def test_an_equal_epoch_from_another_holder_is_refused_by_both_stores(
    tmp_path: Path, client: redis.Redis, key: str
) -> None:
    db = tmp_path / "store.db"
    Publisher(db)
    first, second = SqliteStore(db, exclusive=False), SqliteStore(db, exclusive=False)
    first.fence(7, "a 1")
    first.open_feed(None)
    with pytest.raises(Fenced) as refused:
        second.fence(7, "b 2")
    assert refused.value.epoch == 7
    first.fence(7, "a 1")  # the holder itself claims again
    tokens = {name: RedisTokenStore(client, f"{key}:token", instance=name) for name in ("a", "b")}
    tokens["a"].fence(7, "a 1")
    tokens["a"].save(json.dumps({"seq": 1}))
    with pytest.raises(Fenced) as refused:
        tokens["b"].fence(7, "b 2")
    assert refused.value.epoch == 7
    tokens["b"].fence(8, "b 3")
    with pytest.raises(Fenced):
        tokens["a"].save(json.dumps({"seq": 2}))


def test_a_leader_whose_store_holds_a_larger_epoch_raises_its_own_past_it_in_one_step(
    tmp_path: Path, client: redis.Redis, key: str
) -> None:
    db = tmp_path / "store.db"
    Publisher(db)
    old = SqliteStore(db, exclusive=False)  # leaders: kept apart by the lock and the epochs
    old.fence(100_000, "old 1")  # before Redis lost its data
    old.open_feed(None)
    lock = LeaderLock(client, key, "new", ttl=30.0, renew_interval=0.5)
    assert lock.try_acquire() and lock.epoch == 1, "the counter started again"
    store = SqliteStore(db, exclusive=False)
    with pytest.raises(Fenced) as refused:
        store.fence(lock.epoch, lock.holder)
    assert refused.value.epoch == 100_000
    assert lock.advance(100_000) and lock.epoch == 100_001
    assert int(client.get(epoch_key(key)) or 0) == 100_001, "the next acquisition goes on from there"
    store.fence(lock.epoch, lock.holder)
    with pytest.raises(Fenced):
        old.commit(ProcessedBatch([], [], "5"))
    other = LeaderLock(client, key, "other", ttl=30.0, renew_interval=0.5)
    assert not other.advance(5), "only the holder raises the epoch"


def leading_gauge(processor: Processor) -> float | None:
    return processor.metrics.registry.get_sample_value("fc_stream_leader")


def test_the_role_follows_the_lock_when_it_is_lost_and_when_it_is_released(
    tmp_path: Path, client: redis.Redis, key: str
) -> None:
    db = tmp_path / "store.db"
    Publisher(db)
    lock = LeaderLock(client, key, "a", ttl=30.0, renew_interval=0.5)
    processor = Processor(SqliteStore(db), Settings(max_wait=0.05))
    leading = threading.Thread(target=lead, args=(lock, processor))
    leading.start()
    try:
        wait_until(lambda: processor.health.report()["role"] == "leader", message="a to lead")
        assert leading_gauge(processor) == 1
        client.set(key, "b 0")  # another instance holds the lock now
        wait_until(
            lambda: processor.health.report()["role"] == "standby", message="a to see it lost the lock"
        )
        assert leading_gauge(processor) == 0
        client.delete(key)
        wait_until(lambda: processor.health.report()["role"] == "leader", message="a to lead again")
    finally:
        processor.stop()  # as SIGTERM does: the batch ends, the lock is released
        leading.join()
    assert processor.health.report()["role"] == "standby"
    assert leading_gauge(processor) == 0
    assert client.get(key) is None


def test_one_instance_alone_on_a_store_a_leader_claimed_exits_3_saying_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "store.db"
    Publisher(db)
    claimed = SqliteStore(db, exclusive=False)  # a leader's, under standby
    claimed.fence(4, "a 1")
    claimed.open_feed(None)
    processor = Processor(SqliteStore(db), Settings(max_wait=0.05))
    assert process(processor, None, None) == 3, "not 0: a restart policy would start it again and again"
    assert "FC_STANDBY_ENABLED=true" in caplog.text and "epoch 4" in caplog.text
