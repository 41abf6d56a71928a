"""Numbers from the wire, parsed strictly: ASCII decimal only, bounded, errors naming the field.

`int()` and `float()` accept far more than a client should send: Unicode digits ('²' passes
`str.isdigit()` and then breaks `int()`; '٣' parses as 3), underscores, surrounding whitespace,
'nan' and 'inf', and strings of thousands of digits. Every integer or float taken from a header,
a query string, a JSON field or a gRPC parameter goes through here, so a bad value is an
InvalidInput (400 / INVALID_ARGUMENT) that says which field and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edgeinfer.errors import InvalidInput

_INT = re.compile(r"-?[0-9]{1,19}", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
_MAX_TEXT = 64  # no valid number in our range needs more characters

INT64_MAX = 2**63 - 1


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _range(lo: float, hi: float) -> str:
    if math.isinf(lo) and math.isinf(hi):
        return "finite"
    return f"between {lo} and {hi}"


def _integer(lo: int, hi: int) -> str:
    if hi < INT64_MAX:
        return f"an integer between {lo} and {hi}"
    return {0: "a non-negative integer", 1: "a positive integer"}.get(
        lo, f"an integer of at least {lo}"
    )


def parse_int(value: Any, field: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """`value` (an int, or a string / bytes of ASCII decimal digits) as an int in [lo, hi].
    Booleans, floats and everything else are refused."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        plain = len(value) <= 19 and value.isascii() and value.isdigit()  # the common case
        if not plain and (len(value) > _MAX_TEXT or not _INT.fullmatch(value)):
            raise InvalidInput(
                f"{field} must be {_integer(lo, hi)} in ASCII digits, got {_show(value)}"
            )
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be {_integer(lo, hi)}, got {_show(value)}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{field} must be {_integer(lo, hi)}, got {value}")
    return value


def parse_float(value: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """`value` (an int, a float, or a string in ASCII decimal / exponent notation) as a finite
    float in [lo, hi]. NaN, infinities, booleans and Unicode digits are refused."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        if len(value) > _MAX_TEXT or not _FLOAT.fullmatch(value):
            raise InvalidInput(
                f"{field} must be a number ({_range(lo, hi)}) in ASCII decimal "
                f"notation, got {_show(value)}"
            )
        value = float(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number ({_range(lo, hi)}), got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidInput(f"{field} must be a number ({_range(lo, hi)}), got {_show(value)}")
    return number


def optional_int(
    doc: Any, key: str, field: str | None = None, lo: int = 0, hi: int = INT64_MAX
) -> int | None:
    """`doc[key]` through parse_int, or None when absent, null or an empty string."""
    value = doc.get(key)
    if value is None or value == "":
        return None
    return parse_int(value, field or f"'{key}'", lo, hi)
