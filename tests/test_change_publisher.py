"""The change publisher's own rules (peer/change_publisher.py): how a change set becomes
messages, where publishing goes on, and where an empty stream starts.

The database is a real doltlite file committed by an in-process materializer, the
stream a real nats-server's; tests/test_change_feed_peers.py runs the same through whole
peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from devtools.natsd import NatsServer
from materializer.read.changes import Change, EpochChanges, read_changes
from oplog.topology import Topology
from peer.auth import consumer_permissions, peer_permissions
from peer.change_publisher import (
    ChangePublisher,
    ForeignMessage,
    Position,
    change_messages,
    changes_stream_config,
)
from peer.cli import build_parser
from tests.change_feed import TOPOLOGY, expected_feed, feed, position
from tests.support import InProcessPeer, config, connected, publish_batch, seal, setup_db
from tests.test_changes import SCHEMA, WAIT_S, op, oplog

LOG = logging.getLogger("test.change_publisher")


def change(table: str, key: str, name: str) -> Change:
    return Change(7, "c0ffee", table, (key,), "insert", None, {"id": key, "name": name}, f"op-{key}")


def test_a_change_set_becomes_one_message_per_table_cut_between_lines_when_large() -> None:
    epoch = EpochChanges(7, "c0ffee", (change("a", "k1", "x" * 40), change("a", "k2", "y" * 40),
                                       change("a", "k3", "z" * 200), change("b", "k1", "w")),
                         first_epoch=6, end_ms=1234)  # fmt: skip
    line = [c.to_json().encode() + b"\n" for c in epoch.changes]
    messages = change_messages(Topology(db="shop"), epoch, part_bytes=2 * len(line[0]))
    # Two lines fit a part; the long line is a part of its own, though over the size.
    assert [(m.position, m.payload) for m in messages] == [
        (Position(7, "a", 1), line[0] + line[1]),
        (Position(7, "a", 2), line[2]),
        (Position(7, "b", 1), line[3]),
    ]
    assert [m.subject for m in messages] == ["oplog-changes.shop.a", "oplog-changes.shop.a", "oplog-changes.shop.b"]
    assert messages[1].headers == {
        "Nats-Msg-Id": "changes-shop-a-7-2", "Oplog-Epoch": "7", "Oplog-First-Epoch": "6", "Oplog-Commit": "c0ffee",
        "Oplog-Table": "a", "Oplog-End-Ms": "1234", "Oplog-Part": "2/2", "Oplog-Changes": "1",
    }  # fmt: skip
    assert change_messages(Topology(db="shop"), EpochChanges(8, "beef", ())) == []  # no changes, no message


@contextlib.asynccontextmanager
async def committed_db(url: str, tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, Path]]:
    """A peer's file with epoch 0 (30 users: several parts at 1 KB) and epoch 1 (one update)."""
    async with connected(url) as nc:
        js = nc.jetstream()
        await setup_db(js, TOPOLOGY, config(), SCHEMA)
        await publish_batch(js, TOPOLOGY, [op(f"u{i}", 0, i, "users", f"u{i:02}", "upsert",
                                              {"name": "n" * 100, "score": i}) for i in range(30)])  # fmt: skip
        await seal(js, TOPOLOGY, 0)
        await publish_batch(js, TOPOLOGY, [op("x", 1, 1, "users", "u00", "upsert", {"name": "new", "score": 0})])
        await seal(js, TOPOLOGY, 1)
        peer = await InProcessPeer(js, TOPOLOGY, tmp_path / "p0.db", "p0").start()
        try:
            await peer.run_until(1)
        finally:
            await peer.close()
        yield js, tmp_path / "p0.db"


