"""``lww``: last writer wins on the whole row (the Hub's ``basic`` strategy).

An upsert carries the full row; a delete removes it. The op with the highest
``(hlc, id)`` wins, and that winner is stored in the row's meta (or its tombstone),
so an op carried late into a later epoch with an older HLC loses to a newer write
that is already committed.
"""

from __future__ import annotations

from typing import Any

from materializer.strategy import OpLike, RowState, Strategy, row_values
from oplog.op import OpKind
from oplog.schema import TableSchema

_UPSERT, _DELETE = OpKind.UPSERT, OpKind.DELETE


def stamp(op: OpLike) -> list[Any]:
    """The comparable, storable version of an op: ``[wall_ms, logical, node, id]``."""
    return [op.wall_ms, op.logical, op.node, op.id]


def newer(op: OpLike, stored: list[Any] | None) -> bool:
    return stored is None or tuple(stamp(op)) > tuple(stored)


class LastWriterWins(Strategy):
    name = "lww"
    kinds = frozenset({OpKind.UPSERT, OpKind.DELETE})

    def apply(self, table: TableSchema, state: RowState, op: OpLike) -> RowState:
        return self.apply_prepared(table, state, op, self.prepare(table, op))

    def prepare(self, table: TableSchema, op: OpLike) -> RowState:
        # The checks of check_kind / row_values, in that order. What is prepared is the
        # row the op leaves if it wins: then apply_prepared hands it over as it is.
        kind = op.kind
        if kind is _UPSERT:
            values = row_values(table, op.data, partial=False)
        elif kind is _DELETE:
            values = None
        else:
            self.check_kind(op)  # raises, unless a subclass widened ``kinds``
            values = None
        return _tuple_new(RowState, (values, {"v": [op.wall_ms, op.logical, op.node, op.id]}))

    def apply_prepared(self, table: TableSchema, state: RowState, op: OpLike, prepared: RowState) -> RowState:
        stored = state.meta.get("v")
        if stored is not None:
            version = prepared.meta["v"]
            # Stored stamps are lists (JSON arrays), compared like the tuples of ``newer``.
            if not (version > stored if type(stored) is list else tuple(version) > tuple(stored)):
                return state
        return prepared


_tuple_new = tuple.__new__  # a RowState per op: skip NamedTuple's Python-level __new__
