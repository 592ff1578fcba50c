"""The growth measurement: one changed row committed as an epoch into tables of growing size."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

from devtools.demo import EPOCH_MS, ORIGIN_MS, TABLE
from materializer.backends.doltlite import DoltliteBackend
from oplog.codec import canonical_json
from oplog.op import Op

from .direct_epochs import epoch_commit, genesis_backend
from .options import AUTHOR, Sizes


def _bulk_load(backend: DoltliteBackend, rows: int) -> float:
    meta = canonical_json({"v": [ORIGIN_MS, 0, "bulk", "bulk"]})
    conn = backend.conn
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        'INSERT INTO "users" (id, name, score, _oplog_meta) VALUES (?, ?, ?, ?)',
        ((f"k{i:08d}", f"bulk-{i}", i, meta) for i in range(rows)),
    )
    conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'bulk load')", (AUTHOR, "2001-01-01"))
    conn.execute("COMMIT")
    return time.perf_counter() - t0


def measure_growth(s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in s.table_sizes:
        backend, cfg = genesis_backend(work / f"grow{size}.db", f"g{size}")
        try:
            load_s = _bulk_load(backend, size)
            times = []
            for r in range(s.growth_repeats):
                epoch = 1 + r
                key = f"k{rng.randrange(size):08d}"
                op = Op(id=f"g-{epoch}", hlc=(ORIGIN_MS + epoch * EPOCH_MS + 1, 0, "g"), table=TABLE, key=(key,),
                        kind="upsert", data={"name": f"changed-{epoch}", "score": -epoch})  # fmt: skip
                times.append(epoch_commit(backend, cfg, epoch, [op], 100 + 3 * r))
            (count,) = backend.conn.execute('SELECT COUNT(*) FROM "users"').fetchone()
            assert count == size
            file_mb = backend.path.stat().st_size / 2**20
        finally:
            backend.close()
        out[str(size)] = {
            "rows": size,
            "bulk_load_s": load_s,
            "commit_ms_median": statistics.median(times) * 1000,
            "commit_ms": [t * 1000 for t in times],
            "file_mb": file_mb,
        }
    sizes = sorted(s.table_sizes)
    if len(sizes) >= 2:
        out["ratio_largest_over_smallest"] = (
            out[str(sizes[-1])]["commit_ms_median"] / out[str(sizes[0])]["commit_ms_median"]
        )
    return out
