"""The epoch commit, written once for every SQL engine Dolt runs behind.

A backend is a Dolt database behind some SQL engine (doltlite's SQLite dialect, Dolt
sql-server's MySQL dialect). What differs between engines is small, and named here:

* a :class:`~materializer.backends.dialect.Dialect` — how a statement is spelled:
  identifier quoting, column types, the upsert verb, how a set of primary keys is matched,
  how a tombstone is keyed, whether DDL can run inside the transaction, how Dolt's
  procedures are called;
* a few I/O primitives each backend implements (:class:`SqlBackend`'s abstract methods):
  run a statement, insert many rows, begin, abandon a failed commit, with its driver's
  errors mapped to ours at its own edge.

Everything else — which rows an epoch writes and in which order, what the progress row
holds, how rows and tombstones are read back, how the dedup horizon is looked up, how an
epoch's commit is found — is written once, below, so the backends cannot drift apart.
Statements are written with ``?`` placeholders; a backend whose driver spells them
otherwise translates them in its primitives.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from itertools import chain
from typing import Any, Protocol

import orjson

from materializer.backends.base import META_COLUMN, Backend
from materializer.backends.dialect import Dialect, Row
from materializer.metadata import EPOCH_MESSAGE_PREFIX, CommitMeta
from materializer.plan import EpochPlan, EpochRow, Key, TableWrites
from materializer.strategy import RowState
from oplog.codec import canonical_json
from oplog.schema import ColumnType, TableSchema

EPOCH_COLUMNS = ("epoch", "first_epoch", "seal_seq", "resume_seq", "end_ms", "applied", "rejected", "duplicates",
                 "late", "digest")  # fmt: skip
SCHEMA_CACHE = 1024  # parsed table definitions kept per backend
# The bookkeeping tables a genesis creates (Dialect.internal_ddl), in a fixed order.
INTERNAL_TABLES = ("oplog_epochs", "oplog_rejections", "oplog_op_ids", "oplog_tables", "oplog_config",
                   "oplog_tombstones")  # fmt: skip

class FreshRoot(Protocol):
    """A new history on the genesis, being filled from this database's current state."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement (``?`` placeholders) on the new root."""

    def source(self, table: str) -> str:
        """How a statement on the new root names ``table`` of the current state."""


