"""``oplog schema apply --dry-run``: a schema message applied to a scratch copy of a peer's database.

Nothing is published, and the peer's database is never written. The message is planned
exactly as a peer would plan it at the next epoch boundary (:func:`materializer.plan.plan_epoch`,
an epoch with no ops), and the plan is committed into the copy, so the DDL and the rows it
rewrites run on the real engine and the real data:

* doltlite (:func:`doltlite_copy`): the peer's tables are copied, inside one read
  transaction (a snapshot), into a new doltlite file in a temporary directory, deleted
  afterwards. The peer's file is only read.
* Dolt sql-server (:func:`dolt_server_branch`): a branch ``oplog-dry-run-<random>`` of the
  peer's database at its HEAD, written through the revision database ``<db>/<branch>``,
  and deleted afterwards. The peer's own branch and working set are never touched; while
  the dry run lasts, ``dolt_branches`` lists one more branch (and a Dolt backup taken
  meanwhile would carry it).

What it tells (:class:`DryRun`): whether the peers would refuse the message, and why (the
``schema`` rejection they would record); per change, what it does to the stored rows
(:class:`~materializer.schema_change.ChangeReport`: values converted, values the rule does
not take, with the first keys); per table, its columns and row count before and after.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import doltlite  # noqa: F401  (before sqlite3 is used; as in materializer.backends.doltlite)

from epoch.assign import Control, SealedEpoch
from epoch.config import DatabaseConfig
from materializer.backends.doltlite import DoltliteBackend
from materializer.backends.sql import SqlBackend
from materializer.errors import BackendError
from materializer.plan import plan_epoch
from materializer.schema_change import ChangeReport
from oplog.codec import canonical_json
from oplog.schema import TableSchema

BRANCH_PREFIX = "oplog-dry-run-"
log = logging.getLogger("oplog.schema")
READ_TIMEOUT_S = 30.0  # waiting for the peer's file to be readable (a lock held elsewhere)
COPY_BATCH = 1000  # rows read and inserted at a time while copying the peer's state


@dataclass(frozen=True)
class TableOutcome:
    """One table the message touches: its columns and rows before and after (None: absent)."""

    name: str
    columns_before: tuple[str, ...] | None
    columns_after: tuple[str, ...] | None
    rows_before: int | None
    rows_after: int | None


@dataclass(frozen=True)
class DryRun:
    """What a schema message would do to one peer's database."""

    where: str  # the copy it was applied to
    epoch: int | None  # the last epoch committed in that copy (None: none yet)
    refused: str | None  # the reason the peers would record, or None if they would apply it
    changes: tuple[ChangeReport, ...]
    tables: tuple[TableOutcome, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON document (``--json``)."""
        return {
            "where": self.where,
            "epoch": self.epoch,
            "applies": self.refused is None,
            "refused": self.refused,
            "changes": [
                {"table": c.table, "change": c.change, "column": c.column, "detail": c.detail, "rows": c.rows,
                 "converted": c.converted, "not_converted": c.not_converted, "examples": [list(k) for k in c.examples]}
                for c in self.changes
            ],
            "tables": [
                {"name": t.name, "columns_before": t.columns_before, "columns_after": t.columns_after,
                 "rows_before": t.rows_before, "rows_after": t.rows_after}
                for t in self.tables
            ],
        }  # fmt: skip

    def lines(self) -> list[str]:
        """The report as text for an operator."""
        at = "no epoch committed yet" if self.epoch is None else f"epoch {self.epoch}"
        out = [f"dry run on {self.where} ({at}); nothing was published, the peer's database is unchanged"]
        for c in self.changes:
            line = f"  {c.table}: {c.change}{' ' + c.column if c.column else ''} {c.detail}".rstrip()
            if c.rows is not None:
                line += f": {c.rows} rows"
                if c.change == "retype_column":
                    line += f", {c.converted} values converted, {c.not_converted} do not convert"
                    if c.examples:
                        line += " (keys " + ", ".join(canonical_json(list(k)) for k in c.examples) + ")"
            out.append(line)
        for t in self.tables:
            before = "absent" if t.columns_before is None else f"{t.rows_before} rows ({', '.join(t.columns_before)})"
            after = "absent" if t.columns_after is None else f"{t.rows_after} rows ({', '.join(t.columns_after)})"
            out.append(f"  table {t.name}: before {before}; after {after}")
        if self.refused is None:
            out.append("the peers would apply it at the next epoch boundary")
        else:
            out.append(f"REFUSED: the peers would record it as rejected (reason schema): {self.refused}")
        return out


def dry_run(backend: SqlBackend, body: Any, where: str) -> DryRun:
    """Plan schema message ``body`` as the next epoch of ``backend`` (a scratch copy, open)
    and commit it there; report what it did. ``where`` names the copy in the report."""
    tables = backend.tables()
    last = backend.last_epoch()
    epoch = 0 if last is None else last.epoch + 1
    seq = 1 if last is None else last.resume_seq
    end_ms = 0 if last is None else last.end_ms + 1
    # The commit's author and date do not matter: the copy is thrown away.
    sealed = SealedEpoch(epoch=epoch, first_epoch=epoch, seal_seq=seq, resume_seq=seq + 1, end_ms=end_ms,
                         config=DatabaseConfig(db="dry-run", origin_ms=0), ops=(), rejected=(),
                         controls=(Control(seq, "schema", body),))  # fmt: skip
    reports: list[ChangeReport] = []
    plan = plan_epoch(sealed, tables, backend, report=reports)
    refused = next((r.detail for r in plan.rejections if r.seq == seq), None)
    touched = sorted(dict.fromkeys(r.table for r in reports if r.table))
    before = {name: _count(backend, tables[name]) for name in touched if name in tables}
    backend.commit_epoch(plan)
    after_tables = backend.tables()
    outcomes = tuple(
        TableOutcome(
            name,
            _names(tables.get(name)),
            _names(after_tables.get(name)),
            before.get(name),
            _count(backend, after_tables[name]) if name in after_tables else None,
        )
        for name in touched
    )
    return DryRun(where, None if last is None else last.epoch, refused, tuple(reports), outcomes)


def _names(table: TableSchema | None) -> tuple[str, ...] | None:
    return None if table is None else tuple(f"{c.name} {c.type.value}" for c in table.columns)


def _count(backend: SqlBackend, table: TableSchema) -> int:
    return int(backend._query(f"SELECT COUNT(*) FROM {backend.dialect.quote(table.name)}")[0][0])


@contextmanager
def doltlite_copy(path: Path) -> Iterator[tuple[DoltliteBackend, str]]:
    """A scratch doltlite database holding the state of the one at ``path``, open; deleted
    on the way out.

    The peer's file is read, never written, inside one read transaction: a snapshot, so a
    commit the peer makes meanwhile is either wholly in the copy or not at all (doltlite
    does not make a writer wait for readers, so copying the file's bytes could catch a
    commit half-way). The copy has the peer's tables and bookkeeping as of its last
    commit, not its history, which a dry run does not need.
    """
    if not path.is_file():
        raise BackendError(f"no database file {path} (is --data-dir the peer's data directory and --db its database?)")
    with tempfile.TemporaryDirectory(prefix="oplog-dry-run-") as scratch:
        try:
            source = sqlite3.connect(f"file:{url_quote(str(path.resolve()))}?mode=ro", uri=True,
                                     isolation_level=None, timeout=READ_TIMEOUT_S)  # fmt: skip
        except sqlite3.Error as e:
            raise BackendError(f"cannot read {path} as a doltlite database: {e}") from None
        backend = DoltliteBackend(Path(scratch) / path.name)
        try:
            backend.create_genesis()  # the bookkeeping tables, empty
            backend.open()
            _copy_state(source, backend, path)
            yield backend, f"a copy of {path}"
        finally:
            backend.close()
            source.close()


def _copy_state(source: sqlite3.Connection, backend: DoltliteBackend, path: Path) -> None:
    from materializer.backends.base import META_COLUMN

    dialect = backend.dialect
    conn = backend.conn
    try:
        source.execute("BEGIN")  # one snapshot for every read below
        if not source.execute("SELECT 1 FROM sqlite_master WHERE name = 'oplog_epochs'").fetchall():
            raise BackendError(f"{path} holds no oplog database")
        definitions = source.execute("SELECT definition FROM oplog_tables ORDER BY name").fetchall()
        tables = [TableSchema.model_validate_json(definition) for (definition,) in definitions]
        conn.execute("BEGIN")
        # The bookkeeping tables (the scratch genesis made them empty, alike).
        internal = source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'oplog!_%' ESCAPE '!' ORDER BY name"
        ).fetchall()
        copies = [(name, "*") for (name,) in internal]
        for table in tables:
            conn.execute(dialect.create_table_sql(table))
            copies.append(
                (table.name, ", ".join(dialect.quote(c) for c in (*(c.name for c in table.columns), META_COLUMN)))
            )
        for name, columns in copies:
            cursor = source.execute(f"SELECT {columns} FROM {dialect.quote(name)}")
            width = len(cursor.description)
            insert = f"INSERT INTO {dialect.quote(name)}{'' if columns == '*' else f' ({columns})'} VALUES ({', '.join('?' * width)})"
            while batch := cursor.fetchmany(COPY_BATCH):
                conn.executemany(insert, batch)
        conn.execute("SELECT dolt_commit('-A', '-m', 'oplog dry run: a copy of the peer''s state')")
        conn.execute("COMMIT")
        source.execute("COMMIT")
    except sqlite3.Error as e:
        raise BackendError(f"cannot copy {path} for the dry run: {e}") from None


@contextmanager
def dolt_server_branch(
    *, host: str, port: int, user: str, password: str, database: str
) -> Iterator[tuple[SqlBackend, str]]:
    """A branch of ``database`` on the dolt sql-server at ``host:port``, as an open backend
    on its revision database; the branch is deleted on the way out."""
    from materializer.backends.dolt_server import DoltServerBackend
    from materializer.backends.dolt_server_sql import quote

    class BranchBackend(DoltServerBackend):
        """The revision database ``<db>/<branch>``: not listed among the server's schemas,
        and never compared with any peer's hashes, so no committer-date probe."""

        def _exists(self) -> bool:
            return True

        def open(self) -> None:
            self.conn  # noqa: B018  (connects and enters the branch)

        def is_initialized(self) -> bool:
            return bool(self._query("SHOW TABLES LIKE 'oplog_epochs'"))

    branch = BRANCH_PREFIX + secrets.token_hex(4)
    main = DoltServerBackend(host=host, port=port, user=user, password=password, database=database)
    admin = main.connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"USE {quote(database)}")
            cur.execute("CALL DOLT_BRANCH(%s, 'HEAD')", (branch,))
    except Exception as e:
        admin.close()
        raise BackendError(f"dolt-server {host}:{port}/{database}: cannot make a scratch branch: {e}") from None
    backend = BranchBackend(host=host, port=port, user=user, password=password, database=f"{database}/{branch}")
    failed = False
    try:
        backend.open()
        if not backend.is_initialized():
            raise BackendError(f"dolt-server {host}:{port}/{database} holds no oplog database")
        yield backend, f"branch {branch} of {database} on dolt sql-server {host}:{port}"
    except BaseException:
        failed = True
        raise
    finally:
        backend.close()
        try:
            with admin.cursor() as cur:
                cur.execute("CALL DOLT_BRANCH('-D', %s)", (branch,))
        except Exception as e:
            # Said, never raised over the dry run's own error.
            problem = BackendError(
                f"dolt-server {host}:{port}/{database}: could not delete the scratch branch {branch} ({e}); "
                f"delete it by hand: CALL DOLT_BRANCH('-D', '{branch}')"
            )
            if not failed:
                raise problem from None
            log.warning("%s", problem)
        finally:
            admin.close()
