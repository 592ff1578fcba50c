"""The read side: read-your-writes, each epoch as it was committed, and what changed between two.

Readers query a peer's Dolt database with plain SQL (docs/reading.md has both dialects and
a real session). These helpers take either a backend (they open their own connection, so
they never share the materializer's) or a DB-API connection a reader already has: a
``sqlite3`` connection to a doltlite file, or a pymysql connection to a dolt sql-server,
which must be in autocommit mode (a transaction keeps showing the snapshot it began with).

* :func:`wait_for_epoch` — read-your-writes from a producer receipt (decisions.md #16):
  wait until a commit exists whose epoch is at least ``receipt.epoch`` and whose seal comes
  after ``receipt.stream_seq`` in the stream; then the op is in it, applied or rejected.
* :func:`rows_at_epoch` — a table as epoch ``k`` committed it. Epoch ``k``'s commit is found
  one way on both backends: the commit whose message's first line is ``epoch <k>``
  (:mod:`materializer.metadata`; no tags are kept, docs/decisions.md #28 and #41). It is
  read with ``SELECT * FROM t AS OF '<hash>'`` on Dolt sql-server and
  ``dolt_at_t('<hash>')`` on doltlite, which has no ``AS OF``. An epoch closed together
  with later ones (one seal for several epochs) has no commit of its own: read the commit
  that closed it.
* :func:`diff_epochs` — row changes between two epochs: the two snapshots compared by primary
  key, written once for both backends (doltlite's ``dolt_diff_<t>`` holds only
  parent-to-child steps, and sql-server's ``dolt_diff()`` names its columns ``to_<c>``, which
  a user column called ``commit`` would collide with).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pymysql

from materializer.backends.base import Backend
from materializer.backends.dolt_server_sql import map_error
from materializer.errors import BackendError, MaterializerError, TransientBackendError
from materializer.metadata import EPOCH_MESSAGE_PREFIX
from materializer.plan import EpochRow
from oplog.op import TABLE_NAME
from oplog.schema import TableSchema

Dialect = Literal["doltlite", "dolt-server"]
DEFAULT_POLL_S = 0.05
_EPOCH_COLUMNS = "epoch, first_epoch, seal_seq, resume_seq, end_ms, applied, rejected, duplicates, late, digest"


class EpochNotCommitted(MaterializerError, TimeoutError):
    """No commit covered the receipt before the deadline (the epoch is not sealed yet, or
    this peer is behind). ``last`` is the newest commit seen, if any."""

    retryable = True

    def __init__(self, epoch: int, seq: int, waited_s: float, last: EpochRow | None) -> None:
        at = f"epoch {last.epoch} (seal seq {last.seal_seq})" if last else "no epoch commit"
        super().__init__(
            f"no commit of epoch >= {epoch} sealed after stream seq {seq} within {waited_s:.3g} s; this peer is at {at}"
        )
        self.epoch, self.seq, self.waited_s, self.last = epoch, seq, waited_s, last


@dataclass(frozen=True)
class RowChange:
    """One row's change between two epochs; ``before``/``after`` are None when absent."""

    diff_type: Literal["added", "modified", "removed"]
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class _Reader:
    """One connection in one dialect; driver errors mapped to ours."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn, self.dialect = conn, dialect

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            if self.dialect == "doltlite":
                cur = self.conn.execute(sql, params)
                return [d[0] for d in cur.description or ()], cur.fetchall()
            with self.conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params or None)
                return [d[0] for d in cur.description or ()], list(cur.fetchall())
        except pymysql.err.MySQLError as e:
            raise map_error(e, "dolt-server reader") from e
        except Exception as e:
            if type(e).__module__ != "sqlite3":
                raise
            message = f"doltlite reader: {e}"
            locked = "locked" in str(e) or "busy" in str(e)
            raise (TransientBackendError(message) if locked else BackendError(message)) from e

    def schema(self, table: str) -> TableSchema:
        _, rows = self.query("SELECT definition FROM oplog_tables WHERE name = ?", (table,))
        if not rows:
            raise BackendError(f"no table {table!r} is declared in this database")
        return TableSchema.model_validate_json(rows[0][0])


@contextmanager
def _reading(target: Backend | Any) -> Iterator[_Reader]:
    """A reader on ``target``: a new connection for a backend (closed after), else the given one."""
    module = type(target).__module__
    if isinstance(target, Backend):
        if target.name == "doltlite":
            import sqlite3  # doltlite is imported already: this backend imported it first

            conn: Any = sqlite3.connect(target.path, isolation_level=None, check_same_thread=False)  # type: ignore[attr-defined]
            conn.execute("PRAGMA busy_timeout = 10000")
            dialect: Dialect = "doltlite"
        else:
            conn, dialect = target.connect(target.database), "dolt-server"  # type: ignore[attr-defined]
        try:
            yield _Reader(conn, dialect)
        finally:
            conn.close()
    elif module == "sqlite3":
        if target.in_transaction:
            raise ValueError("the sqlite3 connection is inside a transaction, which would hide new commits")
        yield _Reader(target, "doltlite")
    elif module.startswith("pymysql"):
        if not target.get_autocommit():
            raise ValueError("connect with autocommit=True: a transaction keeps showing the snapshot it began with")
        yield _Reader(target, "dolt-server")
    else:
        raise TypeError(f"expected a Backend, a sqlite3 or a pymysql connection; got {type(target).__name__}")


def _covering(reader: _Reader, epoch: int, seq: int) -> tuple[EpochRow | None, EpochRow | None]:
    """(the first commit covering the receipt, the newest commit) — either may be None."""
    _, rows = reader.query(
        f"SELECT {_EPOCH_COLUMNS} FROM oplog_epochs WHERE epoch >= ? AND seal_seq > ? ORDER BY epoch LIMIT 1",
        (epoch, seq),
    )
    if rows:
        return EpochRow(*rows[0]), None
    _, rows = reader.query(f"SELECT {_EPOCH_COLUMNS} FROM oplog_epochs ORDER BY epoch DESC LIMIT 1")
    return None, (EpochRow(*rows[0]) if rows else None)


def wait_for_epoch(
    target: Backend | Any,
    receipt_epoch: int,
    receipt_seq: int,
    timeout: float,
    *,
    poll_s: float = DEFAULT_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> EpochRow:
    """Block until a commit covers the receipt; return its progress row.

    Raises :class:`EpochNotCommitted` once ``timeout`` seconds have passed (checked once
    more at the deadline). A locked or lost connection counts as "not yet"."""
    deadline = clock() + timeout
    last: EpochRow | None = None
    with _reading(target) as reader:
        while True:
            try:
                found, last = _covering(reader, receipt_epoch, receipt_seq)
            except TransientBackendError:
                found = None
            if found is not None:
                return found
            remaining = deadline - clock()
            if remaining <= 0:
                raise EpochNotCommitted(receipt_epoch, receipt_seq, timeout, last)
            sleep(min(poll_s, remaining))


async def wait_for_epoch_async(
    target: Backend | Any, receipt_epoch: int, receipt_seq: int, timeout: float, *, poll_s: float = DEFAULT_POLL_S
) -> EpochRow:
    """:func:`wait_for_epoch` for event loops: queries run in a worker thread, waits do not block."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: EpochRow | None = None
    with _reading(target) as reader:
        while True:
            try:
                found, last = await asyncio.to_thread(_covering, reader, receipt_epoch, receipt_seq)
            except TransientBackendError:
                found = None
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EpochNotCommitted(receipt_epoch, receipt_seq, timeout, last)
            await asyncio.sleep(min(poll_s, remaining))


