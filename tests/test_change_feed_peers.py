"""Peers publishing the change feed to NATS (``oplog serve --publish-changes``), end to end.

Real nats-server, real doltlite peers (``run_peer`` in this process, as ``oplog serve``
runs it), the feed read back from its stream and compared with what ``oplog changes
--json`` prints from each peer's own file. Every peer is stopped even when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from materializer.read.changes import read_changes
from peer.auth import Plan
from peer.change_publisher import Position, changes_stream_config
from tests.change_feed import (
    TOPOLOGY,
    Peer,
    churn,
    expected_feed,
    feed,
    position,
    publish_epoch,
    stopped_at_exit,
    wait_committed,
    wait_fed,
    wait_until,
)
from tests.support import config, connected, setup_db
from tests.test_auth import as_user, nkey, secured_server
from tests.test_changes import SCHEMA, op, oplog

pytestmark = pytest.mark.integration


def p(epoch: int, table: str, part: int = 1) -> Position:
    return Position(epoch, table, part)


# Inserts, updates and deletes on three strategies, an epoch without ops (2), and one
# seal closing epochs 4 and 5 in one commit.
SCENARIO = {
    0: [[op("a0", 0, 1, "users", "u1", "upsert", {"name": "Ann", "score": 1}),
         op("b0", 0, 2, "users", "u2", "upsert", {"name": "Bob", "score": 2}),
         op("c0", 0, 3, "users", "u3", "upsert", {"name": "Cy", "score": 3})],
        [op("s0", 0, 4, "stock", "s1", "incr", {"qty": 5})]],
    1: [[op("a1", 1, 1, "users", "u1", "upsert", {"name": "Ann", "score": 2}),
         op("b1", 1, 2, "users", "u2", "delete")],
        [op("p1", 1, 3, "profiles", "p1", "patch", {"email": "a@x"})]],
    2: [],
    3: [[op("s3", 3, 1, "stock", "s1", "incr", {"qty": -2})],
        [op("p3", 3, 2, "profiles", "p1", "patch", {"city": "Oslo"})],
        [op("d3", 3, 3, "users", "u4", "upsert", {"name": "Di", "score": 4})]],
    4: [[op("c4", 4, 1, "users", "u3", "delete")]],
    5: [[op("p5", 5, 1, "profiles", "p1", "delete")]],
}  # fmt: skip
SCENARIO_FEED = [p(0, "stock"), p(0, "users"), p(1, "profiles"), p(1, "users"), p(3, "profiles"), p(3, "stock"),
                 p(3, "users"), p(5, "profiles"), p(5, "users")]  # fmt: skip


async def test_three_publishing_peers_leave_one_message_per_epoch_and_table_as_oplog_changes_prints_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    peers = [Peer(nats_server.url, tmp_path, name, publish=True) for name in "abc"]
    async with connected(nats_server.url) as nc, stopped_at_exit(*peers):
        js = nc.jetstream()
        await setup_db(js, TOPOLOGY, config(), SCHEMA)
        for peer in peers:
            peer.start()
        for epoch, batches in SCENARIO.items():
            await publish_epoch(js, epoch, batches, sealed=epoch != 4)  # seal 5 closes 4 and 5
        await wait_committed(peers, 5)
        await wait_fed(js, SCENARIO_FEED[-1], peers)
        stored = await feed(js)
    # Exactly one message per (epoch commit, changed table), in that order, though three
    # peers published every one of them.
    assert [position(m) for m in stored] == SCENARIO_FEED
    for peer in peers:
        status, out, err = await oplog("changes", "--data-dir", str(peer.config.data_dir), "--db", "t",
                                       "--from-epoch", "0", "--json")  # fmt: skip
        assert (status, err) == (0, "")
        printed: dict[Position, str] = {}
        for line in out.splitlines(keepends=True):
            change = json.loads(line)
            key = p(change["epoch"], change["table"])
            printed[key] = printed.get(key, "") + line
        # Each payload is, byte for byte, what `oplog changes --json` prints for its epoch and table.
        assert {position(m): m.data.decode() for m in stored} == printed
        hashes = {e.epoch: e.commit_hash for e in read_changes(peer.db_path, 0)}  # the same on every peer
        assert all(m.headers["Oplog-Commit"] == hashes[position(m).epoch] for m in stored)  # type: ignore[index]
    # The literal command for one epoch and table prints one message's payload.
    status, out, _ = await oplog("changes", "--data-dir", str(tmp_path / "c"), "--db", "t", "--from-epoch", "5",
                                 "--to-epoch", "5", "--table", "profiles", "--json")  # fmt: skip
    assert status == 0 and out.encode() == stored[-2].data
    (last_commit,) = read_changes(peers[0].db_path, 5)
    assert stored[-1].headers == {
        "Nats-Msg-Id": "changes-t-users-5-1", "Oplog-Epoch": "5", "Oplog-First-Epoch": "4",
        "Oplog-Commit": last_commit.commit_hash, "Oplog-Table": "users", "Oplog-End-Ms": str(last_commit.end_ms),
        "Oplog-Part": "1/1", "Oplog-Changes": "1", "Nats-Expected-Last-Sequence": str(len(SCENARIO_FEED) - 1),
        "Nats-Expected-Stream": TOPOLOGY.changes_stream,
    }  # fmt: skip


async def test_a_restarted_and_a_late_peer_fill_the_gap_in_epoch_order_without_duplicates(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    a = Peer(nats_server.url, tmp_path, "a", publish=True)
    c = Peer(nats_server.url, tmp_path, "c", publish=False)  # commits throughout, never publishes
    d = Peer(nats_server.url, tmp_path, "d", publish=True)  # joins late, with an empty data dir
    async with connected(nats_server.url) as nc, stopped_at_exit(a, c, d):
        js = nc.jetstream()
        await setup_db(js, TOPOLOGY, config(), SCHEMA)
        # A duplicate window far shorter than the gap: a republished epoch would be stored
        # again if the message ids were all that kept copies single.
        await js.add_stream(changes_stream_config(TOPOLOGY).evolve(duplicate_window=0.5))
        a.start()
        c.start()
        for epoch in (0, 1):
            await publish_epoch(js, epoch, churn(epoch))
        await wait_committed([a, c], 1)
        await wait_fed(js, p(1, "users"), [a, c])
        await a.stop()
        for epoch in (2, 3, 4):  # the gap: committed while nobody publishes
            await publish_epoch(js, epoch, churn(epoch))
        await wait_committed([c], 4)
        assert position((await feed(js))[-1]) == p(1, "users")
        a.start()  # a restart: the same data dir
        d.start()
        await publish_epoch(js, 5, churn(5))
        await wait_committed([a, c, d], 5)
        await wait_fed(js, p(5, "users"), [a, c, d])
        stored = await feed(js)
    expected = expected_feed(c.db_path)
    assert [position(m) for m in stored] == [pos for pos, _ in expected] == [
        p(e, t) for e in range(6) for t in ("stock", "users")
    ]
    assert [m.data for m in stored] == [payload for _, payload in expected]
    assert expected_feed(a.db_path) == expected_feed(d.db_path) == expected


async def test_a_failing_feed_is_logged_once_retried_and_never_holds_up_commits(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="oplog.peer.a")
    a = Peer(nats_server.url, tmp_path, "a", publish=True)

    def records(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "oplog.peer.a" and text in r.getMessage()]

    async with connected(nats_server.url) as nc, stopped_at_exit(a):
        js = nc.jetstream()
        await setup_db(js, TOPOLOGY, config(), SCHEMA)
        # An operator made the stream with the wrong subjects: no publish reaches it.
        wrong = changes_stream_config(TOPOLOGY).evolve(subjects=["oplog-changes.t.nowhere"])
        await js.add_stream(wrong)
        a.start()
        for epoch in range(3):
            await publish_epoch(js, epoch, churn(epoch))
        await wait_committed([a], 2)  # committing goes on while every publish fails

        async def retried() -> bool:
            return len(records("still not published")) >= 2

        await wait_until(retried, "the feed to be retried", [a])
        assert (await feed(js)) == []
        await js.update_stream(wrong.evolve(subjects=[TOPOLOGY.changes_subjects]))
        await publish_epoch(js, 3, churn(3))
        await wait_fed(js, p(3, "users"), [a])
        stored = await feed(js)
    failed = records("could not publish the change feed")
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING, failed
    assert "NoStreamResponseError" in failed[0].getMessage()  # nothing takes the subject: a transient error
    assert len(records("again, after")) == 1
    # Every epoch missed while failing was published after, in order.
    assert [(position(m), m.data) for m in stored] == expected_feed(a.db_path)
    assert [position(m) for m in stored][-1] == p(3, "users")


async def test_peers_publish_and_a_consumer_only_reads_the_feed_on_role_credentials(tmp_path: Path) -> None:
    plan = Plan(dbs=["t"], admins=["admin"], peers=["a", "b"], consumers=["feed"])
    with secured_server(tmp_path, (plan, "nkey")) as server:
        peers = [Peer(nkey(tmp_path, n).model_copy(update={"url": server.url}), tmp_path, n, publish=True)
                 for n in "ab"]  # fmt: skip
        async with as_user(server, nkey(tmp_path, "admin"), "admin") as admin, stopped_at_exit(*peers):
            js = admin.jetstream()
            await setup_db(js, TOPOLOGY, config(), SCHEMA)
            for peer in peers:
                peer.start()
            for epoch in range(3):
                await publish_epoch(js, epoch, churn(epoch))
            await wait_committed(peers, 2)
            await wait_fed(js, p(2, "users"), peers)
        assert "violation" not in server.log_path.read_text().lower()  # the peers needed nothing more
        expected = expected_feed(peers[0].db_path)
        async with as_user(server, nkey(tmp_path, "feed"), "feed") as nc:
            consumer = nc.jetstream(timeout=2.0)
            sub = await consumer.pull_subscribe(TOPOLOGY.changes_subjects, durable="svc")
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(expected) and time.monotonic() < deadline:
                got += await sub.fetch(len(expected) - len(got), timeout=10)
            for msg in got:
                await msg.ack_sync()
            assert [msg.data for msg in got] == [payload for _, payload in expected]
            assert (await consumer.consumer_info(TOPOLOGY.changes_stream, "svc")).num_ack_pending == 0
            with pytest.raises(Exception):  # noqa: B017 (refused: a timeout or a permissions error)
                await consumer.publish(TOPOLOGY.changes_subject("users"), b"forged", timeout=1.0)
            with pytest.raises(Exception):  # noqa: B017
                await consumer.stream_info(TOPOLOGY.stream)  # not the ops stream
            await asyncio.sleep(0.1)
        async with as_user(server, nkey(tmp_path, "admin"), "admin") as admin:
            assert len(await feed(admin.jetstream())) == len(expected)  # the forged message was not stored
        log = server.log_path.read_text()
        assert 'Publish Violation' in log and TOPOLOGY.changes_subject("users") in log

