"""The epoch-boundary edge cases DoltSwarm dropped epochs over, one named test each,
on a real nats-server and every backend (the ``backends`` fixture)."""

from __future__ import annotations

import orjson
import pytest

from devtools.natsd import NatsServer
from epoch.sealer import Sealer
from oplog.op import Op
from oplog.schema import format_epoch_ms
from oplog.topology import Topology
from tests.support import (
    EPOCH_MS,
    ORIGIN_MS,
    BackendFactory,
    InProcessPeer,
    config,
    connected,
    publish_batch,
    publish_raw,
    seal,
    setup_db,
    wall,
)

pytestmark = pytest.mark.integration


def upsert(op_id: str, epoch: int, offset: int, key: str, name: str) -> Op:
    return Op(id=op_id, hlc=(wall(epoch, offset), 0, "n"), table="users", key=(key,), kind="upsert",
              data={"name": name, "score": 0})  # fmt: skip


async def two_peers(js, topology, backends: BackendFactory) -> list[InProcessPeer]:  # type: ignore[no-untyped-def]
    return [await InProcessPeer(js, topology, backends, f"p{i}").start() for i in range(2)]


async def test_empty_epochs_still_commit_and_agree(nats_server: NatsServer, backends: BackendFactory) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        for k in range(3):
            await seal(js, topology, k)
        peers = await two_peers(js, topology, backends)
        try:
            for peer in peers:
                await peer.run_until(2)
            assert peers[0].hashes() == peers[1].hashes()
            assert [k for k, _ in peers[0].hashes()] == [0, 1, 2]
            assert peers[0].epochs() == [(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (2, 0, 0, 0, 0)]
        finally:
            for peer in peers:
                await peer.close()


async def test_seal_races_keep_the_first_seal_in_stream_order(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        await publish_batch(js, topology, [upsert("a", 0, 10, "x", "a")])
        await seal(js, topology, 0)
        # Two sealers race: the same seal again within the duplicate window is dropped by
        # the stream; a copy outside it (a different message id) reaches the stream and
        # must be ignored by the materializer.
        await seal(js, topology, 0)
        await publish_raw(js, topology, topology.seal_subject, orjson.dumps({"epoch": 0}))
        await publish_batch(js, topology, [upsert("b", 2, 10, "y", "b")])
        # A sealer that slept proposes epoch 2 before anyone proposed 1: it closes both.
        await seal(js, topology, 2)
        await seal(js, topology, 1)  # late proposal, ignored
        await publish_batch(js, topology, [upsert("c", 3, 10, "z", "c")])
        await seal(js, topology, 3)
        peers = await two_peers(js, topology, backends)
        try:
            for peer in peers:
                await peer.run_until(3)
            assert peers[0].hashes() == peers[1].hashes()
            assert [k for k, _ in peers[0].hashes()] == [0, 2, 3]
            first_epochs = peers[0].query("SELECT epoch, first_epoch FROM oplog_epochs")
            assert first_epochs == [(0, 0), (2, 1), (3, 3)]
        finally:
            for peer in peers:
                await peer.close()


async def test_a_config_change_moves_boundaries_only_from_its_epoch_on(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    cfg = config(max_future_epochs=2)
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, cfg)
        await seal(js, topology, 0)
        # Too soon (ops may already sit in epochs up to 0 + 2): rejected.
        too_soon = {"type": "change", "effective_epoch": 3, "epoch_ms": 5000, "grace_ms": 0}
        await publish_raw(js, topology, topology.config_subject, orjson.dumps(too_soon))
        # From epoch 4 on, epochs last 5 s: epoch 4 is [origin+4 s, origin+9 s).
        change = {"type": "change", "effective_epoch": 4, "epoch_ms": 5000, "grace_ms": 0}
        await publish_raw(js, topology, topology.config_subject, orjson.dumps(change))
        await seal(js, topology, 1)
        await seal(js, topology, 2)
        # An op 7 s after the origin is in epoch 4 under the new config (it would be
        # epoch 7 under the old one, and rejected as too far in the future).
        await publish_batch(js, topology, [upsert("in4", 0, 7000, "x", "in4")])
        await seal(js, topology, 3)
        await seal(js, topology, 4)
        peers = await two_peers(js, topology, backends)
        try:
            for peer in peers:
                await peer.run_until(4)
            assert peers[0].hashes() == peers[1].hashes()
            rows = peers[0].query("SELECT epoch, applied, end_ms FROM oplog_epochs")
            assert rows == [
                (0, 0, ORIGIN_MS + 1 * EPOCH_MS),
                (1, 0, ORIGIN_MS + 2 * EPOCH_MS),
                (2, 0, ORIGIN_MS + 3 * EPOCH_MS),
                (3, 0, ORIGIN_MS + 4 * EPOCH_MS),
                (4, 1, ORIGIN_MS + 9 * EPOCH_MS),
            ]
            assert peers[0].rejections() == [(1, None, "bad_config")]
            # The commit date is the epoch's end, in the new window.
            date = peers[0].query("SELECT date FROM dolt_log LIMIT 1")[0][0]
            assert date.replace(" ", "T") == format_epoch_ms(ORIGIN_MS + 9 * EPOCH_MS)[:19]
        finally:
            for peer in peers:
                await peer.close()


async def test_a_restart_between_seal_and_commit_commits_the_same_epoch(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        await publish_batch(js, topology, [upsert("a", 0, 1, "x", "a")])
        await seal(js, topology, 0)
        # An op of epoch 1 read before seal 1 (so it is buffered when epoch 0 commits).
        await publish_batch(js, topology, [upsert("b", 1, 1, "y", "b")])
        steady = await InProcessPeer(js, topology, backends, "steady").start()
        crashy = await InProcessPeer(js, topology, backends, "crashy").start()
        try:
            await crashy.run_until(0)
            await crashy.close()  # gone after committing 0, before seal 1 exists
            await seal(js, topology, 1)
            crashy = await InProcessPeer(js, topology, backends, "crashy").start()
            await crashy.run_until(1)
            await steady.run_until(1)
            assert crashy.hashes() == steady.hashes()
            assert crashy.epochs() == steady.epochs() == [(0, 1, 0, 0, 0), (1, 1, 0, 0, 0)]
        finally:
            await steady.close()
            await crashy.close()


async def test_sealers_of_many_peers_seal_each_epoch_once() -> None:
    # The sealer's decision with the clock injected: due at end(k) + grace, proposing
    # only the newest due epoch, never one already sealed or proposed.
    from epoch.config import Timeline

    timeline = Timeline.from_config(config(grace_ms=300))
    now = [ORIGIN_MS]
    proposed: list[int] = []
    last_sealed = [-1]

    async def publish(epoch: int) -> None:
        proposed.append(epoch)

    sealer = Sealer(lambda: (timeline, last_sealed[0], None), publish, now_ms=lambda: now[0])
    assert await sealer.tick() is None  # epoch -1 ends at the origin, plus 300 ms grace
    now[0] = ORIGIN_MS + 300
    assert await sealer.tick() is None  # -1 is already sealed
    now[0] = ORIGIN_MS + 1299
    assert await sealer.tick() is None
    now[0] = ORIGIN_MS + 1300
    assert await sealer.tick() == 0
    assert await sealer.tick() is None  # proposed already
    now[0] = ORIGIN_MS + 10_000  # slept: one seal for the newest due epoch
    assert await sealer.tick() == 8
    assert proposed == [0, 8]
