"""Peers on separate dolt sql-servers, fed by one stream, make the same commits.

Each server is a real ``dolt sql-server`` started as peers run it (same
``DOLT_COMMITTER_DATE``); after the peers stop, ``dolt log`` on each server's files must
print one history.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from devtools.processes import PeerProcess
from materializer.backends.dolt_server_launcher import DoltServer, find_dolt, scratch_root
from materializer.bootstrap.snapshots import SnapshotPolicy
from materializer.commit.loop import Materializer
from oplog.op import Op
from oplog.topology import Topology
from tests.conftest import start_dolt_server
from tests.support import (
    DoltServerBackends,
    InProcessPeer,
    config,
    connected,
    publish_batch,
    seal,
    setup_db,
    wait_for,
    wall,
)

pytestmark = [pytest.mark.integration, pytest.mark.doltserver]

EPOCHS = 4
APART_S = 2.1


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


class OnServer(DoltServerBackends):
    """The databases of one peer's own server: ``t``, as ``oplog serve --db t`` names it."""

    def database(self, name: str) -> str:
        return "t"


def epoch_commits(server: DoltServer) -> list[tuple[int, str]]:
    """(epoch, hash) of each epoch commit, found by its message and read over a plain
    connection (a reader must not open a live peer's database as a backend: opening repairs it)."""
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 't' AND table_name = 'oplog_epochs'"
        )
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT commit_hash, message FROM t.dolt_log")
        firsts = ((h, message.split("\n", 1)[0]) for h, message in cur.fetchall())
        return sorted((int(first[6:]), h) for h, first in firsts if first.startswith("epoch "))


def epoch_ops(epoch: int, rng: random.Random) -> list[Op]:
    ops = []
    for i in range(40):
        hlc = (wall(epoch, rng.randrange(1000)), rng.randrange(2), f"n{rng.randrange(3)}")
        if rng.random() < 0.2:
            ops.append(Op(id=f"{epoch}-{i}", hlc=hlc, table="users", key=(f"k{rng.randrange(15)}",), kind="delete"))
        else:
            ops.append(Op(id=f"{epoch}-{i}", hlc=hlc, table="users", key=(f"k{rng.randrange(15)}",), kind="upsert",
                          data={"name": f"v{epoch}-{i}", "score": i}))  # fmt: skip
    return ops


def dolt_log(dolt: Path, repo: Path, scratch: Path) -> str:
    env = {**scratch_root(scratch), "NO_COLOR": "1"}  # dolt colours even a pipe otherwise
    done = subprocess.run([str(dolt), "log", "--oneline"], cwd=repo, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_three_peers_on_three_servers_make_one_history(
    nats_server: NatsServer, tmp_path: Path, stack: ExitStack
) -> None:
    servers = [start_dolt_server(tmp_path / f"dolt{i}") for i in range(3)]
    for server in servers:
        stack.callback(server.stop)
    topology = Topology(db="t")
    rng = random.Random(7)
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        for epoch in range(EPOCHS):
            await publish_batch(js, topology, epoch_ops(epoch, rng))
            await seal(js, topology, epoch)
        # Two peers commit every epoch now; the first makes the genesis, the second installs it.
        peers = [await InProcessPeer(js, topology, OnServer(s), f"p{i}").start() for i, s in enumerate(servers[:2])]
        try:
            for peer in peers:
                await peer.run_until(EPOCHS - 1)
            done_at = time.monotonic()
            # The third commits the same epochs seconds later, on its own server's clock.
            await asyncio.sleep(APART_S)
            late = await InProcessPeer(js, topology, OnServer(servers[2]), "late").start()
            peers.append(late)
            await late.run_until(EPOCHS - 1)
            assert time.monotonic() - done_at >= APART_S
            hashes = [peer.hashes() for peer in peers]
            assert [k for k, _ in hashes[0]] == list(range(EPOCHS))
            assert hashes[0] == hashes[1] == hashes[2]
            assert len({peer.backend.head() for peer in peers}) == 1
        finally:
            for peer in peers:
                await peer.close()
    # Stopped servers leave their databases on disk: dolt itself reads one history from each.
    for server in servers:
        server.stop()
    logs = [dolt_log(find_dolt(), s.data_dir / "t", tmp_path / f"root{i}") for i, s in enumerate(servers)]
    assert logs[0] == logs[1] == logs[2]
    lines = logs[0].splitlines()
    assert len(lines) == EPOCHS + 2  # the epochs, the genesis, the init commit
    assert [line.split(" ", 1)[0] for line in lines[:EPOCHS]] == [h for _, h in reversed(hashes[0])]
    assert "epoch 3" in lines[0] and "genesis" in lines[-2] and "Initialize data repository" in lines[-1]


async def test_oplog_serve_runs_a_dolt_server_peer(nats_server: NatsServer, tmp_path: Path, stack: ExitStack) -> None:
    # `oplog serve --backend dolt-server --dolt-port N`, next to an in-process peer on another server.
    served, own = (stack.enter_context(start_dolt_server(tmp_path / name)) for name in ("served", "own"))
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        await publish_batch(js, topology, epoch_ops(0, random.Random(1)))
        await seal(js, topology, 0)
        process = PeerProcess("served", "t", nats_server.url, tmp_path / "peer",
                              extra=["--backend", "dolt-server", "--dolt-port", str(served.port), "--no-seal"])  # fmt: skip
        stack.callback(process.stop)
        process.start()
        peer = await InProcessPeer(js, topology, OnServer(own), "own").start()
        try:
            await peer.run_until(0)

            def served_hashes() -> list[tuple[int, str]]:
                assert process.running, process.log_tail()
                return epoch_commits(served)

            await wait_for(lambda: served_hashes() == peer.hashes(), "the served peer to commit epoch 0")
        finally:
            await peer.close()


async def test_a_peer_joins_from_another_peers_snapshot(
    nats_server: NatsServer, tmp_path: Path, stack: ExitStack
) -> None:
    first_server, joiner_server = (stack.enter_context(start_dolt_server(tmp_path / n)) for n in ("first", "joiner"))
    topology = Topology(db="t")
    policy = SnapshotPolicy(every_epochs=2, keep=1)
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        first = Materializer(js, topology, OnServer(first_server)("first"), peer="first", snapshots=policy)
        await first.start()
        try:
            for epoch in range(4):
                await publish_batch(js, topology, epoch_ops(epoch, random.Random(epoch)))
                await seal(js, topology, epoch)
                while first.last is None or first.last.epoch < epoch:
                    await first.step()
            # The stream before the newest snapshot (epoch 2) is purged: only the snapshot can start a peer.
            latest = await first.snapshots.latest()
            assert latest is not None and latest.epoch == 2
            assert (await js.stream_info(topology.stream)).state.first_seq == latest.resume_seq
            joiner = Materializer(js, topology, OnServer(joiner_server)("joiner"), peer="joiner")
            await joiner.start()
            try:
                while joiner.last is None or joiner.last.epoch < 3:
                    await joiner.step()
                assert joiner.backend.head() == first.backend.head()
                assert joiner.backend.epoch_hashes() == first.backend.epoch_hashes()
            finally:
                await joiner.close()
        finally:
            await first.close()
