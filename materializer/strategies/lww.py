"""``lww``: last writer wins on the whole row (the Hub's ``basic`` strategy).

An upsert carries the full row; a delete removes it. The op with the highest
``(hlc, id)`` wins, and that winner is stored in the row's meta (or its tombstone),
so an op carried late into a later epoch with an older HLC loses to a newer write
that is already committed.
"""

from __future__ import annotations

from typing import Any

from materializer.strategy import RowState, Strategy, row_values
from oplog.op import Op, OpKind
from oplog.schema import TableSchema


def stamp(op: Op) -> list[Any]:
    """The comparable, storable version of an op: ``[wall_ms, logical, node, id]``."""
    return [op.hlc.wall_ms, op.hlc.logical, op.hlc.node, op.id]


def newer(op: Op, stored: list[Any] | None) -> bool:
    return stored is None or tuple(stamp(op)) > tuple(stored)


class LastWriterWins(Strategy):
    name = "lww"
    kinds = frozenset({OpKind.UPSERT, OpKind.DELETE})

    def apply(self, table: TableSchema, state: RowState, op: Op) -> RowState:
        self.check_kind(op)
        values = row_values(table, op.data, partial=False) if op.kind is OpKind.UPSERT else None
        if not newer(op, state.meta.get("v")):
            return state
        return RowState(values, {"v": stamp(op)})
