"""The stream reader on a real nats-server: contiguous, complete, and prompt."""

from __future__ import annotations

import asyncio

import pytest

from devtools.natsd import NatsServer
from epoch.assign import StreamMessage
from materializer.commit.reader import StreamReader
from oplog.stream import ensure_stream
from oplog.topology import StreamLimits, Topology
from tests.support import connected

pytestmark = pytest.mark.integration


async def test_a_read_returns_when_a_message_arrives_not_when_its_wait_ends(nats_server: NatsServer) -> None:
    # The client library's fetch kept its pull request open until the batch filled or
    # the wait ended, so a seal arriving early in a read was seen at the end of the wait.
    # The reader here waits up to 10 minutes per read; each read below must return with
    # its seal long before that (the test's own deadline is 60 s), whatever the machine's
    # speed: a read that waited its full time would fail, a slow one would not.
    topology = Topology(db="r")
    wait_s = 600.0
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        reader = StreamReader(js, topology, 1, wait_s=wait_s)
        try:
            for epoch in range(4):
                # A read is outstanding (no message to return yet)...
                read = asyncio.create_task(reader.next_batch())
                await asyncio.sleep(0)
                # ...when a seal is published; the read returns with it.
                await js.publish(topology.seal_subject, b'{"epoch": %d}' % epoch, stream=topology.stream)
                batch: list[StreamMessage] = await asyncio.wait_for(read, 60.0)
                while not batch:  # the read may have been answered empty just before the seal
                    batch = await asyncio.wait_for(reader.next_batch(), 60.0)
                assert [(m.kind, m.seq) for m in batch] == [("seal", epoch + 1)]
        finally:
            await reader.close()


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
