"""Strict parsing of numbers from headers, query strings, JSON fields and gRPC parameters."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeinfer.errors import InvalidInput
from edgeinfer.server.parse import optional_int, parse_float, parse_int
from tests.unit.fuzz.budget import fuzz

# Characters str.isdigit() or int()/float() take as digits that no client should send.
UNICODE_DIGITS = ["²", "٣", "\uff11\uff12", "१", "1_000", " 7", "7\n", "⁵", "\U0001d7e0"]


@pytest.mark.parametrize("text", ["0", "7", "0042", "9223372036854775807"])
def test_ascii_decimal_integers_parse(text: str) -> None:
    assert parse_int(text, "x") == int(text)
    assert parse_int(text.encode(), "x") == int(text)


@pytest.mark.parametrize("text", [*UNICODE_DIGITS, "", "abc", "1.5", "+3", "0x10", "1e3"])
def test_anything_else_is_invalid_input_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        parse_int(text, "Inference-Header-Content-Length")


def test_bounds_are_enforced_and_named() -> None:
    assert parse_int("5", "batch", 1, 8) == 5
    with pytest.raises(InvalidInput, match=r"batch must be an integer between 1 and 8, got 9"):
        parse_int("9", "batch", 1, 8)
    with pytest.raises(InvalidInput, match="runs must be a positive integer, got 0"):
        parse_int(0, "runs", 1)
    with pytest.raises(InvalidInput, match="v must be a non-negative integer, got -1"):
        parse_int("-1", "v")


def test_a_huge_digit_string_is_refused_before_int_runs() -> None:
    # int() of 5000 digits raises ValueError (a 500 before); 10**6 digits would also be slow.
    with pytest.raises(InvalidInput, match="ASCII digits"):
        parse_int("9" * 1_000_000, "Content-Length")
    with pytest.raises(InvalidInput):
        parse_int(10**30, "version")


@pytest.mark.parametrize("value", [True, 1.0, None, [1], {"a": 1}])
def test_non_integers_from_json_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="'version' must be a non-negative integer"):
        parse_int(value, "'version'")


@pytest.mark.parametrize("text, want", [("0.5", 0.5), ("1", 1.0), ("1e-3", 1e-3), (".5", 0.5),
                                        ("-2.5E+1", -25.0)])  # fmt: skip
def test_decimal_floats_parse(text: str, want: float) -> None:
    assert parse_float(text, "w") == want


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-Infinity", "٣", "1_0", "", " 1",
                                   math.nan, math.inf, True, "1e99999", 10**400])  # fmt: skip
def test_non_finite_or_non_ascii_floats_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"edgeinfer\.weight must be a number"):
        parse_float(value, "edgeinfer.weight", 0.0, 1.0)


def test_float_bounds() -> None:
    assert parse_float(1, "weight", 0.0, 1.0) == 1.0
    with pytest.raises(InvalidInput, match=r"between 0.0 and 1.0"):
        parse_float(1.5, "weight", 0.0, 1.0)


def test_optional_int_treats_absent_null_and_empty_as_none() -> None:
    assert optional_int({}, "version") is None
    assert optional_int({"version": None}, "version") is None
    assert optional_int({"version": ""}, "version") is None
    assert optional_int({"version": "3"}, "version") == 3
    with pytest.raises(InvalidInput, match="'version'"):
        optional_int({"version": "²"}, "version")


@fuzz(300)
@given(st.one_of(st.text(max_size=30), st.binary(max_size=30), st.integers(), st.floats(),
                 st.booleans(), st.none()))  # fmt: skip
def test_any_value_parses_within_bounds_or_is_invalid_input(value: object) -> None:
    for parse, lo, hi in ((parse_int, 1, 1000), (parse_float, 0.0, 1.0)):
        try:
            out = parse(value, "f", lo, hi)  # type: ignore[operator]
        except InvalidInput as e:
            assert "f must be" in str(e)
        else:
            assert lo <= out <= hi and math.isfinite(out)
