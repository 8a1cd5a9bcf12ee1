"""Prints rates and ratios of the benchmarks of this run at the end of the session."""

from __future__ import annotations

import pytest

from benchmarks.figures import FIGURES, MEASURES, VERDICTS, machine


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES and not MEASURES:
        return
    write = terminalreporter.write_line
    write("")
    write(f"Rates and ratios (best round of each), on {machine()}")
    for table in dict.fromkeys(f.table for f in FIGURES):
        rows = sorted((f for f in FIGURES if f.table == table), key=lambda f: f.group)
        write("")
        write(f"{table}:")
        write(f"  {'group':<28} {'contender':<12} {'rate':>16} {'vs reference':>14}")
        for figure in rows:
            reference = next(
                (f for f in rows if f.group == figure.group and f.contender == "reference"), None
            )
            found = figure.ratio(reference)
            ratio = "-" if found is None else f"{found:.3f}{'*' if figure.reference_rate else ' '}"
            write(f"  {figure.group:<28} {figure.contender:<12} {figure.rate:>12,.0f} op/s {ratio:>14}")
    if any(f.reference_rate for f in FIGURES):
        write("")
        write("* to the reference timed in turn with the contender's rounds, in the same test")
    for table in dict.fromkeys(m.table for m in MEASURES):
        write("")
        write(f"{table}:")
        for entry in (m for m in MEASURES if m.table == table):
            write(f"  {entry.name:<58} {entry.value:>12,.2f} {entry.unit}")
    for verdicts in VERDICTS:
        write("")
        for line in verdicts(FIGURES):
            write(line)
