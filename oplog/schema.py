"""Backend-neutral table declarations and canonical values.

A table is declared once (columns with types, a primary key, a strategy name) on the
stream's schema subject; each backend renders its own DDL from it. Values are
normalized here to one canonical Python form per type, so that every peer writes the
same bytes whatever the producer sent (``1`` vs ``1.0`` for a float, key order in a
JSON value, ``"2026-01-01T00:00:00Z"`` vs epoch milliseconds for a timestamp).

Evolution rule (checked by :func:`evolve`): a table may be added, and a nullable
column may be added to an existing table, by declaring it again. Anything else a
declaration would change is a :class:`SchemaError`. Removing, renaming and retyping are
said explicitly, as :data:`SchemaChange` items in a message's ``changes`` (a rename
cannot be told from a drop and an add); :mod:`materializer.schema_change` applies them
and :mod:`oplog.convert` holds the conversion rules of a retype. docs/schema.md has the
format.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oplog.codec import canonical_json
from oplog.errors import SchemaError
from oplog.op import TABLE_NAME, check_table_name

RESERVED_COLUMN_PREFIX = "_oplog"
MAX_INTEGER = 2**63 - 1
# Limits both engines accept, applied whatever the backend so every peer decides alike.
# Columns: SQLite stops at 2,000 and MySQL at 4,096 per table, but Dolt also enforces
# MySQL's 65,535-byte row size, where a timestamp column (VARCHAR(32), utf8mb4) counts
# 129 bytes and a text key 4 bytes per character: 250 columns stay inside it.
MAX_COLUMNS = 250
MAX_TABLES_PER_MESSAGE = 100
MAX_CHANGES_PER_MESSAGE = 100
MAX_TABLES = 1000
# Decimals are kept as exact fixed-point text; MySQL's DECIMAL(65, 30) bounds them, so
# a 10-byte "1e1000000" cannot become a megabyte of zeros, and nothing is rounded.
MAX_DECIMAL_DIGITS = 65
MAX_DECIMAL_SCALE = 30
# Timestamps: years 1 to 9999, what both engines' date functions and Python's datetime take.
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TIMESTAMP_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class ColumnType(StrEnum):
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    TEXT = "text"
    BOOLEAN = "boolean"
    JSON = "json"
    BYTES = "bytes"
    TIMESTAMP = "timestamp"


class Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: ColumnType
    nullable: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_column_name(value)


def check_column_name(value: str) -> str:
    """``value`` if it may name a column (both engines take it); ValueError otherwise."""
    if not TABLE_NAME.match(value) or value.startswith(RESERVED_COLUMN_PREFIX):
        raise ValueError(
            f"column name {value!r} must start with a letter, hold only letters, digits "
            f"and underscores, and not start with {RESERVED_COLUMN_PREFIX!r}"
        )
    return value


class TableSchema(BaseModel):
    """One table: its columns, primary key (single or composite) and strategy."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    columns: tuple[Column, ...] = Field(min_length=1, max_length=MAX_COLUMNS)
    primary_key: tuple[str, ...] = Field(min_length=1)
    strategy: str = "lww"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_table_name(value)

    @field_validator("primary_key", mode="before")
    @classmethod
    def _pk(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> TableSchema:
        names = [c.name for c in self.columns]
        if len(set(n.lower() for n in names)) != len(names):
            raise ValueError(f"table {self.name!r} declares a column twice")
        by_name = {c.name: c for c in self.columns}
        for pk in self.primary_key:
            column = by_name.get(pk)
            if column is None:
                raise ValueError(f"primary key column {pk!r} is not a column of {self.name!r}")
            if column.nullable:
                raise ValueError(f"primary key column {pk!r} must be declared nullable: false")
            if column.type not in (ColumnType.TEXT, ColumnType.INTEGER):
                raise ValueError(f"primary key column {pk!r} must be text or integer")
        return self

    # Cached: strategies consult these for every op of an epoch.
    @cached_property
    def columns_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> Column | None:
        return self.columns_by_name.get(name)

    @cached_property
    def key_types(self) -> tuple[type, ...]:
        """The Python type of each primary-key part (``str`` for text, ``int`` for integer)."""
        return tuple(str if self.columns_by_name[n].type is ColumnType.TEXT else int for n in self.primary_key)

    @cached_property
    def value_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.name not in self.primary_key)


class OnFailure(StrEnum):
    """What a retype does with a stored value its conversion rule does not take."""

    REJECT = "reject"  # the whole schema message is refused, and nothing changes
    NULL = "null"  # the value becomes NULL (a nullable column only)


class _Change(BaseModel):
    # extra="forbid": a misspelt field ("on_fail") must be refused, not silently mean
    # the default; these items are new, so no older message carries other fields.
    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_table_name(value)


class DropTable(_Change):
    """``{"op": "drop_table", "table": t}``: the table, its rows and tombstones go."""

    op: Literal["drop_table"]


class DropColumn(_Change):
    """``{"op": "drop_column", "table": t, "column": c}``: a value column and its values go."""

    op: Literal["drop_column"]
    column: str


class RenameColumn(_Change):
    """``{"op": "rename_column", "table": t, "column": c, "to": d}``: values kept, name changed."""

    op: Literal["rename_column"]
    column: str
    to: str

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        return check_column_name(value)


class RetypeColumn(_Change):
    """``{"op": "retype_column", "table": t, "column": c, "type": ty, "on_failure": "reject"|"null"}``:
    every stored value converted by the rule for (old type, ``type``) (:mod:`oplog.convert`)."""

    op: Literal["retype_column"]
    column: str
    type: ColumnType
    on_failure: OnFailure = OnFailure.REJECT


