"""Bounded storage: peers re-root their histories on identical checkpoint commits.

With ``checkpoint_epochs`` N in the database config, every peer replaces its history by
the genesis and one checkpoint commit holding its state before each commit that closes
a multiple of N (materializer.metadata.checkpoint_due, Backend.checkpoint). The epochs
on top must agree, however the peer got there: committing all along, replaying from the
stream's start, or joining from a snapshot after the stream was purged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from devtools.natsd import NatsServer
from materializer.backends.base import Backend
from materializer.backends.doltlite import DoltliteBackend
from materializer.bootstrap.snapshots import SnapshotPolicy
from materializer.commit.loop import Materializer
from materializer.metadata import checkpoint_due
from oplog.op import Op
from oplog.topology import Topology
from tests.support import BackendFactory, config, connected, publish_batch, seal, setup_db, wall
from tests.test_snapshots import run_until

pytestmark = pytest.mark.integration

EVERY = 3


def test_a_checkpoint_comes_before_each_commit_that_closes_a_multiple() -> None:
    assert [e for e in range(10) if checkpoint_due(EVERY, e, e)] == [3, 6, 9]
    # A commit closing several epochs (one seal after an outage) still gets its checkpoint.
    assert checkpoint_due(EVERY, 4, 7) and not checkpoint_due(EVERY, 4, 5)
    assert not checkpoint_due(None, 3, 3) and not checkpoint_due(EVERY, 0, 0)


async def publish_epoch(js: JetStreamContext, topology: Topology, epoch: int) -> None:
    # Rows come, change and go, so the checkpoint carries rows, tombstones and op ids.
    ops = [
        Op(id=f"{epoch}-{i}", hlc=(wall(epoch, i), 0, "n"), table="users", key=(f"k{(epoch + i) % 7}",),
           kind="delete" if (epoch + i) % 5 == 0 else "upsert", data=None if (epoch + i) % 5 == 0 else
           {"name": f"e{epoch}", "score": i})
        for i in range(4)
    ]  # fmt: skip
    await publish_batch(js, topology, ops)
    await seal(js, topology, epoch)


def log_firsts(backend: DoltliteBackend) -> list[str]:
    return [m.split("\n", 1)[0] for (m,) in backend._query("SELECT message FROM dolt_log")]


def recorder(hashes: dict[str, dict[int, str]], name: str):  # type: ignore[no-untyped-def]
    hashes[name] = {}

    async def on_commit(epoch: int, commit_hash: str) -> None:
        hashes[name][epoch] = commit_hash

    return on_commit


def assert_history_after_last_checkpoint(path: Path, hashes: dict[int, str]) -> None:
    # The last checkpoint came before epoch 9: the history is epochs 10 and 9 on it and the genesis.
    backend = DoltliteBackend(path)
    backend.open()
    try:
        assert log_firsts(backend)[:4] == ["epoch 10", "epoch 9", "checkpoint 8", "genesis"], path
        assert backend.epoch_hashes() == [(9, hashes[9]), (10, hashes[10])]
    finally:
        backend.close()


async def test_peers_that_checkpoint_agree_on_every_epoch_and_keep_a_bounded_history(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    hashes: dict[str, dict[int, str]] = {}
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(checkpoint_epochs=EVERY))
        peers = [Materializer(js, topology, DoltliteBackend(tmp_path / f"{name}.db"), peer=name,
                              on_commit=recorder(hashes, name)) for name in ("a", "b")]  # fmt: skip
        try:
            for m in peers:
                await m.start()
            for epoch in range(11):
                await publish_epoch(js, topology, epoch)
                for m in peers:
                    await run_until(m, epoch)
            # A peer starting now replays the whole stream, making every checkpoint itself.
            late = Materializer(js, topology, DoltliteBackend(tmp_path / "late.db"), peer="late",
                                on_commit=recorder(hashes, "late"))  # fmt: skip
            peers.append(late)
            await late.start()
            await run_until(late, 10)
        finally:
            for m in peers:
                await m.close()
    assert hashes["a"] == hashes["b"] == hashes["late"] and sorted(hashes["a"]) == list(range(11))
    for name in ("a", "b", "late"):
        assert_history_after_last_checkpoint(tmp_path / f"{name}.db", hashes["a"])


async def test_a_peer_joining_from_a_snapshot_after_a_checkpoint_agrees(nats_server: NatsServer, tmp_path: Path) -> None:
    topology = Topology(db="t")
    hashes: dict[str, dict[int, str]] = {}
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(checkpoint_epochs=EVERY))
        first = Materializer(js, topology, DoltliteBackend(tmp_path / "first.db"), peer="first",
                             on_commit=recorder(hashes, "first"), snapshots=SnapshotPolicy(every_epochs=2, keep=1))  # fmt: skip
        joiner = Materializer(js, topology, DoltliteBackend(tmp_path / "joiner.db"), peer="joiner",
                              on_commit=recorder(hashes, "joiner"))  # fmt: skip
        try:
            await first.start()
            for epoch in range(8):
                await publish_epoch(js, topology, epoch)
                await run_until(first, epoch)
            # The stream now starts after the snapshot of epoch 6, which came after the
            # checkpoint before epoch 6: the joiner installs it and goes on from there.
            assert (await js.stream_info(topology.stream)).state.first_seq > 1
            await joiner.start()
            for epoch in range(8, 11):
                await publish_epoch(js, topology, epoch)
                # The joiner first: the snapshot after this epoch purges what it has not read.
                await run_until(joiner, epoch)
                await run_until(first, epoch)
        finally:
            await first.close()
            await joiner.close()
    assert hashes["joiner"] and all(hashes["first"][e] == h for e, h in hashes["joiner"].items())
    assert sorted(hashes["joiner"])[-1] == 10
    for name in ("first", "joiner"):
        assert_history_after_last_checkpoint(tmp_path / f"{name}.db", hashes["first"])


@pytest.mark.timeout(180)
def test_a_peer_killed_inside_a_checkpoint_redoes_it_on_restart_and_agrees(tmp_path: Path) -> None:
    import asyncio
    import time

    from devtools.processes import PeerProcess
    from materializer.agreement.hashes import HashBoard
    from materializer.faults import FaultDir
    from tests.test_operators import oplog

    server = NatsServer(tmp_path / "nats")
    server.start()
    faults = FaultDir(tmp_path / "faults")
    victim = PeerProcess("a", "t", server.url, tmp_path / "a", extra=["--fault-dir", str(tmp_path / "faults")])
    witness = PeerProcess("b", "t", server.url, tmp_path / "b")

    async def progress() -> dict[str, int]:
        async with connected(server.url) as nc:
            return await HashBoard(nc.jetstream(), Topology(db="t")).progress(["a", "b"])

    async def reports(epochs: range) -> dict[int, dict[str, str]]:
        async with connected(server.url) as nc:
            board = HashBoard(nc.jetstream(), Topology(db="t"))
            return {e: await board.reports(e, ["a", "b"]) for e in epochs}

    try:
        init = oplog("init", "--nats", server.url, "--db", "t", "--epoch-ms", "200", "--grace-ms", "0",
                     "--checkpoint-epochs", "3")  # fmt: skip
        assert init.returncode == 0, init.stderr
        # Held with the whole state copied into the new history, its commit not made yet.
        faults.arm("checkpoint.before-commit")
        victim.start()
        witness.start()
        deadline = time.monotonic() + 60
        while (held := faults.held_at("checkpoint.before-commit")) is None:
            assert victim.running and time.monotonic() < deadline, victim.log_tail()
            time.sleep(0.05)
        victim.kill()
        faults.release("checkpoint.before-commit")
        # The old history is intact: no checkpoint landed, the epoch it came before is not committed.
        killed = DoltliteBackend(victim.db_path)
        with killed:
            last = killed.last_epoch()
            assert last is not None and last.epoch == held - 1
            assert not any(m.startswith("checkpoint") for m in log_firsts(killed))
        victim.start()
        target = held + 4  # past the next checkpoint too
        deadline = time.monotonic() + 90
        while len(done := asyncio.run(progress())) < 2 or min(done.values()) < target:
            assert victim.running and witness.running and time.monotonic() < deadline, victim.log_tail()
            time.sleep(0.1)
        # Every peer reports each epoch's hash on the hash board: equal, from the redone
        # checkpoint on, including the epoch it came before.
        by_epoch = asyncio.run(reports(range(held, target + 1)))
    finally:
        victim.stop()
        witness.stop()
        server.stop()
    assert all(len(r) == 2 and r["a"] == r["b"] for r in by_epoch.values()), by_epoch


def test_change_feeds_read_across_a_checkpoint_and_say_where_the_history_starts(
    backends: BackendFactory,
) -> None:
    from materializer.read.changes import read_changes
    from materializer.read.epoch_commits import HistoryGone
    from tests.test_backend_contract import checkpoint_of, every_write_kind

    plans = every_write_kind()
    bounded, plain = backends("bounded"), backends("plain")
    for backend in (bounded, plain):
        backend.open()
    try:
        genesis = bounded.create_genesis()
        plain.install_snapshot(genesis)
        for p in plans[:4]:
            bounded.commit_epoch(p)
            plain.commit_epoch(p)
        bounded.checkpoint(genesis, checkpoint_of(3), before_epoch=4)
        bounded.commit_epoch(plans[4])
        plain.commit_epoch(plans[4])

        # Epoch 4's change set is its own, not "everything since the genesis".
        def envelopes(backend: Backend) -> list[dict[str, object]]:
            (epoch,) = read_changes(backend, 4)
            return [{k: v for k, v in c.envelope().items() if k != "commit"} for c in epoch.changes]

        assert envelopes(bounded) == envelopes(plain) and envelopes(plain)
        # An epoch before the checkpoint: one clear error naming the first epoch kept.
        with pytest.raises(HistoryGone, match="read from epoch 4 on") as gone:
            read_changes(bounded, 2)
        assert gone.value.first_kept == 4
    finally:
        bounded.close()
        plain.close()
