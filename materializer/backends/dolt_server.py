"""The Dolt sql-server backend: one database on a ``dolt sql-server``, over pymysql.

Same contract as doltlite (:mod:`materializer.backends.base`) and the same commit steps
(:mod:`materializer.backends.sql`); the SQL dialect lives in
:mod:`materializer.backends.dolt_server_sql`, the I/O here.

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
dirty (HEAD untouched). Repair, on open, before every commit and after every failed one:
uncommitted changes are discarded (``DOLT_RESET --hard`` + ``DOLT_CLEAN``). Reads run
against the working set, which is therefore always HEAD. Epoch commits are not tagged
(docs/decisions.md #41): as on doltlite, an epoch's commit is the one whose message names it.

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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
from pymysql.connections import Connection

from materializer.backends.dialect import Row
from materializer.backends.dolt_server_sql import DIALECT, map_error, quote, text_key_chars
from materializer.backends.sql import FreshRoot, SqlBackend
from materializer.errors import BackendError, TransientBackendError
from oplog.schema import TableSchema, format_timestamp

GENESIS_AUTHOR = "oplog <oplog@localhost>"
GENESIS_DATE = "2000-01-01T00:00:00Z"
DEFAULT_COMMITTER_DATE = "2000-01-01T00:00:00Z"  # the DOLT_COMMITTER_DATE our launchers give servers
GENESIS_TAG = "oplog-genesis"
PROBE_BRANCH = "oplog-probe"
PROBE_MESSAGE = "oplog committer-date probe"
CHECKPOINT_BRANCH = "oplog-checkpoint"
SNAPSHOT_ROOT = "oplog-dolt-backup"
CONNECT_TIMEOUT_S = 10
SESSION_SETUP = (
    # Strict: a value that does not fit is an error, never silently truncated.
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
    # A server configured to make a Dolt commit per SQL COMMIT would add commits of its own.
    "SET SESSION dolt_transaction_commit = 0",
)


class DoltServerBackend(SqlBackend):
    """Database ``database`` on the dolt sql-server at ``host:port``."""

    name = "dolt-server"
    dialect = DIALECT

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
        super().__init__()
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
        """One statement in pymysql's own ``%s`` style (this module's statements)."""
        with self._mapped(), self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    # -- the I/O of materializer.backends.sql ----------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Names are identifiers (oplog.schema), so no "?" or "%" is ever part of one.
        return self._execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))

    def _insert(self, head: str, width: int, rows: Iterable[Row], count: int) -> None:
        if count:
            marks = "(" + ", ".join(["%s"] * width) + ")"
            with self._mapped(), self.conn.cursor() as cur:
                cur.executemany(head + marks, list(rows))  # pymysql makes multi-row statements of it

    def _begin(self) -> None:
        self._execute("START TRANSACTION")

    def _before_commit(self) -> None:
        self._discard_uncommitted()  # also guards against writes by anyone else

    def _abandon(self) -> None:
        """Roll back and discard what DDL committed implicitly; a dead connection is
        repaired when the next one is made."""
        try:
            self._execute("ROLLBACK")
            self._discard_uncommitted()
        except Exception as e:  # the connection may be in any state after an interruption
            self._log.warning("%s: could not clean up after a failed commit (%s); will on reconnect", self._where, e)
            self._drop()

    def _exists(self) -> bool:
        rows = self._execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", [self.database])
        return bool(rows[0][0])

    @contextmanager
    def _fresh_root(self, genesis: bytes) -> Iterator[FreshRoot]:
        # The genesis commit is in this database's history (the artifact is not needed):
        # a branch there is filled from the current branch, which is then reset onto it.
        (current,) = self._execute("SELECT active_branch()")[0]
        rows = self._execute("SELECT tag_hash FROM dolt_tags WHERE tag_name = %s", [GENESIS_TAG])
        if not rows:
            raise BackendError(f"{self._where}: no {GENESIS_TAG} tag; reopen the database to repair it first")
        self._execute("CALL DOLT_BRANCH('-f', %s, %s)", [CHECKPOINT_BRANCH, rows[0][0]])
        self._execute(f"USE {quote(self.database + '/' + CHECKPOINT_BRANCH)}")
        try:
            yield _BranchRoot(self, quote(f"{self.database}/{current}"))
        finally:
            self._execute(f"USE {quote(self.database)}")
        self._execute("CALL DOLT_RESET('--hard', %s)", [CHECKPOINT_BRANCH])
        self._execute("CALL DOLT_BRANCH('-D', %s)", [CHECKPOINT_BRANCH])
        # What the old history held is unreachable now; collect it. GC ends the server's
        # other sessions' transactions, and may end ours: reconnect for the next call.
        try:
            self._execute("CALL DOLT_GC()")
        finally:
            self._drop()

    # -- lifecycle and repair ----------------------------------------------------------

    def open(self) -> None:
        if self._conn is None:
            self.conn  # noqa: B018  (connects, enters the database, discards uncommitted changes)
            if self.is_initialized():
                self._check_committer_date()

    def close(self) -> None:
        self._drop()

    def _discard_uncommitted(self) -> None:
        """Make the working set HEAD again (after a crash between DDL and DOLT_COMMIT)."""
        if self._execute("SELECT COUNT(*) FROM dolt_status")[0][0]:
            self._log.warning("%s: discarding uncommitted changes left by an interrupted commit", self._where)
            self._execute("CALL DOLT_RESET('--hard')")
            self._execute("CALL DOLT_CLEAN()")

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
            for ddl in self.dialect.internal_ddl:
                self._execute(ddl)
            rows = self._execute(
                "CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', 'genesis')", [GENESIS_AUTHOR, GENESIS_DATE]
            )
        except BaseException:
            self._abandon()
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
        self._check_committer_date()

    # -- keys ----------------------------------------------------------------------------

    def text_key_limit(self, table: TableSchema) -> int | None:
        return text_key_chars(table)


class _BranchRoot:
    """Statements on the checkpoint branch; the current state read from its own branch."""

    def __init__(self, backend: DoltServerBackend, current: str) -> None:
        self._backend, self._current = backend, current

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._backend._execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))

    def source(self, table: str) -> str:
        return f"{self._current}.{quote(table)}"
