"""The Dolt sql-server backend: one database on a ``dolt sql-server``, over pymysql.

Same contract as doltlite (:mod:`materializer.backends.base`); the SQL dialect lives in
:mod:`materializer.backends.dolt_server_sql`.

Hashes. Dolt stamps every commit with a committer date that only the server's
``DOLT_COMMITTER_DATE`` environment variable pins (docs/dolt-server.md), so every peer's
server must run with the same value (``DEFAULT_COMMITTER_DATE`` unless the deployment
chose another). The genesis records a *probe* — the hash of an empty commit on a
throw-away branch, which depends on nothing but that date — in the message of its tag
``oplog-genesis``; :meth:`open` repeats the probe and refuses a server whose probe differs,
instead of letting it diverge silently.

What is atomic. ``CALL DOLT_COMMIT`` commits the SQL transaction holding the epoch's
writes *and* moves ``main`` in one step, so HEAD and the epochs table never disagree.
Two things are outside it: DDL (``CREATE``/``ALTER TABLE``) commits the SQL transaction
implicitly, so a crash between an epoch's DDL and its commit leaves the *working set*
dirty (HEAD untouched); and ``DOLT_TAG`` runs after the commit. Repair, on open and after
every failed commit: uncommitted changes are discarded (``DOLT_RESET --hard`` +
``DOLT_CLEAN``), and epoch commits without their tag are tagged from their message.
Reads run against the working set, which is therefore always HEAD.

Snapshots are Dolt backups: ``DOLT_BACKUP('sync-url', 'file://…')`` into a directory the
server writes and this process reads (``snapshot_dir``, default the system temp dir: the
server must be on this host or share that path), packed as a tar.gz; installing unpacks
it and runs ``DOLT_BACKUP('restore', '--force', …)``. Branches, tags, history and the
working set come with it, so HEAD is the same hash.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pymysql
from pymysql.connections import Connection

from materializer.backends.base import EPOCH_TAG_PREFIX, META_COLUMN, Backend, epoch_tag
from materializer.backends.dolt_server_sql import (
    INTERNAL_DDL,
    key_hash,
    keys_where,
    map_error,
    quote,
    table_change_sql,
    text_key_chars,
)
from materializer.errors import BackendError, TransientBackendError
from materializer.plan import EpochPlan, EpochRow, Key, TableWrites, key_text
from materializer.strategy import RowState
from oplog.codec import canonical_json
from oplog.schema import TableSchema, format_timestamp

GENESIS_AUTHOR = "oplog <oplog@localhost>"
GENESIS_DATE = "2000-01-01T00:00:00Z"
DEFAULT_COMMITTER_DATE = "2000-01-01T00:00:00Z"  # the DOLT_COMMITTER_DATE our launchers give servers
GENESIS_TAG = "oplog-genesis"
PROBE_BRANCH = "oplog-probe"
PROBE_MESSAGE = "oplog committer-date probe"
SNAPSHOT_ROOT = "oplog-dolt-backup"
CHUNK = 100  # keys per lookup statement: Dolt serves IN lists of ~100 keys fastest (measured 20-35 vs 60-130 µs per key at 400)
CONNECT_TIMEOUT_S = 10
SESSION_SETUP = (
    # Strict: a value that does not fit is an error, never silently truncated.
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
    # A server configured to make a Dolt commit per SQL COMMIT would add commits of its own.
    "SET SESSION dolt_transaction_commit = 0",
)


class DoltServerBackend(Backend):
    """Database ``database`` on the dolt sql-server at ``host:port``."""

    name = "dolt-server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 3306,
        user: str = "root",
        password: str = "",
        database: str,
        snapshot_dir: str | Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        logger: logging.Logger | None = None,
    ) -> None:
        self.host, self.port, self.user, self.database = host, port, user, database
        self._password = password
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else Path(tempfile.gettempdir())
        self.connect_timeout = connect_timeout
        self._log = logger or logging.getLogger(f"oplog.backend.dolt-server.{database}")
        self._conn: Connection | None = None
        self._where = f"dolt-server {host}:{port}/{database}"

    # -- connections and the error boundary ------------------------------------------

    def connect(self, database: str | None = None, **options: Any) -> Connection:
        """A new autocommit connection to the server (for readers and tools); the caller closes it."""
        options = {"autocommit": True, "connect_timeout": self.connect_timeout, "charset": "utf8mb4", **options}
        with self._mapped():
            return pymysql.connect(
                host=self.host, port=self.port, user=self.user, password=self._password, database=database, **options
            )

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """Map driver errors to ours, at this one edge; a lost connection is dropped and remade."""
        try:
            yield
        except pymysql.err.MySQLError as e:
            error = map_error(e, self._where)
            if isinstance(error, TransientBackendError):  # the connection may be unusable
                self._drop()
            raise error from e

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to release
                pass

    @property
    def conn(self) -> Connection:
        """The backend's own connection (connected, in the database if it exists, repaired)."""
        if self._conn is None:
            conn = self.connect()
            try:
                with self._mapped(), conn.cursor() as cur:
                    for sql in SESSION_SETUP:
                        cur.execute(sql)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            if self._exists():
                self._execute(f"USE {quote(self.database)}")
                self._discard_uncommitted()
        return self._conn

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._mapped(), self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            with self._mapped(), self.conn.cursor() as cur:
                cur.executemany(sql, rows)  # pymysql turns INSERT/REPLACE … VALUES into multi-row statements

    def _exists(self) -> bool:
        rows = self._execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", [self.database])
        return bool(rows[0][0])

    # -- lifecycle and repair ----------------------------------------------------------

    def open(self) -> None:
        if self._conn is None:
            self.conn  # noqa: B018  (connects, enters the database, discards uncommitted changes)
            if self.is_initialized():
                self._repair_tags()
                self._check_committer_date()

    def close(self) -> None:
        self._drop()

    def _discard_uncommitted(self) -> None:
        """Make the working set HEAD again (after a crash between DDL and DOLT_COMMIT)."""
        if self._execute("SELECT COUNT(*) FROM dolt_status")[0][0]:
            self._log.warning("%s: discarding uncommitted changes left by an interrupted commit", self._where)
            self._execute("CALL DOLT_RESET('--hard')")
            self._execute("CALL DOLT_CLEAN()")

    def _repair_tags(self) -> None:
        """Tag epoch commits whose tag a crash lost (the tag is made after DOLT_COMMIT)."""
        tags = {name for (name,) in self._execute("SELECT tag_name FROM dolt_tags")}
        for commit_hash, message in self._execute("SELECT commit_hash, message FROM dolt_log LIMIT 16"):
            first = message.split("\n", 1)[0]
            if not first.startswith("epoch "):
                continue
            tag = epoch_tag(int(first[6:]))
            if tag in tags:
                break
            self._execute("CALL DOLT_TAG(%s, %s)", [tag, commit_hash])

    def _probe(self, base: str) -> str:
        """The hash of an empty commit on ``base`` with fixed author data: a function of the
        server's committer date alone. Made on a branch that is deleted again."""
        self._execute("CALL DOLT_BRANCH('-f', %s, %s)", [PROBE_BRANCH, base])
        try:
            self._execute(f"USE {quote(self.database + '/' + PROBE_BRANCH)}")
            rows = self._execute(
                "CALL DOLT_COMMIT('--allow-empty', '--author', %s, '--date', %s, '-m', %s)",
                [GENESIS_AUTHOR, GENESIS_DATE, PROBE_MESSAGE],
            )
        finally:
            self._execute(f"USE {quote(self.database)}")
            self._execute("CALL DOLT_BRANCH('-D', %s)", [PROBE_BRANCH])
        return str(rows[0][0])

    def _pinned_probe(self, base: str) -> str:
        first = self._probe(base)
        time.sleep(0.003)  # an unpinned (clock) committer date moves by then
        if self._probe(base) != first:
            raise BackendError(
                f"{self._where}: the server stamps commits with its clock; start dolt sql-server with "
                f"DOLT_COMMITTER_DATE={DEFAULT_COMMITTER_DATE} (the same value on every peer)"
            )
        return first

    def _check_committer_date(self) -> None:
        rows = self._execute("SELECT tag_hash, message FROM dolt_tags WHERE tag_name = %s", [GENESIS_TAG])
        if not rows:  # a crash right after the genesis commit: this very server made it
            genesis = self._execute("SELECT commit_hash FROM dolt_log WHERE message = 'genesis' LIMIT 1")
            if not genesis:
                raise BackendError(f"{self._where}: the database has oplog tables but no genesis commit")
            self._tag_genesis(str(genesis[0][0]))
            return
        genesis, message = rows[0]
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
        if self._probe(genesis) != fields.get("committer-probe"):
            raise BackendError(
                f"{self._where}: this server's committer date differs from the one this database's genesis "
                f"was made with; restart dolt sql-server with DOLT_COMMITTER_DATE={fields.get('committer-date')} "
                "(every peer's server needs the same value, or commit hashes diverge)"
            )

    def _tag_genesis(self, genesis: str) -> None:
        # The init commit CREATE DATABASE made carries the committer date as its date.
        (init_date,) = self._execute("SELECT date FROM dolt_log(%s) LIMIT 1", [genesis + "~1"])[0]
        date = format_timestamp(init_date.replace(tzinfo=UTC)) if isinstance(init_date, datetime) else str(init_date)
        probe = self._pinned_probe(genesis)
        self._execute(
            "CALL DOLT_TAG('-m', %s, %s, %s)",
            [f"committer-date: {date}\ncommitter-probe: {probe}", GENESIS_TAG, genesis],
        )

    # -- genesis and snapshots -----------------------------------------------------------

    def is_initialized(self) -> bool:
        if not self._exists():
            return False
        rows = self._execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = 'oplog_epochs'",
            [self.database],
        )
        return bool(rows[0][0])

    def create_genesis(self) -> bytes:
        if self._exists():
            if self.is_initialized():
                raise BackendError(f"{self._where}: already holds a genesis")
            # Left by a genesis that crashed before its commit (only the init commit), or not ours.
            (commits,) = self._execute(f"SELECT COUNT(*) FROM {quote(self.database)}.dolt_log")[0]
            if commits > 1:
                raise BackendError(f"{self._where}: the database exists with history of its own; choose another name")
            self._execute("USE information_schema")
            self._execute(f"DROP DATABASE {quote(self.database)}")
        # CREATE DATABASE stamps its init commit with the server's committer date (author too),
        # so under the pinned date this genesis is the same on every server.
        self._execute(f"CREATE DATABASE {quote(self.database)}")
        self._execute(f"USE {quote(self.database)}")
        try:
            for ddl in INTERNAL_DDL:
                self._execute(ddl)
            rows = self._execute(
                "CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', 'genesis')", [GENESIS_AUTHOR, GENESIS_DATE]
            )
        except BaseException:
            self._abort()
            raise
        self._tag_genesis(str(rows[0][0]))
        return self.export_snapshot()

    def export_snapshot(self) -> bytes:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="oplog-snapshot-", dir=self.snapshot_dir))
        try:
            target = scratch / SNAPSHOT_ROOT
            self._execute("CALL DOLT_BACKUP('sync-url', %s)", [target.as_uri()])
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(target, arcname=SNAPSHOT_ROOT)
            return buffer.getvalue()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def install_snapshot(self, artifact: bytes) -> None:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="oplog-snapshot-", dir=self.snapshot_dir))
        try:
            try:
                with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:gz") as tar:
                    if not all(m.name.split("/", 1)[0] == SNAPSHOT_ROOT for m in tar.getmembers()):
                        raise BackendError(f"{self._where}: the snapshot is not a {self.name} backup")
                    tar.extractall(scratch, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise BackendError(f"{self._where}: the snapshot is not a {self.name} backup: {e}") from e
            # Leave the database before it is replaced.
            self._execute("USE information_schema")
            url = (scratch / SNAPSHOT_ROOT).as_uri()
            self._execute("CALL DOLT_BACKUP('restore', '--force', %s, %s)", [url, self.database])
            self._execute(f"USE {quote(self.database)}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._repair_tags()
        self._check_committer_date()

    # -- reads ---------------------------------------------------------------------------

    def head(self) -> str:
        return str(self._execute("SELECT HASHOF('HEAD')")[0][0])

    def last_epoch(self) -> EpochRow | None:
        rows = self._execute(
            "SELECT epoch, first_epoch, seal_seq, resume_seq, end_ms, applied, rejected, duplicates,"
            " late, digest FROM oplog_epochs ORDER BY epoch DESC LIMIT 1"
        )
        return EpochRow(*rows[0]) if rows else None

    def sealed_before(self, seq: int) -> int | None:
        value = self._execute("SELECT MAX(epoch) FROM oplog_epochs WHERE seal_seq < %s", [seq])[0][0]
        return None if value is None else int(value)

    def config_log(self) -> list[tuple[int, Any]]:
        return [
            (seq, orjson.loads(body)) for seq, body in self._execute("SELECT seq, body FROM oplog_config ORDER BY seq")
        ]

    def tables(self) -> dict[str, TableSchema]:
        return {
            name: TableSchema.model_validate_json(definition)
            for name, definition in self._execute("SELECT name, definition FROM oplog_tables ORDER BY name")
        }

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        result: dict[Key, RowState] = {}
        pk = table.primary_key
        value_cols = [c.name for c in table.value_columns]
        select = ", ".join(quote(c) for c in (*pk, *value_cols, META_COLUMN))
        width = len(pk)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            params = [part for key in chunk for part in key]
            sql = f"SELECT {select} FROM {quote(table.name)} WHERE {keys_where(table, len(chunk))}"
            for row in self._execute(sql, params):
                values = dict(zip(value_cols, row[width:-1], strict=True))
                result[tuple(row[:width])] = RowState(values, orjson.loads(row[-1]))
            # A key is a row or a tombstone, never both: only the keys not found can be tombstones.
            hashes = {key_hash(key): key for key in chunk if key not in result}
            if not hashes:
                continue
            marks = ", ".join(["%s"] * len(hashes))
            for pk_hash, meta in self._execute(
                f"SELECT pk_hash, meta FROM oplog_tombstones WHERE tbl = %s AND pk_hash IN ({marks})",
                [table.name, *hashes],
            ):
                result[hashes[pk_hash]] = RowState(None, orjson.loads(meta))
        return result

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            found.update(self._execute(f"SELECT id, digest FROM oplog_op_ids WHERE id IN ({marks})", chunk))
        return found

    def table_hash(self, table: str) -> str:
        return str(self._execute("SELECT DOLT_HASHOF_TABLE(%s)", [table])[0][0])

    def epoch_hashes(self, since_epoch: int | None = None) -> list[tuple[int, str]]:
        pairs = [
            (int(name[len(EPOCH_TAG_PREFIX) :]), str(tag_hash))
            for name, tag_hash in self._execute("SELECT tag_name, tag_hash FROM dolt_tags")
            if name.startswith(EPOCH_TAG_PREFIX)
        ]
        return sorted(p for p in pairs if since_epoch is None or p[0] >= since_epoch)

    def text_key_limit(self, table: TableSchema) -> int | None:
        return text_key_chars(table)

    # -- write ---------------------------------------------------------------------------

    def commit_epoch(self, plan: EpochPlan) -> str:
        self.refuse_unstorable_keys(plan)
        row = plan.epoch
        try:
            self._discard_uncommitted()  # also guards against writes by anyone else
            for change in plan.table_changes:  # DDL commits implicitly: before the transaction
                for sql in table_change_sql(change):
                    self._execute(sql)
            self._execute("START TRANSACTION")
            self._executemany(
                "REPLACE INTO oplog_tables (name, definition, epoch) VALUES (%s, %s, %s)",
                [
                    (c.after.name, canonical_json(c.after.model_dump(mode="json")), row.epoch)
                    for c in plan.table_changes
                ],
            )
            for writes in plan.writes:
                self._write_table(writes)
            self._executemany(
                "REPLACE INTO oplog_op_ids (id, digest, epoch) VALUES (%s, %s, %s)",
                [(op_id, d, row.epoch) for op_id, d in plan.op_ids],
            )
            self._execute("DELETE FROM oplog_op_ids WHERE epoch < %s", [plan.prune_op_ids_before])
            self._executemany(
                "INSERT INTO oplog_rejections (seq, idx, epoch, op_id, reason, detail, payload)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(r.seq, r.index, row.epoch, r.op_id, r.reason, r.detail, r.payload) for r in plan.rejections],
            )
            self._executemany(
                "INSERT INTO oplog_config (seq, body, epoch) VALUES (%s, %s, %s)",
                [(seq, body, row.epoch) for seq, body in plan.config_rows],
            )
            self._execute(
                "INSERT INTO oplog_epochs (epoch, first_epoch, seal_seq, resume_seq, end_ms, applied, rejected,"
                " duplicates, late, digest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [row.epoch, row.first_epoch, row.seal_seq, row.resume_seq, row.end_ms, row.applied, row.rejected,
                 row.duplicates, row.late, row.digest],
            )  # fmt: skip
            self.faults.reach("commit.before-dolt-commit", row.epoch)
            commit = plan.commit
            (commit_hash,) = self._execute(
                "CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', %s)",
                [commit.author, commit.date, commit.message],
            )[0]
            self._execute("CALL DOLT_TAG(%s, %s)", [epoch_tag(row.epoch), commit_hash])
            self._execute("COMMIT")
        except BaseException:
            self._abort()
            raise
        return str(commit_hash)

    def _abort(self) -> None:
        """Roll back and discard what DDL committed implicitly; a dead connection is
        repaired when the next one is made."""
        try:
            self._execute("ROLLBACK")
            self._discard_uncommitted()
        except Exception as e:  # the connection may be in any state after an interruption
            self._log.warning("%s: could not clean up after a failed commit (%s); will on reconnect", self._where, e)
            self._drop()

    def _write_table(self, writes: TableWrites) -> None:
        table = writes.table
        pk = table.primary_key
        value_cols = [c.name for c in table.value_columns]
        cols = ", ".join(quote(c) for c in (*pk, *value_cols, META_COLUMN))
        marks = ", ".join(["%s"] * (len(pk) + len(value_cols) + 1))
        self._executemany(
            f"REPLACE INTO {quote(table.name)} ({cols}) VALUES ({marks})",
            [
                (*key, *(values.get(c) for c in value_cols), canonical_json(meta))
                for key, values, meta in writes.upserts
            ],
        )
        deleted = [key for key, _ in writes.deletes]
        for start in range(0, len(deleted), CHUNK):
            chunk = deleted[start : start + CHUNK]
            self._execute(
                f"DELETE FROM {quote(table.name)} WHERE {keys_where(table, len(chunk))}",
                [part for key in chunk for part in key],
            )
        self._executemany(
            "REPLACE INTO oplog_tombstones (tbl, pk_hash, pk, meta) VALUES (%s, %s, %s, %s)",
            [(table.name, key_hash(key), key_text(key), canonical_json(meta)) for key, meta in writes.deletes],
        )
        cleared = [key_hash(key) for key in writes.cleared_tombstones]
        for start in range(0, len(cleared), CHUNK):
            hashes = cleared[start : start + CHUNK]
            marks = ", ".join(["%s"] * len(hashes))
            self._execute(
                f"DELETE FROM oplog_tombstones WHERE tbl = %s AND pk_hash IN ({marks})", [table.name, *hashes]
            )
