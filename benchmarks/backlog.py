"""The embedded store over a long backlog: does throughput hold as the tables grow?

Run from the repository's root (about 3 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.backlog [--events 200000] [--lap 20000] [--rounds 2]

A script, not a test: the figures are printed, nothing is asserted. Workload
(``benchmarks/workload.py``): 1,000 subscriptions over 50 clients, two matches
per event; one store file of ``--events`` waiting events, copied fresh for each
pass; batches of 100. Three contenders, in turn, ``--rounds`` times each:

- the store's limit with today's keys (jobs unique by their event's ``seq``):
  plain ``sqlite3`` reads the events a batch at a time and inserts the job rows
  worked out beforehand, one transaction per batch (``workload.LimitRound``);
- the same limit on the old schema (jobs unique by ``event_id``, random hex),
  for the record (``workload.legacy_copy``);
- the processor's loop (``workload.LoopRound``: ``Processor.process`` fed by
  ``SqliteStore.open_feed``, compiled matcher, in this process).

Each pass reports its rate over the whole backlog, over its first ``--lap``
events and over its last; the best pass of each contender is shown. Targets
(issue 16): today's limit at least 2x the old one, the loop at least 0.6 of
today's limit, the loop's last lap at least 0.85 of its first.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.figures import machine
from benchmarks.workload import LimitRound, LoopRound, build, fresh_copy, job_rows, legacy_copy, legacy_rows

BATCH_SIZE = 100
EVENTS = 200_000
LAP = 20_000
ROUNDS = 2


@dataclass(frozen=True)
class Pass:
    events: int
    seconds: float
    first: float  # events per second over the first lap
    last: float  # ... over the last

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def timed(run: Callable[[list[float]], None], events: int, lap: int) -> Pass:
    """One pass; ``run`` appends the clock's time after each batch of ``BATCH_SIZE``."""
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    laps: list[float] = []
    run(laps)
    gc.enable()
    per_lap = lap // BATCH_SIZE
    times = [started, *laps]
    assert len(laps) * BATCH_SIZE == events, (len(laps), events)
    first = lap / (times[per_lap] - times[0])
    last = lap / (times[-1] - times[-1 - per_lap])
    return Pass(events, times[-1] - started, first, last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backlog", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--lap", type=int, default=LAP, help="events of the first and last laps")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="passes of each contender")
    options = parser.parse_args(argv)
    total = options.events + BATCH_SIZE  # the first batch, as in the loop benchmark, is not timed
    print(
        f"the embedded store over a backlog of {options.events:,} events, "
        f"batches of {BATCH_SIZE}, on {machine()}"
    )
    with tempfile.TemporaryDirectory(prefix="backlog-") as name:
        workdir = Path(name)
        template = workdir / "template.db"
        build(template, total)
        batches = job_rows(template, BATCH_SIZE)
        old_batches = legacy_rows(batches)
        best: dict[str, Pass] = {}

        def keep(name: str, found: Pass) -> None:
            print(
                f"  {name:<28} {found.rate:>9,.0f} ev/s  first {options.lap:,}: {found.first:>9,.0f}"
                f"  last {options.lap:,}: {found.last:>9,.0f}  ({found.last / found.first:.2f})",
                flush=True,
            )
            if name not in best or found.rate > best[name].rate:
                best[name] = found

        for _ in range(options.rounds):
            limit = LimitRound(fresh_copy(template, workdir / "limit.db"), batches, BATCH_SIZE)
            keep("limit, today's keys", timed(limit.run, options.events, options.lap))
            limit.close()
            old = LimitRound(legacy_copy(template, workdir / "old.db"), old_batches, BATCH_SIZE, legacy=True)
            keep("limit, the old schema", timed(old.run, options.events, options.lap))
            old.close()
            loop = LoopRound(fresh_copy(template, workdir / "loop.db"), BATCH_SIZE)
            keep("loop", timed(loop.run, options.events, options.lap))
            assert loop.jobs() == total * 2, "the loop did not write every job"
            loop.close()
    today, legacy, loop_ = best["limit, today's keys"], best["limit, the old schema"], best["loop"]
    print("\nbest passes:")
    print(f"  today's limit / the old schema's   {today.rate / legacy.rate:6.2f}  (target at least 2)")
    print(f"  loop / today's limit               {loop_.rate / today.rate:6.2f}  (target at least 0.6)")
    print(f"  loop, last lap / first lap         {loop_.last / loop_.first:6.2f}  (target at least 0.85)")
    print(f"  today's limit, last lap / first    {today.last / today.first:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
