"""Per-epoch change feeds (materializer/read/changes.py, ``oplog changes``) on real peers.

Peers are in-process materializers on a real nats-server, stepped by the test, which
publishes the seals itself, so which commit holds which op is fixed: inserts, updates and
deletes on three strategies, a rejected op, a duplicate, two late ops (one wins, one
loses), an epoch without changes and a seal that closes two epochs in one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from devtools.natsd import NatsServer
from materializer.backends.base import Backend
from materializer.backends.dolt_server_launcher import DoltServer
from materializer.backends.doltlite import child_env
from materializer.plan import TableChange, TableWrites
from materializer.read.change_records import winning_op
from materializer.read.changes import EpochChanges, EpochNotCommittedYet, follow_changes, read_changes
from oplog.op import Op
from oplog.schema import SchemaMessage, TableSchema
from oplog.topology import Topology
from tests.support import (
    BackendFactory,
    DoltliteBackends,
    DoltServerBackends,
    InProcessPeer,
    config,
    connected,
    publish_batch,
    seal,
    setup_db,
    wall,
)
from tests.test_backend_contract import USERS, USERS_WITH_EMAIL, plan

pytestmark = pytest.mark.integration

WAIT_S = 30.0
LAST = 5  # the scenario's last commit (it closes epochs 4 and 5)

SCHEMA = SchemaMessage.model_validate(
    {
        "tables": [
            {"name": "users", "strategy": "lww", "primary_key": ["id"],
             "columns": [{"name": "id", "type": "text", "nullable": False},
                         {"name": "name", "type": "text"}, {"name": "score", "type": "integer"}]},
            {"name": "profiles", "strategy": "field-lww", "primary_key": ["id"],
             "columns": [{"name": "id", "type": "text", "nullable": False},
                         {"name": "email", "type": "text"}, {"name": "city", "type": "text"}]},
            {"name": "stock", "strategy": "counter", "primary_key": ["sku"],
             "columns": [{"name": "sku", "type": "text", "nullable": False}, {"name": "qty", "type": "integer"}]},
        ]
    }
)  # fmt: skip


def op(op_id: str, epoch: int, ms: int, table: str, key: str, kind: str, data: dict[str, Any] | None = None) -> Op:
    return Op(id=op_id, hlc=(wall(epoch, ms), 0, "n"), table=table, key=(key,), kind=kind, data=data)


def user(key: str, name: str, score: int) -> dict[str, Any]:
    return {"id": key, "name": name, "score": score}


async def publish_scenario(js: JetStreamContext, topology: Topology) -> None:
    await setup_db(js, topology, config(), SCHEMA)
    await publish_batch(js, topology, [op("a0", 0, 1, "users", "u1", "upsert", {"name": "Ann", "score": 1}),
                                       op("b0", 0, 2, "users", "u2", "upsert", {"name": "Bob", "score": 2}),
                                       op("c0", 0, 3, "users", "u3", "upsert", {"name": "Cy", "score": 3})])
    await publish_batch(js, topology, [op("p0", 0, 4, "profiles", "p1", "patch", {"email": "a@x"})])
    await publish_batch(js, topology, [op("s0", 0, 5, "stock", "s1", "incr", {"qty": 5})])
    await seal(js, topology, 0)
    a1 = op("a1", 1, 1, "users", "u1", "upsert", {"name": "Ann", "score": 5})
    await publish_batch(js, topology, [a1, op("b1", 1, 2, "users", "u2", "delete"),
                                       op("bad", 1, 3, "users", "u4", "upsert", {"name": "Di", "score": "high"})])
    await publish_batch(js, topology, [a1])  # a duplicate in a message of its own: dropped by op id
    await publish_batch(js, topology, [op("s1", 1, 4, "stock", "s1", "incr", {"qty": -2})])
    await publish_batch(js, topology, [op("p1", 1, 5, "profiles", "p1", "patch", {"city": "Oslo"})])
    await seal(js, topology, 1)
    # Late: stamped in epoch 1 (or 0) but published after seal 1, so carried into commit 2.
    # "late" is newer than u3's stored write and wins; "stale" is older than u1's and loses.
    await publish_batch(js, topology, [op("late", 1, 500, "users", "u3", "upsert", {"name": "Cy", "score": 9}),
                                       op("stale", 0, 900, "users", "u1", "upsert", {"name": "Old", "score": 0})])
    await publish_batch(js, topology, [op("e2", 2, 1, "users", "u5", "upsert", {"name": "Ed", "score": 7})])
    await publish_batch(js, topology, [op("pdel", 2, 2, "profiles", "p1", "delete")])
    await seal(js, topology, 2)
    await seal(js, topology, 3)  # an epoch without ops: an empty change set
    await publish_batch(js, topology, [op("d4", 4, 1, "users", "u3", "delete"),
                                       op("a5", 5, 1, "users", "u1", "upsert", {"name": "Ann", "score": 6})])
    await seal(js, topology, LAST)  # closes epochs 4 and 5 in one commit
    # fmt: skip


# (epoch, first_epoch, [(table, key, kind, before, after, op_id)]) of every commit.
EXPECTED: list[tuple[int, int, list[tuple[str, tuple[Any, ...], str, Any, Any, str | None]]]] = [
    (0, 0, [
        ("profiles", ("p1",), "insert", None, {"id": "p1", "email": "a@x", "city": None}, "p0"),
        ("stock", ("s1",), "insert", None, {"sku": "s1", "qty": 5}, None),
        ("users", ("u1",), "insert", None, user("u1", "Ann", 1), "a0"),
        ("users", ("u2",), "insert", None, user("u2", "Bob", 2), "b0"),
        ("users", ("u3",), "insert", None, user("u3", "Cy", 3), "c0"),
    ]),
    (1, 1, [
        ("profiles", ("p1",), "update", {"id": "p1", "email": "a@x", "city": None},
         {"id": "p1", "email": "a@x", "city": "Oslo"}, "p1"),
        ("stock", ("s1",), "update", {"sku": "s1", "qty": 5}, {"sku": "s1", "qty": 3}, None),
        ("users", ("u1",), "update", user("u1", "Ann", 1), user("u1", "Ann", 5), "a1"),
        ("users", ("u2",), "delete", user("u2", "Bob", 2), None, "b1"),
    ]),
    (2, 2, [
        ("profiles", ("p1",), "delete", {"id": "p1", "email": "a@x", "city": "Oslo"}, None, "pdel"),
        ("users", ("u3",), "update", user("u3", "Cy", 3), user("u3", "Cy", 9), "late"),
        ("users", ("u5",), "insert", None, user("u5", "Ed", 7), "e2"),
    ]),
    (3, 3, []),
    (5, 4, [
        ("users", ("u1",), "update", user("u1", "Ann", 5), user("u1", "Ann", 6), "a5"),
        ("users", ("u3",), "delete", user("u3", "Cy", 9), None, "d4"),
    ]),
]  # fmt: skip


def lines(epochs: list[EpochChanges]) -> list[str]:
    return [change.to_json() for epoch in epochs for change in epoch.changes]


def records(epochs: list[EpochChanges]) -> list[tuple[int, int, list[tuple[Any, ...]]]]:
    return [(e.epoch, e.first_epoch, [(c.table, c.key, c.kind, c.before, c.after, c.op_id) for c in e.changes])
            for e in epochs]  # fmt: skip


@contextlib.asynccontextmanager
async def scenario(url: str, store: BackendFactory | Path, count: int) -> AsyncIterator[tuple[JetStreamContext, Topology, list[InProcessPeer]]]:  # fmt: skip
    """``count`` peers that committed the whole scenario; closed on the way out."""
    topology = Topology(db="t")
    async with connected(url) as nc:
        js = nc.jetstream()
        await publish_scenario(js, topology)
        peers: list[InProcessPeer] = []
        try:
            for i in range(count):
                target = store / f"p{i}.db" if isinstance(store, Path) else store
                peers.append(await InProcessPeer(js, topology, target, f"p{i}").start())
            for peer in peers:
                await peer.run_until(LAST)
            yield js, topology, peers
        finally:
            for peer in peers:
                await peer.close()


async def test_every_peer_reads_the_same_changes_and_exactly_the_expected_ones(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    async with scenario(nats_server.url, backends, 3) as (_, _, peers):
        feeds = [read_changes(peer.backend, 0) for peer in peers]
        # Byte for byte the same on every peer: the JSON lines and every commit's identity.
        assert lines(feeds[0]) == lines(feeds[1]) == lines(feeds[2])
        assert feeds[0] == feeds[1] == feeds[2]
        assert records(feeds[0]) == EXPECTED
        # Each change set names its epoch's commit, the hash every peer has for that epoch.
        assert [(e.epoch, e.commit_hash) for e in feeds[0]] == peers[0].hashes()
        assert all(c.commit == e.commit_hash and c.epoch == e.epoch for e in feeds[0] for c in e.changes)
        assert [e.end_ms for e in feeds[0]] == [wall(k + 1) for k in (0, 1, 2, 3, 5)]  # the commit date
        assert peers[0].rejections() == [(1, "bad", "bad_value")]  # rejected: in no change set
        # A range, one table, and an epoch closed by a later commit (4, in commit 5).
        assert records(read_changes(peers[1].backend, 1, 2)) == EXPECTED[1:3]
        assert records(read_changes(peers[1].backend, 4, 4)) == EXPECTED[4:]
        only_stock = [(k, f, [c for c in cs if c[0] == "stock"]) for k, f, cs in EXPECTED]
        assert records(read_changes(peers[2].backend, 0, table="stock")) == only_stock
        with pytest.raises(EpochNotCommittedYet, match="epoch 6 is not committed yet: this peer is at epoch 5"):
            read_changes(peers[0].backend, 0, 6)


async def test_a_consumer_that_stops_and_resumes_sees_every_change_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with scenario(nats_server.url, tmp_path, 1) as (_, _, (peer,)):
        whole = read_changes(peer.backend, 0)
        for last in (0, 1, 2, 3, 4, 5):
            # A consumer stores the last epoch it handled and resumes from the next one.
            handled = read_changes(peer.backend, 0, last)
            position = handled[-1].epoch
            assert handled + read_changes(peer.backend, position + 1) == whole

        # The same with the follower, stopped (closed) after the commit of epoch 1, and after
        # the one of epoch 3, which carries no change: the position still advances past it.
        async def follow(start: int, stop_after: int) -> list[EpochChanges]:
            seen = []
            async with contextlib.aclosing(follow_changes(peer.backend.path, from_epoch=start, poll_s=0.05)) as feed:
                async with asyncio.timeout(WAIT_S):
                    async for epoch in feed:
                        seen.append(epoch)
                        if epoch.epoch >= stop_after:
                            break
            return seen

        first = await follow(0, 1)
        second = await follow(first[-1].epoch + 1, 3)
        third = await follow(second[-1].epoch + 1, LAST)
        assert [e.epoch for e in second] == [2, 3] and second[-1].changes == ()
        assert first + second + third == whole
        assert lines(first + second + third) == lines(whole)


async def test_following_picks_up_new_epochs_and_stops_when_cancelled(nats_server: NatsServer, tmp_path: Path) -> None:
    async with scenario(nats_server.url, tmp_path, 1) as (js, topology, (peer,)):
        snapshot_at_5 = peer.backend.path.read_bytes()  # the peer is between commits
        seen: list[EpochChanges] = []
        arrived = asyncio.Event()

        async def consume() -> None:
            async for epoch in follow_changes(peer.backend, from_epoch=3, poll_s=0.05):
                seen.append(epoch)
                if epoch.epoch == 6:
                    arrived.set()

        task = asyncio.create_task(consume())
        try:
            await publish_batch(js, topology, [op("f6", 6, 1, "users", "u6", "upsert", {"name": "Fay", "score": 4})])
            await seal(js, topology, 6)
            await peer.run_until(6)
            await asyncio.wait_for(arrived.wait(), WAIT_S)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert [e.epoch for e in seen] == [3, 5, 6]
        assert records(seen[2:]) == [(6, 6, [("users", ("u6",), "insert", None, user("u6", "Fay", 4), "f6")])]

        # A peer that installs a snapshot replaces its database file: a follower of the path
        # goes on in the new file. Here a copy of the file at epoch 5 is replaced by the file
        # at epoch 7.
        copy = tmp_path / "copy.db"
        copy.write_bytes(snapshot_at_5)
        got: list[EpochChanges] = []
        async with contextlib.aclosing(follow_changes(copy, from_epoch=5, poll_s=0.05)) as feed:
            async with asyncio.timeout(WAIT_S):
                async for epoch in feed:
                    got.append(epoch)
                    if epoch.epoch == 5:
                        await publish_batch(js, topology, [op("g7", 7, 1, "users", "u7", "upsert",
                                                              {"name": "Gus", "score": 1})])  # fmt: skip
                        await seal(js, topology, 7)
                        await peer.run_until(7)
                        (tmp_path / "copy.tmp").write_bytes(peer.backend.path.read_bytes())
                        (tmp_path / "copy.tmp").replace(copy)
                    if epoch.epoch == 7:
                        break
        assert got == read_changes(peer.backend, 5)


async def oplog(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peer.cli", *args, env=child_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_prints_the_iterators_records_and_follows_until_sigterm(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with scenario(nats_server.url, tmp_path, 1) as (js, topology, (peer,)):
        where = ["--data-dir", str(tmp_path), "--db", "p0"]
        status, out, err = await oplog("changes", *where, "--from-epoch", "0", "--json")
        assert (status, err) == (0, "")
        assert out.splitlines() == lines(read_changes(peer.backend, 0))
        status, out, _ = await oplog("changes", *where, "--from-epoch", "1", "--to-epoch", "4", "--table", "users")
        assert status == 0
        table = out.splitlines()
        assert table[0].split() == ["epoch", "commit", "table", "kind", "key", "op_id", "values"]
        expected = [[str(c.epoch), c.commit[:12], "users", c.kind, f'["{c.key[0]}"]', c.op_id]
                    for e in read_changes(peer.backend, 1, 4, table="users") for c in e.changes]  # fmt: skip
        assert [line.split()[:6] for line in table[1:]] == expected
        assert [row[0] for row in expected] == ["1", "1", "2", "2", "5", "5"]  # epoch 4 is in commit 5
        assert table[1].endswith("score: 1 -> 5") and table[2].endswith('id="u2", name="Bob", score=2')

        follower = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "peer.cli", "changes", *where, "--from-epoch", "2", "--follow", "--json",
            "--poll", "0.05", env=child_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert follower.stdout is not None and follower.stderr is not None

            async def next_lines(count: int) -> list[str]:
                assert follower.stdout is not None
                return [(await asyncio.wait_for(follower.stdout.readline(), WAIT_S)).decode().rstrip("\n")
                        for _ in range(count)]  # fmt: skip

            assert await next_lines(5) == lines(read_changes(peer.backend, 2))
            # An epoch committed after the follower started reaches it.
            await publish_batch(js, topology, [op("f6", 6, 1, "users", "u6", "upsert", {"name": "Fay", "score": 4})])
            await seal(js, topology, 6)
            await peer.run_until(6)
            assert await next_lines(1) == lines(read_changes(peer.backend, 6))
            follower.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(follower.wait(), WAIT_S) == 0
            assert await follower.stdout.read() == b""
            assert await follower.stderr.read() == b""
        finally:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()

        # --follow with --to-epoch ends by itself once that epoch is printed.
        status, out, _ = await oplog("changes", *where, "--from-epoch", "5", "--to-epoch", "5", "--follow", "--json")
        assert (status, out.splitlines()) == (0, lines(read_changes(peer.backend, 5, 5)))


async def test_the_cli_says_what_is_wrong_in_one_line(nats_server: NatsServer, tmp_path: Path) -> None:
    status, out, err = await oplog("changes", "--data-dir", str(tmp_path), "--db", "nope", "--from-epoch", "0")
    assert (status, out) == (2, "")
    assert err.splitlines() == [f"oplog: no database file {tmp_path / 'nope.db'} (is --data-dir the peer's data "
                                "directory and --db its database?)"]  # fmt: skip
    async with scenario(nats_server.url, tmp_path, 1):
        where = ["--data-dir", str(tmp_path), "--db", "p0"]
        for args, message in [
            (["--to-epoch", "9"], "oplog: epoch 9 is not committed yet: this peer is at epoch 5"),
            (["--table", "nosuch"], "oplog: no table 'nosuch' is declared in this database"),
            (["--table", "oplog_epochs"], "oplog: not a user table name: 'oplog_epochs'"),
            (["--to-epoch", "-1"], "oplog: --to-epoch -1 is before --from-epoch 0"),
            (["--follow", "--table", "nosuch"], "oplog: no table 'nosuch' is declared in this database"),
        ]:
            status, out, err = await oplog("changes", *where, "--from-epoch", "0", *args)
            assert (status, out, err.splitlines()) == (2, "", [message]), args


# -- the same plans on both engines ----------------------------------------------------------------

EVERY_TYPE = TableSchema.model_validate(
    {
        "name": "things",
        "columns": [
            {"name": "id", "type": "integer", "nullable": False},
            {"name": "commit", "type": "text"},  # named like the diff's own to_commit / from_commit
            {"name": "weight", "type": "float"},
            {"name": "price", "type": "decimal"},
            {"name": "active", "type": "boolean"},
            {"name": "attrs", "type": "json"},
            {"name": "seen", "type": "timestamp"},
            {"name": "blob", "type": "bytes"},
        ],
        "primary_key": ["id"],
    }
)


def thing(key: int, commit: str | None, weight: float, **rest: Any) -> tuple[tuple[int], dict[str, Any], dict[str, Any]]:
    values = {"commit": commit, "weight": weight, "price": None, "active": None, "attrs": None, "seen": None,
              "blob": None, **rest}  # fmt: skip
    return (key,), values, {"v": [1_700_000_000_000 + key, 0, "n", f"t{key}-{commit}"]}


PLANS = [
    plan(0, changes=(TableChange(None, USERS), TableChange(None, EVERY_TYPE)), writes=(
        TableWrites(USERS, upserts=[(("a",), {"name": "Ann", "score": 1}, {"v": [1, 0, "n", "a"]})]),
        TableWrites(EVERY_TYPE, upserts=[
            thing(10, "c1", 2.0, price="1.5", active=1, attrs='{"a":[1,2]}', seen="2020-01-01T00:00:00.000Z",
                  blob=b"\x00\xff"),
            thing(9, None, 0.5),
        ]),
    )),
    plan(1, changes=(TableChange(USERS, USERS_WITH_EMAIL),), writes=(
        TableWrites(USERS_WITH_EMAIL, upserts=[(("a",), {"name": "Ann", "score": 2, "email": "a@x"},
                                                {"v": [2, 0, "n", "a2"]})]),
        TableWrites(EVERY_TYPE, upserts=[thing(10, "c2", 3.0, price="1.50")], deletes=[((9,), {"v": [3, 0, "n", "del9"]})]),
    )),
    plan(2),
]  # fmt: skip


@pytest.mark.doltserver
def test_both_engines_give_the_same_records_for_the_same_plans(tmp_path: Path, dolt_server: DoltServer) -> None:
    feeds = []
    for factory in (DoltliteBackends(tmp_path), DoltServerBackends(dolt_server)):
        backend: Backend = factory("engines")
        backend.open()
        try:
            backend.create_genesis()
            for p in PLANS:
                backend.commit_epoch(p)
            feed = read_changes(backend, 0)
            assert [(e.epoch, e.commit_hash) for e in feed] == backend.epoch_hashes()
            feeds.append([{**c.envelope(), "commit": None} for e in feed for c in e.changes])
        finally:
            backend.close()
    assert feeds[0] == feeds[1]
    everything_null = {"commit": None, "weight": None, "price": None, "active": None, "attrs": None, "seen": None,
                       "blob": None}  # fmt: skip
    ten = {**everything_null, "id": 10, "commit": "c1", "weight": 2.0, "price": "1.5", "active": 1,
           "attrs": '{"a":[1,2]}', "seen": "2020-01-01T00:00:00.000Z", "blob": "AP8="}  # fmt: skip
    assert [(c["epoch"], c["table"], c["key"], c["kind"], c["before"], c["after"], c["op_id"]) for c in feeds[0]] == [
        (0, "things", [9], "insert", None, {**everything_null, "id": 9, "weight": 0.5}, "t9-None"),
        (0, "things", [10], "insert", None, ten, "t10-c1"),
        (0, "users", ["a"], "insert", None, {"id": "a", "name": "Ann", "score": 1}, "a"),
        (1, "things", [9], "delete", {**everything_null, "id": 9, "weight": 0.5}, None, "del9"),
        # A whole float stays a float (doltlite's diff hands 3.0 back as 3); "1.50" was stored as given.
        (1, "things", [10], "update", ten,
         {**everything_null, "id": 10, "commit": "c2", "weight": 3.0, "price": "1.50"}, "t10-c2"),
        # The column added in this epoch is null before it.
        (1, "users", ["a"], "update", {"id": "a", "name": "Ann", "score": 1, "email": None},
         {"id": "a", "name": "Ann", "score": 2, "email": "a@x"}, "a2"),
    ]  # fmt: skip


def test_op_id_is_the_newest_stamp_the_change_brought() -> None:
    old, new, newer = [1, 0, "n", "old"], [2, 0, "n", "new"], [2, 1, "n", "newer"]
    assert winning_op(None, {"v": new}) == "new"  # lww insert
    assert winning_op({"v": old}, {"v": new}) == "new"
    assert winning_op({"v": new}, {"v": new}) is None  # nothing new won
    # field-lww: a late patch of one column older than the row's newest write is still the op of the change.
    assert winning_op({"cols": {"a": newer, "b": old}, "row": newer}, {"cols": {"a": newer, "b": new}, "row": newer}) == "new"
    assert winning_op({"cols": {"a": old}, "row": old}, {"del": newer}) == "newer"  # a delete's tombstone
    assert winning_op({}, {}) is None  # counter
    assert winning_op(None, {"state": "AQID", "pending": ["a", "b", "c", "d"]}) is None  # crdt
