"""``oplog verify`` on both backends, and ``--explain`` naming a row changed by hand.

Three real peers (``run_peer``, the production path) on doltlite files, or on three dolt
sql-servers (one per peer, database ``t`` on each, as ``oplog serve --db t`` names it). The
test seals epochs itself. Once every peer committed epoch 2 it stops peer ``c``, changes
one row of c's database by hand (an UPDATE and a Dolt commit, as an operator or a bug
might), restarts c and seals epoch 3: c's commit of epoch 3 sits on that commit, so its
hash differs from then on (c then stops on its own divergence). Verify must recompute
epochs 0..3, agree with every peer on 0..2, name c at epoch 3, and with ``--explain`` name
the table, the row's key and the column, with c's value and the expected one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.natsd import NatsServer
from materializer.agreement.commits import DoltliteFile
from materializer.agreement.hashes import HashBoard
from materializer.agreement.scratch import DoltliteScratch
from materializer.agreement.verify import verify
from materializer.backends.dolt_server_launcher import DoltServer
from materializer.backends.doltlite import child_env
from oplog.op import Op
from oplog.topology import Topology
from peer.service import PeerConfig, run_peer
from tests.conftest import start_dolt_server
from tests.running_peers import wait_until
from tests.support import config, connected, publish_batch, seal, setup_db, wall

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
PEERS = ("a", "b", "c")
TAMPERED = "e0-k1"  # written in epoch 0 only, so no later epoch overwrites the change
TAMPERED_SCORE = 999
LAST = 3


def epoch_ops(epoch: int) -> list[Op]:
    return [
        Op(id=f"{epoch}-{i}", hlc=(wall(epoch, i), 0, "n"), table="users", key=(f"e{epoch}-k{i}",), kind="upsert",
           data={"name": f"n{epoch}-{i}", "score": i})
        for i in range(5)
    ]  # fmt: skip


class Deployment:
    """Peers a, b, c of database ``t`` on one backend kind; each can be stopped and restarted."""

    def __init__(self, url: str, root: Path, servers: list[DoltServer] | None) -> None:
        self.url, self.root, self.servers = url, root, servers
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stops: dict[str, asyncio.Event] = {}

    def config(self, name: str) -> PeerConfig:
        fields: dict[str, Any] = {"name": name, "db": "t", "nats_url": self.url, "data_dir": self.root / name,
                                  "seal": False, "check_interval_s": 0.05, "expected_peers": 3}  # fmt: skip
        if self.servers is not None:
            fields.update(backend="dolt-server", dolt_port=self.servers[PEERS.index(name)].port)
        return PeerConfig(**fields)

    def start(self, name: str) -> None:
        self.stops[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(run_peer(self.config(name), self.stops[name]))

    async def stop(self, name: str) -> None:
        self.stops[name].set()
        await asyncio.wait_for(asyncio.gather(self.tasks[name], return_exceptions=True), STOP_TIMEOUT_S)

    def peer_db(self, name: str) -> str:
        """``--peer-db`` of peer ``name``."""
        if self.servers is None:
            return f"{name}={self.root / name / 't.db'}"
        return f"{name}=127.0.0.1:{self.servers[PEERS.index(name)].port}"

    def tamper(self, name: str) -> None:
        """Change one row of the (stopped) peer's database and commit it, by hand."""
        update = f"UPDATE users SET score = {TAMPERED_SCORE} WHERE id = '{TAMPERED}'"
        if self.servers is None:
            conn = sqlite3.connect(self.root / name / "t.db", isolation_level=None)
            try:
                assert conn.execute(update).rowcount == 1
                conn.execute("SELECT dolt_commit('-a', '-m', 'tamper by hand')")
            finally:
                conn.close()
            return
        with self.servers[PEERS.index(name)].connect("t") as conn, conn.cursor() as cur:
            assert cur.execute(update) == 1
            cur.execute("CALL DOLT_COMMIT('-a', '-m', 'tamper by hand')")


