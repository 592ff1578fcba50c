"""Three real peers (``run_peer``) on one nats-server, one of them miscomputing an epoch.

Peer ``c``'s backend drops one upsert of one epoch, once, as a nondeterminism bug or a
corrupted write would. Everything else is the production path. Used by the divergence
and verify tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from materializer.agreement.hashes import HashBoard
from materializer.backends.doltlite import DoltliteBackend
from materializer.bootstrap.snapshots import SnapshotPolicy
from materializer.plan import EpochPlan
from oplog.op import Op
from oplog.topology import Topology
from peer.service import PeerConfig, run_peer
from tests.support import config, connected, publish_batch, seal, setup_db, wall

FAULT_EPOCH = 3
EPOCHS = 8
WAIT_S = 45.0


class MiscomputingBackend(DoltliteBackend):
    """Drops the first upsert of ``fault_epoch`` the first time it commits that epoch."""

    def __init__(self, path: Path, fault_epoch: int) -> None:
        super().__init__(path)
        self.fault_epoch = fault_epoch
        self.faulted = False

    def commit_epoch(self, plan: EpochPlan) -> str:
        if plan.epoch.epoch == self.fault_epoch and not self.faulted:
            self.faulted = True
            writes = tuple(replace(w, upserts=w.upserts[1:]) if w.upserts else w for w in plan.writes)
            plan = replace(plan, writes=writes)
        return super().commit_epoch(plan)


def epoch_ops(epoch: int) -> list[Op]:
    return [
        Op(id=f"{epoch}-{i}", hlc=(wall(epoch, i), 0, "n"), table="users", key=(f"k{i}",), kind="upsert",
           data={"name": f"e{epoch}", "score": i})
        for i in range(20)
    ]  # fmt: skip


def peer_config(name: str, url: str, root: Path, *, repair: bool) -> PeerConfig:
    # Only the healthy peers take snapshots, so the one to repair from is theirs; the
    # watch never uses a snapshot by the diverged peer anyway (see materializer.agreement.divergence).
    snapshots = None if name == "c" else SnapshotPolicy(every_epochs=2, keep=3, purge_stream=False)
    return PeerConfig(
        name=name, db="t", nats_url=url, data_dir=root / name, seal=False, check_interval_s=0.05, expected_peers=3,
        repair=repair, snapshots=snapshots,
    )  # fmt: skip


async def wait_until(condition, what: str, tasks: dict[str, asyncio.Task[None]], allowed_to_end=()) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        for name, task in tasks.items():
            if task.done() and name not in allowed_to_end:
                task.result()  # raises what stopped it
                raise AssertionError(f"peer {name} stopped early")
        assert time.monotonic() < deadline, f"timed out after {WAIT_S} s waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def three_peers(url: str, root: Path, *, repair: bool) -> AsyncIterator[tuple[HashBoard, dict[str, asyncio.Task[None]]]]:  # fmt: skip
    """Peers a, b and c (the miscomputing one) on a fresh database ``t``, fed
    :data:`EPOCHS` sealed epochs; every peer is stopped on the way out."""
    topology = Topology(db="t")
    stops = {name: asyncio.Event() for name in "abc"}
    (root / "c").mkdir(parents=True)
    faulty = MiscomputingBackend(root / "c" / "t.db", FAULT_EPOCH)
    async with connected(url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        tasks = {
            name: asyncio.create_task(
                run_peer(peer_config(name, url, root, repair=repair), stops[name], backend=faulty if name == "c" else None)
            )
            for name in "abc"
        }  # fmt: skip
        try:
            for epoch in range(EPOCHS):
                await publish_batch(js, topology, epoch_ops(epoch))
                await seal(js, topology, epoch)
            yield HashBoard(js, topology), tasks
        finally:
            for event in stops.values():
                event.set()
            await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), WAIT_S)


def epoch_hashes(root: Path, name: str) -> list[tuple[int, str]]:
    with DoltliteBackend(root / name / "t.db") as backend:
        return backend.epoch_hashes()
