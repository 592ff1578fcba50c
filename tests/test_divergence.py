"""Divergence: a peer that computes one epoch differently is caught, and repairs or stops.

Three real peers (``run_peer``: materializer, hash reports, divergence watch) share a
real nats-server. Peer ``c``'s backend drops one upsert of one epoch, once, as a
nondeterminism bug or a corrupted write would. Everything else is the production path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from materializer.backends.doltlite import DoltliteBackend
from materializer.errors import Divergence
from materializer.hashes import HashBoard
from materializer.plan import EpochPlan
from materializer.snapshots import SnapshotPolicy
from oplog.op import Op
from oplog.topology import Topology
from peer import metrics
from peer.natsd import NatsServer
from peer.service import PeerConfig, run_peer
from tests.support import config, connected, publish_batch, seal, setup_db, wall

pytestmark = pytest.mark.integration

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
    # watch never uses a snapshot by the diverged peer anyway (see materializer.divergence).
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


async def run_three(url: str, root: Path, *, repair: bool) -> tuple[dict[str, asyncio.Event], dict[str, asyncio.Task[None]]]:  # fmt: skip
    stops = {name: asyncio.Event() for name in "abc"}
    (root / "c").mkdir(parents=True)
    faulty = MiscomputingBackend(root / "c" / "t.db", FAULT_EPOCH)
    tasks = {
        name: asyncio.create_task(
            run_peer(peer_config(name, url, root, repair=repair), stops[name], backend=faulty if name == "c" else None)
        )
        for name in "abc"
    }
    return stops, tasks


async def stop_all(stops: dict[str, asyncio.Event], tasks: dict[str, asyncio.Task[None]]) -> None:
    for event in stops.values():
        event.set()
    await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), WAIT_S)


async def publish_epochs(url: str, topology: Topology) -> None:
    async with connected(url) as nc:
        js = nc.jetstream()
        for epoch in range(EPOCHS):
            await publish_batch(js, topology, epoch_ops(epoch))
            await seal(js, topology, epoch)


def epoch_hashes(root: Path, name: str) -> list[tuple[int, str]]:
    with DoltliteBackend(root / name / "t.db") as backend:
        return backend.epoch_hashes()


async def test_a_peer_in_the_minority_says_so_and_repairs_from_a_majority_snapshot(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        board = HashBoard(js, topology)
        stops, tasks = await run_three(nats_server.url, tmp_path, repair=True)
        try:
            await publish_epochs(nats_server.url, topology)

            async def repaired_and_agreeing() -> bool:
                path = tmp_path / "c" / metrics.METRICS_FILE
                if not path.exists() or metrics.read(path)["oplog_peer_repairs_total"] < 1:
                    return False
                reports = await board.reports(EPOCHS - 1, ["a", "b", "c"])
                return len(reports) == 3 and len(set(reports.values())) == 1

            await wait_until(repaired_and_agreeing, "peer c to repair and agree on the last epoch", tasks)
            await wait_until(lambda: _no_divergence(board), "c's divergence record to be cleared", tasks)
        finally:
            await stop_all(stops, tasks)

    for task in tasks.values():
        assert task.exception() is None
    # Every peer's own database holds the same hash for every epoch, repaired peer included.
    a, b, c = (epoch_hashes(tmp_path, name) for name in "abc")
    assert a == b == c and [e for e, _ in a] == list(range(EPOCHS))
    diverged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "DIVERGED" in r.getMessage()]
    assert diverged and diverged[0].startswith("peer c DIVERGED at epoch ")
    c_metrics = metrics.read(tmp_path / "c" / metrics.METRICS_FILE)
    assert c_metrics["oplog_peer_divergences_total"] >= 1 and c_metrics["oplog_peer_diverged"] == 0
    # The healthy peers never judged themselves diverged.
    for name in "ab":
        assert metrics.read(tmp_path / name / metrics.METRICS_FILE)["oplog_peer_divergences_total"] == 0


async def _no_divergence(board: HashBoard) -> bool:
    return not await board.divergences()


async def test_without_repair_a_diverged_peer_stops_with_a_divergence_and_leaves_a_record(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        board = HashBoard(js, topology)
        stops, tasks = await run_three(nats_server.url, tmp_path, repair=False)
        try:
            await publish_epochs(nats_server.url, topology)

            async def c_stopped() -> bool:
                return tasks["c"].done()

            await wait_until(c_stopped, "peer c to stop on its divergence", tasks, allowed_to_end=("c",))
            with pytest.raises(Divergence, match=r"peer c DIVERGED at epoch \d+.*--repair"):
                tasks["c"].result()
            records = await board.divergences()
            assert set(records) == {"c"} and int(records["c"]["epoch"]) >= FAULT_EPOCH  # type: ignore[call-overload]
            assert records["c"]["majority_peers"] == ["a", "b"]
            c_metrics = metrics.read(tmp_path / "c" / metrics.METRICS_FILE)
            assert c_metrics["oplog_peer_diverged"] == 1 and c_metrics["oplog_peer_divergences_total"] == 1

            async def healthy_peers_done() -> bool:
                reports = await board.reports(EPOCHS - 1, ["a", "b"])
                return len(reports) == 2

            await wait_until(healthy_peers_done, "peers a and b to commit every epoch", tasks, allowed_to_end=("c",))
        finally:
            await stop_all(stops, tasks)
    assert epoch_hashes(tmp_path, "a") == epoch_hashes(tmp_path, "b")
    # c kept its divergent commits for inspection: they differ from FAULT_EPOCH on.
    c_hashes = dict(epoch_hashes(tmp_path, "c"))
    a_hashes = dict(epoch_hashes(tmp_path, "a"))
    assert all(c_hashes[e] == a_hashes[e] for e in range(FAULT_EPOCH))
    assert c_hashes[FAULT_EPOCH] != a_hashes[FAULT_EPOCH]
