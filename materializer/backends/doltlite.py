"""The doltlite backend: Dolt's storage and version control in an embedded,
SQLite-compatible engine. The zero-setup default.

``import doltlite`` must run before anything imports ``sqlite3`` (otherwise it
re-execs the interpreter); the ``oplog`` entry point and the test suite import it
first. Child processes must be started without ``_DOLTLITE_BOOTSTRAPPED`` in their
environment (see :func:`child_env`).

Writes happen in one SQLite transaction that also runs ``dolt_commit``, so a crash
leaves the database at the previous commit or the new one.

Epoch commits are not tagged here (decisions #28): doltlite keeps all tags in one
blob rewritten on every tag, so a tag per epoch made each commit slower and the file
larger as epochs accumulated (5 ms a commit at 3,000 tags; 10.8 MB after 400 epochs
against 1.1 MB untagged). An epoch's commit is the one whose message's first line is
``epoch <k>`` (:mod:`materializer.metadata`); :meth:`DoltliteBackend.epoch_hashes` and
the read side find it through ``dolt_log``.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede sqlite3)
import orjson

from materializer.backends.base import MAX_KEY_INTEGER, META_COLUMN, Backend
from materializer.errors import BackendError, TransientBackendError
from materializer.metadata import EPOCH_MESSAGE_PREFIX
from materializer.plan import EpochPlan, EpochRow, Key, TableChange, key_text
from materializer.strategy import RowState
from oplog.codec import canonical_json
from oplog.schema import ColumnType, TableSchema

GENESIS_AUTHOR = "oplog <oplog@localhost>"
GENESIS_DATE = "2000-01-01T00:00:00Z"
READ_CHUNK = 4000  # keys per IN (...) query when reading; one result value per query
PAGE_CACHE_KIB = 16 * 1024
# Rows per INSERT statement. One statement of many rows costs about 30% less than as
# many one-row statements through executemany (measured on doltlite 0.51, 100k rows).
ROWS_PER_INSERT = 200
MAX_VARIABLES = 32_766

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

INTERNAL_DDL = (
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


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process that will import doltlite itself."""
    result = dict(os.environ if env is None else env)
    result.pop("_DOLTLITE_BOOTSTRAPPED", None)
    return result


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: TableSchema) -> str:
    columns = [f"{quote(c.name)} {SQL_TYPES[c.type]}{'' if c.nullable else ' NOT NULL'}" for c in table.columns]
    columns.append(f"{quote(META_COLUMN)} TEXT NOT NULL")
    pk = ", ".join(quote(c) for c in table.primary_key)
    return f"CREATE TABLE {quote(table.name)} ({', '.join(columns)}, PRIMARY KEY ({pk}))"


def table_change_sql(change: TableChange) -> list[str]:
    if change.before is None:
        return [create_table_sql(change.after)]
    known = {c.name for c in change.before.columns}
    return [
        f"ALTER TABLE {quote(change.after.name)} ADD COLUMN {quote(c.name)} {SQL_TYPES[c.type]}"
        for c in change.after.columns
        if c.name not in known
    ]


