"""JSON values as the contract takes them from outside: finite numbers only."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, JsonValue


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a value holding one could not be stored as
    JSON text, nor read back. Walked without recursion: the value may be deep."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"holds {item!r}: NaN, Infinity and numbers too large for a double are not JSON")
        if isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            pending += item.values()
    return value


Json = Annotated[JsonValue, AfterValidator(finite)]
"""Any JSON value; ``JsonValue`` alone also takes NaN and infinity (Python's ``json`` reads them)."""
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(finite)]
