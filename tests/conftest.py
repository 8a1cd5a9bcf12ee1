"""Fixtures that run tests against both matchers.

Like multidict and yarl, every behavioural test of fastmatch takes
``index_cls`` and so runs once against the compiled trie (``fastmatch._ctrie``)
and once against its pure-Python twin (``fastmatch._pytrie``); so do the
processor's tests of matching. A compiled module that cannot be imported is
a failure, not a skip: a broken build must not pass quietly as a green run of
the Python twin alone. Only when the build was deliberately made
without extensions (``FASTMATCH_NO_EXTENSIONS``, the switch CMakeLists.txt
reads) are the compiled runs skipped.
"""

from __future__ import annotations

import os
from typing import Any, cast

import pytest

from fastmatch import _pytrie

# Both classes have one interface; the Python twin is the one mypy knows it by.
IndexClass = type[_pytrie.PatternIndex[Any]]


def extensions_disabled() -> bool:
    """Whether the build was asked to skip the extension, as CMakeLists.txt decides it."""
    return os.environ.get("FASTMATCH_NO_EXTENSIONS", "") not in ("", "0")


NO_EXTENSIONS_REASON = "FASTMATCH_NO_EXTENSIONS is set: the compiled matcher was not built"


def load_compiled() -> IndexClass:
    """``fastmatch._ctrie.PatternIndex``; fails the calling test if it cannot be
    imported, unless extensions were disabled on purpose, then skips it."""
    try:
        from fastmatch import _ctrie  # noqa: PLC0415
    except ImportError as exc:
        if extensions_disabled():
            pytest.skip(NO_EXTENSIONS_REASON)
        pytest.fail(
            f"the compiled matcher fastmatch._ctrie cannot be imported: {exc}. Build it "
            "(pip install .), or set FASTMATCH_NO_EXTENSIONS=1 to test the Python twin only",
            pytrace=False,
        )
    return cast(IndexClass, _ctrie.PatternIndex)


@pytest.fixture(scope="session")
def compiled_cls() -> IndexClass:
    """The compiled ``PatternIndex``, for tests that compare the two directly."""
    return load_compiled()


@pytest.fixture(scope="session", params=["cython", "python"])
def index_cls(request: pytest.FixtureRequest) -> IndexClass:
    """Each implementation of ``PatternIndex`` in turn."""
    if request.param == "cython":
        return load_compiled()
    return _pytrie.PatternIndex


@pytest.fixture
def expect_compiled_build() -> None:
    """Skip a test that presumes a normal build, one with the extension."""
    if extensions_disabled():
        pytest.skip(NO_EXTENSIONS_REASON)