class DoltliteBackend(Backend):
    """A doltlite database file."""

    name = "doltlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._schemas: dict[str, TableSchema] = {}  # definition JSON -> its parsed schema

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

    def _query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._mapped():
            return self.conn.execute(sql, params).fetchall()

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
                    for ddl in INTERNAL_DDL:
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

    # -- reads ---------------------------------------------------------------------------

    def head(self) -> str:
        return str(self._query("SELECT dolt_hashof('HEAD')")[0][0])

    def last_epoch(self) -> EpochRow | None:
        rows = self._query(
            "SELECT epoch, first_epoch, seal_seq, resume_seq, end_ms, applied, rejected, duplicates,"
            " late, digest FROM oplog_epochs ORDER BY epoch DESC LIMIT 1"
        )
        return EpochRow(*rows[0]) if rows else None

    def sealed_before(self, seq: int) -> int | None:
        rows = self._query("SELECT MAX(epoch) FROM oplog_epochs WHERE seal_seq < ?", (seq,))
        return rows[0][0]

    def config_log(self) -> list[tuple[int, Any]]:
        return [
            (seq, orjson.loads(body)) for seq, body in self._query("SELECT seq, body FROM oplog_config ORDER BY seq")
        ]

    def tables(self) -> dict[str, TableSchema]:
        rows = self._query("SELECT name, definition FROM oplog_tables ORDER BY name")
        # The same definition gives the same (immutable) object from call to call, so
        # planning can tell an unchanged table by identity (materializer.plan).
        known = self._schemas
        if len(known) > 1024:
            known.clear()
        for _, definition in rows:
            if definition not in known:
                known[definition] = TableSchema.model_validate_json(definition)
        return {name: known[definition] for name, definition in rows}

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        result: dict[Key, RowState] = {}
        if not keys:
            return result
        pk = table.primary_key
        value_cols = [c.name for c in table.value_columns]
        columns = [quote(c) for c in (*pk, *value_cols, META_COLUMN)]
        width = len(pk)
        if width == 1:
            target = quote(pk[0])
            one = "?"
        else:
            target = f"({', '.join(quote(c) for c in pk)})"
            one = "(" + ", ".join("?" * width) + ")"
        # One JSON value per chunk instead of one row per sqlite3_step: each step hands the
        # GIL over, which under contention (several peers in one process) made reading
        # 10k rows take 200-500 ms instead of 10. Exact only for TEXT and INTEGER storage,
        # so tables with float or bytes columns read row by row.
        whole = all(c.type not in (ColumnType.FLOAT, ColumnType.BYTES) for c in table.value_columns)
        select = f"json_group_array(json_array({', '.join(columns)}))" if whole else ", ".join(columns)
        # Most epochs of most tables delete nothing: one probe spares a lookup per key.
        tombstones = bool(self._query("SELECT 1 FROM oplog_tombstones WHERE tbl = ? LIMIT 1", (table.name,)))
        per = max(1, min(READ_CHUNK, (MAX_VARIABLES - 1) // width))
        for start in range(0, len(keys), per):
            chunk = keys[start : start + per]
            values = ", ".join([one] * len(chunk))
            params = list(chain.from_iterable(chunk))
            in_list = f"IN ({values})" if width == 1 else f"IN (VALUES {values})"
            rows = self._query(f"SELECT {select} FROM {quote(table.name)} WHERE {target} {in_list}", params)
            if whole:
                rows = orjson.loads(rows[0][0])
            loads = orjson.loads
            if width == 1:
                for row in rows:
                    result[(row[0],)] = _row_state(
                        RowState, (dict(zip(value_cols, row[1:-1], strict=True)), loads(row[-1]))
                    )
            else:
                for row in rows:
                    result[tuple(row[:width])] = _row_state(
                        RowState, (dict(zip(value_cols, row[width:-1], strict=True)), loads(row[-1]))
                    )
            if not tombstones:
                continue
            texts = {key_text(key): key for key in chunk}
            marks = ", ".join("?" * len(chunk))
            (found,) = self._query(
                f"SELECT json_group_array(json_array(pk, meta)) FROM oplog_tombstones WHERE tbl = ? AND pk IN ({marks})",
                [table.name, *texts],
            )[0]
            for pk_text, meta in orjson.loads(found):
                result[texts[pk_text]] = _row_state(RowState, (None, orjson.loads(meta)))
        return result

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            marks = ", ".join("?" * len(chunk))
            # One JSON value per chunk (see read_rows); ids and digests are text.
            ((pairs,),) = self._query(
                f"SELECT json_group_array(json_array(id, digest)) FROM oplog_op_ids WHERE id IN ({marks})", chunk
            )
            found.update(orjson.loads(pairs))
        return found

    def table_hash(self, table: str) -> str:
        return str(self._query("SELECT dolt_hashof_table(?)", (table,))[0][0])

    def epoch_hashes(self, since_epoch: int | None = None) -> list[tuple[int, str]]:
        pairs = []
        for commit_hash, message in self._query("SELECT commit_hash, message FROM dolt_log"):
            first = message.split("\n", 1)[0]
            if first.startswith(EPOCH_MESSAGE_PREFIX):
                pairs.append((int(first[len(EPOCH_MESSAGE_PREFIX) :]), str(commit_hash)))
        return sorted(p for p in pairs if since_epoch is None or p[0] >= since_epoch)

    # -- write ---------------------------------------------------------------------------

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

    def commit_epoch(self, plan: EpochPlan) -> str:
        self.refuse_unstorable_keys(plan)
        conn = self.conn
        row = plan.epoch
        with self._mapped():
            conn.execute("BEGIN IMMEDIATE")
            try:
                for change in plan.table_changes:
                    for sql in table_change_sql(change):
                        conn.execute(sql)
                    conn.execute(
                        "INSERT OR REPLACE INTO oplog_tables (name, definition, epoch) VALUES (?, ?, ?)",
                        (change.after.name, canonical_json(change.after.model_dump(mode="json")), row.epoch),
                    )
                for writes in plan.writes:
                    self._write_table(writes.table, writes.upserts, writes.deletes, writes.cleared_tombstones)
                epoch = row.epoch
                _insert_many(
                    conn,
                    "INSERT OR REPLACE INTO oplog_op_ids (id, digest, epoch) VALUES ",
                    3,
                    ((op_id, d, epoch) for op_id, d in plan.op_ids),
                    len(plan.op_ids),
                )
                conn.execute("DELETE FROM oplog_op_ids WHERE epoch < ?", (plan.prune_op_ids_before,))
                conn.executemany(
                    "INSERT INTO oplog_rejections (seq, idx, epoch, op_id, reason, detail, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.seq, r.index, row.epoch, r.op_id, r.reason, r.detail, r.payload) for r in plan.rejections],
                )
                conn.executemany(
                    "INSERT INTO oplog_config (seq, body, epoch) VALUES (?, ?, ?)",
                    [(seq, body, row.epoch) for seq, body in plan.config_rows],
                )
                conn.execute(
                    "INSERT INTO oplog_epochs (epoch, first_epoch, seal_seq, resume_seq, end_ms, applied,"
                    " rejected, duplicates, late, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.epoch,
                        row.first_epoch,
                        row.seal_seq,
                        row.resume_seq,
                        row.end_ms,
                        row.applied,
                        row.rejected,
                        row.duplicates,
                        row.late,
                        row.digest,
                    ),
                )
                self.faults.reach("commit.before-dolt-commit", row.epoch)
                commit = plan.commit
                (commit_hash,) = conn.execute(
                    "SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', ?)",
                    (commit.author, commit.date, commit.message),
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return str(commit_hash)

    def _write_table(
        self,
        table: TableSchema,
        upserts: list[tuple[Key, dict[str, Any], dict[str, Any]]],
        deletes: list[tuple[Key, dict[str, Any]]],
        cleared: list[Key],
    ) -> None:
        conn = self.conn
        pk = table.primary_key
        value_cols = [c.name for c in table.value_columns]
        if upserts:
            cols = ", ".join(quote(c) for c in (*pk, *value_cols, META_COLUMN))
            dumps = canonical_json
            if len(pk) == 1:
                rows = ((key[0], *map(values.get, value_cols), dumps(meta)) for key, values, meta in upserts)
            else:
                rows = ((*key, *map(values.get, value_cols), dumps(meta)) for key, values, meta in upserts)
            head = f"INSERT OR REPLACE INTO {quote(table.name)} ({cols}) VALUES "
            _insert_many(conn, head, len(pk) + len(value_cols) + 1, rows, len(upserts))
        if deletes:
            where = " AND ".join(f"{quote(c)} = ?" for c in pk)
            conn.executemany(f"DELETE FROM {quote(table.name)} WHERE {where}", [key for key, _ in deletes])
            conn.executemany(
                "INSERT OR REPLACE INTO oplog_tombstones (tbl, pk, meta) VALUES (?, ?, ?)",
                [(table.name, key_text(key), canonical_json(meta)) for key, meta in deletes],
            )
        if cleared:
            conn.executemany(
                "DELETE FROM oplog_tombstones WHERE tbl = ? AND pk = ?",
                [(table.name, key_text(key)) for key in cleared],
            )


def _insert_many(conn: sqlite3.Connection, head: str, width: int, rows: Iterable[tuple[Any, ...]], count: int) -> None:
    """``head`` (``INSERT … VALUES ``) for the ``count`` rows of ``rows``, many rows per
    statement. ``rows`` is consumed lazily: an epoch's rows never exist all at once."""
    if not count:
        return
    per = max(1, min(ROWS_PER_INSERT, MAX_VARIABLES // width))
    one = "(" + ", ".join("?" * width) + ")"
    full = count - count % per
    source = iter(rows)
    if full:
        statement = head + ", ".join([one] * per)
        conn.executemany(statement, (list(chain.from_iterable(islice(source, per))) for _ in range(full // per)))
    if full < count:
        rest = list(islice(source, count - full))
        conn.execute(head + ", ".join([one] * len(rest)), list(chain.from_iterable(rest)))


_row_state = tuple.__new__  # RowState(values, meta) without NamedTuple's Python-level __new__
