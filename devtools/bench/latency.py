"""The latency measurement: from a seal's publish ack until 3 in-process peers committed that
epoch with one identical hash."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from devtools.demo import wire_upsert
from materializer.backends.doltlite import DoltliteBackend
from materializer.commit.loop import Materializer, OnCommit
from oplog.topology import Topology

from .options import Sizes
from .stats import percentile
from .streams import connected, init_demo, publish_wires, seal

WAIT_TIMEOUT_S = 300.0


async def _latency_one(
    js: JetStreamContext, work: Path, ops_per_epoch: int, epochs: int, rng: random.Random
) -> dict[str, Any]:
    topology = Topology(db=f"lat{ops_per_epoch}")
    await init_demo(js, topology)
    commits: dict[int, dict[str, tuple[float, str]]] = {}

    def recorder(name: str) -> OnCommit:
        async def on_commit(epoch: int, commit_hash: str) -> None:
            commits.setdefault(epoch, {})[name] = (time.perf_counter(), commit_hash)

        return on_commit

    peers = [
        Materializer(js, topology, DoltliteBackend(work / f"lat{ops_per_epoch}-p{i}.db"), peer=f"p{i}",
                     on_commit=recorder(f"p{i}"))
        for i in range(3)
    ]  # fmt: skip
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    latencies: list[float] = []
    from_send: list[float] = []
    ingest: list[float] = []
    try:
        for m in peers:  # the first creates the shared genesis, the others install it
            await m.start()
        tasks = [asyncio.create_task(m.run(stop)) for m in peers]

        async def wait(pred: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
            deadline = time.monotonic() + timeout
            while not pred():
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"latency run: timed out waiting for {what}")
                await asyncio.sleep(0.001)

        # Epoch 0 creates the table (schema applies at the first commit): warm-up, not counted.
        for epoch in range(epochs + 1):
            wires = [
                wire_upsert(i, epoch, rng, prefix=f"l{ops_per_epoch}") for i in range(ops_per_epoch if epoch else 10)
            ]
            t_pub = time.perf_counter()
            last_seq = await publish_wires(js, topology, wires, 1000)
            # Peers read and decode the epoch's ops while it is open; the seal comes later.
            # (Materializer has no public read position; the bench reads the reader's next_seq.)
            await wait(lambda seq=last_seq: all(m._reader is not None and m._reader.next_seq > seq for m in peers),
                       "ingest")  # fmt: skip
            t_send = time.perf_counter()
            await seal(js, topology, epoch)
            t_ack = time.perf_counter()
            await wait(lambda k=epoch: len(commits.get(k, {})) == len(peers), f"epoch {epoch} on all peers")
            done = max(t for t, _ in commits[epoch].values())
            hashes = {h for _, h in commits[epoch].values()}
            if len(hashes) != 1:
                raise AssertionError(f"epoch {epoch}: peers disagree: {commits[epoch]}")
            if epoch:
                latencies.append(done - t_ack)
                from_send.append(done - t_send)
                ingest.append(t_send - t_pub)
    finally:
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(t, 30)
        for m in peers:
            with contextlib.suppress(Exception):
                await m.close()
    ms = [x * 1000 for x in latencies]
    return {
        "ops_per_epoch": ops_per_epoch,
        "epochs": epochs,
        "peers": len(peers),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "p50_from_send_ms": percentile([x * 1000 for x in from_send], 50),
        "ingest_p50_ms": percentile([x * 1000 for x in ingest], 50),
        "samples_ms": ms,
    }


async def measure_latency(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with connected(url) as nc:
        js = nc.jetstream()
        for ops_per_epoch, epochs in s.latency.items():
            out[str(ops_per_epoch)] = await _latency_one(js, work, ops_per_epoch, epochs, rng)
    return out
