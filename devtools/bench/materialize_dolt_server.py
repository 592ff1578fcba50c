"""The materialize measurement on Dolt sql-server: one peer's throughput against a raw insert.

The bench starts a private ``dolt sql-server`` with the committer date every peer's server
runs with (``materializer.backends.dolt_server_launcher``, docs/dolt-server.md). A fresh
:class:`Materializer` on :class:`DoltServerBackend` reads a prefilled stream, timed from
``start()`` (genesis included) to the last epoch's commit, as on doltlite. The baseline
inserts the same final rows into another database of the same server: pymysql's
``executemany`` (multi-row ``INSERT`` statements) in one transaction, then one
``DOLT_COMMIT``. The server is stopped on every way out, and every wait has a deadline:
the server's start-up, the materializer run, and each statement of the bench's own
connections.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from devtools.demo import TABLE
from materializer.backends.dolt_server import DEFAULT_COMMITTER_DATE, DoltServerBackend
from materializer.backends.dolt_server_launcher import DoltServer, DoltServerError
from materializer.backends.dolt_server_sql import quote
from oplog.topology import Topology

from .options import Sizes
from .raw_insert import into_dolt_server
from .stats import rate
from .streams import prefill
from .timed_materializer import materialize_once

SERVER_START_TIMEOUT_S = 60.0
STATEMENT_TIMEOUT_S = 300.0  # read and write timeout of the bench's own connections


def _connect(server: DoltServer, database: str | None = None) -> Any:
    return server.connect(database, read_timeout=STATEMENT_TIMEOUT_S, write_timeout=STATEMENT_TIMEOUT_S)


def _final_rows(server: DoltServer, database: str) -> tuple[list[tuple[Any, ...]], str, str]:
    """The materialized ``users`` rows, HEAD, and the server's dolt version."""
    with _connect(server, database) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {quote(TABLE)} ORDER BY 1")
        rows = list(cur.fetchall())
        cur.execute("SELECT HASHOF('HEAD'), dolt_version()")
        head, version = cur.fetchone()
    return rows, str(head), str(version)


def _raw_insert(server: DoltServer, database: str, rows: list[tuple[Any, ...]]) -> float:
    with _connect(server) as conn, conn.cursor() as cur:
        return into_dolt_server(cur, database, rows)


async def measure_dolt_server(
    js: JetStreamContext, topology: Topology, s: Sizes, work: Path, rng: random.Random
) -> dict[str, Any]:
    """Fill ``topology``'s stream, materialize it on a new sql-server, then the raw insert;
    ``{"skipped": why}`` if there is no dolt binary."""
    n, epochs = s.materialize_ops, s.materialize_epochs
    try:
        server = DoltServer(work / "dolt-server", committer_date=DEFAULT_COMMITTER_DATE,
                            start_timeout=SERVER_START_TIMEOUT_S)  # fmt: skip
    except DoltServerError as e:  # no dolt binary; the message says how to install one
        return {"skipped": str(e)}
    try:
        await prefill(js, topology, n, epochs, rng)
        server.start()
        backend = DoltServerBackend(host=server.host, port=server.port, database=topology.db,
                                    snapshot_dir=work / "dolt-snapshots")  # fmt: skip
        run = await materialize_once(js, topology, backend, epochs - 1)
        rows, head, version = await asyncio.to_thread(_final_rows, server, topology.db)
        assert len(rows) == n, (len(rows), n)
        raw_s = await asyncio.to_thread(_raw_insert, server, f"{topology.db}_raw", rows)
    finally:
        server.stop()
    return {
        **run,
        "ops_per_s": rate(n, run["seconds"]),
        "head": head,
        "dolt_version": version,
        "raw_insert_s": raw_s,
        "raw_insert_rows_per_s": rate(n, raw_s),
        "ratio_raw_over_materialize": run["seconds"] / raw_s,
    }
