"""The storage measurement: history bytes per epoch attributed to each table an epoch writes.

Method (ablation in lockstep). Every epoch of one sequence (the soak's ``soak_ops`` upserts of
random rows of a table of ``soak_rows`` rows, one delete, one op rejected for an unknown
column) is planned ONCE, on the ``full`` database, and the plan is committed to six doltlite
files, each through the public ``Backend.commit_epoch``: ``full`` gets it as planned; each
other file gets it with one part left out (the user-table upserts; the deletes with the
tombstones they write and clear; the op ids; the rejection row), and ``bare`` with all of
them left out, so that it writes only the ``oplog_epochs`` row and the commit. Planning once
keeps the sequence identical in every file: what differs between two files is exactly the
part one of them left out. The bytes of a part are ``full`` minus the file without it, per
epoch, over the measured epochs; ``bare`` is the floor of any epoch commit. Then as many
empty ``dolt_commit('--allow-empty')`` commits on the ``bare`` file split that floor into
the commit itself and the ``oplog_epochs`` row. What is left (``full`` minus the sum of the
parts) says how far the parts are from adding up: chunks shared by two parts (the root, the
table map) are counted in neither part's difference.

The op-id horizon is ``DEDUP_EPOCHS`` (100) instead of the default 3,600, and the first
``DEDUP_EPOCHS + 10`` epochs are not measured, so the measured epochs are in the steady
state a peer reaches after its horizon: each epoch inserts its ids and prunes as many.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from devtools.demo import EPOCH_MS, ORIGIN_MS, TABLE
from materializer.plan import EpochPlan, plan_epoch
from oplog.codec import canonical_json
from oplog.op import Op

from .direct_epochs import genesis_backend, sealed_epoch
from .options import AUTHOR, Sizes
from .soak import chunks_written, disk_bytes, fill_ops, upserts

DEDUP_EPOCHS = 100
WARMUP_EPOCHS = DEDUP_EPOCHS + 10


def _without(plan: EpochPlan, *, upserts: bool = False, deletes: bool = False, op_ids: bool = False,
              rejections: bool = False) -> EpochPlan:  # fmt: skip
    writes = tuple(
        replace(w, upserts=[] if upserts else w.upserts, deletes=[] if deletes else w.deletes,
                cleared_tombstones=[] if deletes else w.cleared_tombstones)
        for w in plan.writes
    )  # fmt: skip
    return replace(plan, writes=writes, op_ids=() if op_ids else plan.op_ids,
                   rejections=() if rejections else plan.rejections)  # fmt: skip


# file -> the parts of each plan it leaves out
VARIANTS: dict[str, dict[str, bool]] = {
    "full": {},
    "no_upserts": {"upserts": True},
    "no_deletes": {"deletes": True},
    "no_op_ids": {"op_ids": True},
    "no_rejections": {"rejections": True},
    "bare": {"upserts": True, "deletes": True, "op_ids": True, "rejections": True},
}
# part -> (what it writes, the file without it)
# How far apart the rows an epoch writes are: the same upserts, touching one, few or many leaves.
LOCALITY = ("random row", "adjacent rows", "random rows")
PARTS = {
    "users upserts": ("rows of the user table", "no_upserts"),
    "deletes": ("row removals + oplog_tombstones rows written and cleared", "no_deletes"),
    "oplog_op_ids": ("ids and digests, their epoch index, the pruning", "no_op_ids"),
    "oplog_rejections": ("one rejection row (reason, detail, payload)", "no_rejections"),
}


def _epoch_ops(epoch: int, ops: int, rows: int, rng: random.Random) -> list[Op]:
    found = upserts(epoch, ops, rows, rng, tag="st")
    hlc = (ORIGIN_MS + epoch * EPOCH_MS + ops, 0, "p0")
    found.append(Op(id=f"st-{epoch}-del", hlc=hlc, table=TABLE, key=(f"k{rng.randrange(rows):06d}",), kind="delete"))
    found.append(Op(id=f"st-{epoch}-bad", hlc=(hlc[0] + 1, 0, "p1"), table=TABLE, key=("k000000",), kind="upsert",
                    data={"name": "x", "score": 1, "no_such_column": epoch}))  # fmt: skip
    return found


def _logical_bytes(plan: EpochPlan) -> dict[str, int]:
    """What each part writes, as text: the bytes a row-at-a-time log of the epoch would hold."""
    ups = sum(len(canonical_json([list(k), v, m])) for w in plan.writes for k, v, m in w.upserts)
    dels = sum(len(canonical_json([list(k), m])) for w in plan.writes for k, m in w.deletes)
    ids = sum(len(i) + len(d) for i, d in plan.op_ids)
    rej = sum(len(r.reason) + len(r.detail) + len(r.payload) + len(r.op_id or "") for r in plan.rejections)
    return {"users upserts": ups, "deletes": dels, "oplog_op_ids": ids, "oplog_rejections": rej}


def _empty_commits(path: Path, epochs: int) -> float:
    """Bytes per ``dolt_commit('--allow-empty')`` on a file holding the measured run's tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        before = disk_bytes(path)
        for k in range(epochs):
            conn.execute("SELECT dolt_commit('--allow-empty', '--author', ?, '--date', ?, '-m', ?)",
                         (AUTHOR, "2001-01-01", f"empty {k}"))  # fmt: skip
        return (disk_bytes(path) - before) / epochs
    finally:
        conn.close()


