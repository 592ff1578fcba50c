"""Reading stored state ahead of the seal, for the plan that the seal will ask for.

Planning an epoch reads the stored rows its ops touch and the op ids already applied
(:class:`~materializer.plan.Reader`). Those reads are a large part of the time from a
seal to its commit, and with several peers in one process each fetched row also hands
the GIL over. :class:`ReadAhead` does them while the epoch is still open: the
materializer notes each accepted op (:meth:`ReadAhead.note`) and, between batches of
messages, reads the state of everything noted (:meth:`ReadAhead.fill`). At the seal,
:meth:`ReadAhead.reader` answers the plan from what was read and asks the backend for
the rest.

What was read is the state as of the last commit, so every commit empties the cache
(:meth:`ReadAhead.clear`): nothing read before a commit is ever used after it. The
answers are therefore exactly the backend's, and plans do not depend on read-ahead.
Not thread-safe: the materializer calls it from one task, never during a commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from materializer.backends.base import Backend
from materializer.errors import OpRejected
from materializer.plan import Key
from materializer.strategy import RowState
from oplog.op import OpRecord
from oplog.schema import ColumnType, TableSchema

MAX_NOTED = 1_000_000  # ops noted between commits before read-ahead stops noting (memory)


class ReadAhead:
    """Stored rows and known op ids of noted ops, as of the last commit."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._wanted_rows: dict[str, tuple[TableSchema, set[Key]]] = {}
        self._wanted_ids: list[str] = []
        self._rows: dict[str, tuple[TableSchema, dict[Key, RowState | None]]] = {}
        self._ids: dict[str, str | None] = {}
        self._noted = 0

    def note(self, op: OpRecord, tables: Mapping[str, TableSchema]) -> None:
        """Remember to read the state ``op`` will need (its row, if its table is known)."""
        if self._noted >= MAX_NOTED:
            return
        self._noted += 1
        self._wanted_ids.append(op.id)
        table = tables.get(op.table)
        if table is not None:
            wanted = self._wanted_rows.get(op.table)
            if wanted is None or wanted[0] is not table:
                wanted = self._wanted_rows[op.table] = (table, set())
            wanted[1].add(op.key)

    @property
    def pending(self) -> bool:
        """Whether ops were noted since the last :meth:`fill`."""
        return bool(self._wanted_ids)

    def fill(self) -> None:
        """Read what was noted (blocking: run it in a worker thread, between commits)."""
        ids, self._wanted_ids = self._wanted_ids, []
        wanted, self._wanted_rows = self._wanted_rows, {}
        fresh = sorted({i for i in ids if i not in self._ids})
        if fresh:
            known = self._backend.known_op_ids(fresh)
            self._ids.update((i, known.get(i)) for i in fresh)
        for name, (table, keys) in wanted.items():
            cached = self._rows.get(name)
            if cached is None or cached[0] is not table:
                cached = self._rows[name] = (table, {})
            rows = cached[1]
            # Only keys the table can hold: a key the plan will reject (an integer past
            # 64 bits, the wrong arity or types) cannot be stored, so it has no row, and a
            # driver may refuse to even bind it in a query.
            todo = [key for key in keys if key not in rows and self._storable(table, key)]
            if not todo:
                continue
            try:
                todo.sort()
            except TypeError:  # keys of mixed types (ops the plan will reject): any order
                pass
            stored = self._backend.read_rows(table, todo)
            rows.update((key, stored.get(key)) for key in todo)

    def _storable(self, table: TableSchema, key: Key) -> bool:
        if len(key) != len(table.primary_key):
            return False
        for name, part in zip(table.primary_key, key, strict=True):
            column = table.column(name)
            wanted = str if column is not None and column.type is ColumnType.TEXT else int
            if type(part) is not wanted:
                return False
        try:
            self._backend.check_key(table, key)
        except OpRejected:
            return False
        return True

    def clear(self) -> None:
        """Forget everything read and noted: the database has moved on (a commit)."""
        self._wanted_rows, self._wanted_ids, self._rows, self._ids = {}, [], {}, {}
        self._noted = 0

    def reader(self) -> _CachedReader:
        """A :class:`~materializer.plan.Reader` answering from what was read."""
        return _CachedReader(self._backend, self._rows, self._ids)


class _CachedReader:
    """The backend's reads, answered from read-ahead where it has them."""

    def __init__(
        self,
        backend: Backend,
        rows: dict[str, tuple[TableSchema, dict[Key, RowState | None]]],
        ids: dict[str, str | None],
    ) -> None:
        self._backend = backend
        self._rows = rows
        self._ids = ids
        self.check_key = backend.check_key

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        cached = self._rows.get(table.name)
        # Rows read under another definition of the table (columns added since) do not count.
        if cached is None or not (cached[0] is table or cached[0] == table):
            return self._backend.read_rows(table, keys)
        rows = cached[1]
        missing = [key for key in keys if key not in rows]
        result = self._backend.read_rows(table, missing) if missing else {}
        for key in keys:
            state = rows.get(key)
            if state is not None:
                result[key] = state
        return result

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        cached = self._ids
        missing = [i for i in ids if i not in cached]
        result = self._backend.known_op_ids(missing) if missing else {}
        for i in ids:
            found = cached.get(i)
            if found is not None:
                result[i] = found
        return result

    def __getattr__(self, name: str) -> Any:
        # Anything else a plan may ask of its reader (e.g. text_key_limit) is the backend's.
        return getattr(self._backend, name)