async def test_a_large_set_goes_out_in_parts_and_publishing_goes_on_after_the_streams_last_part(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with committed_db(nats_server.url, tmp_path) as (js, path):
        messages = [m for e in read_changes(path, 0) for m in change_messages(TOPOLOGY, e, 1000)]
        assert [m.position for m in messages][-1] == Position(1, "users", 1) and len(messages) >= 5
        # A peer stopped after storing two parts of epoch 0 (with the same headers it sends).
        await js.add_stream(changes_stream_config(TOPOLOGY))
        for seq, message in enumerate(messages[:2]):
            headers = {**message.headers, "Nats-Expected-Last-Sequence": str(seq)}
            await js.publish(message.subject, message.payload, headers=headers, stream=TOPOLOGY.changes_stream)
        first = ChangePublisher(js, TOPOLOGY, path, logger=LOG, part_bytes=1000)
        again = ChangePublisher(js, TOPOLOGY, path, logger=LOG, part_bytes=1000)
        try:
            await first.publish_pending()
            assert first.stored == len(messages) - 2
            await again.publish_pending()  # a peer that restarts now: nothing is missing
            assert again.stored == 0
        finally:
            await first.stop()
            await again.stop()
        stored = await feed(js)
    assert [(position(m), m.data) for m in stored] == [(m.position, m.payload) for m in messages]
    parts = [m for m in stored if position(m).epoch == 0]
    assert [(m.headers or {})["Oplog-Part"] for m in parts] == [f"{i}/{len(parts)}" for i in range(1, len(parts) + 1)]
    # The parts of epoch 0, end to end, are what `oplog changes --json` prints for it.
    status, out, _ = await oplog("changes", "--data-dir", str(tmp_path), "--db", "p0", "--from-epoch", "0",
                                 "--to-epoch", "0", "--json")  # fmt: skip
    assert status == 0 and out.encode() == b"".join(m.data or b"" for m in parts)


async def test_an_empty_stream_starts_after_the_epoch_the_peer_had_committed(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with committed_db(nats_server.url, tmp_path) as (js, path):
        publisher = ChangePublisher(js, TOPOLOGY, path, logger=LOG)
        publisher.start(committed=0)  # as a peer that had committed epoch 0 when it started
        try:
            async with asyncio.timeout(WAIT_S):
                while publisher.stored < 1:
                    await asyncio.sleep(0.05)
        finally:
            await publisher.stop()
        stored = await feed(js)
    assert [(position(m), m.data) for m in stored] == expected_feed(path, from_epoch=1)


async def test_a_stream_whose_last_message_is_not_a_change_set_is_refused_by_name(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with committed_db(nats_server.url, tmp_path) as (js, path):
        await js.add_stream(changes_stream_config(TOPOLOGY))
        await js.publish(TOPOLOGY.changes_subject("users"), b"hello", stream=TOPOLOGY.changes_stream)
        publisher = ChangePublisher(js, TOPOLOGY, path, logger=LOG)
        try:
            with pytest.raises(ForeignMessage, match=r"last message of stream OPLOG-CHANGES_t \(seq 1, subject "
                               r"oplog-changes.t.users\) has no Oplog-Epoch, Oplog-Table and Oplog-Part headers"):
                await publisher.publish_pending()
        finally:
            await publisher.stop()
        assert len(await feed(js)) == 1


def test_peers_may_publish_the_feed_and_consumers_may_only_read_it() -> None:
    shop = Topology(db="shop")
    feed_grants = [s for s in peer_permissions([shop], "a").publish if "CHANGES" in s or s.startswith("oplog-")]
    # Exactly what publishing needs: no consumer on the feed, no purge, no update.
    assert feed_grants == ["oplog-changes.shop.*", "$JS.API.STREAM.CREATE.OPLOG-CHANGES_shop",
                           "$JS.API.STREAM.INFO.OPLOG-CHANGES_shop", "$JS.API.STREAM.MSG.GET.OPLOG-CHANGES_shop"]
    reads = consumer_permissions([shop]).publish
    assert "$JS.API.CONSUMER.DURABLE.CREATE.OPLOG-CHANGES_shop.*" in reads and "$JS.ACK.OPLOG-CHANGES_shop.>" in reads
    # No publishes, nothing of the ops stream or the buckets, no stream management.
    assert not [s for s in reads if s.startswith(("oplog", "$KV", "$O")) or "OPLOG_shop" in s or ".STREAM.CREATE." in s]
    args = build_parser().parse_args(["auth", "config", "--db", "shop", "--consumers", "search,audit",
                                      "--credentials-dir", "creds"])  # fmt: skip
    assert args.consumers == ["search", "audit"]
