"""Dolt sql-server's MySQL dialect for oplog: DDL, key limits, and the driver-error boundary.

Pure functions of schemas and exceptions (:class:`DoltServerDialect` for the commit steps of
:mod:`materializer.backends.sql`); :mod:`materializer.backends.dolt_server` does the I/O.

Types. Every value is stored in the canonical Python form :mod:`oplog.schema` normalizes to,
so a row read back compares equal to what the strategy wrote: ``decimal``, ``json`` and
``text`` as ``LONGTEXT`` (not ``DECIMAL``/``JSON``, which Dolt would re-render),
``timestamp`` as its fixed ``…T…Z`` text, ``boolean`` as 0/1, ``bytes`` as ``LONGBLOB``.
Text is ``utf8mb4`` with the binary, no-pad collation, as in SQLite: ``'a'``, ``'A'`` and
``'a '`` are three keys.

Text keys. MySQL and Dolt cannot index ``TEXT``; a text primary-key column is
``VARCHAR(n)`` with n = :func:`text_key_chars` (1024 characters, fewer only when a table
has more than 14 text key columns, because Dolt refuses a table whose fixed-width columns
exceed 65,504 bytes and counts 4 bytes per ``VARCHAR`` character). A longer key part, or an
integer key outside BIGINT, cannot be stored: :meth:`Backend.check_key` says so, so planning
can reject the op like any other bad key. Tombstones are keyed by the SHA-256 of the key's
canonical text for the same reason, with the text beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import pymysql

from materializer.backends.dialect import Dialect
from materializer.errors import BackendError, TransientBackendError
from materializer.plan import Key, key_text
from oplog.schema import Column, ColumnType, TableSchema

TEXT_KEY_CHARS = 1024
VARCHAR_BYTES_PER_CHAR = 4  # utf8mb4
KEY_BYTES_BUDGET = 60_000  # Dolt's fixed-width limit is 65,504 bytes per table; keep room for the rest
TABLE_OPTIONS = " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_bin"
MAX_ERROR_CHARS = 600  # Dolt echoes whole values in its messages

SQL_TYPES = {
    ColumnType.INTEGER: "BIGINT",
    ColumnType.DECIMAL: "LONGTEXT",
    ColumnType.FLOAT: "DOUBLE",
    ColumnType.TEXT: "LONGTEXT",
    ColumnType.BOOLEAN: "BOOLEAN",
    ColumnType.JSON: "LONGTEXT",
    ColumnType.BYTES: "LONGBLOB",
    ColumnType.TIMESTAMP: "VARCHAR(32)",
}

INTERNAL_DDL = tuple(
    ddl + TABLE_OPTIONS
    for ddl in (
        """CREATE TABLE oplog_epochs (epoch BIGINT PRIMARY KEY, first_epoch BIGINT NOT NULL,
           seal_seq BIGINT NOT NULL, resume_seq BIGINT NOT NULL, end_ms BIGINT NOT NULL,
           applied BIGINT NOT NULL, rejected BIGINT NOT NULL, duplicates BIGINT NOT NULL,
           late BIGINT NOT NULL, digest VARCHAR(64) NOT NULL)""",
        """CREATE TABLE oplog_rejections (seq BIGINT NOT NULL, idx BIGINT NOT NULL,
           epoch BIGINT NOT NULL, op_id LONGTEXT, reason VARCHAR(64) NOT NULL, detail LONGTEXT NOT NULL,
           payload LONGTEXT NOT NULL, PRIMARY KEY (seq, idx))""",
        """CREATE TABLE oplog_op_ids (id VARCHAR(200) PRIMARY KEY, digest VARCHAR(64) NOT NULL,
           epoch BIGINT NOT NULL, INDEX oplog_op_ids_epoch (epoch))""",
        """CREATE TABLE oplog_tables (name VARCHAR(64) PRIMARY KEY, definition LONGTEXT NOT NULL,
           epoch BIGINT NOT NULL)""",
        """CREATE TABLE oplog_config (seq BIGINT PRIMARY KEY, body LONGTEXT NOT NULL, epoch BIGINT NOT NULL)""",
        """CREATE TABLE oplog_tombstones (tbl VARCHAR(64) NOT NULL, pk_hash CHAR(64) NOT NULL,
           pk LONGTEXT NOT NULL, meta LONGTEXT NOT NULL, PRIMARY KEY (tbl, pk_hash))""",
    )
)

# Connection-level failures and lock conflicts: a new connection or a second try can help.
TRANSIENT_CODES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock / Dolt's serialization failure
        2003,  # cannot connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (system error)
    }
)


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def text_key_chars(table: TableSchema) -> int:
    """How many characters each text primary-key column of ``table`` holds (its VARCHAR width)."""
    types = {c.name: c.type for c in table.columns}
    texts = sum(1 for name in table.primary_key if types[name] is ColumnType.TEXT)
    if texts == 0:
        return TEXT_KEY_CHARS
    return min(TEXT_KEY_CHARS, KEY_BYTES_BUDGET // (VARCHAR_BYTES_PER_CHAR * texts))


def key_hash(key: Key) -> str:
    """The tombstone row id of ``key``: SHA-256 of its canonical text."""
    return hashlib.sha256(key_text(key).encode()).hexdigest()


class DoltServerDialect(Dialect):
    """MySQL's spelling, as Dolt sql-server serves it."""

    name = "dolt-server"
    upsert = "REPLACE INTO"
    call = "CALL"
    head_sql = "SELECT HASHOF('HEAD')"
    meta_type = "LONGTEXT"
    table_options = TABLE_OPTIONS
    ddl_in_transaction = False  # MySQL DDL commits the transaction implicitly
    # Dolt serves IN lists of ~100 keys fastest (measured 20-35 vs 60-130 µs per key at 400).
    read_chunk = 100
    lookup_chunk = 5_000  # keys per JSON_TABLE lookup (match): about 10 µs a key, a 5 MB statement at most
    op_id_type = "VARCHAR(200)"
    tombstone_table_type = "VARCHAR(64)"
    tombstone_id_type = "CHAR(64)"
    internal_ddl = INTERNAL_DDL
    tombstone_columns = ("tbl", "pk_hash", "pk", "meta")
    tombstone_id_column = "pk_hash"

    def quote(self, name: str) -> str:
        return quote(name)

    def column_type(self, table: TableSchema, column: Column) -> str:
        if column.type is ColumnType.TEXT and column.name in table.primary_key:
            return f"VARCHAR({text_key_chars(table)})"
        return SQL_TYPES[column.type]

    def keys_where(self, table: TableSchema, count: int) -> str:
        """A single column uses ``IN``; a composite key an ``OR`` of ``AND``s, which Dolt
        serves from the primary index (its row-constructor ``IN`` scans)."""
        pk = table.primary_key
        if len(pk) == 1:
            return f"{quote(pk[0])} IN ({', '.join('?' * count)})"
        one = "(" + " AND ".join(f"{quote(c)} = ?" for c in pk) + ")"
        return " OR ".join([one] * count)

    def match(
        self, source: str, columns: Sequence[tuple[str, str]], keys: Sequence[Sequence[Any]], fixed: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """The keys as one JSON parameter, a ``JSON_TABLE`` joined to ``source`` on its key.

        Dolt serves an ``IN`` list in time that grows faster than its length (10,000 keys:
        9.5 s in one list, 0.40 s in lists of 100), and a row-constructor ``IN`` by a scan.
        The join is one statement with one parameter, served from the primary index: 0.1 s
        for 10,000 keys, alike in tables of 20,000 and 200,000 rows. Every key part travels
        as a JSON *string* that the column's own type converts: Dolt reads a JSON number as
        a double, which would round an integer past 2**53 (to another key's row).
        """
        spec = ", ".join(f"k{i} {sql_type} PATH '$[{i}]'" for i, (_, sql_type) in enumerate(columns))
        on = " AND ".join(f"t.{quote(name)} = j.k{i}" for i, (name, _) in enumerate(columns))
        lead = [str(part) for part in fixed]
        rows = [[*lead, *(str(part) for part in key)] for key in keys]
        source_sql = f"FROM JSON_TABLE(?, '$[*]' COLUMNS({spec})) AS j JOIN {source} AS t ON {on}"
        return source_sql, [orjson.dumps(rows).decode()]

    def tombstone_id(self, key: Key) -> str:
        return key_hash(key)

    def tombstone_row(self, table: str, key: Key, meta: str) -> tuple[Any, ...]:
        text = key_text(key)
        return (table, hashlib.sha256(text.encode()).hexdigest(), text, meta)


DIALECT = DoltServerDialect()


def map_error(error: pymysql.err.MySQLError, where: str) -> BackendError:
    """Our error for a pymysql error (the caller raises it ``from`` the original)."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    text = str(error.args[1]) if len(error.args) > 1 else str(error)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"… ({len(text)} characters)"
    detail = f"{where}: {type(error).__name__}({code}): {text}" if code is not None else f"{where}: {text}"
    connection_lost = isinstance(error, (pymysql.err.InterfaceError, pymysql.err.InternalError))
    if connection_lost or (isinstance(error, pymysql.err.OperationalError) and code in TRANSIENT_CODES):
        return TransientBackendError(f"{detail}; retry")
    return BackendError(detail)
