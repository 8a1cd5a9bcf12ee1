"""What a running ``fc-stream-processor`` is made of, wired together: the
store, the processor, the leader lock when standby is on, the ops server and
the watchdog; and the rules that end a run (a signal, the grace period, the
exit codes). ``cli`` reads the configuration, ``leader`` holds the lock,
``loop`` processes: this module is where they meet.

Exit codes: 0 stopped when asked, 1 an unexpected error (after the retry
policy's attempts: the orchestrator restarts the process and the operator sees
it), 3 the store is misconfigured (restarting will not help)."""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from types import FrameType
from typing import Any

import redis
from pymongo import MongoClient
from pymongo.database import Database

from processor import targets
from processor.config import Config, ConfigError, redact
from processor.health import Health, Watchdog
from processor.leader import LeaderLock, Renewer, epoch_key
from processor.loop import Processor, Settings, Stopped
from processor.metrics import Metrics
from processor.ops import OpsServer, listen, ops_app
from processor.shutdown import abandon
from processor.stores.base import Fenced, Store, StoreMisconfigured, StoreUnavailable
from processor.stores.mongo import (
    DriverEvents,
    MemoryTokenStore,
    MongoStore,
    RedisTokenStore,
    TokenStore,
    prepare,
)
from processor.stores.sqlite import SqliteStore, StoreClaimed

log = logging.getLogger("processor")


class Runner:
    """Built from the configuration (``ConfigError`` names what is wrong), then run once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        targets.configure(config.targets())  # before any subscription is read
        self.lock = leader_lock(config) if config.standby_enabled else None
        shared = config.standby_enabled and lock_url(config) == config.redis_url
        metrics = Metrics()
        self.store, self.prepare = open_store(
            config, metrics, epoch_key(config.standby_lock_key) if shared else None
        )
        settings = Settings(batch_size=config.stream_batch_size, batch_bytes=config.stream_batch_bytes)
        self.processor = Processor(self.store, settings, metrics, Health(config.thresholds()))
        self.listener: socket.socket | None = None
        if config.metrics_port:
            try:
                self.listener = listen(config.metrics_host, config.metrics_port)
            except OSError as error:
                self.store.close()
                raise ConfigError(
                    f"FC_METRICS_HOST / FC_METRICS_PORT: cannot listen on {config.metrics_host}:"
                    f"{config.metrics_port}: {error.strerror or error}"
                ) from None

    def run(self) -> int:
        """Process until SIGTERM or SIGINT; the process's exit code."""
        config, processor, lock = self.config, self.processor, self.lock
        wake = threading.Event()  # the worker ended, or a signal asked to stop

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("%s received: finishing the current batch", signal.Signals(signum).name)
            processor.stop()
            wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("store %s, batches of up to %d events", redact(config.mongo_url), config.stream_batch_size)
        outcome = [0]

        def work() -> None:
            try:
                outcome[0] = process(processor, lock, self.prepare)
            except BaseException:  # a bug: say so, and exit non-zero so that it is restarted and seen
                log.exception("processing stopped on an unexpected error")
                outcome[0] = 1
            finally:
                wake.set()

        # Processing runs in a thread of its own, so that this one can keep its
        # promise to stop within the grace period even when a batch never ends.
        worker = threading.Thread(target=work, name="processor")
        with ExitStack() as stack:
            stack.callback(self.store.close)
            worker.start()
            stack.enter_context(Watchdog(processor.health))
            if self.listener is not None:
                app = ops_app(processor.metrics, processor.health, alive=worker.is_alive)
                stack.enter_context(OpsServer(app, self.listener))
            while worker.is_alive() and not processor.stop_requested.is_set():
                wake.wait(1.0)
                wake.clear()
            worker.join(config.shutdown_grace_seconds)
            if worker.is_alive():
                release = lock.release if lock else lambda: None
                abandon(processor.health, config.shutdown_grace_seconds, release)
        return outcome[0]


def process(processor: Processor, lock: LeaderLock | None, prepare: Callable[[], object] | None) -> int:
    """The processor's work until it is asked to stop; the process's exit code."""
    try:
        if prepare is not None:
            processor.retry("create indexes", prepare)
        if lock is None:
            fenced = processor.run()
            if fenced is not None:  # alone, it cannot take over a store a leader claimed
                raise StoreMisconfigured(
                    f"{fenced}. The store was claimed under leader election: run with "
                    "FC_STANDBY_ENABLED=true, or remove the epoch from the store (the resume_tokens "
                    "row, or the stream_checkpoints document on MongoDB) to run one instance alone"
                )
        else:
            lead(lock, processor)
    except StoreMisconfigured as error:
        log.error("cannot start: %s", error)
        return 3
    except Stopped:
        pass
    return 0


