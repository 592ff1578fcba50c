"""The conversion rules of a column retype: pure, total and deterministic.

A ``retype_column`` change (:class:`oplog.schema.RetypeColumn`) converts every stored
value of the column here, in Python, and never with an engine's ``CAST``: every peer of
every backend then writes the same canonical value (:func:`oplog.schema.normalize_value`'s
form), whatever the engine would have made of it. A value arrives in the form a backend
reads it back in (the canonical form of its old type: ``int`` for integer and boolean,
``str`` for decimal, text, json and timestamp, ``float``, ``bytes``).

The rules, as (old type, new type) pairs; a pair not listed has no rule, and a change
asking for it is refused:

==========  ==========  =====================================================  =========
from        to          rule                                                   can fail
==========  ==========  =====================================================  =========
integer     decimal     the same number                                        no
integer     float       the same number, if a double holds it exactly          yes
integer     text        base 10, ``-`` for negatives                           no
decimal     integer     the same number, if whole and within 64 bits           yes
decimal     text        its canonical text (``"1.5"``)                         no
float       text        the shortest text that reads back as the same double   no
boolean     integer     0 or 1                                                 no
boolean     text        ``"true"`` or ``"false"``                              no
json        text        its canonical JSON text                                no
timestamp   text        its canonical text (``2026-01-01T00:00:00.000Z``)      no
text        integer     ASCII digits with an optional sign, within 64 bits     yes
text        decimal     ASCII decimal notation (``-1.25``, ``3e2``) within     yes
                        the decimal limits (65 digits, 30 after the point)
text        json        a JSON document, re-rendered canonically               yes
text        timestamp   ISO-8601 with a time zone                              yes
==========  ==========  =====================================================  =========

A value that a rule does not take raises :class:`NotConvertible`; what then happens is the
change's ``on_failure`` (refuse the whole message, or store NULL), decided by
:mod:`materializer.schema_change`. NULL converts to NULL under every rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from oplog.errors import SchemaError
from oplog.schema import MAX_INTEGER, Column, ColumnType, normalize_value

MAX_SHOWN_CHARS = 60  # of a value quoted in a refusal

# ASCII only: Python's int() and Decimal() also take other scripts' digits and "1_000",
# which a reader of the rule would not expect to convert.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_MAX_INTEGER_DIGITS = 19  # longer text cannot be within 64 bits (read no further: "9" * 10**6)


class NotConvertible(SchemaError):
    """A stored value that the conversion rule of a retype does not take."""


def _integer_to_float(value: int) -> float:
    number = float(value)
    if int(number) != value:
        raise NotConvertible(f"{value} has no exact double")
    return number


def _decimal_to_integer(value: str) -> int:
    number = Decimal(value)
    if number != number.to_integral_value():
        raise NotConvertible(f"{value} is not a whole number")
    return _in_range(int(number), value)


def _text_to_integer(value: str) -> int:
    digits = value.lstrip("+-").lstrip("0")
    if not _INTEGER_TEXT.fullmatch(value) or len(digits) > _MAX_INTEGER_DIGITS:
        raise NotConvertible(f"{_shown(value)} is not an integer of at most {_MAX_INTEGER_DIGITS} digits")
    return _in_range(int(value), value)


def _in_range(number: int, value: str) -> int:
    """``number`` (read from ``value``) if an integer column can hold it."""
    if abs(number) > MAX_INTEGER:
        raise NotConvertible(f"{value} is outside the signed 64-bit range")
    return number


def _text_to_decimal(value: str) -> str:
    if not _DECIMAL_TEXT.fullmatch(value):
        raise NotConvertible(f"{_shown(value)} is not a decimal number")
    return value  # normalize_value then checks the limits and renders it


def _text_to_json(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise NotConvertible(f"{_shown(value)} is not a JSON document") from None


RULES: dict[tuple[ColumnType, ColumnType], Callable[[Any], Any]] = {
    (ColumnType.INTEGER, ColumnType.DECIMAL): int,
    (ColumnType.INTEGER, ColumnType.FLOAT): _integer_to_float,
    (ColumnType.INTEGER, ColumnType.TEXT): str,
    (ColumnType.DECIMAL, ColumnType.INTEGER): _decimal_to_integer,
    (ColumnType.DECIMAL, ColumnType.TEXT): str,
    # Python's shortest round-trip form ("0.1", "1e+16"); float() first, should an engine
    # hand a whole double back as an integer.
    (ColumnType.FLOAT, ColumnType.TEXT): lambda value: repr(float(value)),
    (ColumnType.BOOLEAN, ColumnType.INTEGER): int,
    (ColumnType.BOOLEAN, ColumnType.TEXT): lambda value: "true" if value else "false",
    (ColumnType.JSON, ColumnType.TEXT): str,
    (ColumnType.TIMESTAMP, ColumnType.TEXT): str,
    (ColumnType.TEXT, ColumnType.INTEGER): _text_to_integer,
    (ColumnType.TEXT, ColumnType.DECIMAL): _text_to_decimal,
    (ColumnType.TEXT, ColumnType.JSON): _text_to_json,
    (ColumnType.TEXT, ColumnType.TIMESTAMP): str,  # normalize_value parses (and refuses) it
}
# The rules that take every value of their old type.
LOSSLESS = frozenset(RULES) - {
    (ColumnType.INTEGER, ColumnType.FLOAT),
    (ColumnType.DECIMAL, ColumnType.INTEGER),
    (ColumnType.TEXT, ColumnType.INTEGER),
    (ColumnType.TEXT, ColumnType.DECIMAL),
    (ColumnType.TEXT, ColumnType.JSON),
    (ColumnType.TEXT, ColumnType.TIMESTAMP),
}


def has_rule(source: ColumnType, target: ColumnType) -> bool:
    """Whether a column of type ``source`` may be retyped to ``target``."""
    return (source, target) in RULES


def convert(source: ColumnType, target: Column, value: Any) -> Any:
    """``value`` (stored under type ``source``) as the canonical value of column ``target``.

    Raises :class:`NotConvertible` (saying why, in words of its own: never an exception
    text that could differ between Python versions) for a value the rule does not take,
    and :class:`SchemaError` if there is no rule for the two types. NULL stays NULL.
    """
    rule = RULES.get((source, target.type))
    if rule is None:
        raise SchemaError(f"there is no conversion rule from {source.value} to {target.type.value}")
    if value is None:
        return None
    try:
        converted = rule(value)
    except NotConvertible:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        # A stored value of an unexpected form (oplog's own writes never make one).
        raise NotConvertible(f"{_shown(value)} is not a stored {source.value} value") from None
    try:
        # The target's own normalization decides the canonical form and the limits
        # (decimal digits, timestamp years), exactly as for a value an op brings.
        return normalize_value(_NULLABLE[target.type], converted)
    except SchemaError:
        raise NotConvertible(f"{_shown(value)} is not {_FITS[target.type]}") from None


_NULLABLE = {kind: Column(name="converted", type=kind) for kind in ColumnType}
_FITS = {
    ColumnType.INTEGER: "an integer within 64 bits",
    ColumnType.DECIMAL: "a decimal of at most 65 digits, 30 after the point",
    ColumnType.FLOAT: "a finite double",
    ColumnType.TEXT: "text",
    ColumnType.BOOLEAN: "a boolean",
    ColumnType.JSON: "a JSON document oplog can store (at most 254 levels deep)",
    ColumnType.BYTES: "bytes",
    ColumnType.TIMESTAMP: "an ISO-8601 timestamp with a time zone, in the years 1 to 9999",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"
