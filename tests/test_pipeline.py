"""The whole pipeline against a real nats-server, on every backend (doltlite files and
Dolt sql-server databases, through the ``backends`` fixture).

Seals are published by the tests (peers run no sealer), so each scenario fixes where
every seal falls in the stream and the expected commits are exact.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from oplog.codec import canonical_bytes
from oplog.errors import InvalidOp, OversizeOp
from oplog.hlc import HybridLogicalClock
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.topology import StreamLimits, Topology
from tests.support import (
    BackendFactory,
    InProcessPeer,
    config,
    connected,
    lww_reference,
    publish_batch,
    publish_raw,
    seal,
    setup_db,
    wall,
)

pytestmark = pytest.mark.integration


def history(seed: int, epochs: int = 4, per_epoch: int = 30) -> list[list[Op]]:
    """Random upserts/deletes from three producers on ten keys, grouped by epoch."""
    rng = random.Random(seed)
    out = []
    for epoch in range(epochs):
        ops = []
        for i in range(per_epoch):
            key = f"k{rng.randrange(10)}"
            node = f"p{rng.randrange(3)}"
            hlc = (wall(epoch, rng.randrange(1000)), rng.randrange(3), node)
            if rng.random() < 0.2:
                ops.append(Op(id=f"e{epoch}-{i}", hlc=hlc, table="users", key=(key,), kind="delete"))
            else:
                data = {"name": f"{node}-{i}", "score": rng.randrange(100)}
                ops.append(Op(id=f"e{epoch}-{i}", hlc=hlc, table="users", key=(key,), kind="upsert", data=data))
        out.append(ops)
    return out


async def feed(url: str, topology: Topology, epochs: list[list[Op]], style: str, rng: random.Random) -> None:
    """Publish the same ops with different batching, duplicates and retries."""
    async with connected(url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(topology.db))
        for k, ops in enumerate(epochs):
            ops = list(ops)
            if style == "single":
                for op in ops:
                    await publish_batch(js, topology, [op])
            elif style == "batches+duplicates":
                rng.shuffle(ops)  # arrival order within an epoch must not matter
                for i in range(0, len(ops), 7):
                    await publish_batch(js, topology, ops[i : i + 7])
                # A producer that re-sends some ops in a new message (new Nats-Msg-Id):
                # only the materializer's op-id dedup can catch these.
                await publish_batch(js, topology, rng.sample(ops, 5))
            else:  # retries: the same message re-published with the same Nats-Msg-Id
                for i in range(0, len(ops), 11):
                    batch = ops[i : i + 11]
                    first = await publish_batch(js, topology, batch, msg_id=f"b{k}-{i}")
                    again = await publish_batch(js, topology, batch, msg_id=f"b{k}-{i}")
                    assert again == first  # the stream stored it once
            await seal(js, topology, k)


async def test_batching_duplicates_and_retries_give_identical_hashes_and_expected_rows(
    tmp_path: Path, backends: BackendFactory
) -> None:
    # Three deployments receive the same ops, batched differently, with re-sent
    # duplicates and with retried publishes. Stream positions differ between them (and
    # are recorded in each commit's progress row), so their commit hashes may differ;
    # their tables must not. Inside each deployment two peers read the stream in
    # different read batches (1 and 2000 messages) and must make identical commits.
    epochs = history(seed=1)
    topology = Topology(db="t")
    deployments = []
    genesis: bytes | None = None
    for i, style in enumerate(["single", "batches+duplicates", "retries"]):
        with NatsServer(tmp_path / f"nats{i}") as server:
            await feed(server.url, topology, epochs, style, random.Random(i))
            async with connected(server.url) as nc:
                peers = []
                for read_batch in (1, 2000):
                    peer = InProcessPeer(nc.jetstream(), topology, backends, f"p{read_batch}",
                                         db=f"d{i}-{read_batch}", read_batch=read_batch)  # fmt: skip
                    peer.backend.open()
                    if genesis is None:
                        genesis = peer.backend.create_genesis()
                    else:
                        peer.backend.install_snapshot(genesis)
                    peers.append(await peer.start())
                try:
                    for peer in peers:
                        await peer.run_until(len(epochs) - 1)
                    assert peers[0].hashes() == peers[1].hashes()
                    assert [k for k, _ in peers[0].hashes()] == [0, 1, 2, 3]
                    deployments.append((peers[0].backend.table_hash("users"), peers[0].rows(), peers[0].epochs()))
                finally:
                    for peer in peers:
                        await peer.close()

    # Every deployment holds the same table, byte for byte...
    assert deployments[0][0] == deployments[1][0] == deployments[2][0]
    # ...with the rows plain last-writer-wins predicts.
    expected = lww_reference([op for ops in epochs for op in ops])
    for _, rows, _ in deployments:
        assert {r[0]: (r[1], r[2]) for r in rows} == expected
    # Every op applied once; the re-sent copies were counted as duplicates.
    assert [e[1] for e in deployments[0][2]] == [30, 30, 30, 30]
    assert [e[3] for e in deployments[1][2]] == [5, 5, 5, 5]
    assert [e[3] for e in deployments[2][2]] == [0, 0, 0, 0]


async def test_three_peers_on_one_stream_agree_and_a_late_op_is_carried_identically(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        new = Op(id="new", hlc=(wall(0, 500), 0, "a"), table="users", key=("x",), kind="upsert",
                 data={"name": "new", "score": 2})  # fmt: skip
        await publish_batch(js, topology, [new])
        await seal(js, topology, 0)
        # Published after seal 0 although its HLC is in epoch 0: late, carried into
        # epoch 1, where its older HLC loses to the committed write on "x"...
        old = Op(id="old", hlc=(wall(0, 100), 0, "b"), table="users", key=("x",), kind="upsert",
                 data={"name": "old", "score": 1})  # fmt: skip
        # ...while on a fresh key it simply applies.
        fresh = Op(id="fresh", hlc=(wall(0, 200), 0, "b"), table="users", key=("y",), kind="upsert",
                   data={"name": "fresh", "score": 3})  # fmt: skip
        await publish_batch(js, topology, [old, fresh])
        await seal(js, topology, 1)

        peers = [await InProcessPeer(js, topology, backends, f"p{i}").start() for i in range(3)]
        try:
            for peer in peers:
                await peer.run_until(1)
            hashes = [peer.hashes() for peer in peers]
            assert hashes[0] == hashes[1] == hashes[2]
            for peer in peers:
                assert peer.rows() == [("x", "new", 2, '{"v":[1700000000500,0,"a","new"]}'),
                                       ("y", "fresh", 3, '{"v":[1700000000200,0,"b","fresh"]}')]  # fmt: skip
                # epoch, applied, rejected, duplicates, late
                assert peer.epochs() == [(0, 1, 0, 0, 0), (1, 2, 0, 0, 2)]
        finally:
            for peer in peers:
                await peer.close()


async def test_bad_input_is_recorded_identically_and_never_stops_an_epoch(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(max_op_bytes=2048))
        good = Op(id="good", hlc=(wall(0, 1), 0, "a"), table="users", key=("g",), kind="upsert",
                  data={"name": "g", "score": 1})  # fmt: skip
        await publish_raw(js, topology, topology.ops_subject("users"), b"{not json")
        await publish_batch(js, topology, [
            Op(id="nope", hlc=(wall(0, 2), 0, "a"), table="nosuch", key=("k",), kind="upsert", data={}),
        ])  # fmt: skip
        # An op is bound to the table its subject names: a producer allowed to publish
        # on another table's subject cannot write "users" through it.
        sneaky = Op(id="sneaky", hlc=(wall(0, 2), 1, "a"), table="users", key=("s",), kind="upsert", data={})
        await publish_raw(js, topology, topology.ops_subject("orders"),
                          b'{"v":1,"ops":[' + canonical_bytes(sneaky.to_wire()) + b"]}")  # fmt: skip
        await publish_batch(js, topology, [
            Op(id="typed", hlc=(wall(0, 3), 0, "a"), table="users", key=("t",), kind="upsert",
               data={"name": "t", "score": "high"}),
            Op(id="big", hlc=(wall(0, 4), 0, "a"), table="users", key=("b",), kind="upsert",
               data={"name": "x" * 4000, "score": 1}),
            good,
        ])  # fmt: skip
        await publish_raw(js, topology, topology.ops_subject("users"), b'{"v":1,"ops":[{"id":"half"}]}')
        await seal(js, topology, 0)

        peers = [await InProcessPeer(js, topology, backends, f"p{i}").start() for i in range(2)]
        try:
            for peer in peers:
                await peer.run_until(0)
            assert peers[0].hashes() == peers[1].hashes()
            for peer in peers:
                assert peer.rows() == [("g", "g", 1, '{"v":[1700000000001,0,"a","good"]}')]
                # In stream order: (epoch, op id, reason).
                assert peer.rejections() == [
                    (0, None, "malformed"),
                    (0, "nope", "unknown_table"),
                    (0, "sneaky", "wrong_subject"),
                    (0, "typed", "bad_value"),
                    (0, "big", "oversize"),
                    (0, "half", "invalid_op"),
                ]
        finally:
            for peer in peers:
                await peer.close()


async def test_the_producer_refuses_what_it_can_check_locally(nats_server: NatsServer) -> None:
    topology = Topology(db="t", limits=StreamLimits(max_op_bytes=1024))
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        producer = Producer(js, topology, clock=HybridLogicalClock("p"), config=ProducerConfig(linger_ms=1))
        async with producer:
            with pytest.raises(InvalidOp, match="kind 'zap' is not one of"):
                producer.make_op("users", "k", "zap")
            with pytest.raises(InvalidOp, match="reserved prefix"):
                producer.make_op("oplog_epochs", "k", "delete")
            with pytest.raises(OversizeOp, match="limit is 1024"):
                producer.enqueue(producer.make_op("users", "k", "upsert", {"name": "x" * 2000}))
            receipt = await producer.submit(producer.make_op("users", "k", "upsert", {"name": "ok"}))
            assert receipt.stream_seq == 3  # after the config and schema messages
            assert receipt.duplicate is False
