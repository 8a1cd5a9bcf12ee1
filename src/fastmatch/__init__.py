"""fastmatch: match event types such as ``orders:fulfillment:shipment:shipped``
against patterns such as ``orders:*:*:*``, fast, however many patterns there are.

The compiled segment trie is used when it was built; ``FASTMATCH_PURE_PYTHON=1``
in the environment forces the pure-Python twin, which behaves identically.
``IMPLEMENTATION`` says which one this process runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastmatch._contract import (
    SEGMENT_NAMES,
    InvalidPattern,
    first_difference,
    validate_event_type,
    validate_pattern,
)

if TYPE_CHECKING:  # both implementations have this one interface
    from fastmatch._pytrie import PatternIndex

    IMPLEMENTATION: str
elif os.environ.get("FASTMATCH_PURE_PYTHON", "") not in ("", "0"):
    from fastmatch._pytrie import PatternIndex

    IMPLEMENTATION = "python"
else:
    try:
        from fastmatch._ctrie import PatternIndex
    except ImportError:  # installed with FASTMATCH_NO_EXTENSIONS=1
        from fastmatch._pytrie import PatternIndex

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "IMPLEMENTATION",
    "SEGMENT_NAMES",
    "InvalidPattern",
    "PatternIndex",
    "first_difference",
    "validate_event_type",
    "validate_pattern",
]