@contextlib.asynccontextmanager
async def tampered_deployment(url: str, root: Path, servers: list[DoltServer] | None) -> AsyncIterator[Deployment]:
    """Epochs 0..3 committed by a, b, c, with c's row changed by hand after epoch 2; every peer
    is stopped on the way out (c has stopped on its divergence by then)."""
    deployment = Deployment(url, root, servers)
    topology = Topology(db="t")
    async with connected(url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        board = HashBoard(js, topology)

        def reported(epoch: int) -> Callable[[], Awaitable[bool]]:
            async def condition() -> bool:
                return len(await board.reports(epoch, list(PEERS))) == len(PEERS)

            return condition

        for name in PEERS:
            deployment.start(name)
        try:
            for epoch in range(LAST):
                await publish_batch(js, topology, epoch_ops(epoch))
                await seal(js, topology, epoch)
            await wait_until(reported(LAST - 1), f"every peer to report epoch {LAST - 1}", deployment.tasks)
            await deployment.stop("c")
            await asyncio.to_thread(deployment.tamper, "c")
            deployment.start("c")
            await publish_batch(js, topology, epoch_ops(LAST))
            await seal(js, topology, LAST)
            # c reports epoch 3, then may stop on its divergence: it is in the minority.
            await wait_until(
                reported(LAST), f"every peer to report epoch {LAST}", deployment.tasks, allowed_to_end=("c",)
            )
        finally:
            for name in deployment.tasks:
                deployment.stops[name].set()
            await asyncio.wait_for(asyncio.gather(*deployment.tasks.values(), return_exceptions=True), STOP_TIMEOUT_S)
        yield deployment


def oplog_verify(url: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "peer.cli", "verify", "--nats", url, "--db", "t", *args],
        capture_output=True, text=True, env=child_env(), timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def check_result(result: dict[str, Any]) -> None:
    """Epochs 0..3 recomputed; every peer agrees but c at epoch 3; the explanation names the row."""
    checks = result["checks"]
    assert [c["epoch"] for c in checks] == list(range(LAST + 1))
    for check in checks[:LAST]:
        assert check["disagreeing"] == [] and set(check["reports"].values()) == {check["recomputed"]}, check
        assert sorted(check["reports"]) == list(PEERS)
    assert checks[LAST]["disagreeing"] == ["c"]
    assert checks[LAST]["reports"]["a"] == checks[LAST]["reports"]["b"] == checks[LAST]["recomputed"]
    (explanation,) = result["explanations"]
    assert explanation["peer"] == "c" and explanation["epoch"] == LAST and explanation["problem"] is None
    assert explanation["peer_commit"]["hash"] == checks[LAST]["reports"]["c"]
    assert explanation["peer_commit"]["parent_message"] == "tamper by hand"
    assert explanation["expected_commit"]["parent_message"].startswith(f"epoch {LAST - 1}")
    (table,) = explanation["tables"]  # only users differs: the hashes of the others are equal
    assert table["table"] == "users" and table["rows_differing"] == 1
    (row,) = table["rows"]
    assert row["key"] == [TAMPERED] and row["columns"] == ["score"]
    assert row["peer"]["score"] == TAMPERED_SCORE and row["expected"]["score"] == 1
    assert row["peer"]["name"] == row["expected"]["name"] == "n0-1"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


async def test_explain_names_the_row_changed_by_hand_on_doltlite(nats_server: NatsServer, tmp_path: Path) -> None:
    async with tampered_deployment(nats_server.url, tmp_path, None) as deployment:
        code, out, err = await asyncio.to_thread(
            oplog_verify, nats_server.url, "--from-epoch", "0", "--epoch", str(LAST), "--json",
            "--explain", "--peer-db", deployment.peer_db("c"),
        )  # fmt: skip
        assert code == 1, err
        result = orjson.loads(out)
        check_result(result)
        assert result["scratch"].startswith("scratch doltlite file ")

        # The same from Python; a differing peer without a database is explained as such.
        async with connected(nats_server.url) as nc:
            found = await verify(nc.jetstream(), Topology(db="t"), DoltliteScratch(tmp_path), since=LAST - 1,
                                 through=LAST, explain={"c": DoltliteFile(tmp_path / "c" / "t.db")})  # fmt: skip
        assert found.disagreeing_peers == ["c"] and found.explanations is not None
        (explanation,) = found.explanations
        assert [t.table for t in explanation.tables] == ["users"]
        text = "\n".join(explanation.lines())
        assert f'key ["{TAMPERED}"]: score {TAMPERED_SCORE}, expected 1' in text, text
        assert not list(tmp_path.glob("t-verify-*")), "the scratch file is removed"
        async with connected(nats_server.url) as nc:
            found = await verify(nc.jetstream(), Topology(db="t"), DoltliteScratch(tmp_path), explain={})
        assert found.explanations is not None and "pass --peer-db c=" in (found.explanations[0].problem or "")


@pytest.mark.doltserver
async def test_verify_and_explain_on_a_dolt_server_deployment(
    nats_server: NatsServer, tmp_path: Path, stack: ExitStack
) -> None:
    servers = [start_dolt_server(tmp_path / f"dolt-{name}") for name in PEERS]
    for server in servers:
        stack.callback(server.stop)
    scratch_server = servers[0]  # a's server: the scratch database lives beside a's own
    on_server = ("--backend", "dolt-server", "--dolt-port", str(scratch_server.port))
    async with tampered_deployment(nats_server.url, tmp_path, servers) as deployment:
        code, out, err = await asyncio.to_thread(
            oplog_verify, nats_server.url, "--from-epoch", "0", "--epoch", str(LAST), "--json", *on_server,
            "--explain", "--peer-db", deployment.peer_db("c"),
        )  # fmt: skip
        assert code == 1, err
        result = orjson.loads(out)
        check_result(result)
        assert result["scratch"].startswith("scratch database oplog_verify_t_")

        # Text: the verdict, then the explanation.
        code, out, err = await asyncio.to_thread(
            oplog_verify, nats_server.url, "--epoch", str(LAST), *on_server, "--explain", "--peer-db",
            deployment.peer_db("c"),
        )  # fmt: skip
        assert code == 1, err
        assert "DIVERGENCE: c differ from the recomputation" in out
        assert f"c at epoch {LAST}: commit " in out and "table users: 1 row differs" in out, out
        assert f'key ["{TAMPERED}"]: score {TAMPERED_SCORE}, expected 1' in out, out

        # Epochs every peer agrees on: exit 0.
        code, out, err = await asyncio.to_thread(oplog_verify, nats_server.url, "--epoch", str(LAST - 1), *on_server)
        assert code == 0 and "every report matches the recomputation" in out, err

    # Every scratch database was dropped; a's own database is untouched.
    with scratch_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        assert sorted(name for (name,) in cur.fetchall()) == ["information_schema", "mysql", "t"]

    # Operator mistakes: one line each, exit 2, no traceback.
    code, out, err = await asyncio.to_thread(oplog_verify, nats_server.url, "--epoch", "1")
    assert code == 2 and "run on Dolt sql-server" in err and "--backend dolt-server" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    code, out, err = await asyncio.to_thread(
        oplog_verify, nats_server.url, "--epoch", "1", "--backend", "dolt-server", "--dolt-port", str(closed)
    )
    assert code == 2 and f"cannot use the dolt sql-server at 127.0.0.1:{closed}" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
