"""The baselines of the materialize measurement: the peer's final rows inserted by hand into a
fresh ``users`` table, one ``executemany`` in one transaction and one Dolt commit.

Each function takes a DB-API cursor (sqlite3 on a doltlite file, or pymysql on a sql-server)
and times only the insert and its commit, not the table's creation.

:func:`floor_into_doltlite` is the second baseline: the least a peer must do for the same ops
in the stored format, in Python, with nothing else (see its docstring).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from devtools.demo import TABLE, USERS_TABLE
from materializer.backends import dolt_server_sql, doltlite

from .options import AUTHOR


def _timed_insert(cur: Any, rows: list[tuple[Any, ...]], *, begin: str, insert: str, dolt_commit: str) -> float:
    """Seconds for ``begin``, ``insert`` of every row (one executemany), ``dolt_commit`` and COMMIT."""
    t0 = time.perf_counter()
    cur.execute(begin)
    cur.executemany(insert, rows)
    cur.execute(dolt_commit, (AUTHOR, "2000-01-02"))
    cur.execute("COMMIT")
    return time.perf_counter() - t0


def _check_count(cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    (count,) = cur.fetchone()
    assert count == len(rows), (count, len(rows))


def into_doltlite(cur: Any, rows: list[tuple[Any, ...]]) -> float:
    """Create ``users`` on the cursor's doltlite file and time inserting ``rows`` into it."""
    table = doltlite.quote(TABLE)
    cur.execute(doltlite.DIALECT.create_table_sql(USERS_TABLE))
    cur.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'schema')", (AUTHOR, "2000-01-01"))
    marks = ", ".join("?" * len(rows[0]))
    seconds = _timed_insert(cur, rows, begin="BEGIN IMMEDIATE", insert=f"INSERT INTO {table} VALUES ({marks})",
                            dolt_commit="SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'raw')")  # fmt: skip
    _check_count(cur, table, rows)
    return seconds


def into_dolt_server(cur: Any, database: str, rows: list[tuple[Any, ...]]) -> float:
    """Create database ``database`` with ``users`` on the cursor's server and time inserting ``rows``
    (pymysql's executemany sends multi-row INSERT statements)."""
    table = dolt_server_sql.quote(TABLE)
    cur.execute(f"CREATE DATABASE {dolt_server_sql.quote(database)}")
    cur.execute(f"USE {dolt_server_sql.quote(database)}")
    cur.execute(dolt_server_sql.DIALECT.create_table_sql(USERS_TABLE))
    cur.execute("CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', 'schema')", (AUTHOR, "2000-01-01"))
    marks = ", ".join(["%s"] * len(rows[0]))
    seconds = _timed_insert(cur, rows, begin="START TRANSACTION", insert=f"INSERT INTO {table} VALUES ({marks})",
                            dolt_commit="CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', 'raw')")  # fmt: skip
    _check_count(cur, table, rows)
    return seconds


def floor_into_doltlite(cur: Any, payloads: list[tuple[int, bytes]]) -> float:
    """Seconds for the work the stored format itself asks of a peer, for the ops in ``payloads``
    (batch messages, each with its epoch).

    That is: decode each batch message, hash each op's canonical bytes (its digest, which
    ``oplog_op_ids`` stores and the dedup compares), render each row's meta (the winning
    stamp, as canonical JSON), then insert the ``users`` rows and the ``oplog_op_ids`` rows
    (with their epoch index) in one transaction and one Dolt commit. Nothing else: no
    validation, no HLC order, no fold, no reads, one commit for all epochs. Demo upserts of
    unique keys only (what :func:`devtools.bench.streams.prefill` writes). The figure bounds
    from below what any per-op Python materializer of this format can reach here.
    """
    dialect = doltlite.DIALECT
    cur.execute(dialect.create_table_sql(USERS_TABLE))
    for ddl in dialect.internal_ddl:
        if "oplog_op_ids" in ddl:
            cur.execute(ddl)
    cur.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'schema')", (AUTHOR, "2000-01-01"))
    table = doltlite.quote(TABLE)
    sort_keys, sha256, loads, dumps = orjson.OPT_SORT_KEYS, hashlib.sha256, orjson.loads, orjson.dumps
    t0 = time.perf_counter()
    cur.execute("BEGIN IMMEDIATE")
    for epoch, payload in payloads:
        rows, ids = [], []
        for op in loads(payload)["ops"]:
            digest = sha256(dumps(op, option=sort_keys)).hexdigest()
            data = op["data"]
            rows.append((op["key"][0], data["name"], data["score"], dumps({"v": [*op["hlc"], op["id"]]}).decode()))
            ids.append((op["id"], digest, epoch))
        cur.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", rows)
        cur.executemany("INSERT INTO oplog_op_ids (id, digest, epoch) VALUES (?, ?, ?)", ids)
    cur.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'floor')", (AUTHOR, "2000-01-02"))
    cur.execute("COMMIT")
    seconds = time.perf_counter() - t0
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    (count,) = cur.fetchone()
    assert count == sum(len(loads(p)["ops"]) for _, p in payloads), count
    return seconds

