"""The soak measurement: thousands of small epochs committed into one doltlite file, reported
in blocks, to see what grows with history (commit time, file size, RSS, reading the epoch list).

A child process (``python -m devtools.bench _soak-peer ARGS_JSON``) makes the genesis, fills
``users`` with ``rows`` rows in one epoch, then plans and commits ``epochs`` epochs of ``ops``
upserts of random existing rows straight into its doltlite backend, as growth and cherry do:
no stream and no :class:`Materializer`, so what is measured is the commit path and the file.
After every ``block`` epochs it prints one JSON line with that block's figures. A child, so
that its RSS is that of a process that did nothing else (the bench's own process has held
other measurements' data by then), and so that a crash half-way still leaves the blocks so far.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.demo import EPOCH_MS, ORIGIN_MS, TABLE
from materializer.backends.doltlite import DoltliteBackend, child_env
from materializer.metadata import checkpoint_due, checkpoint_meta
from materializer.plan import plan_epoch
from oplog.op import Op

from .direct_epochs import genesis_backend_and_artifact, sealed_epoch
from .options import REPO_ROOT, Sizes
from .rss import vm_kb
from .stats import percentile

SOAK_PEER_COMMAND = "_soak-peer"
CHILD_BASE_TIMEOUT_S = 600.0
CHILD_TIMEOUT_PER_EPOCH_S = 0.2  # 20-40x what an epoch takes on 2 shared cores: only a hang trips it


def disk_bytes(path: Path) -> int:
    """Bytes on disk of a doltlite database: the file and any sidecar (``-wal``, ``-journal``)."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def chunks_written(backend: DoltliteBackend) -> int | None:
    """doltlite's count of chunks this connection wrote (``dolt_engine_stats``), if it has one."""
    try:
        stats = dict(backend.conn.execute("SELECT * FROM dolt_engine_stats").fetchall())
    except Exception:  # an older doltlite without the table: the column is left out
        return None
    value = stats.get("chunk_write")
    return int(value) if value is not None else None


def upserts(epoch: int, count: int, rows: int, rng: random.Random, *, tag: str = "s",
            keys: list[int] | None = None) -> list[Op]:  # fmt: skip
    """``count`` upserts of random rows among ``k000000 .. k<rows-1>`` (or of rows ``keys``),
    stamped inside ``epoch``."""
    if keys is None:
        keys = [rng.randrange(rows) for _ in range(count)]
    return [
        Op(id=f"{tag}-{epoch}-{j}", hlc=(ORIGIN_MS + epoch * EPOCH_MS + j, 0, f"p{j % 3}"), table=TABLE,
           key=(f"k{k:06d}",), kind="upsert", data={"name": f"e{epoch}-{j}", "score": epoch})
        for j, k in enumerate(keys)
    ]  # fmt: skip


