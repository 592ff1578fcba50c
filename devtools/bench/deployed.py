"""The deployed latency: seal-to-identical-commit on 3 ``oplog serve`` processes.

The ``latency`` measurement runs 3 materializers in one process, behind one GIL. Here each
peer is its own ``oplog serve --no-seal`` process (:class:`devtools.processes.PeerProcess`,
as ``oplog dev`` starts them), so their plans and commits can overlap on separate cores.
The bench does what a producer and a sealer do: for each epoch it publishes the epoch's ops,
waits ``GRACE_S`` after their acks (the default grace of ``oplog init``: as deployed, the
seal comes a grace after the window, and ops still being read then count in the latency),
publishes the seal, and times from the seal's publish ack until all three peers have
reported that epoch's commit hash on the hash board (``e.<epoch>.<peer>`` in the hashes KV
bucket, heard on its subject with a core NATS subscription). The three hashes must be equal.
Epoch 0 creates the table and waits out the peers' start-up: not counted.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from devtools.demo import wire_upsert
from devtools.processes import PeerProcess, stop_all
from oplog.topology import Topology

from .options import Sizes
from .stats import percentile
from .streams import connected, init_demo, publish_wires, seal

GRACE_S = 0.5
PEERS = 3
START_TIMEOUT_S = 120.0  # epoch 0: three interpreters importing, genesis made and installed
EPOCH_TIMEOUT_S = 300.0


async def _wait_for(commits: dict[int, dict[str, tuple[float, str]]], epoch: int, peers: list[PeerProcess],
                    timeout: float) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while len(commits.get(epoch, {})) < len(peers):
        dead = [p for p in peers if not p.running]
        if dead:
            raise RuntimeError(f"peer {dead[0].name} exited {dead[0].proc.returncode if dead[0].proc else '?'}:\n"
                               f"{dead[0].log_tail()}")  # fmt: skip
        if time.monotonic() > deadline:
            got = sorted(commits.get(epoch, {}))
            raise TimeoutError(f"deployed latency: epoch {epoch} reported by {got} only after {timeout:g} s; "
                               f"last log lines of {peers[0].name}:\n{peers[0].log_tail(10)}")  # fmt: skip
        await asyncio.sleep(0.001)


async def _deployed_one(nc: Client, url: str, work: Path, ops_per_epoch: int, epochs: int,
                        rng: random.Random) -> dict[str, Any]:  # fmt: skip
    js = nc.jetstream()
    topology = Topology(db=f"dep{ops_per_epoch}")
    await init_demo(js, topology)
    commits: dict[int, dict[str, tuple[float, str]]] = {}
    prefix = f"$KV.{topology.hashes_bucket}.e."

    async def on_report(msg: Msg) -> None:
        heard = time.perf_counter()
        epoch, peer = msg.subject[len(prefix) :].split(".", 1)
        commits.setdefault(int(epoch), {})[peer] = (heard, msg.data.decode())

    sub = await nc.subscribe(prefix + ">", cb=on_report)
    peers = [PeerProcess(f"d{i}", topology.db, url, work / f"dep{ops_per_epoch}-p{i}",
                         extra=["--no-seal", "--expected-peers", str(PEERS)]) for i in range(PEERS)]  # fmt: skip
    latencies: list[float] = []
    publish: list[float] = []
    try:
        for p in peers:
            p.start()
        for epoch in range(epochs + 1):
            count = ops_per_epoch if epoch else 10
            wires = [wire_upsert(i, epoch, rng, prefix=f"d{ops_per_epoch}") for i in range(count)]
            t_pub = time.perf_counter()
            await publish_wires(js, topology, wires, 1000)
            t_acked = time.perf_counter()
            await asyncio.sleep(GRACE_S)
            await seal(js, topology, epoch)
            t_ack = time.perf_counter()
            await _wait_for(commits, epoch, peers, START_TIMEOUT_S if epoch == 0 else EPOCH_TIMEOUT_S)
            hashes = {h for _, h in commits[epoch].values()}
            if len(hashes) != 1:
                raise AssertionError(f"epoch {epoch}: peers disagree: {commits[epoch]}")
            if epoch:
                latencies.append(max(t for t, _ in commits[epoch].values()) - t_ack)
                publish.append(t_acked - t_pub)
    finally:
        await sub.unsubscribe()
        await asyncio.to_thread(stop_all, peers)
    ms = [x * 1000 for x in latencies]
    return {
        "ops_per_epoch": ops_per_epoch,
        "epochs": epochs,
        "peers": PEERS,
        "grace_s": GRACE_S,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "publish_p50_ms": percentile([x * 1000 for x in publish], 50),
        "samples_ms": ms,
    }


async def measure_deployed(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    """Seal-to-identical-commit latency on 3 peer processes, for each size of ``s.deployed``."""
    out: dict[str, Any] = {}
    async with connected(url) as nc:
        for ops_per_epoch, epochs in s.deployed.items():
            out[str(ops_per_epoch)] = await _deployed_one(nc, url, work, ops_per_epoch, epochs, rng)
    return out
