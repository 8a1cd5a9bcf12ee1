"""The installed ``fc-stream-processor`` console script, as a child process:
its help, its refusal of bad configuration, and its conduct when MongoDB
cannot be reached."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from processor.config import Config, redact
from tests.processor.harness import EXECUTABLE, environment, refusal, wait_until


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
        # Issue 17: each of these ran on a throwaway database or ended in a traceback.
        ("FC_MONGO_URL", "sqlite://name.db"),
        ("FC_MONGO_URL", "sqlite:///no-such-directory-here/a.db"),
        ("FC_MONGO_URL", "sqlite:///"),
        ("FC_MONGO_URL", "mongodb://user:pa/ss@127.0.0.1/db"),
        ("FC_MONGO_URL", "mongodb://user:pa@ss@127.0.0.1/db"),
        ("FC_MONGO_URL", "mongodb+srv://user:pa@ss@cluster.example.com/db"),
        ("FC_MONGO_URL", "mongodb://127.0.0.1:99999"),
        ("FC_MONGO_URL", "mongodb://127.0.0.1/?retryWritse=true"),
        ("FC_TARGET_POLICY", "open"),
        ("FC_TARGET_NETWORKS", "10.0.0.0/33"),
        ("FC_METRICS_HOST", ""),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_it(variable: str, value: str) -> None:
    line = refusal([str(EXECUTABLE)], environment(**{variable: value}))
    assert variable in line
    assert "pa/ss" not in line and "pa@ss" not in line


def test_a_metrics_port_in_use_exits_2_saying_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refusal(
            [str(EXECUTABLE)],
            environment(
                FC_MONGO_URL=f"sqlite:///{tmp_path}/store.db",
                FC_METRICS_HOST="127.0.0.1",
                FC_METRICS_PORT=str(port),
            ),
        )
    assert "FC_METRICS_PORT" in line and "in use" in line, line


def test_secret_options_of_the_url_are_masked_in_the_log() -> None:
    url = "mongodb://u:pw1@h1,h2/?tlsCertificateKeyFilePassword=pw2&authMechanismProperties=AWS_SESSION_TOKEN:pw3&w=1"
    shown = redact(url)
    assert not any(secret in shown for secret in ("pw1", "pw2", "pw3")), shown
    assert shown.startswith("mongodb://u:***@h1,h2/") and shown.endswith("&w=1")


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
            FC_MONGO_URL="mongodb://user:s3cret@127.0.0.1:9/?serverSelectionTimeoutMS=200"
            "&authMechanismProperties=AWS_SESSION_TOKEN:s3cret",
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
