"""``counter``: ``incr`` ops add signed deltas to numeric columns, in any order.

An op is ``{"kind": "incr", "data": {column: delta, ...}}``. The counters are the
table's ``integer`` and ``decimal`` value columns; a row starts with every counter at
0 when its first ``incr`` arrives (an ``incr`` with empty data just creates it), and
its other columns stay NULL, so those must be nullable. Integer deltas are exact
integers; decimal deltas are decimal strings or numbers (``"0.10"``, ``3``, ``0.1``),
added exactly with :mod:`decimal` and written in the canonical rendering of
:func:`oplog.schema.normalize_value` (``"1.5"``). A float column is not a counter:
float addition is not associative, so the sum would depend on the order.

Each row is the sum of its accepted deltas, so the order ops are folded in does not
matter and the meta is empty. The one exception is leaving the range a column can
hold (signed 64-bit for integers; :data:`DECIMAL_DIGITS` significant digits,
magnitude below ``10**DECIMAL_DIGITS`` and at most ``MAX_DECIMAL_SCALE`` (30) places
for decimals, as a decimal column stores them): the op that would push the sum
out is rejected (``overflow``), and which op that is can depend on the order.

``delete`` is not accepted. A delete that resets a counter does not commute with
increments: after a late delete, the row would have to drop exactly the deltas with
older stamps, which means storing every delta forever. To zero a counter, publish
the opposite delta.

Schema changes. The meta names no column. A counter column retyped between integer and
decimal stays a counter, its sums converted; retyped to another type it stops counting.
That is refused for a NOT NULL column (:meth:`Counter.check_change`): the strategy leaves
non-counter columns NULL, so every later op would be rejected (``not_nullable``).

Rejections: ``bad_data`` (data not an object), ``unknown_column``,
``not_a_counter`` (a key column or a column that is not integer/decimal),
``bad_delta`` (a bool, a non-number, a float for an integer column, a decimal
beyond the limits), ``overflow``, ``not_nullable``.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

from materializer.errors import OpRejected
from materializer.strategy import OpLike, RowState, Strategy
from oplog.errors import SchemaError
from oplog.op import OpKind
from oplog.schema import (
    MAX_DECIMAL_SCALE,
    MAX_INTEGER,
    Column,
    ColumnChange,
    ColumnType,
    RetypeColumn,
    TableSchema,
    normalize_value,
)

COUNTER_TYPES = frozenset({ColumnType.INTEGER, ColumnType.DECIMAL})
DECIMAL_DIGITS = 38
# Exact for any sum of two in-range decimals (at most 2 * DECIMAL_DIGITS + 1 digits).
EXACT = decimal.Context(prec=4 * DECIMAL_DIGITS, traps=[decimal.Inexact, decimal.InvalidOperation])


def _in_range(number: Decimal) -> bool:
    if number.is_zero():
        return True
    if not -DECIMAL_DIGITS <= number.adjusted() < DECIMAL_DIGITS:
        return False  # before normalize(): a huge exponent would overflow its context
    _, digits, exponent = number.normalize(EXACT).as_tuple()
    assert isinstance(exponent, int)
    # At most MAX_DECIMAL_SCALE places: what a decimal column stores (oplog.schema).
    return len(digits) <= DECIMAL_DIGITS and exponent >= -MAX_DECIMAL_SCALE


def _integer_delta(column: Column, delta: Any) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise OpRejected("bad_delta", f"column {column.name!r} is integer; a delta must be an integer, got {delta!r}")
    if abs(delta) > MAX_INTEGER:
        raise OpRejected("bad_delta", f"column {column.name!r}: delta {delta} is outside the signed 64-bit range")
    return delta


def _decimal_delta(column: Column, delta: Any) -> Decimal:
    if isinstance(delta, bool) or not isinstance(delta, (int, str, float)):
        raise OpRejected(
            "bad_delta", f"column {column.name!r} is decimal; a delta must be a decimal string or number, got {delta!r}"
        )
    try:
        number = Decimal(str(delta))
    except decimal.InvalidOperation:
        raise OpRejected("bad_delta", f"column {column.name!r}: {delta!r} is not a decimal number") from None
    if not number.is_finite() or not _in_range(number):
        raise OpRejected(
            "bad_delta",
            f"column {column.name!r}: delta {delta!r} is not a finite decimal of at most {DECIMAL_DIGITS} digits "
            f"below 10^{DECIMAL_DIGITS}",
        )
    return number


def _render(column: Column, number: Decimal) -> str:
    # normalize_value rounds to the active context's precision: make it exact.
    with decimal.localcontext(EXACT):
        value = normalize_value(column, str(number))
    assert isinstance(value, str)
    return value


def parse_deltas(table: TableSchema, data: Any) -> dict[str, int | Decimal]:
    """The validated deltas of an ``incr`` op, by column; raises OpRejected."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OpRejected("bad_data", "an incr op's data must be an object {column: delta}")
    deltas: dict[str, int | Decimal] = {}
    for name in sorted(data):
        column = table.column(name)
        if column is None:
            raise OpRejected("unknown_column", f"table {table.name!r} has no column {name!r}")
        if name in table.primary_key or column.type not in COUNTER_TYPES:
            raise OpRejected(
                "not_a_counter",
                f"column {name!r} of table {table.name!r} is not a counter (only integer and decimal value columns are)",
            )
        if column.type is ColumnType.INTEGER:
            deltas[name] = _integer_delta(column, data[name])
        else:
            deltas[name] = _decimal_delta(column, data[name])
    return deltas


