"""How one SQL engine spells what :class:`~materializer.backends.sql.SqlBackend` does.

A :class:`Dialect` is pure: statements and values, no I/O. Each backend module gives one
(doltlite's SQLite spelling, Dolt sql-server's MySQL spelling); the steps that use it are
written once, in :mod:`materializer.backends.sql`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import chain
from typing import Any

from materializer.backends.base import META_COLUMN
from materializer.plan import Key, TableChange
from materializer.schema_change import Added
from oplog.schema import Column, DropColumn, RenameColumn, TableSchema

Row = Sequence[Any]


class Dialect(ABC):
    """How one SQL engine spells what :class:`SqlBackend` does. Pure: no I/O."""

    name: str
    upsert: str  # the statement that inserts a row or replaces the one with its key
    call: str  # how a Dolt procedure is invoked (``SELECT dolt_commit(…)`` or ``CALL dolt_commit(…)``)
    head_sql: str  # the hash of HEAD
    meta_type: str  # the SQL type of the strategy-meta column
    table_options: str = ""  # appended to CREATE TABLE
    ddl_in_transaction: bool  # False: DDL commits implicitly, so it runs before the transaction
    read_chunk: int  # keys per DELETE statement
    lookup_chunk: int  # keys per lookup statement (Dialect.match)
    op_id_type: str  # the SQL type of oplog_op_ids.id
    tombstone_table_type: str  # the SQL type of oplog_tombstones.tbl
    tombstone_id_type: str  # the SQL type of the tombstone id column
    max_variables: int = 32_766  # bound parameters per statement
    internal_ddl: tuple[str, ...]  # the bookkeeping tables, created by the genesis
    tombstone_columns: tuple[str, ...]  # oplog_tombstones' columns, in insert order
    tombstone_id_column: str  # the column that identifies a tombstone inside its table

    @abstractmethod
    def quote(self, name: str) -> str:
        """``name`` as an identifier."""

    @abstractmethod
    def column_type(self, table: TableSchema, column: Column) -> str:
        """The SQL type that stores ``column`` of ``table``."""

    @abstractmethod
    def keys_where(self, table: TableSchema, count: int) -> str:
        """A condition matching ``count`` primary keys, with ``?`` per key part, in key order."""

    def match(
        self, source: str, columns: Sequence[tuple[str, str]], keys: Sequence[Sequence[Any]], fixed: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """``FROM …`` naming the rows of ``source`` (aliased ``t``) whose key equals one of
        ``keys``, and its parameters. ``columns`` are the key's (name, SQL type); the
        first ``len(fixed)`` of them equal ``fixed`` in every key and are not repeated in
        ``keys``. SQLite's spelling: an ``IN`` list (a row-value ``IN (VALUES …)`` for a
        composite key), served from the primary index.

        A lookup may return other rows than those asked for (an engine's comparison may be
        looser than Python's): callers keep only the keys they asked for.
        """
        head = [f"t.{self.quote(name)} = ?" for name, _ in columns[: len(fixed)]]
        match = in_list(["t." + self.quote(name) for name, _ in columns[len(fixed) :]], len(keys))
        return f"FROM {source} AS t WHERE {' AND '.join((*head, match))}", [*fixed, *chain.from_iterable(keys)]

    @abstractmethod
    def tombstone_id(self, key: Key) -> str:
        """The value of :attr:`tombstone_id_column` for ``key``."""

    @abstractmethod
    def tombstone_row(self, table: str, key: Key, meta: str) -> tuple[Any, ...]:
        """The oplog_tombstones row of a deleted ``key`` (in :attr:`tombstone_columns` order)."""

    def create_table_sql(self, table: TableSchema) -> str:
        quote = self.quote
        columns = [f"{quote(c.name)} {self.column_type(table, c)}{'' if c.nullable else ' NOT NULL'}" for c in table.columns]
        columns.append(f"{quote(META_COLUMN)} {self.meta_type} NOT NULL")
        pk = ", ".join(quote(c) for c in table.primary_key)
        return f"CREATE TABLE {quote(table.name)} ({', '.join(columns)}, PRIMARY KEY ({pk})){self.table_options}"

    def table_change_sql(self, change: TableChange) -> list[str]:
        """The DDL of one table change (:class:`~materializer.schema_change.TableChange`).

        A new table; a dropped one; a rebuilt one (a column retyped: dropped and created
        anew from the new schema, the plan then writes every row); or its columns' steps
        in order: ``ADD``, ``DROP`` and ``RENAME COLUMN``, which both engines spell alike
        (doltlite 0.51 has SQLite's ``DROP COLUMN`` and ``RENAME COLUMN``).
        """
        quote = self.quote
        before, after = change.before, change.after
        if after is None:
            assert before is not None
            return [f"DROP TABLE {quote(before.name)}"]
        if before is None:
            return [self.create_table_sql(after)]
        name = quote(after.name)
        if change.rebuild:
            return [f"DROP TABLE {name}", self.create_table_sql(after)]
        if not change.steps:  # columns added only
            known = {c.name for c in before.columns}
            steps: tuple[object, ...] = tuple(Added(c) for c in after.columns if c.name not in known)
        else:
            steps = change.steps
        sql = []
        for step in steps:
            if isinstance(step, Added):
                sql.append(f"ALTER TABLE {name} ADD COLUMN {quote(step.column.name)} {self.column_type(after, step.column)}")
            elif isinstance(step, DropColumn):
                sql.append(f"ALTER TABLE {name} DROP COLUMN {quote(step.column)}")
            elif isinstance(step, RenameColumn):
                sql.append(f"ALTER TABLE {name} RENAME COLUMN {quote(step.column)} TO {quote(step.to)}")
            else:  # a retype makes the change a rebuild
                raise AssertionError(f"{step!r} in a table change that is not a rebuild")
        return sql


def in_list(columns: Sequence[str], count: int) -> str:
    """SQLite's condition matching ``count`` keys of ``columns`` (already quoted), with ``?``
    per key part in key order: ``c IN (…)``, or a row-value ``(a, b) IN (VALUES …)``."""
    if len(columns) == 1:
        return f"{columns[0]} IN ({', '.join('?' * count)})"
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return f"({', '.join(columns)}) IN (VALUES {', '.join([one] * count)})"
