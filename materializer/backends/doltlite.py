"""The doltlite backend: Dolt's storage and version control in an embedded,
SQLite-compatible engine. The zero-setup default.

``import doltlite`` must run before anything imports ``sqlite3`` (otherwise it
re-execs the interpreter); the ``oplog`` entry point and the test suite import it
first. Child processes must be started without ``_DOLTLITE_BOOTSTRAPPED`` in their
environment (see :func:`child_env`).

The commit steps are :mod:`materializer.backends.sql`'s; this module supplies the SQLite
dialect and the I/O. Writes happen in one SQLite transaction that also runs
``dolt_commit``, so a crash leaves the database at the previous commit or the new one.

Epoch commits are not tagged here (decisions #28): doltlite keeps all tags in one
blob rewritten on every tag, so a tag per epoch made each commit slower and the file
larger as epochs accumulated (5 ms a commit at 3,000 tags; 10.8 MB after 400 epochs
against 1.1 MB untagged). An epoch's commit is the one whose message's first line is
``epoch <k>`` (:mod:`materializer.metadata`), found through ``dolt_log`` on both backends.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede sqlite3)
import orjson

from materializer.backends.base import MAX_KEY_INTEGER
from materializer.backends.dialect import Dialect, Row, in_list
from materializer.backends.sql import FreshRoot, SqlBackend
from materializer.errors import BackendError, TransientBackendError
from materializer.plan import EpochPlan, Key, key_text
from oplog.schema import Column, ColumnType, TableSchema

GENESIS_AUTHOR = "oplog <oplog@localhost>"
GENESIS_DATE = "2000-01-01T00:00:00Z"
PAGE_CACHE_KIB = 16 * 1024
# Rows per INSERT statement. One statement of many rows costs about 30% less than as
# many one-row statements through executemany (measured on doltlite 0.51, 100k rows).
ROWS_PER_INSERT = 200

SQL_TYPES = {
    ColumnType.INTEGER: "INTEGER",
    ColumnType.DECIMAL: "TEXT",
    ColumnType.FLOAT: "REAL",
    ColumnType.TEXT: "TEXT",
    ColumnType.BOOLEAN: "INTEGER",
    ColumnType.JSON: "TEXT",
    ColumnType.BYTES: "BLOB",
    ColumnType.TIMESTAMP: "TEXT",
}


class DoltliteDialect(Dialect):
    """SQLite's spelling. Tombstones are keyed by the key's canonical text itself."""

    name = "doltlite"
    upsert = "INSERT OR REPLACE INTO"
    call = "SELECT"
    head_sql = "SELECT dolt_hashof('HEAD')"
    meta_type = "TEXT"
    ddl_in_transaction = True
    read_chunk = 4000  # one result value per query (see DoltliteBackend._select)
    lookup_chunk = 4000
    op_id_type = tombstone_table_type = tombstone_id_type = "TEXT"
    internal_ddl = (
        """CREATE TABLE oplog_epochs (epoch INTEGER PRIMARY KEY, first_epoch INTEGER NOT NULL,
           seal_seq INTEGER NOT NULL, resume_seq INTEGER NOT NULL, end_ms INTEGER NOT NULL,
           applied INTEGER NOT NULL, rejected INTEGER NOT NULL, duplicates INTEGER NOT NULL,
           late INTEGER NOT NULL, digest TEXT NOT NULL)""",
        """CREATE TABLE oplog_rejections (seq INTEGER NOT NULL, idx INTEGER NOT NULL,
           epoch INTEGER NOT NULL, op_id TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL,
           payload TEXT NOT NULL, PRIMARY KEY (seq, idx))""",
        """CREATE TABLE oplog_op_ids (id TEXT PRIMARY KEY, digest TEXT NOT NULL, epoch INTEGER NOT NULL)""",
        "CREATE INDEX oplog_op_ids_epoch ON oplog_op_ids (epoch)",
        """CREATE TABLE oplog_tables (name TEXT PRIMARY KEY, definition TEXT NOT NULL, epoch INTEGER NOT NULL)""",
        """CREATE TABLE oplog_config (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, epoch INTEGER NOT NULL)""",
        """CREATE TABLE oplog_tombstones (tbl TEXT NOT NULL, pk TEXT NOT NULL, meta TEXT NOT NULL,
           PRIMARY KEY (tbl, pk))""",
    )
    tombstone_columns = ("tbl", "pk", "meta")
    tombstone_id_column = "pk"

    def quote(self, name: str) -> str:
        return quote(name)

    def column_type(self, table: TableSchema, column: Column) -> str:
        return SQL_TYPES[column.type]

    def keys_where(self, table: TableSchema, count: int) -> str:
        return in_list([quote(c) for c in table.primary_key], count)

    def tombstone_id(self, key: Key) -> str:
        return key_text(key)

    def tombstone_row(self, table: str, key: Key, meta: str) -> tuple[Any, ...]:
        return (table, key_text(key), meta)


DIALECT = DoltliteDialect()


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process that will import doltlite itself."""
    result = dict(os.environ if env is None else env)
    result.pop("_DOLTLITE_BOOTSTRAPPED", None)
    return result


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DoltliteBackend(SqlBackend):
    """A doltlite database file."""

    name = "doltlite"
    dialect = DIALECT

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._mapped():
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 10000")
            # doltlite's default page cache is 64 MiB, and it stays full after a large
            # epoch: two 100k-row commits left ~55 MB more resident with it, and no
            # measurable speed came with it. A cache setting: contents and hashes are unaffected.
            self._conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def interrupt(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.interrupt()  # SQLite's own: thread-safe, the running statement fails with "interrupted"

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendError(f"doltlite database {self.path} is not open; call open() first")
        return self._conn

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """Map driver errors to ours, at this one edge."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise TransientBackendError(f"doltlite {self.path}: {e}; retry") from e
            raise BackendError(f"doltlite {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise BackendError(f"doltlite {self.path}: {e}") from e

    # -- the I/O of materializer.backends.sql ----------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._mapped():
            return self.conn.execute(sql, params).fetchall()

    def _select(self, columns: str, rest: str, params: Sequence[Any], exact_json: bool) -> Sequence[Row]:
        if not exact_json:
            return self._query(f"SELECT {columns} {rest}", params)
        # One JSON value per query instead of one row per sqlite3_step: each step hands
        # the GIL over, which under contention (several peers in one process) made reading
        # 10k rows take 200-500 ms instead of 10.
        ((rows,),) = self._query(f"SELECT json_group_array(json_array({columns})) {rest}", params)
        return orjson.loads(rows)  # type: ignore[no-any-return]

    def _insert(self, head: str, width: int, rows: Iterable[Row], count: int) -> None:
        # Many rows per statement; ``rows`` is consumed lazily, so an epoch's rows never
        # exist all at once.
        if not count:
            return
        per = max(1, min(ROWS_PER_INSERT, self.dialect.max_variables // width))
        one = "(" + ", ".join("?" * width) + ")"
        full = count - count % per
        source = iter(rows)
        with self._mapped():
            if full:
                statement = head + ", ".join([one] * per)
                self.conn.executemany(statement, (list(chain.from_iterable(islice(source, per))) for _ in range(full // per)))
            if full < count:
                rest = list(islice(source, count - full))
                self.conn.execute(head + ", ".join([one] * len(rest)), list(chain.from_iterable(rest)))

    def _begin(self) -> None:
        self._query("BEGIN IMMEDIATE")

    def _abandon(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._query("ROLLBACK")

    @contextmanager
    def _fresh_root(self, genesis: bytes) -> Iterator[FreshRoot]:
        # Built beside the database from the genesis artifact, the current file attached
        # to read from; swapped in with one rename, so a crash leaves one or the other.
        tmp = self.path.with_name(self.path.name + ".checkpoint-tmp")
        tmp.write_bytes(genesis)
        with self._mapped():
            conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            root = _AttachedRoot(conn, self)
            root.run("ATTACH DATABASE ? AS oplog_current", (str(self.path),))
            root.run("BEGIN")
            yield root
            root.run("COMMIT")
            root.run("DETACH DATABASE oplog_current")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()
            tmp.unlink(missing_ok=True)
            raise
        conn.close()
        was_open = self._conn is not None
        self.close()
        os.replace(tmp, self.path)
        if was_open:
            self.open()

    # -- genesis -------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        rows = self._query("SELECT 1 FROM sqlite_master WHERE name = 'oplog_epochs'")
        return bool(rows)

    def create_genesis(self) -> bytes:
        # Built in a scratch file and then installed, so a crash half-way never leaves
        # a half-made genesis under the real path.
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "genesis.db"
            with self._mapped():
                conn = sqlite3.connect(path, isolation_level=None)
                try:
                    conn.execute("BEGIN")
                    for ddl in self.dialect.internal_ddl:
                        conn.execute(ddl)
                    conn.execute(
                        "SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'genesis')",
                        (GENESIS_AUTHOR, GENESIS_DATE),
                    )
                    conn.execute("COMMIT")
                finally:
                    conn.close()
            artifact = path.read_bytes()
        self.install_snapshot(artifact)
        return artifact

    def export_snapshot(self) -> bytes:
        # Our single connection is idle between commits, so the file is consistent.
        with self._mapped():
            self.conn.execute("BEGIN")
            try:
                return self.path.read_bytes()
            finally:
                self.conn.execute("COMMIT")

    def install_snapshot(self, artifact: bytes) -> None:
        was_open = self._conn is not None
        self.close()
        tmp = self.path.with_name(self.path.name + ".genesis-tmp")
        tmp.write_bytes(artifact)
        os.replace(tmp, self.path)
        if was_open:
            self.open()

    # -- keys ----------------------------------------------------------------------------

    def refuse_unstorable_keys(self, plan: EpochPlan) -> None:
        # doltlite has no text key limit, so only an integer part can be unstorable: a
        # scan of the parts finds the plans that need the full (worded) check.
        for writes in plan.writes:
            keys = chain((k for k, *_ in writes.upserts), (k for k, _ in writes.deletes), writes.cleared_tombstones)
            for part in chain.from_iterable(keys):
                if type(part) is not str and not (
                    type(part) is int and -MAX_KEY_INTEGER - 1 <= part <= MAX_KEY_INTEGER
                ):
                    super().refuse_unstorable_keys(plan)
                    return

    def check_key(self, table: TableSchema, key: Key) -> None:
        # Called for every op while planning; the common key needs no further look.
        for part in key:
            if type(part) is not str and not (type(part) is int and -MAX_KEY_INTEGER - 1 <= part <= MAX_KEY_INTEGER):
                super().check_key(table, key)
                return


class _AttachedRoot:
    """The new root's connection, with the current database attached as ``oplog_current``."""

    def __init__(self, conn: sqlite3.Connection, backend: DoltliteBackend) -> None:
        self._conn, self._backend = conn, backend

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._backend._mapped():
            return self._conn.execute(sql, params).fetchall()

    def source(self, table: str) -> str:
        return f"oplog_current.{quote(table)}"