class Counter(Strategy):
    name = "counter"
    kinds = frozenset({OpKind.INCR})

    def check_change(self, table: TableSchema, change: ColumnChange) -> None:
        column = table.column(change.column)
        if (
            isinstance(change, RetypeColumn)
            and column is not None
            and not column.nullable
            and column.type in COUNTER_TYPES
            and change.type not in COUNTER_TYPES
        ):
            raise SchemaError(
                f"table {table.name!r} uses strategy 'counter', which leaves non-counter columns NULL: "
                f"NOT NULL counter column {column.name!r} cannot become {change.type.value}"
            )

    def apply(self, table: TableSchema, state: RowState, op: OpLike) -> RowState:
        return self.apply_prepared(table, state, op, self.prepare(table, op))

    def prepare(self, table: TableSchema, op: OpLike) -> dict[str, int | Decimal]:
        self.check_kind(op)
        for column in table.value_columns:
            if column.type not in COUNTER_TYPES and not column.nullable:
                raise OpRejected(
                    "not_nullable",
                    f"table {table.name!r} uses strategy 'counter', which leaves non-counter columns NULL; "
                    f"declare column {column.name!r} nullable",
                )
        return parse_deltas(table, op.data)

    def apply_prepared(
        self, table: TableSchema, state: RowState, op: OpLike, prepared: dict[str, int | Decimal]
    ) -> RowState:
        deltas = prepared
        if state.values is None:
            values: dict[str, Any] = {
                c.name: (0 if c.type is ColumnType.INTEGER else "0") if c.type in COUNTER_TYPES else None
                for c in table.value_columns
            }
        else:
            values = dict(state.values)
        for name, delta in deltas.items():
            target = table.column(name)
            assert target is not None
            # A counter column added to the table after the row was made is NULL: it counts from 0.
            current = values.get(name)
            if isinstance(delta, int):
                total = (current or 0) + delta
                if abs(total) > MAX_INTEGER:
                    raise OpRejected("overflow", f"column {name!r}: {current} + {delta} leaves the signed 64-bit range")
                values[name] = total
            else:
                total_decimal = EXACT.add(Decimal(current or "0"), delta)
                if not _in_range(total_decimal):
                    raise OpRejected(
                        "overflow",
                        f"column {name!r}: {current} + {delta} needs more than {DECIMAL_DIGITS} digits "
                        f"or reaches 10^{DECIMAL_DIGITS}",
                    )
                values[name] = _render(target, total_decimal)
        if state.values is not None and values == state.values:
            return state
        return RowState(values, {})
