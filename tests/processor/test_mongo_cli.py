"""The installed ``fc-stream-processor`` console script, as a child process:
its help, its refusal of bad configuration, and its conduct when MongoDB
cannot be reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from processor.config import Config
from tests.processor.harness import wait_until

EXECUTABLE = Path(sys.executable).parent / "fc-stream-processor"


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any FC_ variable or RUST_LOG, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FC_") and k != "RUST_LOG"}
    return {**clean, **variables}


def run(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXECUTABLE), *args],
        env=environment(**variables),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_lists_every_variable() -> None:
    done = run("--help")
    assert done.returncode == 0, done.stderr
    variables = [f"FC_{name.upper()}" for name in Config.model_fields]
    assert len(variables) >= 10
    for variable in [*variables, "RUST_LOG"]:
        assert variable in done.stdout, f"{variable} is not in --help"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FC_STREAM_BATCH_SIZE", "0"),
        ("FC_METRICS_PORT", "99999"),
        ("FC_MONGO_URL", "http://x"),
        ("FC_REDIS_URL", "nope"),
        ("FC_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_it(variable: str, value: str) -> None:
    done = run(**{variable: value})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert "Traceback" not in done.stderr


class Output:
    """Collects a child's stderr as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        assert process.stderr is not None
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._lock:
                self.text += line

    def snapshot(self) -> str:
        with self._lock:
            return self.text

    def finish(self) -> str:
        self._thread.join(timeout=10)
        return self.snapshot()


def test_an_unreachable_mongodb_is_retried_without_showing_the_password_and_sigterm_stops_it() -> None:
    process = subprocess.Popen(
        [str(EXECUTABLE)],
        env=environment(
            FC_MONGO_URL="mongodb://user:s3cret@127.0.0.1:9/?serverSelectionTimeoutMS=200",
            FC_METRICS_PORT="0",
            FC_LOG_LEVEL="info",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    try:
        wait_until(
            lambda: process.poll() is not None or output.snapshot().count("retrying") >= 2,
            timeout=60,
            message="two retries",
        )
        assert process.poll() is None, f"it gave up:\n{output.snapshot()}"
        running = output.snapshot()
        assert running.count("retrying") >= 2, f"no retries seen:\n{running}"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = output.finish()
    assert code == 0, stderr
    assert "s3cret" not in stderr
    assert "***" in stderr
    assert "Traceback" not in stderr
