"""``fc-stream-processor``: the spec's binary, configured by its environment variables."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from processor.config import Config, ConfigError, load, redact
from processor.loop import Processor, Settings
from processor.sqlite_store import SqliteStore
from processor.store import Store

log = logging.getLogger("processor")

ENVIRONMENT = """\
environment:
  FC_MONGO_URL                MongoDB URL (default mongodb://localhost:27017); sqlite:///PATH runs on
                              the embedded store instead, with nothing installed
  FC_MONGO_DB                 MongoDB database name (default flowcatalyst)
  FC_METRICS_PORT             port of /metrics, /health, /live and /ready (default 9090; 0: none)
  FC_STREAM_BATCH_SIZE        most events per processing batch (default 100)
  FC_STREAM_RESUME_TOKEN_KEY  Redis key of the resume token (default stream-processor)
  FC_REDIS_URL                Redis URL for the resume token; unset: held in memory, lost on restart
  FC_LOG_LEVEL                trace, debug, info, warn, error (default: RUST_LOG's level, else info)
  RUST_LOG                    read when FC_LOG_LEVEL is unset, as existing manifests set it
  FC_STANDBY_ENABLED          true: run as one of several instances, only the leader processes
  FC_STANDBY_REDIS_URL        Redis URL of the leader lock
  FC_STANDBY_LOCK_KEY         key of the leader lock (default stream-processor-lock)
  FC_STANDBY_INSTANCE_ID      this instance's name in the lock (default hostname-pid)
  FC_STANDBY_LOCK_TTL_MS      the lock's time to live (default 10000)
  FC_STANDBY_RENEW_INTERVAL_MS  how often the leader renews it (default 3000)
"""


def open_store(config: Config) -> Store:
    if config.embedded_path is not None:
        return SqliteStore(config.embedded_path, resume_key=config.stream_resume_token_key)
    raise ConfigError(f"FC_MONGO_URL: {redact(config.mongo_url)} is not supported by this build")


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
        store = open_store(config)
    except ConfigError as error:
        print(f"fc-stream-processor: configuration error: {error}", file=sys.stderr)
        return 2
    processor = Processor(store, Settings(batch_size=config.stream_batch_size))

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: finishing the current batch", signal.Signals(signum).name)
        processor.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("store %s, batches of up to %d events", redact(config.mongo_url), config.stream_batch_size)
    try:
        processor.run()
    finally:
        store.close()
    return 0
