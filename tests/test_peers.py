"""Peers as separate processes: crash and restart, late join, and ``oplog dev``.

Every process a test starts is stopped in a ``finally`` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from devtools.processes import PeerProcess
from materializer.agreement.hashes import HashBoard
from materializer.backends.doltlite import DoltliteBackend, child_env
from oplog.op import Op
from oplog.topology import Topology
from tests.support import config, connected, lww_reference, publish_batch, read_db, seal, setup_db, wall

pytestmark = pytest.mark.integration

EPOCHS = 10
OPS_PER_EPOCH = 1000


def epoch_ops(epoch: int, rng: random.Random) -> list[Op]:
    return [
        Op(id=f"{epoch}-{i}", hlc=(wall(epoch, rng.randrange(1000)), 0, f"n{i % 3}"), table="users",
           key=(f"k{rng.randrange(300)}",), kind="upsert", data={"name": f"v{epoch}-{i}", "score": i})
        for i in range(OPS_PER_EPOCH)
    ]  # fmt: skip


async def reached(board: HashBoard, names: list[str], epoch: int) -> bool:
    rows = await board.collect(last=3)
    return set(names) <= {p for r in rows if r.epoch >= epoch for p in r.hashes}


async def wait_reached(board: HashBoard, peers: list[PeerProcess], epoch: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await reached(board, [p.name for p in peers], epoch):
        for p in peers:
            assert p.running, f"peer {p.name} exited:\n{p.log_tail()}"
        assert time.monotonic() < deadline, f"peers did not reach epoch {epoch}:\n" + "\n".join(
            f"--- {p.name}\n{p.log_tail(10)}" for p in peers
        )
        await asyncio.sleep(0.1)


async def wait_logged(peer: PeerProcess, text: str, times: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while peer.log_path.read_text(errors="replace").count(text) < times:
        assert peer.running, f"peer {peer.name} exited:\n{peer.log_tail()}"
        assert time.monotonic() < deadline, f"{peer.name} did not log {text!r} {times} times:\n{peer.log_tail()}"
        await asyncio.sleep(0.05)


def history_of(peer: PeerProcess) -> tuple[list[tuple[str, str]], int, int]:
    """(epoch tag, hash) pairs, total applied, total rejected, read from the peer's own file."""
    with DoltliteBackend(peer.db_path) as backend:
        tags = [(f"epoch-{epoch}", h) for epoch, h in backend.epoch_hashes()]
    applied, rejected = read_db(peer.db_path, "SELECT SUM(applied), SUM(rejected) FROM oplog_epochs")[0]
    return tags, applied, rejected


async def test_a_peer_killed_mid_epoch_resumes_at_the_same_hash_with_nothing_lost_or_doubled(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    rng = random.Random(3)
    peers = [PeerProcess(f"p{i}", "t", nats_server.url, tmp_path / f"p{i}", extra=["--no-seal"]) for i in range(3)]
    try:
        async with connected(nats_server.url) as nc:
            js = nc.jetstream()
            await setup_db(js, topology, config())
            for p in peers:
                p.start()
            board = HashBoard(js, topology)
            published: list[Op] = []

            async def produce() -> None:
                # Each seal k comes after the first 100 ops of epoch k + 1, so a restart
                # must re-read those from the commit's resume_seq (below its seal_seq).
                all_ops = [epoch_ops(epoch, rng) for epoch in range(EPOCHS)] + [[]]
                await publish_batch(js, topology, all_ops[0][:100])
                for epoch in range(EPOCHS):
                    ops = all_ops[epoch]
                    for i in range(100, len(ops), 100):
                        await publish_batch(js, topology, ops[i : i + 100])
                    if all_ops[epoch + 1]:
                        await publish_batch(js, topology, all_ops[epoch + 1][:100])
                    published.extend(ops)
                    await seal(js, topology, epoch)
                    await asyncio.sleep(0.3)

            producing = asyncio.create_task(produce())
            kills = 0
            for after in (1, 4, 6):
                # Once p1 has committed epoch `after`, SIGKILL it a random moment later:
                # while it reads, plans or commits the next epoch.
                await wait_reached(board, [peers[1]], after)
                await asyncio.sleep(rng.random() * 0.3)
                peers[1].kill()
                kills += 1
                peers[1].start()
                # Wait for the restart to resume before the next kill: a fast catch-up can
                # reach the next `after` before the new process even finished starting.
                await wait_logged(peers[1], "resuming after epoch", kills)
            await producing
            await wait_reached(board, peers, EPOCHS - 1)
    finally:
        for p in peers:
            p.stop()

    histories = [history_of(p) for p in peers]
    # Same commit for every epoch on every peer, the killed one included...
    assert histories[0][0] == histories[1][0] == histories[2][0]
    assert len(histories[0][0]) == EPOCHS  # one commit (and tag) per sealed epoch
    # ...and every op applied exactly once, none rejected.
    for _, applied, rejected in histories:
        assert (applied, rejected) == (EPOCHS * OPS_PER_EPOCH, 0)
    expected = lww_reference(published)
    rows = read_db(peers[1].db_path, "SELECT id, name, score FROM users")
    assert {r[0]: (r[1], r[2]) for r in rows} == expected
    assert kills == 3
    assert peers[1].log_path.read_text().count("resuming after epoch") == 3


async def test_a_peer_started_later_catches_up_to_the_same_hashes(nats_server: NatsServer, tmp_path: Path) -> None:
    topology = Topology(db="t")
    rng = random.Random(4)
    early = [PeerProcess(f"p{i}", "t", nats_server.url, tmp_path / f"p{i}", extra=["--no-seal"]) for i in range(2)]
    late = PeerProcess("late", "t", nats_server.url, tmp_path / "late", extra=["--no-seal"])
    try:
        async with connected(nats_server.url) as nc:
            js = nc.jetstream()
            await setup_db(js, topology, config())
            for p in early:
                p.start()
            board = HashBoard(js, topology)
            for epoch in range(3):
                for op in epoch_ops(epoch, rng)[:50]:
                    await publish_batch(js, topology, [op])
                await seal(js, topology, epoch)
            await wait_reached(board, early, 2)
            # Seconds later, a new peer with an empty data dir joins: it must fetch the
            # shared genesis and commit the same epochs with the same hashes, although
            # its clock reads a different time for every commit.
            await asyncio.sleep(2)
            late.start()
            await wait_reached(board, [*early, late], 2)
    finally:
        for p in [*early, late]:
            p.stop()
    histories = [history_of(p) for p in [*early, late]]
    assert histories[0] == histories[1] == histories[2]
    assert histories[0][1:] == (150, 0)


def test_oplog_dev_runs_unattended_and_every_epoch_agrees(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "peer.cli", "dev", "--peers", "3", "--seconds", "5", "--report", str(report),
         "--data-dir", str(tmp_path / "dev"), "--rate", "400"],
        env=child_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["agree"] is True
    assert result["epochs_compared"] >= 4
    assert sum(e["ops"] for e in result["epochs"]) == result["published"]
    for entry in result["epochs"]:
        assert len(set(entry["hashes"].values())) == 1 and len(entry["hashes"]) == 3
