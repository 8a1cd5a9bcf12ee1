"""``fc-stream-processor``: the spec's binary, configured by its environment
variables; with a command (``explain``, ``redrive``, ``backfill``), the
operator's tools on the same store instead (``processor.commands``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from processor import remedies
from processor.commands import PROGRAM, Refused, explain, guarded, run_remedy
from processor.config import Config, ConfigError, OneLineParser, load
from processor.runner import Runner
from processor.stores.base import Repairs

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


COMMANDS_EPILOG = f"""\
The store is the one FC_MONGO_URL and FC_MONGO_DB name (every variable:
{PROGRAM} --help); a command runs beside a live processor, without
moving it.
"""
REMEDY_EPILOG = (
    COMMANDS_EPILOG
    + """
Jobs are matched against the subscriptions as they stand now, not as they stood
when the events were inserted; a job that exists already is skipped, so a run
again creates nothing twice. Progress goes to stderr, a page (500 items) at a
time; SIGINT or SIGTERM stops the run after its page, and its report ends with
the command that resumes it (--after).

exit codes: 0 done (or --limit reached), 1 refused (the line names the flag or
argument), 2 bad usage or configuration, 3 the store is unavailable or
misconfigured, 130 (SIGINT) or 143 (SIGTERM) stopped before the end
"""
)
EXPLAIN_EPILOG = (
    COMMANDS_EPILOG
    + """
exit codes: 0 explained, 1 no such event, or an invalid one, 2 bad usage or
configuration, 3 the store is unavailable
"""
)

Command = Callable[[Config, argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command: Command | None = args.run
    try:
        config = load()
        logging.basicConfig(
            level=config.level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        if command is not None:
            return guarded(lambda: command(config, args))
        runner = Runner(config)
    except ConfigError as error:
        print(f"{PROGRAM}: configuration error: {error}", file=sys.stderr)
        return 2
    return runner.run()


def parser() -> OneLineParser:
    top = OneLineParser(
        prog=PROGRAM,
        usage=f"{PROGRAM} [-h] [COMMAND ...]",
        description="Watch new events and create one dispatch job per matching subscription; "
        "with a command, act on the store instead.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.set_defaults(run=None)  # no command: run the processor
    commands = top.add_subparsers(
        title="commands", description="without one, it runs the processor", metavar="COMMAND", prog=PROGRAM
    )

    told = subcommand(
        commands,
        "explain",
        "tell, for every subscription of an event's client, whether the event matches it, and if "
        "not, which part refuses it and why",
        EXPLAIN_EPILOG,
    )
    event = told.add_mutually_exclusive_group(required=True)
    event.add_argument("--event-id", metavar="ID", help="a stored event")
    event.add_argument(
        "--event",
        metavar="JSON",
        help="an event as it would be inserted (not stored): JSON, - to read it from stdin, @FILE from FILE",
    )
    told.add_argument("--json", action="store_true", help="print the explanation as JSON")
    told.set_defaults(
        run=lambda config, a: explain(config, event_id=a.event_id, event=a.event, as_json=a.json)
    )

    redrive = subcommand(
        commands, "redrive", "make the jobs of dead letters or filter failures", REMEDY_EPILOG
    )
    what = redrive.add_subparsers(title="what", metavar="WHAT", required=True)
    letters = subcommand(
        what,
        "dead-letters",
        "process dead letters again: each whose stored event is valid now (mended) gets its jobs and "
        "goes; one still invalid is left, with why",
        REMEDY_EPILOG,
    )
    letters.add_argument("--reason", metavar="TEXT", help="only the dead letters whose reason contains TEXT")
    letters.add_argument("--event-id", metavar="ID", help="only the dead letter of this event")
    remedy_options(letters, letters)
    letters.set_defaults(run=redrive_dead_letters)
    failures = subcommand(
        what,
        "filter-failures",
        "judge filter failures again: a pair whose filter now gives an answer gets its job if it "
        "matches, and goes; one that still fails is left",
        REMEDY_EPILOG,
    )
    failures.add_argument("--subscription-id", metavar="ID", help="only this subscription's failures")
    failures.add_argument("--event-id", metavar="ID", help="only this event's failures")
    remedy_options(failures, failures)
    failures.set_defaults(run=retry_filter_failures)

    past = subcommand(
        commands,
        "backfill",
        "create one subscription's missing jobs for the stored events, as the subscription stands now",
        REMEDY_EPILOG,
    )
    past.add_argument("subscription_id", metavar="SUBSCRIPTION_ID", help="an active subscription")
    start = past.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        metavar="TIME",
        type=moment,
        help="from the first event inserted at TIME, in ISO 8601 (2024-05-01T12:00:00Z; without an "
        "offset, UTC); default: from the first event",
    )
    remedy_options(past, start)
    past.set_defaults(run=backfill)
    return top


def subcommand(
    within: argparse._SubParsersAction[OneLineParser], name: str, summary: str, epilog: str
) -> OneLineParser:
    return within.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def remedy_options(command: OneLineParser, start: OneLineParser | argparse._MutuallyExclusiveGroup) -> None:
    """--after (in ``start``: where --since excludes it), --limit and --json."""
    start.add_argument("--after", metavar="CURSOR", help="resume after CURSOR: the `next` a run reported")
    command.add_argument("--limit", metavar="N", type=positive, help="stop after reading N items")
    command.add_argument("--json", action="store_true", help="print the report as JSON")


def moment(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC, as the store's times are."""
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2024-05-01, 2024-05-01T12:00:00Z, 2024-05-01T14:00+02:00)"
        ) from None
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is, in UTC, out of the years 1 to 9999") from None


