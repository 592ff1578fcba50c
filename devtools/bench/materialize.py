"""The materialize measurement: one fresh peer reads a prefilled stream, against a raw insert.

On doltlite here; the same ops, in a stream of their own, on Dolt sql-server in
:mod:`.materialize_dolt_server` (a row of its own in the table).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import traceback
from pathlib import Path
from typing import Any

from devtools.demo import TABLE
from materializer.backends.doltlite import DoltliteBackend
from oplog.topology import Topology

from .materialize_dolt_server import measure_dolt_server
from .options import Sizes
from .raw_insert import floor_into_doltlite, into_doltlite
from .stats import rate
from .streams import connected, payloads, prefill
from .timed_materializer import materialize_once


def _raw_insert(path: Path, rows: list[tuple[Any, ...]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return into_doltlite(conn.cursor(), rows)
    finally:
        conn.close()


def _floor(path: Path, payloads: list[tuple[int, bytes]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return floor_into_doltlite(conn.cursor(), payloads)
    finally:
        conn.close()


async def measure_materialize(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    n, epochs = s.materialize_ops, s.materialize_epochs
    result: dict[str, Any] = {"ops": n, "epochs": epochs}
    same_ops = random.Random()
    same_ops.setstate(rng.getstate())  # replays the ops of "mat" into the sql-server's stream
    floor_ops = random.Random()
    floor_ops.setstate(rng.getstate())  # and once more, as the messages of the floor baseline
    async with connected(url) as nc:
        js = nc.jetstream()
        topology = Topology(db="mat")
        await prefill(js, topology, n, epochs, rng)
        backend = DoltliteBackend(work / "mat.db")
        run = await materialize_once(js, topology, backend, epochs - 1)
        result.update({f"doltlite_{k}": v for k, v in run.items()})
        result["doltlite_ops_per_s"] = rate(n, run["seconds"])
        with backend:
            rows = backend.conn.execute(f'SELECT * FROM "{TABLE}" ORDER BY 1').fetchall()
            result["doltlite_head"] = backend.head()
        assert len(rows) == n, (len(rows), n)
        raw_s = await asyncio.to_thread(_raw_insert, work / "mat-raw.db", rows)
        result["raw_insert_s"] = raw_s
        result["raw_insert_rows_per_s"] = rate(n, raw_s)
        result["ratio_raw_over_materialize"] = run["seconds"] / raw_s
        floor_s = await asyncio.to_thread(_floor, work / "mat-floor.db", payloads(n, epochs, floor_ops))
        result["floor_s"] = floor_s
        result["floor_ops_per_s"] = rate(n, floor_s)
        result["ratio_floor_over_raw"] = floor_s / raw_s
        try:
            # A stream of its own: the doltlite peer's genesis is already in "mat"'s Object Store.
            result["dolt_server"] = await measure_dolt_server(js, Topology(db="matsrv"), s, work, same_ops)
        except Exception as e:  # the doltlite figures still count; the run exits 1 (report.failed)
            result["dolt_server"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return result
