"""``fc-stream-processor``: the spec's binary, configured by its environment variables."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import Any

import redis
from pymongo import MongoClient

from processor.config import Config, ConfigError, load, redact
from processor.health import Health, Watchdog
from processor.indexes import ensure_indexes
from processor.leader import LeaderLock, epoch_key, lead
from processor.loop import Processor, Settings, Stopped
from processor.metrics import Metrics
from processor.mongo_store import MongoStore
from processor.ops import OpsServer, ops_app
from processor.resume import MemoryTokenStore, RedisTokenStore, TokenStore
from processor.shutdown import abandon
from processor.sqlite_store import SqliteStore
from processor.store import Store, StoreMisconfigured

log = logging.getLogger("processor")

ENVIRONMENT = """\
environment:
  FC_MONGO_URL                MongoDB URL (default mongodb://localhost:27017); sqlite:///PATH runs on
                              the embedded store instead, with nothing installed
  FC_MONGO_DB                 MongoDB database name (default flowcatalyst)
  FC_METRICS_PORT             port of /metrics, /health, /live and /ready (default 9090; 0: none)
  FC_STREAM_BATCH_SIZE        most events per processing batch (default 100)
  FC_STREAM_BATCH_BYTES       most bytes of events per batch, but always one event (default 8 MiB)
  FC_STREAM_MAX_EVENT_BYTES   larger events are dead-lettered unread (default 16 MiB, MongoDB's limit)
  FC_STREAM_RESUME_TOKEN_KEY  Redis key of the resume token (default stream-processor)
  FC_REDIS_URL                Redis URL for the resume token's mirror; unset: in memory (the store's
                              own checkpoint is the position)
  FC_LOG_LEVEL                trace, debug, info, warn, error (default: RUST_LOG's level, else info)
  RUST_LOG                    read when FC_LOG_LEVEL is unset, as existing manifests set it
  FC_STANDBY_ENABLED          true: run as one of several instances, only the leader processes
  FC_STANDBY_REDIS_URL        Redis URL of the leader lock
  FC_STANDBY_LOCK_KEY         key of the leader lock (default stream-processor-lock)
  FC_STANDBY_INSTANCE_ID      this instance's name in the lock (default hostname-pid)
  FC_STANDBY_LOCK_TTL_MS      the lock's time to live (default 10000)
  FC_STANDBY_RENEW_INTERVAL_MS  how often the leader renews it (default 3000)
  FC_HEALTH_DISCONNECTED_GRACE_SECONDS  /health says DOWN once the store failed this long (default 30)
  FC_HEALTH_MAX_LAG_SECONDS   /health says DOWN above this lag (default 60)
  FC_HEALTH_MAX_ERROR_RATE    /health says DOWN when more store operations than this share failed
                              over the last FC_HEALTH_WINDOW_SECONDS (default 0.5 over 60)
  FC_HEALTH_STALL_SECONDS     /health and /live say DOWN once one step of processing (a read, a batch,
                              a commit) has lasted this long (default 60)
  FC_SHUTDOWN_GRACE_SECONDS   after SIGTERM, how long the current batch may take before the process
                              exits without it (default 20); its events are processed at the next start
"""


def open_store(config: Config, metrics: Metrics) -> tuple[Store, Callable[[], object] | None]:
    """The store ``FC_MONGO_URL`` names, and what must run before processing starts."""
    if config.embedded_path is not None:
        embedded = SqliteStore(
            config.embedded_path,
            resume_key=config.stream_resume_token_key,
            max_event_bytes=config.stream_max_event_bytes,
        )
        return embedded, None
    client: MongoClient[dict[str, Any]] = MongoClient(config.mongo_url, tz_aware=True, connect=False)
    database = client[config.mongo_db]
    tokens: TokenStore
    if config.redis_url is None:
        tokens = MemoryTokenStore()
    else:
        # With the lock on the same Redis, a token write is refused as soon as a newer
        # leader acquired the lock, not only once it saved a token of its own.
        shared = config.standby_enabled and lock_url(config) == config.redis_url
        tokens = RedisTokenStore(
            # A mirror that hangs must not hold back the commits it follows.
            redis.Redis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0),
            config.stream_resume_token_key,
            instance=config.standby_instance_id,
            epoch_key=epoch_key(config.standby_lock_key) if shared else None,
        )
    store = MongoStore(
        database,
        tokens,
        metrics,
        max_event_bytes=config.stream_max_event_bytes,
        checkpoint_key=config.stream_resume_token_key,
    )
    return store, lambda: ensure_indexes(database)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fc-stream-processor",
        description="Watch new events and create one dispatch job per matching subscription.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        config = load()
        logging.basicConfig(
            level=config.level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        metrics = Metrics()
        lock = leader_lock(config) if config.standby_enabled else None
        store, prepare = open_store(config, metrics)
    except ConfigError as error:
        print(f"fc-stream-processor: configuration error: {error}", file=sys.stderr)
        return 2
    settings = Settings(batch_size=config.stream_batch_size, batch_bytes=config.stream_batch_bytes)
    processor = Processor(store, settings, metrics, Health(config.thresholds()))
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
            outcome[0] = process(processor, lock, prepare)
        except BaseException:  # a bug: say so, and exit non-zero so that it is restarted and seen
            log.exception("processing stopped on an unexpected error")
            outcome[0] = 1
        finally:
            wake.set()

    # Processing runs in a thread of its own, so that this one can keep its
    # promise to stop within the grace period even when a batch never ends.
    worker = threading.Thread(target=work, name="processor")
    with ExitStack() as stack:
        stack.callback(store.close)
        worker.start()
        stack.enter_context(Watchdog(processor.health))
        if config.metrics_port:
            app = ops_app(metrics, processor.health, alive=worker.is_alive)
            stack.enter_context(OpsServer(app, "0.0.0.0", config.metrics_port))
        while worker.is_alive() and not processor.stop_requested.is_set():
            wake.wait(1.0)
            wake.clear()
        worker.join(config.shutdown_grace_seconds)
        if worker.is_alive():
            abandon(processor.health, config.shutdown_grace_seconds, lock.release if lock else lambda: None)
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