def fill_ops(rows: int) -> list[Op]:
    """Epoch 1 of the soak and storage runs: every row of the table, once."""
    return [
        Op(id=f"fill-{i}", hlc=(ORIGIN_MS + EPOCH_MS + i % EPOCH_MS, i // EPOCH_MS, "fill"), table=TABLE,
           key=(f"k{i:06d}",), kind="upsert", data={"name": f"fill-{i}", "score": i})
        for i in range(rows)
    ]  # fmt: skip


def run_soak(
    path: Path, epochs: int, ops: int, rows: int, block: int, seed: int, emit: Callable[[dict[str, Any]], None],
    checkpoint_epochs: int | None = None,
) -> dict[str, Any]:
    """Commit ``epochs`` epochs into a new doltlite file at ``path``, calling ``emit`` with the
    figures of every block of ``block`` epochs; returns the figures of the whole run. With
    ``checkpoint_epochs``, the history is re-rooted as peers do (Backend.checkpoint)."""
    rng = random.Random(seed)
    backend, cfg, genesis = genesis_backend_and_artifact(path, "soak")
    try:
        seq = 10
        fill = fill_ops(rows)
        backend.commit_epoch(plan_epoch(sealed_epoch(cfg, 1, fill, seq), backend.tables(), backend))
        seq += len(fill) + 2
        start_bytes = before = disk_bytes(path)
        chunks_before = chunks_written(backend)
        epoch = 1
        for b in range(-(-epochs // block)):
            n = min(block, epochs - b * block)
            plan_s, commit_s, checkpoint_s = [], [], []
            for _ in range(n):
                epoch += 1
                sealed = sealed_epoch(cfg, epoch, upserts(epoch, ops, rows, rng), seq)
                seq += ops + 2
                if checkpoint_due(checkpoint_epochs, epoch, epoch):
                    last_row = backend.last_epoch()
                    assert last_row is not None
                    meta = checkpoint_meta(epoch=last_row.epoch, end_ms=last_row.end_ms,
                                           author_name=cfg.author_name, author_email=cfg.author_email)  # fmt: skip
                    t0 = time.perf_counter()
                    backend.checkpoint(genesis, meta, before_epoch=epoch)
                    checkpoint_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                plan = plan_epoch(sealed, backend.tables(), backend)
                t1 = time.perf_counter()
                backend.commit_epoch(plan)
                plan_s.append(t1 - t0)
                commit_s.append(time.perf_counter() - t1)
            after = disk_bytes(path)
            chunks = chunks_written(backend)
            t0 = time.perf_counter()
            listed = backend.epoch_hashes()  # what `oplog verify` and the hash publisher read
            t1 = time.perf_counter()
            last = backend.last_epoch()  # what a peer reads at start
            t2 = time.perf_counter()
            # Without checkpoints every epoch is listed; with them, those since the last one.
            kept = epoch + 1 if not checkpoint_epochs else epoch - epoch // checkpoint_epochs * checkpoint_epochs + 1
            assert last is not None and last.epoch == epoch and len(listed) == kept, (last, len(listed), epoch)
            commit_ms = [x * 1000 for x in commit_s]
            emit({
                "block": b + 1,
                "epochs": n,
                "last_epoch": epoch,
                "commit_ms_median": statistics.median(commit_ms),
                "commit_ms_p99": percentile(commit_ms, 99),
                "plan_ms_median": statistics.median(plan_s) * 1000,
                "file_bytes": after,
                "bytes_per_epoch": (after - before) / n,
                # A checkpoint reopens the connection, whose chunk count starts again.
                "chunks_per_epoch": (chunks - chunks_before) / n
                if chunks is not None and chunks_before is not None and not checkpoint_s else None,
                "rss_mb": (vm_kb("VmRSS") or 0) / 1024,
                "hwm_mb": (vm_kb("VmHWM") or 0) / 1024,
                "epoch_list_ms": (t1 - t0) * 1000,
                "epoch_list_len": len(listed),
                "last_epoch_ms": (t2 - t1) * 1000,
                "checkpoints": len(checkpoint_s),
                "checkpoint_ms_max": max(checkpoint_s, default=0.0) * 1000,
            })  # fmt: skip
            before, chunks_before = after, chunks
        t0 = time.perf_counter()
        (gc_says,) = backend.conn.execute("SELECT dolt_gc()").fetchone()
        gc_s = time.perf_counter() - t0
        return {
            "after_fill_bytes": start_bytes,
            "dedup_epochs": cfg.dedup_epochs,
            "before_gc_bytes": before,
            "after_gc_bytes": disk_bytes(path),
            "gc_s": gc_s,
            "gc_says": str(gc_says),
            "head": backend.head(),
        }
    finally:
        backend.close()


def soak_peer_main(argv: list[str]) -> int:
    """The child: ``ARGS_JSON`` (path, epochs, ops, rows, block, seed); one JSON line per block,
    then ``{"done": {...}}``."""
    a = json.loads(argv[0])

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps({"block": record}), flush=True)

    done = run_soak(Path(a["path"]), a["epochs"], a["ops"], a["rows"], a["block"], a["seed"], emit,
                    a.get("checkpoint_epochs") or None)  # fmt: skip
    print(json.dumps({"done": done}), flush=True)
    return 0


def _block_table(blocks: list[dict[str, Any]]) -> str:
    head = ("epochs", "commit p50 ms", "commit p99 ms", "plan p50 ms", "file MB", "KB/epoch", "chunks/epoch",
            "RSS MB", "epoch list ms", "checkpoint ms")  # fmt: skip
    lines = [head]
    for r in blocks:
        chunks = r.get("chunks_per_epoch")
        lines.append((f"{r['last_epoch'] - 1:,}", f"{r['commit_ms_median']:.2f}", f"{r['commit_ms_p99']:.2f}",
                      f"{r['plan_ms_median']:.2f}", f"{r['file_bytes'] / 2**20:,.1f}",
                      f"{r['bytes_per_epoch'] / 1024:.1f}", "" if chunks is None else f"{chunks:.1f}",
                      f"{r['rss_mb']:.0f}", f"{r['epoch_list_ms']:.1f}",
                      f"{r['checkpoint_ms_max']:.1f}" if r.get("checkpoints") else ""))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


async def measure_soak(s: Sizes, work: Path, seed: int) -> dict[str, Any]:
    """Run the soak child; every block's figures, the first and last block compared."""
    args = {"path": str(work / "soak" / "soak.db"), "epochs": s.soak_epochs, "ops": s.soak_ops,
            "rows": s.soak_rows, "block": s.soak_block, "seed": seed,
            "checkpoint_epochs": s.soak_checkpoint_epochs}  # fmt: skip
    env = child_env()  # without _DOLTLITE_BOOTSTRAPPED, or the child cannot open doltlite files
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", str(__package__), SOAK_PEER_COMMAND, json.dumps(args), cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=2**20,
    )  # fmt: skip
    blocks: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None

    async def read() -> None:
        nonlocal done
        assert proc.stdout is not None
        async for line in proc.stdout:
            record = json.loads(line)
            if "block" in record:
                blocks.append(record["block"])
            else:
                done = record["done"]

    try:
        timeout = CHILD_BASE_TIMEOUT_S + CHILD_TIMEOUT_PER_EPOCH_S * s.soak_epochs
        assert proc.stderr is not None
        _, stderr, _ = await asyncio.wait_for(asyncio.gather(read(), proc.stderr.read(), proc.wait()), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0 or done is None:
        raise RuntimeError(f"soak child exited {proc.returncode} after {len(blocks)} blocks: "
                           f"{stderr.decode(errors='replace')[-2000:]}")  # fmt: skip
    first, last = blocks[0], blocks[-1]
    return {
        "epochs": s.soak_epochs,
        "ops_per_epoch": s.soak_ops,
        "rows": s.soak_rows,
        "block": s.soak_block,
        "checkpoint_epochs": s.soak_checkpoint_epochs or None,
        **done,
        "blocks": blocks,
        "commit_p50_ratio_last_over_first": last["commit_ms_median"] / first["commit_ms_median"],
        "bytes_per_epoch_ratio_last_over_first": last["bytes_per_epoch"] / first["bytes_per_epoch"],
        "epoch_list_ratio_last_over_first": last["epoch_list_ms"] / first["epoch_list_ms"],
        "table": _block_table(blocks),
    }
