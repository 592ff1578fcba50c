"""Schema changes end to end: ``oplog schema apply`` (dry run, then published) with real
peers (``oplog serve`` processes on doltlite) and a real nats-server.

Every process a test starts is stopped in a ``finally``; every wait has a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from devtools.processes import PeerProcess
from materializer.agreement.hashes import HashBoard
from materializer.backends.doltlite import DoltliteBackend, child_env
from oplog.op import Op
from oplog.schema import SchemaMessage
from oplog.topology import Topology
from tests.support import config, connected, publish_batch, read_db, seal, setup_db, wall
from tests.test_peers import wait_reached

pytestmark = pytest.mark.integration

SCHEMA = SchemaMessage.model_validate(
    {"tables": [{"name": "users", "primary_key": ["id"], "strategy": "lww",
                 "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "name", "type": "text"},
                             {"name": "score", "type": "integer"}, {"name": "zip", "type": "text"}]}]}
)  # fmt: skip
CHANGES = {"changes": [
    {"op": "rename_column", "table": "users", "column": "name", "to": "full_name"},
    {"op": "retype_column", "table": "users", "column": "zip", "type": "integer", "on_failure": "null"},
    {"op": "drop_column", "table": "users", "column": "score"},
]}  # fmt: skip
CLI_TIMEOUT_S = 60


def oplog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peer.cli", *args], env=child_env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)  # fmt: skip


def user(op_id: str, key: str, epoch: int, **data: object) -> Op:
    return Op(id=op_id, hlc=(wall(epoch, 10), 0, "n1"), table="users", key=(key,), kind="upsert", data=data)


async def test_a_change_dry_run_on_a_live_peer_then_published_commits_identically_on_every_peer(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps(CHANGES))
    peers = [PeerProcess(f"p{i}", "t", nats_server.url, tmp_path / f"p{i}", extra=["--no-seal"]) for i in range(2)]
    try:
        async with connected(nats_server.url) as nc:
            js = nc.jetstream()
            await setup_db(js, topology, config(), SCHEMA)
            for p in peers:
                p.start()
            board = HashBoard(js, topology)
            await publish_batch(js, topology, [user("a", "a", 0, name="Ann", score=1, zip="01234"),
                                               user("b", "b", 0, name="Bob", score=2, zip="n/a")])  # fmt: skip
            await seal(js, topology, 0)
            await wait_reached(board, peers, 0)

            # The dry run reads the running peer's file; nothing is published.
            before = (await js.stream_info(topology.stream)).state.last_seq
            dry = oplog("schema", "apply", str(changes), "--dry-run", "--json", "--data-dir", str(peers[0].data_dir),
                        "--db", "t")  # fmt: skip
            assert dry.returncode == 0, dry.stderr
            report = json.loads(dry.stdout)
            assert report["applies"] and report["epoch"] == 0
            retype = next(c for c in report["changes"] if c["change"] == "retype_column")
            assert (retype["rows"], retype["converted"], retype["not_converted"], retype["examples"]) == (
                2,
                1,
                1,
                [["b"]],
            )
            assert (await js.stream_info(topology.stream)).state.last_seq == before

            # An op of epoch 1 published before the change is still applied after it: the
            # change takes effect at the epoch boundary, before the epoch's ops.
            await publish_batch(js, topology, [user("c", "c", 1, full_name="Cy", zip=94110)])
            done = oplog("schema", "apply", str(changes), "--nats", nats_server.url, "--db", "t")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["changes"] == 3
            await publish_batch(js, topology, [user("d", "d", 1, name="Di")])  # the old name: rejected
            await seal(js, topology, 1)
            await wait_reached(board, peers, 1)
    finally:
        for p in peers:
            p.stop()

    hashes = []
    for p in peers:
        with DoltliteBackend(p.db_path) as backend:
            hashes.append(backend.epoch_hashes())
    assert hashes[0] == hashes[1] and [epoch for epoch, _ in hashes[0]] == [0, 1]
    for p in peers:
        assert read_db(p.db_path, "SELECT id, full_name, zip FROM users ORDER BY id") == [
            ("a", "Ann", 1234), ("b", "Bob", None), ("c", "Cy", 94110)]  # fmt: skip
        assert read_db(p.db_path, "SELECT op_id, reason FROM oplog_rejections") == [("d", "unknown_column")]