def positive(text: str) -> int:
    number = int(text) if text.isascii() and text.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return number


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The options ``names`` as they were given (by their dest), for the line that resumes a run."""
    values = [(name, getattr(args, name)) for name in names]
    return [
        part
        for name, value in values
        if value is not None
        for part in (flag(name), value.isoformat() if isinstance(value, datetime) else str(value))
    ]


def starting(args: argparse.Namespace, after: str | None, *names: str) -> list[str]:
    """Where a resumed run starts: after ``after``, or (None: the run read no
    page) where this one started, by the options ``names``."""
    return ["--after", after] if after is not None else given(args, *names)


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def redrive_dead_letters(config: Config, args: argparse.Namespace) -> int:
    return run_remedy(
        config,
        check=lambda repairs: repairs.dead_letters(args.after, 1),
        remedy=lambda repairs, limits: remedies.redrive_dead_letters(
            repairs, reason=args.reason, event_id=args.event_id, after=args.after, limits=limits
        ),
        limit=args.limit,
        resume=lambda after: [
            "redrive",
            "dead-letters",
            *given(args, "reason", "event_id", "limit"),
            *starting(args, after, "after"),
        ],
        as_json=args.json,
    )


def retry_filter_failures(config: Config, args: argparse.Namespace) -> int:
    return run_remedy(
        config,
        check=lambda repairs: repairs.filter_failures(args.after, 1),
        remedy=lambda repairs, limits: remedies.retry_filter_failures(
            repairs,
            subscription_id=args.subscription_id,
            event_id=args.event_id,
            after=args.after,
            limits=limits,
        ),
        limit=args.limit,
        resume=lambda after: [
            "redrive",
            "filter-failures",
            *given(args, "subscription_id", "event_id", "limit"),
            *starting(args, after, "after"),
        ],
        as_json=args.json,
    )


def backfill(config: Config, args: argparse.Namespace) -> int:
    def run(repairs: Repairs, limits: remedies.Limits) -> remedies.Report:
        try:
            return remedies.backfill(
                repairs, args.subscription_id, since=args.since, after=args.after, limits=limits
            )
        except (LookupError, remedies.NotBackfillable) as error:
            raise Refused(f"SUBSCRIPTION_ID: {error}") from None

    return run_remedy(
        config,
        check=lambda repairs: repairs.events(args.after, None, 1),
        remedy=run,
        limit=args.limit,
        # "--" before the id: one that starts with "-" is no option.
        resume=lambda after: [
            "backfill",
            *given(args, "limit"),
            *starting(args, after, "since", "after"),
            "--",
            args.subscription_id,
        ],
        as_json=args.json,
    )
