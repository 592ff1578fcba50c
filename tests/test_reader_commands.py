"""`oplog publish` (streamed), `oplog wait` and `oplog sql`, against a real nats-server
and a real `oplog serve` peer on doltlite.

One world per module (a server, database `shop` with 200 ms epochs, peer `a`): the
commands are what is tested, and starting a peer costs seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from devtools.natsd import NatsServer, free_ports
from devtools.processes import PeerProcess
from materializer.backends.doltlite import child_env
from oplog.errors import OplogError
from oplog.hlc import HLC
from oplog.op import Op
from oplog.stream import ensure_stream, publish_json
from oplog.topology import Topology
from peer.commands.reader import commit_holding, parse_receipt
from tests.support import config, connected, publish_batch, seal, wall

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60.0
SUMMARY = re.compile(
    r"^published (\d+) ops? in [\d.]+ s \(\d+ ops/s\), (\d+) duplicates?, stream seq (\d+)\.\.(\d+), epochs (-?\d+)\.\.(-?\d+)"
)


def op_line(key: str, name: str = "x", **extra: object) -> str:
    return json.dumps({"table": "users", "key": key, "kind": "upsert", "data": {"name": name}, **extra}) + "\n"


@dataclass
class World:
    server: NatsServer
    peer: PeerProcess
    root: Path

    def oplog(self, *args: str, stdin: str | None = None, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        env = {**child_env(), "OPLOG_NATS_URL": self.server.url, "OPLOG_DB": "shop"}
        return subprocess.run([sys.executable, "-m", "peer.cli", *args], capture_output=True, text=True, env=env,
                              input=stdin, timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)  # fmt: skip

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {**child_env(), "OPLOG_NATS_URL": self.server.url, "OPLOG_DB": "shop"}
        return subprocess.Popen([sys.executable, "-m", "peer.cli", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip

    def last_ops_seq(self) -> int:
        """The stream sequence of the newest ops message (seals keep coming meanwhile)."""

        async def read() -> int:
            async with connected(self.server.url) as nc:
                return int((await nc.jetstream().get_last_msg("OPLOG_shop", "oplog.shop.ops.users")).seq)

        return asyncio.run(read())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("readers")
    server = NatsServer(root / "nats")
    server.start()
    peer = PeerProcess("a", "shop", server.url, root / "a")
    w = World(server, peer, root)
    try:
        assert w.oplog("init", "--epoch-ms", "200", "--grace-ms", "50").returncode == 0
        schema = root / "schema.json"
        schema.write_text(json.dumps(SCHEMA_DOC))
        assert w.oplog("publish", "--schema", str(schema)).returncode == 0
        peer.start()
        yield w
    finally:
        peer.stop()
        server.stop()


SCHEMA_DOC = {"tables": [{"name": "users", "primary_key": ["id"], "strategy": "lww",
                          "columns": [{"name": "id", "type": "text", "nullable": False},
                                      {"name": "name", "type": "text"}, {"name": "score", "type": "integer"}]}]}  # fmt: skip


def receipts_of(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for_receipts(world: World, result: subprocess.CompletedProcess[str]) -> None:
    last = result.stdout.splitlines()[-1]
    waited = world.oplog("wait", "--receipt", last, "--timeout", "30")
    assert waited.returncode == 0, waited.stderr + world.peer.log_tail()


# -- oplog publish -----------------------------------------------------------------------


def test_publish_reports_bad_lines_by_number_and_publishes_the_rest(world: World, tmp_path: Path) -> None:
    ops = tmp_path / "ops.jsonl"
    ops.write_text(op_line("b1") + "not json\n\n" + "[1, 2]\n" + op_line("b2")
                   + json.dumps({"table": "users", "key": "b3", "kind": "frob"}) + "\n" + op_line("b4"))  # fmt: skip
    result = world.oplog("publish", str(ops))
    assert result.returncode == 2, result.stderr
    errors = result.stderr.splitlines()
    assert [e.split(":")[1] for e in errors] == [" line 2", " line 4", " line 6"], errors
    assert errors[0].startswith("oplog: line 2: not JSON")
    assert errors[1] == "oplog: line 4: an op must be a JSON object"
    assert "kind 'frob' is not one of" in errors[2]
    (summary,) = result.stdout.splitlines()
    match = SUMMARY.match(summary)
    assert match, summary
    assert match.group(1) == "3" and match.group(2) == "0"
    assert summary.endswith("; 3 bad lines not published")


def test_publish_all_or_nothing_publishes_nothing_when_a_line_is_bad(world: World, tmp_path: Path) -> None:
    ops = tmp_path / "ops.jsonl"
    ops.write_text(op_line("c1") + op_line("c2", "y" * 70_000) + op_line("c3"))  # line 2: over max_op_bytes
    before = world.last_ops_seq()
    result = world.oplog("publish", "--all-or-nothing", str(ops))
    assert result.returncode == 2
    assert "oplog: line 2: op " in result.stderr and "the limit is" in result.stderr
    assert "published nothing: 1 of 3 lines are bad (--all-or-nothing)" in result.stderr
    assert world.last_ops_seq() == before

    ops.write_text(op_line("c1") + op_line("c3"))
    result = world.oplog("publish", "--all-or-nothing", "--receipts", str(ops))
    assert result.returncode == 0, result.stderr
    assert len(receipts_of(result)) == 2
    assert SUMMARY.match(result.stderr.splitlines()[-1]), result.stderr  # with --receipts: on stderr


def test_publish_receipts_are_in_input_order_and_a_rerun_counts_duplicates(world: World, tmp_path: Path) -> None:
    ops = tmp_path / "ops.jsonl"
    ops.write_text("".join(op_line(f"d{i}", id=f"import-d{i}") for i in range(2500)))
    result = world.oplog("publish", "--receipts", str(ops))
    assert result.returncode == 0, result.stderr
    receipts = receipts_of(result)
    assert [r["id"] for r in receipts] == [f"import-d{i}" for i in range(2500)]
    assert all(isinstance(r["epoch"], int) and r["duplicate"] is False for r in receipts)
    match = SUMMARY.match(result.stderr.splitlines()[-1])
    assert match and match.group(1) == "2500"
    seqs = [r["stream_seq"] for r in receipts]
    assert (int(match.group(3)), int(match.group(4))) == (min(seqs), max(seqs))

    again = world.oplog("publish", str(ops))  # the same ids: the stream keeps one copy
    assert again.returncode == 0, again.stderr
    match = SUMMARY.match(again.stdout)
    assert match and match.group(1) == "2500" and match.group(2) == "2500", again.stdout
    wait_for_receipts(world, result)
    rows = world.oplog("sql", "--data-dir", str(world.peer.data_dir), "SELECT count(*) AS n FROM users WHERE id LIKE 'd%'")
    assert rows.stdout.splitlines()[2] == "2500", rows.stdout


def test_publish_streams_a_pipe_line_by_line(world: World) -> None:
    proc = world.popen("publish", "--receipts", "-")
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(op_line("p1"))
        proc.stdin.flush()
        # The receipt comes while the input is still open: nothing waits for its end.
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no receipt within 30 s of the first line"
        first = json.loads(proc.stdout.readline())
        assert first["stream_seq"] > 0 and isinstance(first["epoch"], int)
        out, err = proc.communicate(op_line("p2"), timeout=30)  # the second line, then the end of input
        assert proc.returncode == 0, err
        assert len(out.splitlines()) == 1 and SUMMARY.match(err.splitlines()[-1]), (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- oplog wait ----------------------------------------------------------------------------


def test_wait_for_a_receipt_then_read_the_row(world: World) -> None:
    result = world.oplog("publish", "--receipts", stdin=op_line("w1", "Wendy"))
    assert result.returncode == 0, result.stderr
    receipt = result.stdout.strip()
    waited = world.oplog("wait", "--receipt", receipt, "--timeout", "30")
    assert waited.returncode == 0, waited.stderr + world.peer.log_tail()
    assert re.fullmatch(r"epoch -?\d+ committed: peer a is at epoch -?\d+ \([\d.]+ s\)\n", waited.stdout), waited.stdout
    # Read your write: the commit that wait named holds it.
    rows = world.oplog("sql", "--data-dir", str(world.peer.data_dir), "--json", "SELECT id, name FROM users WHERE id = 'w1'")
    assert rows.returncode == 0, rows.stderr
    assert [json.loads(line) for line in rows.stdout.splitlines()] == [{"id": "w1", "name": "Wendy"}]

    from_stdin = world.oplog("wait", "--receipt", "-", "--peer", "a", "--timeout", "30", stdin=receipt + "\n")
    assert from_stdin.returncode == 0, from_stdin.stderr


def test_wait_times_out_with_one_line_and_status_1(world: World) -> None:
    started = time.monotonic()
    result = world.oplog("wait", "--epoch", str(10**12), "--timeout", "1")
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert re.fullmatch(r"oplog: timed out after 1 s waiting for epoch 1000000000000: peer a is at epoch -?\d+\n",
                        result.stderr), result.stderr  # fmt: skip
    nobody = world.oplog("wait", "--epoch", "1", "--peer", "ghost", "--timeout", "0.5")
    assert nobody.returncode == 1
    assert nobody.stderr == "oplog: timed out after 0.5 s waiting for epoch 1: peer ghost has not reported\n"


def test_wait_refuses_a_malformed_receipt_or_one_past_the_stream(world: World) -> None:
    bad = world.oplog("wait", "--receipt", "{not json", "--timeout", "5")
    assert bad.returncode == 2 and bad.stderr.startswith("oplog: a receipt is one JSON line of `oplog publish --receipts`")
    assert bad.stderr.count("\n") == 1
    past = world.oplog("wait", "--receipt", json.dumps({"stream_seq": 10**9, "epoch": 1}), "--timeout", "5")
    assert past.returncode == 2 and "the receipt's stream_seq 1000000000 is not in it" in past.stderr, past.stderr


def test_parse_receipt() -> None:
    assert parse_receipt('{"id": "x", "stream_seq": 7, "epoch": 3, "duplicate": false}') == (7, 3)
    assert parse_receipt('{"stream_seq": 7, "epoch": null}') == (7, None)
    for bad in ('{"stream_seq": "7"}', '{"epoch": 3}', "[1]", '{"stream_seq": 0}', '{"stream_seq": 1, "epoch": 1.5}'):
        with pytest.raises(Exception, match="a receipt is one JSON line"):
            parse_receipt(bad)


async def test_the_commit_holding_a_late_op_is_the_next_one_sealed_after_it(nats_server: NatsServer) -> None:
    # No peers: the test writes the seals, so it decides where each one falls.
    t = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, t)
        await publish_json(js, t, t.config_subject, config(max_future_epochs=10).model_dump(mode="json"))

        def op(key: str, epoch: int) -> Op:
            return Op(id=f"op-{key}", hlc=HLC(wall(epoch), 0, "n"), table="users", key=key, kind="upsert", data={})

        await seal(js, t, 5)
        on_time = await publish_batch(js, t, [op("a", 7)])  # epoch 7: not sealed yet
        late = await publish_batch(js, t, [op("b", 3)])  # epoch 3: sealed already (seal 5)
        await publish_json(js, t, t.seal_subject, {"epoch": 5})  # a later copy: closes nothing
        await seal(js, t, 6)  # closes 6: holds the late op
        await seal(js, t, 7)  # closes 7: holds the op of epoch 7
        assert await commit_holding(js, t, late, 3) == 6
        assert await commit_holding(js, t, on_time, 7) == 7
        assert await commit_holding(js, t, on_time, None) == 6  # no epoch: the next commit sealed after it

        bare = Topology(db="bare")  # a stream without a config: nothing can be judged
        await ensure_stream(js, bare)
        seq = await publish_batch(js, bare, [op("c", 1)])
        with pytest.raises(OplogError, match=r"stream OPLOG_bare holds no config of database bare \(no `oplog init` yet\)"):
            await commit_holding(js, bare, seq, 1)


# -- oplog sql -------------------------------------------------------------------------------


def test_sql_prints_a_table_json_or_runs_a_file(world: World, tmp_path: Path) -> None:
    lines = op_line("s1", "Sam") + json.dumps({"table": "users", "key": "s2", "kind": "upsert",
                                                "data": {"name": "Sue\nnew", "score": 4}}) + "\n"  # fmt: skip
    result = world.oplog("publish", "--receipts", stdin=lines)
    assert result.returncode == 0, result.stderr
    wait_for_receipts(world, result)
    data = ["--data-dir", str(world.peer.data_dir)]
    table = world.oplog("sql", *data, "SELECT id, name, score FROM users WHERE id IN ('s1', 's2') ORDER BY id")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "id  name      score",
        "--  --------  -----",
        "s1  Sam       NULL",
        "s2  Sue\\nnew  4",
        "(2 rows)",
    ]
    as_json = world.oplog("sql", *data, "--json", "SELECT id, score FROM users WHERE id IN ('s1', 's2') ORDER BY id")
    assert [orjson.loads(line) for line in as_json.stdout.splitlines()] == [{"id": "s1", "score": None},
                                                                            {"id": "s2", "score": 4}]  # fmt: skip
    query = tmp_path / "q.sql"
    query.write_text("-- the newest commits\nWITH recent AS (SELECT epoch FROM oplog_epochs ORDER BY epoch DESC LIMIT 3)\n"
                     "SELECT count(*) AS n FROM recent;\n")  # fmt: skip
    from_file = world.oplog("sql", *data, "--file", str(query))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.splitlines()[2] == "3"
    history = world.oplog("sql", *data, "--json", "SELECT message FROM dolt_log LIMIT 1")
    assert json.loads(history.stdout)["message"].startswith("epoch ")


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("DELETE FROM users", "oplog: oplog sql runs read-only queries: the statement must start with SELECT, WITH or VALUES"),
        ("WITH x AS (SELECT 1) DELETE FROM users", "oplog: query failed: it would write or reach outside the database, and oplog sql only reads"),
        ("SELECT dolt_commit('-Am', 'sneaky')", "oplog: query failed: attempt to write a readonly database"),
        ("SELECT * FROM no_such_table", "oplog: query failed: no such table: no_such_table"),
        ("SELECT 1; SELECT 2", "oplog: query failed: You can only execute one statement at a time."),
    ],
)
def test_sql_refuses_writes_and_says_what_is_wrong_in_one_line(world: World, sql: str, error: str) -> None:
    result = world.oplog("sql", "--data-dir", str(world.peer.data_dir), sql)
    assert result.returncode == 2
    assert result.stderr == error + "\n"
    assert world.peer.running


def test_sql_on_a_missing_database_file(world: World, tmp_path: Path) -> None:
    result = world.oplog("sql", "--data-dir", str(tmp_path), "--db", "shop", "SELECT 1")
    assert result.returncode == 2
    assert result.stderr == (f"oplog: no database file {tmp_path}/shop.db (is --data-dir the peer's data directory "
                             "and --db its database?)\n")  # fmt: skip


@pytest.mark.parametrize("command", [("publish", "-"), ("wait", "--epoch", "1"), ("wait", "--receipt", '{"stream_seq": 1}')])
def test_publish_and_wait_give_up_on_an_unreachable_nats_with_one_line(command: tuple[str, ...]) -> None:
    (port,) = free_ports(1)  # nothing listens there
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "peer.cli", *command, "--db", "t", "--connect-timeout", "2",
                           "--nats", f"nats://u:secret@127.0.0.1:{port}"], capture_output=True, text=True,
                          env=child_env(), input=op_line("x"), timeout=CLI_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 20
    assert done.stderr.startswith(f"oplog: no NATS server at nats://u:***@127.0.0.1:{port} answered within 2 s")
    assert done.stderr.count("\n") == 1 and "secret" not in done.stderr + done.stdout
