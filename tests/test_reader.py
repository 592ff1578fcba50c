"""The stream reader on a real nats-server: contiguous, complete, and prompt."""

from __future__ import annotations

import asyncio

import pytest

from epoch.assign import StreamMessage
from materializer.reader import StreamReader
from oplog.stream import ensure_stream
from oplog.topology import StreamLimits, Topology
from peer.natsd import NatsServer
from tests.support import connected

pytestmark = pytest.mark.integration


async def test_a_read_returns_when_a_message_arrives_not_when_its_wait_ends(nats_server: NatsServer) -> None:
    # The client library's fetch kept its pull request open until the batch filled or
    # the wait ended, so a seal arriving early in a read was seen at the end of the wait
    # (in this pattern: 206 and 130 ms late of 250, on the second and fourth reads).
    topology = Topology(db="r")
    wait_s = 0.25
    late: list[float] = []
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        reader = StreamReader(js, topology, 1, wait_s=wait_s)
        try:
            assert await reader.next_batch() == []  # an idle read that waits its full time
            for epoch, delay in enumerate((0.01, 0.03, 0.05, 0.07)):
                # A seal is published while the peer is reading...
                published = asyncio.get_running_loop().create_future()

                async def publish(e: int = epoch, d: float = delay, done: asyncio.Future[float] = published) -> None:
                    await asyncio.sleep(d)
                    await js.publish(topology.seal_subject, b'{"epoch": %d}' % e, stream=topology.stream)
                    done.set_result(asyncio.get_running_loop().time())

                task = asyncio.create_task(publish())
                batch: list[StreamMessage] = []
                while not batch:
                    batch = await reader.next_batch()
                await task
                late.append(asyncio.get_running_loop().time() - published.result())
                assert [m.kind for m in batch] == ["seal"]
        finally:
            await reader.close()
    # ...and the read returns with it, not at the end of its wait.
    assert max(late) < wait_s / 2, late


async def test_reads_capped_by_bytes_return_every_message_once_in_order(nats_server: NatsServer) -> None:
    # Small messages and a small cap: each read holds a few messages.
    topology = Topology(db="r", limits=StreamLimits(max_msg_bytes=4096))
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        for i in range(30):
            await js.publish(topology.ops_subject("t"), bytes([65 + i % 26]) * 2000, stream=topology.stream)
        reader = StreamReader(js, topology, 1, max_bytes=1, wait_s=0.5)
        batches = []
        try:
            while reader.next_seq <= 30:
                batches.append(await reader.next_batch())
        finally:
            await reader.close()
    assert [m.seq for batch in batches for m in batch] == list(range(1, 31))
    assert max(len(batch) for batch in batches) < 30  # the cap did cut the reads
    assert all(m.payload == bytes([65 + (m.seq - 1) % 26]) * 2000 for batch in batches for m in batch)


async def test_a_consumer_deleted_behind_the_readers_back_is_made_again_where_it_left_off(
    nats_server: NatsServer,
) -> None:
    topology = Topology(db="r")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        for epoch in range(3):
            await js.publish(topology.seal_subject, b'{"epoch": %d}' % epoch, stream=topology.stream)
        reader = StreamReader(js, topology, 1, batch=2, wait_s=0.5)
        try:
            first = await reader.next_batch()
            # The server forgets the consumer (restart, inactivity)...
            for name in await js._jsm.consumers_info(topology.stream):
                await js._jsm.delete_consumer(topology.stream, name.name)
            await js.publish(topology.seal_subject, b'{"epoch": 3}', stream=topology.stream)
            # ...and the reader carries on from the next sequence: nothing lost or read twice.
            rest = []
            for _ in range(20):
                rest += await reader.next_batch()
                if reader.next_seq > 4:
                    break
        finally:
            await reader.close()
    assert [m.seq for m in first] == [1, 2]
    assert [m.seq for m in rest] == [3, 4]