def _locality_keys(kind: str, rng: random.Random, rows: int, ops: int) -> list[int]:
    if kind == "random row":
        return [rng.randrange(rows)]
    if kind == "adjacent rows":
        first = rng.randrange(rows - ops)
        return list(range(first, first + ops))
    return [rng.randrange(rows) for _ in range(ops)]


def _by_locality(work: Path, ops: int, rows: int, measured: int, seed: int) -> dict[str, dict[str, float]]:
    """Whole-epoch history bytes when the epoch's upserts write 1 random row, ``ops`` adjacent
    rows, or ``ops`` random rows (nothing else; same horizon and warm-up as the ablation)."""
    out: dict[str, dict[str, float]] = {}
    for i, kind in enumerate(LOCALITY):
        rng = random.Random(seed)
        backend, cfg = genesis_backend(work / "storage" / f"locality{i}.db", "storage", dedup_epochs=DEDUP_EPOCHS)
        try:
            seq = 10
            backend.commit_epoch(plan_epoch(sealed_epoch(cfg, 1, fill_ops(rows), seq), backend.tables(), backend))
            seq += rows + 2
            size0, chunks0 = disk_bytes(backend.path), chunks_written(backend)
            for epoch in range(2, 2 + WARMUP_EPOCHS + measured):
                if epoch == 2 + WARMUP_EPOCHS:
                    size0, chunks0 = disk_bytes(backend.path), chunks_written(backend)
                keys = _locality_keys(kind, rng, rows, ops)
                epoch_ops = upserts(epoch, len(keys), rows, rng, tag="lo", keys=keys)
                backend.commit_epoch(plan_epoch(sealed_epoch(cfg, epoch, epoch_ops, seq), backend.tables(), backend))
                seq += len(epoch_ops) + 2
            chunks = chunks_written(backend)
            out[kind] = {
                "upserts": len(keys),
                "bytes_per_epoch": (disk_bytes(backend.path) - size0) / measured,
                "chunks_per_epoch": (chunks - chunks0) / measured if chunks is not None and chunks0 is not None
                else float("nan"),
            }  # fmt: skip
        finally:
            backend.close()
    return out


