"""``fc-dev``: the embedded store, the processor and the HTTP API in one process,
so that a developer can publish events and watch dispatch jobs appear with
nothing else to install or run.

Events posted to the API are inserted into the store and reach the processor
through its change feed, as in production; the processor runs in a thread of
its own and is stopped, after its current batch, when the server stops.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn

from processor import targets
from processor.api import MAX_PAGE_SIZE, NewEvent, create_app
from processor.config import (
    SHUTDOWN_GRACE_SECONDS,
    ConfigError,
    OneLineParser,
    TargetSettings,
    in_existing_directory,
    load_settings,
)
from processor.explain import explain_stored
from processor.health import Health, Watchdog
from processor.loop import Processor
from processor.metrics import Metrics
from processor.models import Subscription, SubscriptionFields
from processor.ops import listen
from processor.shutdown import abandon
from processor.stores.base import StoreMisconfigured, StoreUnavailable
from processor.stores.sqlite import Catalog, SqliteRepairs, SqliteStore, StoreClaimed

log = logging.getLogger("fc-dev")

DEMO_WAIT = 5.0  # seconds the demo waits for the processor, then for its jobs
DEMO_PATHS = (
    "/api/dispatch-jobs?client_id=demo-shop",
    "/api/subscriptions",
    "/api/stats",
    "/api/dead-letters",
    "/health",
    "/metrics",
)
DEMO_SUBSCRIPTIONS: list[dict[str, Any]] = [
    {
        "client_id": "demo-shop",
        "name": "shipped orders",
        "event_type_pattern": "orders:fulfillment:shipment:shipped",
    },
    {"client_id": "demo-shop", "name": "every order event", "event_type_pattern": "orders:*:*:*"},
    {
        "client_id": "demo-shop",
        "name": "charges of 100 or more",
        "event_type_pattern": "payments:*:charge:*",
        "filters": {"payload": [{"path": "$.amount", "op": "gte", "value": 100}]},
    },
    {"client_id": "demo-shop", "name": "paused audit", "event_type_pattern": "*:*:*:*", "active": False},
    {
        "client_id": "demo-warehouse",
        "name": "warehouse fulfillment",
        "event_type_pattern": "orders:fulfillment:*:*",
    },
]
DEMO_EVENTS: list[dict[str, Any]] = [
    {
        "type": "orders:checkout:order:placed",
        "client_id": "demo-shop",
        "data": {"order": "o-1", "amount": 42},
    },
    {
        "type": "payments:card:charge:captured",
        "client_id": "demo-shop",
        "data": {"order": "o-1", "amount": 250},
    },
    {
        "type": "payments:card:charge:captured",
        "client_id": "demo-shop",
        "data": {"order": "o-2", "amount": 20},
    },
    {"type": "orders:fulfillment:shipment:packed", "client_id": "demo-warehouse", "data": {"order": "o-1"}},
    # Last, and matched: once its jobs are there, the jobs of every event before it are too.
    {"type": "orders:fulfillment:shipment:shipped", "client_id": "demo-shop", "data": {"order": "o-1"}},
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="fc-dev",
        description="Run the embedded store, the stream processor and its HTTP API together.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=port, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--db", default="./fc-dev.db", help="SQLite database file (default: %(default)s)")
    parser.add_argument(
        "--demo", action="store_true", help="create example subscriptions, publish sample events, show them"
    )
    args = parser.parse_args(argv)
    try:
        in_existing_directory(args.db)
    except ValueError as error:
        parser.error(f"--db: {error}")
    return args


def port(text: str) -> int:
    number = int(text) if text.isdigit() else -1
    if not 0 < number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return number


def start(args: argparse.Namespace) -> tuple[SqliteStore, socket.socket]:
    """The store and the listening socket, or ``ConfigError`` in one line."""
    targets.configure(load_settings(TargetSettings).targets())
    try:
        store = SqliteStore(args.db, from_beginning=True)
    except StoreClaimed as error:
        raise ConfigError(f"--db: {error}: stop it, or give this one another --db") from None
    except (sqlite3.Error, StoreMisconfigured, StoreUnavailable) as error:
        raise ConfigError(f"--db: cannot open the store file {args.db!r}: {error}") from None
    try:
        return store, listen(args.host, args.port)
    except OSError as error:
        store.close()
        raise ConfigError(
            f"--host / --port: cannot listen on {args.host}:{args.port}: {error.strerror or error}"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        store, listener = start(args)
    except ConfigError as error:
        print(f"fc-dev: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    metrics, health = Metrics(), Health()
    processor = Processor(store, metrics=metrics, health=health)
    worker = threading.Thread(target=processor.run, name="processor", daemon=True)
    catalog = Catalog(args.db, wakeup=store.wakeup)
    repairs = SqliteRepairs(args.db)
    app = create_app(catalog, repairs, metrics, health, alive=worker.is_alive)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    base_url = f"http://{args.host}:{args.port}"

    def stop_processor(signum: int, frame: FrameType | None) -> None:
        processor.stop()

    # uvicorn holds SIGINT and SIGTERM while it serves and raises them again once it
    # has stopped; they then land here, and the processor finishes its batch.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_processor)
    worker.start()
    if args.demo:
        threading.Thread(
            target=run_demo, args=(catalog, repairs, health, server, base_url), name="demo", daemon=True
        ).start()
    # The socket listens already: a client that connects from here on is served.
    log.info(
        "serving %s (its page at %s/, API docs at %s/docs), store %s", base_url, base_url, base_url, args.db
    )
    try:
        with Watchdog(health):
            server.run(sockets=[listener])
    finally:
        log.info("stopping: the processor finishes its current batch")
        processor.stop()
        worker.join(SHUTDOWN_GRACE_SECONDS)
        if worker.is_alive():
            abandon(health, SHUTDOWN_GRACE_SECONDS)
        repairs.close()
        catalog.close()
        store.close()
        listener.close()


def run_demo(
    catalog: Catalog, repairs: SqliteRepairs, health: Health, server: uvicorn.Server, base_url: str
) -> None:
    """Subscriptions and events through the same calls as the API, then a guide."""
    # On a first start the processor begins at the current end of the feed: wait
    # until it is there, or it would skip the demo's events.
    if not wait(lambda: server.started and health.report()["change_stream"]["connected"], server, DEMO_WAIT):
        print(f"fc-dev demo: not ready after {DEMO_WAIT:.0f}s; see the log on stderr", flush=True)
        return
    names = demo_subscriptions(catalog)
    events = [NewEvent.model_validate(event) for event in DEMO_EVENTS]
    ids = catalog.insert_events([event.model_dump() for event in events])
    if not wait(lambda: catalog.dispatch_jobs(event_id=ids[-1], limit=1).items, server, DEMO_WAIT):
        print(f"fc-dev demo: no jobs after {DEMO_WAIT:.0f}s; see the log on stderr", flush=True)
        return
    lines = ["", "fc-dev demo: events published, and the dispatch jobs the processor made of them:"]
    for event_id, event in zip(ids, events, strict=True):
        jobs = catalog.dispatch_jobs(event_id=event_id, limit=MAX_PAGE_SIZE).items
        matched = ", ".join(repr(names.get(job["subscription_id"], job["subscription_id"])) for job in jobs)
        lines.append(f"  {event.type} ({event.client_id}) -> {matched or 'no subscription matched'}")
        # Why the subscriptions whose pattern takes the event did not: what explain tells.
        for verdict in explain_stored(repairs, event_id).verdicts:
            if not verdict.matches and verdict.field != "event_type_pattern":
                lines.append(f"      not {verdict.name!r}: {verdict.field}: {verdict.reason}")
    lines += [
        "",
        "Look around:",
        *(f"  curl -s '{base_url}{path}'" for path in DEMO_PATHS),
        "Ask why an event did or did not reach each subscription:",
        f"  curl -s -X POST '{base_url}/api/explain' -H 'content-type: application/json' \\",
        f"""    -d '{{"event_id": "{ids[2]}"}}'""",
        "Publish an event and see its jobs:",
        f"  curl -s -X POST '{base_url}/api/events' -H 'content-type: application/json' \\",
        """    -d '{"type": "orders:checkout:order:placed", "client_id": "demo-shop"}'""",
        f"See it all on one page: {base_url}/    API documentation: {base_url}/docs    Stop: Ctrl+C",
        "",
    ]
    print("\n".join(lines), flush=True)


def wait(condition: Callable[[], object], server: uvicorn.Server, timeout: float) -> bool:
    """Poll until ``condition()`` holds; False when the server stops or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if server.should_exit or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def demo_subscriptions(catalog: Catalog) -> dict[str, str]:
    """The demo's subscriptions, created unless an earlier demo on this store did;
    their names by id."""
    names = {}
    for document in DEMO_SUBSCRIPTIONS:
        fields = SubscriptionFields.model_validate(
            {"target": "https://example.com/hooks/demo", "pool_code": "demo", **document}
        )
        found = [
            s
            for s in catalog.subscriptions(fields.client_id)
            if isinstance(s, Subscription) and s.name == fields.name
        ]
        subscription = found[0] if found else catalog.create_subscription(fields)
        names[subscription.id] = subscription.name
    return names