def lead(lock: LeaderLock, processor: Processor) -> None:
    """Stand by until this instance holds the lock, process while it does, and go
    back to standing by when it is lost; release it when asked to stop. The
    role on ``/health`` and ``fc_stream_leader`` follow the lock itself: standby
    from the moment it is released, lost or past its lease."""
    processor.health.follow(lambda: "leader" if lock.held() else "standby")
    processor.metrics.leader.set_function(lambda: float(lock.held()))
    try:
        while not processor.stop_requested.is_set():
            if not lock.try_acquire():
                processor.stop_requested.wait(lock.renew_interval)
                continue
            fenced = _lead_once(lock, processor)
            while fenced is not None and fenced.epoch is not None and lock.advance(fenced.epoch):
                fenced = _lead_once(lock, processor)
            if not processor.stop_requested.is_set():
                log.warning("no longer the leader (lease ended, lock lost, or fenced): standing by")
                lock.release()
    finally:
        lock.release()


def _lead_once(lock: LeaderLock, processor: Processor) -> Fenced | None:
    assert lock.epoch is not None
    with Renewer(lock, processor.health.stall):
        return processor.run(lease=lock.held, epoch=lock.epoch, holder=lock.holder)


def lock_url(config: Config) -> str | None:
    return config.standby_redis_url or config.redis_url


def leader_lock(config: Config) -> LeaderLock:
    url = lock_url(config)
    if url is None:
        raise ConfigError("FC_STANDBY_REDIS_URL: required when FC_STANDBY_ENABLED is true")
    try:
        return LeaderLock(
            redis.Redis.from_url(url, socket_timeout=config.standby_renew_interval_ms / 1000),
            config.standby_lock_key,
            config.standby_instance_id,
            ttl=config.standby_lock_ttl_ms / 1000,
            renew_interval=config.standby_renew_interval_ms / 1000,
        )
    except ValueError as error:
        raise ConfigError(f"FC_STANDBY_RENEW_INTERVAL_MS: {error}") from None


def open_store(
    config: Config, metrics: Metrics, lock_epoch_key: str | None = None
) -> tuple[Store, Callable[[], object] | None]:
    """The store ``FC_MONGO_URL`` names (``sqlite:///PATH``: the embedded one), and
    what must run before processing starts. ``lock_epoch_key``: the leader lock's
    epoch counter, when it lives on the token mirror's Redis."""
    if config.embedded_path is not None:
        try:
            with opening_store_file(config.embedded_path):
                embedded = SqliteStore(
                    config.embedded_path,
                    resume_key=config.stream_resume_token_key,
                    max_event_bytes=config.stream_max_event_bytes,
                    exclusive=not config.standby_enabled,
                )
        except StoreClaimed as error:
            raise ConfigError(
                f"FC_MONGO_URL: {error}: stop it, or run both with FC_STANDBY_ENABLED=true so that one "
                "stands by (two would each count every event into the store's projections, whatever "
                "their resume keys)"
            ) from None
        return embedded, None
    driver = DriverEvents(resumed=metrics.driver_resumes.inc, elected=metrics.primary_changes.inc)
    database = mongo_database(config, [driver])
    tokens: TokenStore
    if config.redis_url is None:
        tokens = MemoryTokenStore()
    else:
        tokens = RedisTokenStore(
            # A mirror that hangs must not hold back the commits it follows.
            redis.Redis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0),
            config.stream_resume_token_key,
            instance=config.standby_instance_id,
            # With the lock on the same Redis, a token write is refused as soon as a newer
            # leader acquired the lock, not only once it saved a token of its own.
            epoch_key=lock_epoch_key,
        )
    store = MongoStore(
        database,
        tokens,
        max_event_bytes=config.stream_max_event_bytes,
        checkpoint_key=config.stream_resume_token_key,
        catch_up_skew=timedelta(seconds=config.mongo_catch_up_skew_seconds),
    )
    # Before the first batch: refuse a deployment the processor cannot serve, and
    # create the collections and indexes that are missing.
    return store, lambda: prepare(database)


@contextmanager
def opening_store_file(path: str) -> Iterator[None]:
    """What goes wrong opening the embedded store's file, as the ``ConfigError``
    naming FC_MONGO_URL; ``StoreClaimed`` passes, for its caller to say what to do."""
    try:
        yield
    except StoreClaimed:
        raise
    except (sqlite3.Error, StoreMisconfigured, StoreUnavailable) as error:
        raise ConfigError(f"FC_MONGO_URL: cannot open the store file {path!r}: {error}") from None


def mongo_database(config: Config, listeners: Sequence[DriverEvents] = ()) -> Database[dict[str, Any]]:
    """The database FC_MONGO_URL and FC_MONGO_DB name, on a client that connects at its first use."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        config.mongo_url, tz_aware=True, connect=False, event_listeners=list(listeners)
    )
    return client[config.mongo_db]