# The commit of epoch k, found by its message on both backends (materializer.metadata).
EPOCH_COMMIT_SQL = "SELECT commit_hash FROM dolt_log WHERE message LIKE ?"
# A table at a commit: sql-server reads it AS OF the hash, doltlite through its table function.
AT_COMMIT_SQL = {"doltlite": "SELECT * FROM dolt_at_{table}(?)", "dolt-server": "SELECT * FROM `{table}` AS OF ?"}


def epoch_commit(reader: _Reader, epoch: int) -> str:
    """The hash of epoch ``epoch``'s commit; BackendError if it has none."""
    _, rows = reader.query(EPOCH_COMMIT_SQL, (f"{EPOCH_MESSAGE_PREFIX}{int(epoch)}\n%",))
    if not rows:
        raise BackendError(
            f"no commit of epoch {epoch}: it is not committed yet, or it was closed together with a "
            "later epoch (one seal for several epochs), whose commit holds it"
        )
    return str(rows[0][0])


def _check_name(table: str) -> None:
    # Table names are interpolated into SQL (a table function's name, AS OF): only real names.
    if not TABLE_NAME.match(table):
        raise ValueError(f"not a table name: {table!r}")


def _key(schema: TableSchema, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in schema.primary_key)


def _rows_at(reader: _Reader, schema: TableSchema, epoch: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    commit = epoch_commit(reader, epoch)  # fails with a message for an epoch without a commit of its own
    columns, rows = reader.query(AT_COMMIT_SQL[reader.dialect].format(table=schema.name), (commit,))
    found = (dict(zip(columns, row, strict=True)) for row in rows)
    return {_key(schema, row): row for row in found}


def rows_at_epoch(target: Backend | Any, table: str, epoch: int) -> list[dict[str, Any]]:
    """Every row of ``table`` at epoch ``epoch``'s commit, in primary-key order."""
    _check_name(table)
    with _reading(target) as reader:
        rows = _rows_at(reader, reader.schema(table), epoch)
    return [rows[key] for key in sorted(rows)]


def diff_epochs(target: Backend | Any, table: str, from_epoch: int, to_epoch: int) -> list[RowChange]:
    """How ``table`` changed from epoch ``from_epoch`` to ``to_epoch``, in primary-key order."""
    _check_name(table)
    with _reading(target) as reader:
        schema = reader.schema(table)
        before, after = _rows_at(reader, schema, from_epoch), _rows_at(reader, schema, to_epoch)
    changes = [
        RowChange("removed" if key not in after else "added" if key not in before else "modified",
                  before.get(key), after.get(key))
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    ]  # fmt: skip
    return sorted(changes, key=lambda c: _key(schema, c.after if c.after is not None else c.before))  # type: ignore[arg-type]
