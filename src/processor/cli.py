"""``fc-stream-processor``: the spec's binary, configured by its environment variables."""

from __future__ import annotations

import argparse
import logging
import sys

from processor.config import ConfigError, load
from processor.runner import Runner

ENVIRONMENT = """\
environment:
  FC_MONGO_URL                MongoDB URL (default mongodb://localhost:27017); sqlite:///PATH runs on
                              the embedded store instead, with nothing installed
  FC_MONGO_DB                 MongoDB database name (default flowcatalyst)
  FC_METRICS_HOST             address of /metrics, /health, /live and /ready (default 0.0.0.0, every
                              interface, as containers need; 127.0.0.1 keeps them on the machine)
  FC_METRICS_PORT             port of /metrics, /health, /live and /ready (default 9090; 0: none)
  FC_STREAM_BATCH_SIZE        most events per processing batch (default 100)
  FC_STREAM_BATCH_BYTES       most bytes of events per batch, but always one event (default 8 MiB)
  FC_STREAM_MAX_EVENT_BYTES   larger events are dead-lettered unread (default 16 MiB, MongoDB's limit)
  FC_STREAM_RESUME_TOKEN_KEY  Redis key of the resume token (default stream-processor)
  FC_MONGO_CATCH_UP_SKEW_SECONDS
                              after lost history, how far producers' ObjectId clocks may be off
                              (default 120): the catch-up reads this much either side
  FC_REDIS_URL                Redis URL for the resume token's mirror; unset: in memory (the store's
                              own checkpoint is the position)
  FC_TARGET_POLICY            which webhook targets subscriptions may have: internal (default: any host
                              but link-local and cloud metadata addresses) or public (dotted names and
                              public addresses only)
  FC_TARGET_NETWORKS          networks allowed whatever the policy, in CIDR form, comma-separated
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
        runner = Runner(config)
    except ConfigError as error:
        print(f"fc-stream-processor: configuration error: {error}", file=sys.stderr)
        return 2
    return runner.run()
