"""The contention measurement: a fresh peer materializes many ops on few hot keys, all four
strategies mixed (:mod:`.contention_ops`), against a raw insert of the final rows.

Beside the unique-key materialize run (:mod:`.materialize`), where every op makes a row,
here about ``ops / keys`` ops fold into each row, so the cost is the strategies' folds and
the row reads, not the inserts. Two baselines from the same run: the raw insert of the final
rows (the same four tables, created with the peer's own DDL, one ``executemany`` per table,
one Dolt commit), and the reference fold alone (the strategies applied op by op in plain
Python). The raw tables are filled from the reference fold, and every one of the peer's
tables must have the same ``dolt_hashof_table`` as its raw twin, and the peer's tombstones
must be the fold's deleted rows: otherwise the measurement fails.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from devtools.demo import demo_config
from materializer.backends.doltlite import DoltliteBackend
from oplog.topology import Topology
from peer.control import init_database, publish_schema

from .contention_ops import HOT_SCHEMA, HOT_TABLES, Folded, hot_wires, reference_fold
from .options import AUTHOR, Sizes
from .stats import rate
from .streams import connected, payload_of, seal
from .timed_materializer import materialize_once

PER_MSG = 1000


async def _prefill(js: JetStreamContext, topology: Topology, epochs: list[list[dict[str, Any]]]) -> None:
    """init, the four tables' schema, then each epoch's ops (one subject per table) and its seal."""
    await init_database(js, topology, demo_config(topology.db))
    await publish_schema(js, topology, HOT_SCHEMA)
    for epoch, wires in enumerate(epochs):
        futures = []
        for table in HOT_TABLES:
            mine = [w for w in wires if w["table"] == table]
            for start in range(0, len(mine), PER_MSG):
                chunk = mine[start : start + PER_MSG]
                futures.append(await js.publish_async(
                    topology.ops_subject(table), payload_of(chunk), stream=topology.stream,
                    headers={"Nats-Msg-Id": f"b-{chunk[0]['id']}-{len(chunk)}"},
                ))  # fmt: skip
        await asyncio.gather(*futures)
        await seal(js, topology, epoch)


def _raw_insert(peer_path: Path, raw_path: Path, folded: Folded) -> tuple[float, dict[str, str]]:
    """Create the four tables in a new file with the peer's DDL; time inserting the fold's rows
    and one Dolt commit. Returns the seconds and each raw table's hash."""
    src = sqlite3.connect(peer_path)
    try:
        ddl = dict(src.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN "
                               f"({', '.join('?' * len(HOT_TABLES))})", HOT_TABLES).fetchall())  # fmt: skip
    finally:
        src.close()
    conn = sqlite3.connect(raw_path, isolation_level=None)
    try:
        for name in HOT_TABLES:
            conn.execute(ddl[name])
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'schema')", (AUTHOR, "2000-01-01"))
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for name in HOT_TABLES:
            rows = folded.rows[name]
            if rows:
                conn.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(rows[0]))})', rows)
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'raw')", (AUTHOR, "2000-01-02"))
        conn.execute("COMMIT")
        seconds = time.perf_counter() - t0
        return seconds, {name: str(conn.execute("SELECT dolt_hashof_table(?)", (name,)).fetchone()[0])
                         for name in HOT_TABLES}  # fmt: skip
    finally:
        conn.close()


def _peer_state(backend: DoltliteBackend) -> dict[str, Any]:
    """The peer's table hashes, row counts, tombstones and applied/rejected totals."""
    with backend:
        conn = backend.conn
        tombstones: dict[str, dict[str, str]] = {name: {} for name in HOT_TABLES}
        for tbl, pk, meta in conn.execute("SELECT tbl, pk, meta FROM oplog_tombstones"):
            tombstones.setdefault(tbl, {})[pk] = meta
        applied, rejected = conn.execute("SELECT SUM(applied), SUM(rejected) FROM oplog_epochs").fetchone()
        return {
            "hashes": {name: backend.table_hash(name) for name in HOT_TABLES},
            "rows": {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in HOT_TABLES},
            "tombstones": tombstones,
            "applied": applied,
            "rejected": rejected,
            "head": backend.head(),
        }


async def measure_contention(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    """Materialize the hot-key workload on a fresh doltlite peer; raw insert and fold baselines."""
    n, keys, epochs = s.contention_ops, s.contention_keys, s.contention_epochs
    wires = await asyncio.to_thread(hot_wires, n, keys, epochs, rng)
    by_table = {t: sum(w["table"] == t for ws in wires for w in ws) for t in HOT_TABLES}
    result: dict[str, Any] = {"ops": n, "keys": keys, "epochs": epochs, "tables": list(HOT_TABLES),
                              "ops_by_table": by_table}  # fmt: skip
    async with connected(url) as nc:
        js = nc.jetstream()
        topology = Topology(db="hot")
        await _prefill(js, topology, wires)
        backend = DoltliteBackend(work / "hot.db")
        run = await materialize_once(js, topology, backend, epochs - 1)
    result.update(run)
    result["ops_per_s"] = rate(n, run["seconds"])
    t0 = time.perf_counter()
    folded = await asyncio.to_thread(reference_fold, wires)
    result["fold_s"] = time.perf_counter() - t0
    result["fold_ops_per_s"] = rate(n, result["fold_s"])
    result["fold_apply_s_by_table"] = folded.seconds_by_table
    peer = await asyncio.to_thread(_peer_state, backend)
    raw_s, raw_hashes = await asyncio.to_thread(_raw_insert, backend.path, work / "hot-raw.db", folded)
    final_rows = sum(len(r) for r in folded.rows.values())
    result.update({
        "final_rows": final_rows,
        "final_rows_by_table": {t: len(r) for t, r in folded.rows.items()},
        "tombstones": sum(len(t) for t in folded.tombstones.values()),
        "applied": peer["applied"],
        "rejected": peer["rejected"],
        "head": peer["head"],
        "raw_insert_s": raw_s,
        "raw_insert_rows_per_s": rate(final_rows, raw_s),
        "ratio_raw_over_materialize": run["seconds"] / raw_s,
        "ratio_fold_over_materialize": run["seconds"] / result["fold_s"],
        "table_hashes": peer["hashes"],
        "reference_hashes": raw_hashes,
    })  # fmt: skip
    mismatched = [t for t in HOT_TABLES if peer["hashes"][t] != raw_hashes[t]]
    if peer["tombstones"] != folded.tombstones:
        mismatched.append("oplog_tombstones")
    if (peer["applied"], peer["rejected"]) != (folded.applied, folded.rejected):
        mismatched.append(f"applied/rejected {peer['applied']}/{peer['rejected']}, "
                          f"the fold's {folded.applied}/{folded.rejected}")  # fmt: skip
    result["matches_reference"] = not mismatched
    if mismatched:
        raise AssertionError(f"contention: the peer differs from the reference fold in {mismatched}")
    return result
