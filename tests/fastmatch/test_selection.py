"""Which implementation ``import fastmatch`` picks, checked in fresh interpreters.

``FASTMATCH_PURE_PYTHON`` is read once, when ``fastmatch`` is imported, so each
case runs a child process with its own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fastmatch
from fastmatch import _pytrie

REPORT = """
import json, sys
import fastmatch
from fastmatch import _pytrie
index = fastmatch.PatternIndex()
index.add("orders:*:*:*", "k")
print(json.dumps({
    "implementation": fastmatch.IMPLEMENTATION,
    "is_python": fastmatch.PatternIndex is _pytrie.PatternIndex,
    "class": fastmatch.PatternIndex.__module__ + "." + fastmatch.PatternIndex.__qualname__,
    "compiled_loaded": "fastmatch._ctrie" in sys.modules,
    "match": index.match("orders:fulfillment:shipment:shipped"),
}))
"""


def report(tmp_path: Path, pure_python: str | None) -> dict[str, Any]:
    """What a fresh interpreter's ``fastmatch`` says with ``FASTMATCH_PURE_PYTHON``
    set to ``pure_python``, or unset for ``None``."""
    env = {k: v for k, v in os.environ.items() if k != "FASTMATCH_PURE_PYTHON"}
    if pure_python is not None:
        env["FASTMATCH_PURE_PYTHON"] = pure_python
    # Run from an empty directory, so that nothing but the installed package is found.
    result = subprocess.run(
        [sys.executable, "-c", REPORT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["match"] == ["k"]
    return data


@pytest.mark.usefixtures("expect_compiled_build")
def test_compiled_is_the_default(tmp_path: Path) -> None:
    data = report(tmp_path, None)
    assert data["implementation"] == "cython"
    assert data["class"] == "fastmatch._ctrie.PatternIndex"
    assert data["is_python"] is False


@pytest.mark.usefixtures("expect_compiled_build")
def test_this_process_runs_the_compiled_matcher_unless_told_otherwise() -> None:
    if os.environ.get("FASTMATCH_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("this test run itself has FASTMATCH_PURE_PYTHON set")
    from fastmatch import _ctrie  # noqa: PLC0415

    assert fastmatch.IMPLEMENTATION == "cython"
    assert fastmatch.PatternIndex is _ctrie.PatternIndex  # type: ignore[comparison-overlap]


def test_implementation_names_the_class_in_use() -> None:
    if fastmatch.IMPLEMENTATION == "python":
        assert fastmatch.PatternIndex is _pytrie.PatternIndex
    else:
        assert fastmatch.IMPLEMENTATION == "cython"
        assert fastmatch.PatternIndex.__module__ == "fastmatch._ctrie"


def test_pure_python_forced(tmp_path: Path) -> None:
    data = report(tmp_path, "1")
    assert data["implementation"] == "python"
    assert data["is_python"] is True
    assert data["class"] == "fastmatch._pytrie.PatternIndex"
    # Forcing the Python matcher does not load the extension at all.
    assert data["compiled_loaded"] is False


@pytest.mark.usefixtures("expect_compiled_build")
@pytest.mark.parametrize("value", ["0", ""])
def test_pure_python_off(tmp_path: Path, value: str) -> None:
    data = report(tmp_path, value)
    assert data["implementation"] == "cython"
    assert data["class"] == "fastmatch._ctrie.PatternIndex"
    assert data["is_python"] is False
