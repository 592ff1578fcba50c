"""Column steps of a schema change, one at a time: the table after one, a row after one.

Pure, like the rest of planning: :func:`change_table` checks a column change against a
table's schema and gives the new schema (or refuses, saying why); :func:`migrate` brings
one stored row, and its strategy's meta, through one step, converting a retyped value
with :mod:`oplog.convert`. :mod:`materializer.schema_change` strings them together over an
epoch's schema messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from materializer.prepare import Key
from materializer.strategy import RowState, Strategy
from oplog.convert import NotConvertible, convert, has_rule
from oplog.errors import SchemaError
from oplog.schema import Column, ColumnChange, DropColumn, OnFailure, RenameColumn, RetypeColumn, TableSchema


@dataclass(frozen=True)
class Added:
    """A column a declaration added, as a step between explicit changes."""

    column: Column


ColumnStep = DropColumn | RenameColumn | RetypeColumn | Added


@dataclass(frozen=True)
class Step:
    """A column step with the column as it was before (``source``) and after (``target``)."""

    step: ColumnStep
    source: Column | None
    target: Column | None


def change_table(table: TableSchema, change: ColumnChange) -> TableSchema:
    """``table`` after a column change; SchemaError (saying why) if the change is refused."""
    name = table.name
    column = table.column(change.column)
    what = {"drop_column": "dropped", "rename_column": "renamed", "retype_column": "retyped"}[change.op]
    if column is None:
        raise SchemaError(f"table {name!r} has no column {change.column!r} to be {what}")
    if column.name in table.primary_key:
        raise SchemaError(
            f"table {name!r}: primary key column {column.name!r} cannot be {what}: rows are found by their key; "
            "declare a new table instead"
        )
    if isinstance(change, DropColumn):
        columns = tuple(c for c in table.columns if c.name != column.name)
    elif isinstance(change, RenameColumn):
        clash = next((c.name for c in table.columns if c.name.lower() == change.to.lower() and c is not column), None)
        if clash is not None:
            raise SchemaError(
                f"table {name!r} already has a column {clash!r}; column {column.name!r} cannot take that name"
            )
        if change.to == column.name:
            raise SchemaError(f"table {name!r}: column {column.name!r} is already called {change.to!r}")
        renamed = Column(name=change.to, type=column.type, nullable=column.nullable)
        columns = tuple(renamed if c is column else c for c in table.columns)
    else:
        if change.type is column.type:
            raise SchemaError(f"table {name!r}: column {column.name!r} is already {column.type.value}")
        if not has_rule(column.type, change.type):
            raise SchemaError(
                f"table {name!r}: column {column.name!r} cannot be retyped from {column.type.value} to "
                f"{change.type.value}: there is no conversion rule for that (docs/schema.md lists them)"
            )
        if change.on_failure is OnFailure.NULL and not column.nullable:
            raise SchemaError(f'table {name!r}: column {column.name!r} is NOT NULL, so "on_failure" cannot be "null"')
        retyped = Column(name=column.name, type=change.type, nullable=column.nullable)
        columns = tuple(retyped if c is column else c for c in table.columns)
    # A fresh instance, not model_copy: a copy would carry over the cached column lookups.
    fields = {key: getattr(table, key) for key in TableSchema.model_fields}
    return TableSchema(**{**fields, "columns": columns})


def migrate(state: RowState, step: Step, strategy: Strategy) -> RowState:
    """One row (or tombstone) after ``step``; a retype raises NotConvertible for a value
    its rule does not take."""
    change = step.step
    values = state.values
    if values is not None:
        values = dict(values)
        if isinstance(change, Added):
            values[change.column.name] = None
        elif isinstance(change, DropColumn):
            values.pop(change.column, None)
        elif isinstance(change, RenameColumn):
            values[change.to] = values.pop(change.column, None)
        else:
            assert step.source is not None and step.target is not None
            values[change.column] = convert(step.source.type, step.target, values.get(change.column))
    meta = state.meta if isinstance(change, Added) else strategy.migrate_meta(change, state.meta)
    return RowState(values, meta)


def migrate_all(state: RowState, steps: tuple[Step, ...], strategy: Strategy) -> RowState:
    """One row (or tombstone) after ``steps``, in order."""
    for step in steps:
        state = migrate(state, step, strategy)
    return state


def migrate_rows(
    rows: dict[Key, RowState], step: Step, strategy: Strategy, max_examples: int
) -> tuple[dict[Key, RowState], dict[str, Any]]:
    """Every row after ``step``, and what happened to them: the fields ``rows``,
    ``converted``, ``not_converted`` and ``examples`` of a
    :class:`~materializer.schema_change.ChangeReport` (at most ``max_examples`` keys)."""
    change = step.step
    retype = isinstance(change, RetypeColumn)
    migrated: dict[Key, RowState] = {}
    converted = 0
    failed: list[Key] = []
    for key, state in rows.items():
        try:
            migrated[key] = migrate(state, step, strategy)
        except NotConvertible:
            assert retype and state.values is not None
            failed.append(key)
            # NULL: what on_failure "null" stores (on "reject" the message is refused anyway).
            migrated[key] = migrate(RowState({**state.values, change.column: None}, state.meta), step, strategy)
        else:
            if retype and state.values is not None and state.values.get(change.column) is not None:
                converted += 1
    failed.sort()
    counted = {
        "rows": sum(1 for state in rows.values() if state.values is not None),
        "converted": converted,
        "not_converted": len(failed),
        "examples": tuple(failed[:max_examples]),
    }
    return migrated, counted