def measure_storage(s: Sizes, work: Path, seed: int) -> dict[str, Any]:
    """History bytes per epoch by part, by the lockstep ablation of the module docstring."""
    rng = random.Random(seed)
    ops, rows, measured = s.soak_ops, s.soak_rows, s.storage_epochs
    files = {name: genesis_backend(work / "storage" / f"{name}.db", "storage", dedup_epochs=DEDUP_EPOCHS)
             for name in VARIANTS}  # fmt: skip
    full, cfg = files["full"]
    start: dict[str, tuple[int, int | None]] = {}
    commit_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    logical: dict[str, int] = dict.fromkeys(PARTS, 0)
    try:
        seq = 10
        fill = plan_epoch(sealed_epoch(cfg, 1, fill_ops(rows), seq), full.tables(), full)
        seq += rows + 2
        for backend, _ in files.values():
            backend.commit_epoch(fill)  # every file starts from the same full table
        for epoch in range(2, 2 + WARMUP_EPOCHS + measured):
            if epoch == 2 + WARMUP_EPOCHS:
                start = {name: (disk_bytes(b.path), chunks_written(b)) for name, (b, _) in files.items()}
            epoch_ops = _epoch_ops(epoch, ops, rows, rng)
            plan = plan_epoch(sealed_epoch(cfg, epoch, epoch_ops, seq), full.tables(), full)
            seq += len(epoch_ops) + 2
            for name, (backend, _) in files.items():
                t0 = time.perf_counter()
                backend.commit_epoch(_without(plan, **VARIANTS[name]))
                if start:
                    commit_s[name].append(time.perf_counter() - t0)
            if start:
                for part, n in _logical_bytes(plan).items():
                    logical[part] += n
        per_epoch: dict[str, dict[str, Any]] = {}
        for name, (backend, _) in files.items():
            size0, chunks0 = start[name]
            chunks = chunks_written(backend)
            per_epoch[name] = {
                "bytes_per_epoch": (disk_bytes(backend.path) - size0) / measured,
                "chunks_per_epoch": (chunks - chunks0) / measured if chunks is not None and chunks0 is not None
                else None,
                "commit_ms_median": statistics.median(commit_s[name]) * 1000,
                "file_bytes": disk_bytes(backend.path),
            }  # fmt: skip
        full_bytes = per_epoch["full"]["bytes_per_epoch"]
        heads = {name: backend.head() for name, (backend, _) in files.items()}
    finally:
        for backend, _ in files.values():
            backend.close()
    empty = _empty_commits(work / "storage" / "bare.db", measured)
    parts = {
        part: {
            "what": what,
            "bytes_per_epoch": full_bytes - per_epoch[without]["bytes_per_epoch"],
            "logical_bytes_per_epoch": logical[part] / measured,
        }
        for part, (what, without) in PARTS.items()
    }
    bare = per_epoch["bare"]["bytes_per_epoch"]
    parts["oplog_epochs row"] = {"what": "the progress row (bare minus an empty commit)",
                                 "bytes_per_epoch": bare - empty, "logical_bytes_per_epoch": None}  # fmt: skip
    parts["commit"] = {"what": "an empty dolt_commit (commit object, root)", "bytes_per_epoch": empty,
                       "logical_bytes_per_epoch": None}  # fmt: skip
    rest = full_bytes - sum(p["bytes_per_epoch"] for p in parts.values())
    parts["not additive"] = {"what": "full minus the sum of the parts above", "bytes_per_epoch": rest,
                             "logical_bytes_per_epoch": None}  # fmt: skip
    return {
        "ops_per_epoch": ops + 2,
        "upserts_per_epoch": ops,
        "rows": rows,
        "measured_epochs": measured,
        "warmup_epochs": WARMUP_EPOCHS,
        "dedup_epochs": DEDUP_EPOCHS,
        "variants": per_epoch,
        "parts": parts,
        "full_bytes_per_epoch": full_bytes,
        "logical_bytes_per_epoch": sum(logical.values()) / measured,
        "write_amplification": full_bytes / (sum(logical.values()) / measured),
        "heads": heads,
        "by_locality": _by_locality(work, ops, rows, measured, seed),
        "table": _parts_table(parts, full_bytes),
    }


def _parts_table(parts: dict[str, dict[str, Any]], full: float) -> str:
    lines = [("part", "history bytes/epoch", "share", "logical bytes/epoch", "what")]
    for part, p in parts.items():
        logical = p["logical_bytes_per_epoch"]
        lines.append((part, f"{p['bytes_per_epoch']:,.0f}", f"{p['bytes_per_epoch'] / full:.0%}",
                      "" if logical is None else f"{logical:,.0f}", p["what"]))  # fmt: skip
    lines.append(("all (full file)", f"{full:,.0f}", "100%", "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]

    def cells(line: tuple[str, ...]) -> str:  # names and notes left, figures right
        pairs = enumerate(zip(line, widths, strict=True))
        return "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in pairs)

    out = [cells(line).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
