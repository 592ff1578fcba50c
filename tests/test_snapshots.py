"""A peer joins from a snapshot after retention purged the stream's beginning."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from materializer.backends.doltlite import DoltliteBackend
from materializer.bootstrap.snapshots import SnapshotPolicy
from materializer.commit.loop import Materializer
from oplog.op import Op
from oplog.topology import Topology
from tests.support import config, connected, publish_batch, seal, setup_db, wall

pytestmark = pytest.mark.integration


async def run_until(m: Materializer, epoch: int) -> None:
    for _ in range(2000):
        if m.last is not None and m.last.epoch >= epoch:
            return
        await m.step()
    raise AssertionError(f"{m.peer} did not reach epoch {epoch}")


async def test_a_new_peer_bootstraps_from_the_newest_snapshot_after_the_stream_was_purged(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    policy = SnapshotPolicy(every_epochs=2, keep=1)
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        first = Materializer(js, topology, DoltliteBackend(tmp_path / "first.db"), peer="first", snapshots=policy)
        await first.start()
        try:
            for epoch in range(6):
                ops = [
                    Op(id=f"{epoch}-{i}", hlc=(wall(epoch, i), 0, "n"), table="users", key=(f"k{i}",),
                       kind="upsert", data={"name": f"{epoch}", "score": i})
                    for i in range(5)
                ]  # fmt: skip
                await publish_batch(js, topology, ops)
                await seal(js, topology, epoch)
                await run_until(first, epoch)
            # Snapshots were taken at epochs 0, 2, 4; only epoch 4's is kept and the
            # stream no longer holds anything before its resume point.
            latest = await first.snapshots.latest()
            assert latest is not None and latest.epoch == 4
            info = await js.stream_info(topology.stream)
            assert info.state.first_seq == latest.resume_seq > 1

            joiner = Materializer(js, topology, DoltliteBackend(tmp_path / "joiner.db"), peer="joiner")
            await joiner.start()
            try:
                await run_until(joiner, 5)
                assert joiner.backend.epoch_hashes(since_epoch=4) == first.backend.epoch_hashes(since_epoch=4)
                assert joiner.backend.head() == first.backend.head()
            finally:
                await joiner.close()
        finally:
            await first.close()
