"""Read one Dolt database at one commit, read-only, on either engine (``oplog verify --explain``).

A *location* names a database: :class:`DoltliteFile` (a peer's ``<data-dir>/<db>.db``) or
:class:`DoltServerDatabase` (a database on a ``dolt sql-server``). :meth:`open` gives a
:class:`CommitReader` on its own connection, which only reads: a doltlite file is opened
with ``mode=ro`` and ``query_only``; on Dolt sql-server every read at a commit runs in the
read-only revision database ``<db>/<commit>``. Opening a live peer's database as a
:class:`~materializer.backends.base.Backend` would not do: opening a backend repairs it
(and on Dolt sql-server makes a probe commit on a branch).

What a reader gives, at a commit, in each engine's own words:

=========================  =================================  ==================================
                           doltlite                           Dolt sql-server (in ``<db>/<c>``)
=========================  =================================  ==================================
a table's content hash     ``dolt_hashof_table(t, c)``        ``DOLT_HASHOF_TABLE(t)``
a table's rows             ``SELECT * FROM dolt_at_t(c)``     ``SELECT * FROM t``
the declared tables        ``dolt_at_oplog_tables(c)``        ``SELECT … FROM oplog_tables``
the parent, the message    ``dolt_commit_ancestors``, ``dolt_log(c)`` (both engines)
=========================  =================================  ==================================

Driver errors become :class:`~materializer.errors.BackendError` naming the location.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal
from urllib.parse import quote as url_quote

from materializer.errors import BackendError
from oplog.schema import TableSchema

BackendKind = Literal["doltlite", "dolt-server"]
# The primary keys of the internal tables (materializer.backends.base). Tombstones are
# keyed by (tbl, pk_hash) on Dolt sql-server; pk is the text pk_hash is the hash of, so
# (tbl, pk) identifies a tombstone on both engines.
INTERNAL_KEYS: dict[str, tuple[str, ...]] = {
    "oplog_config": ("seq",),
    "oplog_epochs": ("epoch",),
    "oplog_op_ids": ("id",),
    "oplog_rejections": ("seq", "idx"),
    "oplog_tables": ("name",),
    "oplog_tombstones": ("tbl", "pk"),
}
# Names interpolated into SQL (a table function's name, a revision database): only these shapes.
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_COMMIT = re.compile(r"^[0-9a-z]{20,64}$")
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CommitInfo:
    """One commit: its first parent (None for the first commit) and messages."""

    hash: str
    parent: str | None
    message: str
    parent_message: str | None


class CommitReader(ABC):
    """Read-only access to one database at any of its commits; close it (or use ``with``)."""

    def __init__(self, where: str) -> None:
        self.where = where

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> CommitReader:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of ``sql`` (``?`` placeholders) on the database as it is now."""

    @abstractmethod
    def table_hash(self, commit: str, table: str) -> str | None:
        """Dolt's content hash of ``table`` at ``commit``; None if the table is not there."""

    @abstractmethod
    def _table_names(self, commit: str) -> set[str]:
        """Tables that may exist at ``commit`` (a superset is fine: absent ones hash to None)."""

    @abstractmethod
    def _select_at(self, commit: str, table: str, columns: str = "*") -> tuple[list[str], list[tuple[Any, ...]]]:
        """``SELECT columns FROM table`` as ``commit`` left it."""

    def commit(self, commit: str) -> CommitInfo | None:
        """``commit`` in this database, or None if it has no such commit."""
        _check(_COMMIT, commit, "commit hash")
        _, rows = self._query(
            "SELECT parent_hash FROM dolt_commit_ancestors WHERE commit_hash = ? ORDER BY parent_index LIMIT 1",
            (commit,),
        )
        if not rows:
            return None
        parent = None if rows[0][0] is None else _text(rows[0][0])
        return CommitInfo(commit, parent, self._message(commit), None if parent is None else self._message(parent))

    def _message(self, commit: str) -> str:
        _, rows = self._query("SELECT message FROM dolt_log(?) LIMIT 1", (commit,))
        return _text(rows[0][0]) if rows else ""

    def tables(self, commit: str) -> dict[str, str]:
        """``table -> content hash`` of every table at ``commit``."""
        hashes = {name: self.table_hash(commit, name) for name in sorted(self._table_names(commit))}
        return {name: h for name, h in hashes.items() if h is not None}

    def schemas(self, commit: str) -> dict[str, TableSchema]:
        """The user tables declared (``oplog_tables``) at ``commit``."""
        _, rows = self._select_at(commit, "oplog_tables", "name, definition")
        return {_text(name): TableSchema.model_validate_json(_text(definition)) for name, definition in rows}

    def rows(self, commit: str, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` at ``commit``, by column name."""
        _check(_TABLE, table, "table name")
        columns, rows = self._select_at(commit, table)
        return [dict(zip(columns, row, strict=True)) for row in rows]


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not pattern.match(value):
        raise BackendError(f"not a {what}: {value!r}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


# -- doltlite ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DoltliteFile:
    """A doltlite database file, e.g. a peer's ``<data-dir>/<db>.db``."""

    path: Path
    kind: ClassVar[BackendKind] = "doltlite"

    def describe(self) -> str:
        return f"doltlite file {self.path}"

    def open(self) -> CommitReader:
        return _DoltliteReader(self)


class _DoltliteReader(CommitReader):
    def __init__(self, location: DoltliteFile) -> None:
        super().__init__(location.describe())
        import sqlite3

        import doltlite  # noqa: F401  (before sqlite3, as everywhere)

        self._errors = sqlite3.Error
        path = location.path
        if not path.is_file():
            raise BackendError(f"{self.where} does not exist")
        try:
            uri = f"file:{url_quote(str(path.resolve()))}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 10000")
            self._conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            raise BackendError(f"cannot read {self.where} as a doltlite database: {e}") from None

    def close(self) -> None:
        self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            cur = self._conn.execute(sql, params)
            return [d[0] for d in cur.description or ()], cur.fetchall()
        except self._errors as e:
            raise BackendError(f"{self.where}: {e}") from None

    def table_hash(self, commit: str, table: str) -> str | None:
        try:
            _, rows = self._query("SELECT dolt_hashof_table(?, ?)", (table, commit))
        except BackendError as e:
            if "table not found" in str(e):
                return None
            raise
        return _text(rows[0][0])

    def _table_names(self, commit: str) -> set[str]:
        # doltlite cannot list the tables of a past commit: the declared ones then, the
        # internal ones, and every table at HEAD (one made by hand, say).
        _, rows = self._query("SELECT name FROM sqlite_master WHERE type = 'table'")
        names = (_text(name) for (name,) in rows)
        current = {name for name in names if _TABLE.match(name) and not name.startswith("sqlite_")}
        return current | set(INTERNAL_KEYS) | set(self.schemas(commit))

    def _select_at(self, commit: str, table: str, columns: str = "*") -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._query(f"SELECT {columns} FROM dolt_at_{table}(?)", (commit,))


# -- Dolt sql-server -----------------------------------------------------------------------


@dataclass(frozen=True)
class DoltServerDatabase:
    """Database ``database`` on the dolt sql-server at ``host:port``."""

    host: str
    port: int
    database: str
    user: str = "root"
    password: str = field(default="", repr=False)
    kind: ClassVar[BackendKind] = "dolt-server"

    def describe(self) -> str:
        return f"dolt sql-server {self.host}:{self.port}, database {self.database}"

    def open(self) -> CommitReader:
        return _DoltServerReader(self)


class _DoltServerReader(CommitReader):
    def __init__(self, location: DoltServerDatabase) -> None:
        super().__init__(location.describe())
        import pymysql

        from materializer.backends.dolt_server_sql import map_error

        self._pymysql, self._map_error = pymysql, map_error
        self.database = location.database
        try:
            self._conn = pymysql.connect(
                host=location.host, port=location.port, user=location.user, password=location.password,
                autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, charset="utf8mb4",
            )  # fmt: skip
        except pymysql.err.MySQLError as e:
            raise BackendError(f"cannot connect: {map_error(e, self.where)}") from None
        self._in: str | None = None
        self._tables: dict[str, set[str]] = {}  # commit -> its tables (a commit never changes)
        self._use(location.database)

    def close(self) -> None:
        self._conn.close()

    def _use(self, database: str) -> None:
        if self._in != database:
            self._execute(f"USE `{database.replace('`', '``')}`", ())
            self._in = database

    def _execute(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s") if params else sql, params or None)
                return [d[0] for d in cur.description or ()], list(cur.fetchall())
        except self._pymysql.err.MySQLError as e:
            raise self._map_error(e, self.where) from None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        self._use(self.database)
        return self._execute(sql, params)

    def _at(self, commit: str, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        _check(_COMMIT, commit, "commit hash")
        self._use(f"{self.database}/{commit}")  # read-only: the database as that commit left it
        return self._execute(sql, params)

    def table_hash(self, commit: str, table: str) -> str | None:
        if table not in self._table_names(commit):
            return None
        _, rows = self._at(commit, "SELECT DOLT_HASHOF_TABLE(?)", (table,))
        return _text(rows[0][0])

    def _table_names(self, commit: str) -> set[str]:
        if commit not in self._tables:
            _, rows = self._at(commit, "SHOW TABLES")
            self._tables[commit] = {_text(name) for (name,) in rows}
        return self._tables[commit]

    def _select_at(self, commit: str, table: str, columns: str = "*") -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._at(commit, f"SELECT {columns} FROM `{table}`")


Location = DoltliteFile | DoltServerDatabase
