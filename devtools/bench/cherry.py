"""The DoltSwarm baseline: M one-row commits replayed by HLC-ordered cherry-pick + amend,
against ONE epoch commit of the same M ops."""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from devtools.demo import EPOCH_MS, ORIGIN_MS, TABLE
from oplog.op import Op

from .direct_epochs import epoch_commit, genesis_backend
from .options import AUTHOR, Sizes


def _swarm_ops(m: int, rng: random.Random, epoch: int, tag: str) -> list[Op]:
    """M concurrent one-row changes (distinct rows, so cherry-picks never conflict)."""
    ops = []
    for i in range(m):
        node = f"n{rng.randrange(16)}"
        hlc = (ORIGIN_MS + epoch * EPOCH_MS + rng.randrange(EPOCH_MS), rng.randrange(4), node)
        data = {"name": f"{node}-{i}", "score": i}
        ops.append(Op(id=f"{tag}-{epoch}-{i}", hlc=hlc, table=TABLE, key=(f"{tag}{i:06d}",), kind="upsert", data=data))
    return ops


def _replay(path: Path, m: int, rng: random.Random, repeats: int) -> tuple[list[float], int]:
    """Build M branches of one commit each, then time HLC-ordered cherry-pick + amend replays."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute('CREATE TABLE "users" (id TEXT PRIMARY KEY, name TEXT, score INTEGER)')
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'base')", (AUTHOR, "2000-01-01"))
        ops = _swarm_ops(m, rng, 1, "s")
        arrival = list(ops)
        rng.shuffle(arrival)  # commits are made in arrival order, replayed in HLC order
        commit_of: dict[str, str] = {}
        for i, op in enumerate(arrival):
            branch = f"w{i}"
            conn.execute("SELECT dolt_branch(?)", (branch,))
            conn.execute("SELECT dolt_checkout(?)", (branch,))
            conn.execute("INSERT INTO users VALUES (?, ?, ?)", (op.key[0], op.data["name"], op.data["score"]))  # type: ignore[index]
            (h,) = conn.execute(
                "SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', ?)",
                (AUTHOR, "2001-01-01T00:00:00Z", f"op {op.id}"),
            ).fetchone()
            commit_of[op.id] = str(h)
            conn.execute("SELECT dolt_checkout('main')")
        order = sorted(ops, key=lambda o: o.sort_key())
        times = []
        for r in range(repeats):
            branch = f"replay{r}"
            conn.execute("SELECT dolt_branch(?)", (branch,))
            conn.execute("SELECT dolt_checkout(?)", (branch,))
            t0 = time.perf_counter()
            for op in order:
                conn.execute("SELECT dolt_cherry_pick(?)", (commit_of[op.id],))
                # Deterministic metadata, as every DoltSwarm peer must write the same commit.
                date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(op.hlc.wall_ms // 1000)) + "Z"
                conn.execute(
                    "SELECT dolt_commit('--amend', '--author', ?, '--date', ?, '-m', ?)",
                    (AUTHOR, date, f"op {op.id} hlc {op.hlc.wall_ms}.{op.hlc.logical}.{op.hlc.node}"),
                )
            times.append(time.perf_counter() - t0)
            (count,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
            assert count == m, (count, m)
            conn.execute("SELECT dolt_checkout('main')")
        return times, count
    finally:
        conn.close()


def measure_cherry(s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in s.cherry_m:
        repeats = 3  # medians: a shared 2-core machine is noisy
        replay, _ = _replay(work / f"swarm{m}.db", m, rng, repeats)
        backend, cfg = genesis_backend(work / f"epoch{m}.db", f"e{m}")
        try:
            epoch_times = [
                epoch_commit(backend, cfg, 1 + r, _swarm_ops(m, rng, 1 + r, f"e{r}-"), 10 + r * (m + 2))
                for r in range(2 * repeats + 1)
            ]
        finally:
            backend.close()
        replay_s, epoch_s = statistics.median(replay), statistics.median(epoch_times)
        out[str(m)] = {
            "m": m,
            "repeats": repeats,
            "replay_s": replay_s,
            "replay_runs_s": replay,
            "epoch_runs_s": epoch_times,
            "replay_per_commit_ms": replay_s / m * 1000,
            "epoch_s": epoch_s,
            "ratio": replay_s / epoch_s,
        }
    return out