class SqlBackend(Backend):
    """A Dolt database reached with SQL; subclasses supply the dialect and the I/O."""

    dialect: Dialect

    def __init__(self) -> None:
        self._schemas: dict[str, TableSchema] = {}  # definition JSON -> its parsed schema

    # -- the I/O a backend supplies --------------------------------------------------------

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) on the backend's connection; its rows."""

    @abstractmethod
    def _insert(self, head: str, width: int, rows: Iterable[Row], count: int) -> None:
        """Run ``head`` (``INSERT … VALUES ``, no row yet) for the ``count`` rows of
        ``rows``, each ``width`` values, in as few statements as the engine allows."""

    def _select(self, columns: str, rest: str, params: Sequence[Any], exact_json: bool) -> Sequence[Row]:
        """``SELECT columns rest``. ``exact_json``: every selected value survives a JSON
        round trip unchanged, so an engine may return the rows as one JSON value."""
        return self._query(f"SELECT {columns} {rest}", params)

    @abstractmethod
    def _begin(self) -> None:
        """Start the transaction that will hold the epoch's writes."""

    def _before_commit(self) -> None:
        """Called before an epoch's first write (e.g. to discard a crash's leftovers)."""

    @abstractmethod
    def _abandon(self) -> None:
        """Undo a commit that failed part-way; the database stays at its previous commit."""

    @abstractmethod
    def _fresh_root(self, genesis: bytes) -> AbstractContextManager[FreshRoot]:
        """A new history holding only the genesis, to fill; it becomes this database's
        history when the block ends without an error, and is discarded otherwise."""

    # -- reads -----------------------------------------------------------------------------

    def head(self) -> str:
        return str(self._query(self.dialect.head_sql)[0][0])

    def last_epoch(self) -> EpochRow | None:
        rows = self._query(f"SELECT {', '.join(EPOCH_COLUMNS)} FROM oplog_epochs ORDER BY epoch DESC LIMIT 1")
        return EpochRow(*rows[0]) if rows else None

    def sealed_before(self, seq: int) -> int | None:
        value = self._query("SELECT MAX(epoch) FROM oplog_epochs WHERE seal_seq < ?", (seq,))[0][0]
        return None if value is None else int(value)

    def config_log(self) -> list[tuple[int, Any]]:
        return [(seq, orjson.loads(body)) for seq, body in self._query("SELECT seq, body FROM oplog_config ORDER BY seq")]

    def tables(self) -> dict[str, TableSchema]:
        rows = self._query("SELECT name, definition FROM oplog_tables ORDER BY name")
        # The same definition gives the same (immutable) object from call to call, so
        # planning can tell an unchanged table by identity (materializer.plan).
        known = self._schemas
        if len(known) > SCHEMA_CACHE:
            known.clear()
        for _, definition in rows:
            if definition not in known:
                known[definition] = TableSchema.model_validate_json(definition)
        return {name: known[definition] for name, definition in rows}

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        result: dict[Key, RowState] = {}
        if not keys:
            return result
        d = self.dialect
        pk = table.primary_key
        width = len(pk)
        value_cols = [c.name for c in table.value_columns]
        # Text and integers survive JSON exactly; floats and bytes may not.
        exact = all(c.type not in (ColumnType.FLOAT, ColumnType.BYTES) for c in table.value_columns)
        # Most epochs of most tables delete nothing: one probe spares a lookup per chunk.
        tombstones = bool(self._query("SELECT 1 FROM oplog_tombstones WHERE tbl = ? LIMIT 1", (table.name,)))
        loads = orjson.loads
        key_columns = [(name, d.column_type(table, table.column(name))) for name in pk]  # type: ignore[arg-type]
        tombstone_columns = [("tbl", d.tombstone_table_type), (d.tombstone_id_column, d.tombstone_id_type)]
        qualified = ", ".join("t." + d.quote(c) for c in (*pk, *value_cols, META_COLUMN))
        per = max(1, min(d.lookup_chunk, (d.max_variables - 1) // width))
        for start in range(0, len(keys), per):
            chunk = keys[start : start + per]
            asked = set(chunk)
            source, params = d.match(d.quote(table.name), key_columns, chunk)
            for row in self._select(qualified, source, params, exact):
                key = tuple(row[:width])
                if key in asked:
                    values = dict(zip(value_cols, row[width:-1], strict=True))
                    result[key] = _row_state(RowState, (values, loads(row[-1])))
            # A key is a row or a tombstone, never both: only the keys not found can be tombstones.
            missing = {d.tombstone_id(key): key for key in chunk if key not in result} if tombstones else {}
            if not missing:
                continue
            source, params = d.match("oplog_tombstones", tombstone_columns, [(i,) for i in missing], (table.name,))
            for tombstone_id, meta in self._select(f"t.{d.tombstone_id_column}, t.meta", source, params, True):
                key = missing.get(tombstone_id)
                if key is not None:
                    result[key] = _row_state(RowState, (None, loads(meta)))
        return result

    def scan_rows(self, table: TableSchema) -> dict[Key, RowState]:
        """Every row and tombstone of ``table`` (read with ``table``'s columns): what a
        schema change that rewrites the table migrates (materializer.schema_change)."""
        d = self.dialect
        pk = table.primary_key
        width = len(pk)
        value_cols = [c.name for c in table.value_columns]
        columns = ", ".join(d.quote(c) for c in (*pk, *value_cols, META_COLUMN))
        loads = orjson.loads
        result: dict[Key, RowState] = {}
        # Row by row, not as one JSON value (SqlBackend._select's exact_json): a whole table
        # could exceed the engine's largest value.
        for row in self._select(columns, f"FROM {d.quote(table.name)}", (), False):
            result[tuple(row[:width])] = RowState(dict(zip(value_cols, row[width:-1], strict=True)), loads(row[-1]))
        # Both engines keep the key's canonical text in the tombstone's pk column.
        for key, meta in self._select("pk, meta", "FROM oplog_tombstones WHERE tbl = ?", (table.name,), False):
            result[tuple(loads(key))] = RowState(None, loads(meta))
        return result

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        d = self.dialect
        columns = [("id", d.op_id_type)]
        per = max(1, min(d.lookup_chunk, d.max_variables))
        for start in range(0, len(ids), per):
            chunk = ids[start : start + per]
            source, params = d.match("oplog_op_ids", columns, [(i,) for i in chunk])
            asked = set(chunk)
            rows = self._select("t.id, t.digest", source, params, True)
            found.update((i, digest) for i, digest in rows if i in asked)
        return found

    def table_hash(self, table: str) -> str:
        return str(self._query("SELECT dolt_hashof_table(?)", (table,))[0][0])

    def epoch_hashes(self, since_epoch: int | None = None) -> list[tuple[int, str]]:
        # An epoch's commit is the one whose message's first line names it
        # (materializer.metadata); no tags are kept (docs/decisions.md #28, #41).
        pairs = []
        for commit_hash, message in self._query("SELECT commit_hash, message FROM dolt_log"):
            first = message.split("\n", 1)[0]
            if first.startswith(EPOCH_MESSAGE_PREFIX):
                pairs.append((int(first[len(EPOCH_MESSAGE_PREFIX) :]), str(commit_hash)))
        return sorted(p for p in pairs if since_epoch is None or p[0] >= since_epoch)

    # -- write -----------------------------------------------------------------------------

    def checkpoint(self, genesis: bytes, meta: CommitMeta, *, before_epoch: int) -> str:
        d = self.dialect
        tables = self.tables()
        with self._fresh_root(genesis) as root:
            # Every peer builds the same tables the same way (one CREATE with the schema's
            # columns, whatever ALTERs made them), so the commit is the same everywhere.
            for name in sorted(tables):
                root.run(d.create_table_sql(tables[name]))
            for name in INTERNAL_TABLES:
                root.run(f"INSERT INTO {name} SELECT * FROM {root.source(name)}")
            for name in sorted(tables):
                columns = ", ".join(d.quote(c) for c in (*(c.name for c in tables[name].columns), META_COLUMN))
                root.run(f"INSERT INTO {d.quote(name)} ({columns}) SELECT {columns} FROM {root.source(name)}")
            self.faults.reach("checkpoint.before-commit", before_epoch)
            ((commit_hash, *_),) = root.run(
                f"{d.call} dolt_commit('-A', '--author', ?, '--date', ?, '-m', ?)", (meta.author, meta.date, meta.message)
            )
        return str(commit_hash)

    def commit_epoch(self, plan: EpochPlan) -> str:
        self.refuse_unstorable_keys(plan)
        d = self.dialect
        row = plan.epoch
        epoch = row.epoch
        ddl = [sql for change in plan.table_changes for sql in d.table_change_sql(change)]
        try:
            self._before_commit()
            if not d.ddl_in_transaction:
                for sql in ddl:
                    self._query(sql)
            self._begin()
            if d.ddl_in_transaction:
                for sql in ddl:
                    self._query(sql)
            # Each table's definition as the epoch leaves it; a dropped table's tombstones
            # go first, so that a table made again under its name starts without them.
            final = {c.name: c.after for c in plan.table_changes}
            for name in dict.fromkeys(c.name for c in plan.table_changes if c.after is None):
                self._query("DELETE FROM oplog_tombstones WHERE tbl = ?", (name,))
                if final[name] is None:
                    self._query("DELETE FROM oplog_tables WHERE name = ?", (name,))
            declared = [(name, table) for name, table in final.items() if table is not None]
            self._insert(
                f"{d.upsert} oplog_tables (name, definition, epoch) VALUES ",
                3,
                ((name, canonical_json(table.model_dump(mode="json")), epoch) for name, table in declared),
                len(declared),
            )
            for writes in plan.writes:
                self._write_table(writes)
            self._insert(
                f"{d.upsert} oplog_op_ids (id, digest, epoch) VALUES ",
                3,
                ((op_id, digest, epoch) for op_id, digest in plan.op_ids),
                len(plan.op_ids),
            )
            self._query("DELETE FROM oplog_op_ids WHERE epoch < ?", (plan.prune_op_ids_before,))
            self._insert(
                "INSERT INTO oplog_rejections (seq, idx, epoch, op_id, reason, detail, payload) VALUES ",
                7,
                ((r.seq, r.index, epoch, r.op_id, r.reason, r.detail, r.payload) for r in plan.rejections),
                len(plan.rejections),
            )
            self._insert(
                "INSERT INTO oplog_config (seq, body, epoch) VALUES ",
                3,
                ((seq, body, epoch) for seq, body in plan.config_rows),
                len(plan.config_rows),
            )
            progress = tuple(getattr(row, column) for column in EPOCH_COLUMNS)
            self._insert(f"INSERT INTO oplog_epochs ({', '.join(EPOCH_COLUMNS)}) VALUES ", len(EPOCH_COLUMNS), [progress], 1)
            self.faults.reach("commit.before-dolt-commit", epoch)
            commit = plan.commit
            ((commit_hash, *_),) = self._query(
                f"{d.call} dolt_commit('-A', '--author', ?, '--date', ?, '-m', ?)",
                (commit.author, commit.date, commit.message),
            )
            self._query("COMMIT")
        except BaseException:
            self._abandon()
            raise
        return str(commit_hash)

    def _write_table(self, writes: TableWrites) -> None:
        d = self.dialect
        table = writes.table
        name = d.quote(table.name)
        pk = table.primary_key
        value_cols = [c.name for c in table.value_columns]
        if writes.upserts:
            cols = ", ".join(d.quote(c) for c in (*pk, *value_cols, META_COLUMN))
            dumps = canonical_json
            rows = ((*key, *map(values.get, value_cols), dumps(meta)) for key, values, meta in writes.upserts)
            self._insert(f"{d.upsert} {name} ({cols}) VALUES ", len(pk) + len(value_cols) + 1, rows, len(writes.upserts))
        deleted = [key for key, _ in writes.deletes]
        per = max(1, min(d.read_chunk, d.max_variables // len(pk)))
        for start in range(0, len(deleted), per):
            chunk = deleted[start : start + per]
            self._query(f"DELETE FROM {name} WHERE {d.keys_where(table, len(chunk))}", list(chain(*chunk)))
        self._insert(
            f"{d.upsert} oplog_tombstones ({', '.join(d.tombstone_columns)}) VALUES ",
            len(d.tombstone_columns),
            (d.tombstone_row(table.name, key, canonical_json(meta)) for key, meta in writes.deletes),
            len(writes.deletes),
        )
        cleared = [d.tombstone_id(key) for key in writes.cleared_tombstones]
        for start in range(0, len(cleared), d.read_chunk):
            ids = cleared[start : start + d.read_chunk]
            marks = ", ".join("?" * len(ids))
            self._query(f"DELETE FROM oplog_tombstones WHERE tbl = ? AND {d.tombstone_id_column} IN ({marks})",
                        [table.name, *ids])  # fmt: skip


_row_state = tuple.__new__  # RowState(values, meta) without NamedTuple's Python-level __new__
