"""``field-lww``: last writer wins per column, so concurrent edits of different
columns of one row both survive.

Kinds: ``patch`` sets the columns it names; ``upsert`` is a patch of every value
column (those it leaves out are set to NULL); ``delete`` removes the row.

Every op has a stamp ``[wall_ms, logical, node, id]`` (:func:`lww.stamp`), and the
row's meta keeps, each only while it still matters:

* ``cols`` — per column, the stamp of the newest write that set it;
* ``row`` — the stamp of the newest write of any columns (an empty patch counts);
* ``del`` — the stamp of the newest delete.

The rule, stated over the set of ops applied so far:

* the row exists iff its newest write is newer than its newest delete;
* a column holds the value of its newest write if that write is newer than the
  newest delete, and NULL otherwise.

So a delete wipes every column written before it, and a patch newer than a delete
resurrects the row with only the columns written after the delete, the others NULL.
Every piece of meta is a maximum over the applied ops, which is why the result does
not depend on the order they are folded in: an op carried late into a later epoch,
with an older HLC than writes already committed, lands exactly where it would have
if it had been folded in HLC order. Stamps not newer than ``del`` can never matter
again and are dropped, which keeps the meta canonical (a tombstone is just
``{"del": stamp}``).

Because a column can lack a value (after a delete, or before any write sets it),
every value column must be nullable; ops on a table that declares a NOT NULL value
column are rejected with ``not_nullable``.

Schema changes. ``cols`` names columns, so it follows them (:meth:`migrate_meta`): a
dropped column's stamp goes (a write of it can no longer matter), a renamed column's
stamp moves to the new name, and a retyped column keeps its stamp (the converted value,
or the NULL a failed conversion leaves, stands for the same write). ``row`` and ``del``
stay, so the row exists after the change exactly when it did before.
"""

from __future__ import annotations

from typing import Any

from materializer.errors import OpRejected
from materializer.strategies.lww import stamp
from materializer.strategy import OpLike, RowState, Strategy, row_values
from oplog.op import OpKind
from oplog.schema import ColumnChange, DropColumn, RenameColumn, TableSchema

Stamp = list[Any]


def _newer(a: Stamp, b: Stamp | None) -> bool:
    return b is None or tuple(a) > tuple(b)


def require_nullable(table: TableSchema, strategy: str) -> None:
    """Reject ops on ``table`` if a value column is NOT NULL (the strategy may leave it empty)."""
    for column in table.value_columns:
        if not column.nullable:
            raise OpRejected(
                "not_nullable",
                f"table {table.name!r} uses strategy {strategy!r}, which can leave a column without a value; "
                f"declare column {column.name!r} nullable",
            )


class FieldLastWriterWins(Strategy):
    name = "field-lww"
    kinds = frozenset({OpKind.PATCH, OpKind.UPSERT, OpKind.DELETE})
    meta_names_columns = True

    def migrate_meta(self, change: ColumnChange, meta: dict[str, Any]) -> dict[str, Any]:
        cols: dict[str, Stamp] | None = meta.get("cols")
        if not cols or change.column not in cols:
            return meta
        moved = dict(cols)
        stamp_ = moved.pop(change.column)
        if isinstance(change, RenameColumn):
            moved[change.to] = stamp_
        elif not isinstance(change, DropColumn):
            return meta  # retyped: the write stands, converted
        result = {name: value for name, value in meta.items() if name != "cols"}
        if moved:  # canonical: no "cols" once no column has a stamp (see apply_prepared)
            result["cols"] = moved
        return result

    def apply(self, table: TableSchema, state: RowState, op: OpLike) -> RowState:
        return self.apply_prepared(table, state, op, self.prepare(table, op))

    def prepare(self, table: TableSchema, op: OpLike) -> tuple[dict[str, Any] | None, Stamp]:
        self.check_kind(op)
        require_nullable(table, self.name)
        # Validate before comparing stamps, so acceptance depends on the op alone.
        data = None if op.kind is OpKind.DELETE else row_values(table, op.data, partial=op.kind is OpKind.PATCH)
        return data, stamp(op)

    def apply_prepared(
        self, table: TableSchema, state: RowState, op: OpLike, prepared: tuple[dict[str, Any] | None, Stamp]
    ) -> RowState:
        data, version = prepared
        deleted: Stamp | None = state.meta.get("del")
        written: Stamp | None = state.meta.get("row")
        cols: dict[str, Stamp] = dict(state.meta.get("cols", {}))
        current = dict(state.values or {})

        if data is None:
            if not _newer(version, deleted):
                return state
            deleted = version
            cols = {name: s for name, s in cols.items() if _newer(s, deleted)}
            if written is not None and not _newer(written, deleted):
                written = None
        else:
            if not _newer(version, deleted):
                return state
            if _newer(version, written):
                written = version
            for name, value in data.items():
                if _newer(version, cols.get(name)):
                    cols[name] = version
                    current[name] = value

        meta: dict[str, Any] = {}
        if cols:
            meta["cols"] = cols
        if written is not None:
            meta["row"] = written
        if deleted is not None:
            meta["del"] = deleted
        if written is None:
            return RowState(None, meta)
        values = {c.name: current.get(c.name) if c.name in cols else None for c in table.value_columns}
        return RowState(values, meta)
