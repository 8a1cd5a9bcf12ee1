"""``fc-stream-processor`` as a child process on an embedded store, watched from outside.

CPU time and memory come from ``/proc/<pid>``, so they are the whole process's
(every thread), and nothing is installed for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def command() -> list[str]:
    """The console script of the installed package, or its entry point."""
    script = Path(sys.executable).with_name("fc-stream-processor")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from processor.cli import main; sys.exit(main())"]


class ProcessorChild:
    def __init__(self, db: Path, log: Path, batch_size: int = 100) -> None:
        self.db = db
        self.log = log
        self.environment = {
            **os.environ,
            "FC_MONGO_URL": f"sqlite://{db.resolve()}",
            "FC_STREAM_BATCH_SIZE": str(batch_size),
            "FC_METRICS_PORT": "0",  # no ops server: nothing to collide with
            "FC_LOG_LEVEL": "warn",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProcessorChild:
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                command(), env=self.environment, stdout=output, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the processor finishes its batch), then SIGKILL past ``timeout``."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait(self, condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process is not None and self.process.poll() is None, (
                f"fc-stream-processor exited ({self.process and self.process.returncode}) "
                f"while waiting for {message}:\n{self.output()}"
            )
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s waiting for {message}:\n{self.output()}"
            )
            time.sleep(0.01)

    def cpu_seconds(self) -> float:
        """User and system time of the whole process so far (utime + stime)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory_kb(self) -> dict[str, int]:
        """``VmRSS`` (now) and ``VmHWM`` (its peak so far), in kB."""
        found = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0])
        return found
