"""``fww``: first writer wins — the upsert with the LOWEST (hlc, id) keeps the row.

A deliberately simple third-party strategy used to prove the plugin path.
"""

from __future__ import annotations

from materializer.strategies.lww import stamp
from materializer.strategy import RowState, Strategy, row_values
from oplog.op import Op, OpKind
from oplog.schema import TableSchema


class FirstWriterWins(Strategy):
    name = "fww"
    kinds = frozenset({OpKind.UPSERT})

    def apply(self, table: TableSchema, state: RowState, op: Op) -> RowState:
        self.check_kind(op)
        values = row_values(table, op.data, partial=False)
        stored = state.meta.get("v")
        if stored is not None and tuple(stored) <= tuple(stamp(op)):
            return state
        return RowState(values, {"v": stamp(op)})