ColumnChange = DropColumn | RenameColumn | RetypeColumn
SchemaChange = Annotated[DropTable | DropColumn | RenameColumn | RetypeColumn, Field(discriminator="op")]


class SchemaMessage(BaseModel):
    """What is published on the schema subject: explicit ``changes`` (drop a table, drop,
    rename or retype a column), applied in order, then ``tables`` to declare or evolve.

    A message holds at least one of the two; one with ``tables`` alone is the format
    older peers know, and keeps its meaning.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    tables: tuple[TableSchema, ...] = Field(default=(), max_length=MAX_TABLES_PER_MESSAGE)
    changes: tuple[SchemaChange, ...] = Field(default=(), max_length=MAX_CHANGES_PER_MESSAGE)

    @model_validator(mode="after")
    def _not_empty(self) -> SchemaMessage:
        if not self.tables and not self.changes:
            raise ValueError("a schema message declares tables or makes changes (or both); this one does neither")
        return self


def evolve(current: TableSchema | None, proposed: TableSchema) -> TableSchema:
    """Return the schema to use after ``proposed`` is declared over ``current``.

    Allowed: a new table; re-declaring the same table; adding nullable columns.
    Raises :class:`SchemaError` for anything else, saying what was refused.
    """
    if current is None or current == proposed:
        return proposed
    name = proposed.name
    if proposed.strategy != current.strategy:
        raise SchemaError(
            f"table {name!r}: strategy cannot change from {current.strategy!r} to "
            f"{proposed.strategy!r}; declare a new table instead"
        )
    if proposed.primary_key != current.primary_key:
        raise SchemaError(f"table {name!r}: the primary key cannot change")
    proposed_by_name = {c.name: c for c in proposed.columns}
    for old in current.columns:
        new = proposed_by_name.get(old.name)
        if new is None:
            raise SchemaError(f"table {name!r}: column {old.name!r} cannot be dropped")
        if new != old:
            raise SchemaError(
                f"table {name!r}: column {old.name!r} cannot change from {old.type.value}"
                f"{'' if old.nullable else ' not null'} to {new.type.value}"
                f"{'' if new.nullable else ' not null'}"
            )
    old_names = {c.name for c in current.columns}
    for new in proposed.columns:
        if new.name not in old_names and not new.nullable:
            raise SchemaError(
                f"table {name!r}: added column {new.name!r} must be nullable, since existing rows have no value for it"
            )
    # Keep the existing column order and append the new columns in declared order.
    added = tuple(c for c in proposed.columns if c.name not in old_names)
    # A fresh instance, not model_copy: a copy would carry over the cached column lookups
    # (columns_by_name, value_columns) of the old definition.
    fields = {name: getattr(current, name) for name in TableSchema.model_fields}
    return TableSchema(**{**fields, "columns": current.columns + added})


def normalize_value(column: Column, value: Any) -> Any:
    """The canonical Python value for ``value`` in ``column``; raises SchemaError."""
    if value is None:
        if not column.nullable:
            raise SchemaError(f"column {column.name!r} is not nullable")
        return None
    try:
        return _NORMALIZERS[column.type](value)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise SchemaError(f"column {column.name!r} ({column.type.value}): cannot take {value!r}: {e}") from None


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    if abs(value) > MAX_INTEGER:
        raise ValueError("out of the signed 64-bit range")
    return value


def _decimal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise TypeError("expected a decimal string or number")
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError("not a finite decimal")
    # normalize() rounds to the context's precision (28 digits by default): give it
    # enough for every digit, so nothing is ever rounded.
    exact = Context(prec=len(number.as_tuple().digits) + 1)
    number = number.normalize(exact)
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    scale = max(-exponent, 0)
    whole = max(len(digits) + exponent, 0)
    if scale > MAX_DECIMAL_SCALE or whole + scale > MAX_DECIMAL_DIGITS:
        raise ValueError(
            f"more than {MAX_DECIMAL_DIGITS} digits or {MAX_DECIMAL_SCALE} after the point "
            f"({whole} + {scale}); oplog stores decimals exactly and does not round"
        )
    # Fixed-point rendering, trailing zeros dropped: "1.50" and "1.5" are one value.
    text = format(number, "f")
    return "0" if text in ("-0", "0") else text


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return 0.0 if number == 0 else number


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _boolean(value: Any) -> int:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return int(value)


def _json(value: Any) -> str:
    return canonical_json(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(value, validate=True)


def _timestamp(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("expected epoch milliseconds or an ISO-8601 string")
    if isinstance(value, int):
        if not MIN_TIMESTAMP_MS <= value <= MAX_TIMESTAMP_MS:
            raise ValueError("outside the years 1 to 9999")
        moment = UNIX_EPOCH + timedelta(milliseconds=value)  # exact, unlike value / 1000
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("an ISO-8601 timestamp needs a time zone (e.g. Z)")
        moment = moment.astimezone(UTC)
    else:
        raise TypeError("expected epoch milliseconds or an ISO-8601 string")
    return format_timestamp(moment)


def format_timestamp(moment: datetime) -> str:
    """UTC with millisecond precision: ``2026-01-01T00:00:00.000Z`` (four-digit years)."""
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_epoch_ms(ms: int) -> str:
    return format_timestamp(UNIX_EPOCH + timedelta(milliseconds=ms))


_NORMALIZERS = {
    ColumnType.INTEGER: _integer,
    ColumnType.DECIMAL: _decimal,
    ColumnType.FLOAT: _float,
    ColumnType.TEXT: _text,
    ColumnType.BOOLEAN: _boolean,
    ColumnType.JSON: _json,
    ColumnType.BYTES: _bytes,
    ColumnType.TIMESTAMP: _timestamp,
}
