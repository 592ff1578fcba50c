"""Schema changes that remove, rename and retype, committed by both real backends.

Each test runs once per backend kind (the ``backends`` fixture: doltlite files, databases on
a real dolt sql-server) and plans its epochs with :func:`materializer.plan.plan_epoch`
against the backend itself, as a peer does, with rows written in the same epoch as the
change. Peers made from one genesis commit the same plans to the same hashes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from epoch.assign import Accepted, Control, SealedEpoch
from materializer.backends.base import Backend
from materializer.backends.dolt_server import DoltServerBackend
from materializer.backends.doltlite import child_env
from materializer.commit.schema_dry_run import DryRun, dolt_server_branch, doltlite_copy, dry_run
from materializer.plan import EpochPlan, plan_epoch
from materializer.read.changes import read_changes
from materializer.strategy import RowState
from oplog.op import Op, OpKind
from oplog.schema import TableSchema
from tests.support import BackendFactory
from tests.test_plan import CONFIG, ORIGIN, op

APART_S = 2.1  # as in the backend contract: any wall-clock stamp in a commit would differ

USERS = TableSchema.model_validate(
    {"name": "users", "primary_key": ["id"], "strategy": "lww",
     "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "name", "type": "text"},
                 {"name": "age", "type": "text"}, {"name": "score", "type": "integer"}]}
)  # fmt: skip
NOTES = TableSchema.model_validate(
    {"name": "notes", "primary_key": ["shop", "n"], "strategy": "field-lww",
     "columns": [{"name": "shop", "type": "text", "nullable": False}, {"name": "n", "type": "integer", "nullable": False},
                 {"name": "title", "type": "text"}, {"name": "body", "type": "text"}, {"name": "price", "type": "text"}]}
)  # fmt: skip
TALLY = TableSchema.model_validate(
    {"name": "tally", "primary_key": ["id"], "strategy": "counter",
     "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "n", "type": "integer"}]}
)  # fmt: skip


class Peer:
    """One peer's database, committing epochs planned against itself."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.epoch = 0
        self.hashes: list[str] = []
        self.plans: list[EpochPlan] = []

    def commit(self, *ops: Op, schema: list[dict[str, Any]] = ()) -> EpochPlan:  # type: ignore[assignment]
        k = self.epoch
        controls = tuple(Control(100 * k + i, "schema", body) for i, body in enumerate(schema))
        accepted = tuple(Accepted(100 * k + 50 + i, 0, o, k) for i, o in enumerate(ops))
        sealed = SealedEpoch(epoch=k, first_epoch=k, seal_seq=100 * k + 99, resume_seq=100 * k + 100,
                             end_ms=ORIGIN + 1000 * (k + 1), config=CONFIG, ops=accepted, rejected=(),
                             controls=controls)  # fmt: skip
        plan = plan_epoch(sealed, self.backend.tables(), self.backend)
        self.plans.append(plan)
        self.hashes.append(self.backend.commit_epoch(plan))
        self.epoch += 1
        return plan


@pytest.fixture
def peers(backends: BackendFactory) -> Iterator[Callable[[str], Peer]]:
    """Peers holding one shared genesis; every backend opened is closed after the test."""
    made: list[Backend] = []

    def opened(name: str) -> Backend:
        backend = backends(name)
        backend.open()
        made.append(backend)
        return backend

    genesis = opened("origin").create_genesis()

    def make(name: str) -> Peer:
        backend = opened(name)
        backend.install_snapshot(genesis)
        return Peer(backend)

    yield make
    for backend in made:
        backend.close()


def declare(*tables: TableSchema) -> dict[str, Any]:
    return {"tables": [t.model_dump(mode="json") for t in tables]}


def changes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"changes": list(items)}


def upsert(op_id: str, key: str, at: int, **data: Any) -> Op:
    return op(op_id, (key,), at=at, table="users", data=data)


def patch(op_id: str, key: tuple[Any, ...], at: int, **data: Any) -> Op:
    return op(op_id, key, at=at, table="notes", kind=OpKind.PATCH, data=data)


def rejections(backends: BackendFactory, backend: Backend) -> list[tuple[Any, ...]]:
    return backends.query(backend, "SELECT seq, op_id, reason FROM oplog_rejections ORDER BY seq, idx")


def fails(backends: BackendFactory, backend: Backend, sql: str) -> bool:
    try:
        backends.query(backend, sql)
    except Exception:  # noqa: BLE001  (each engine's driver error: the column or table is not there)
        return True
    return False


Epoch = tuple[tuple[Op, ...], list[dict[str, Any]]]


def incr(op_id: str, at: int, n: Any) -> Op:
    return op(op_id, ("t",), at=at, table="tally", kind=OpKind.INCR, data={"n": n})


# Epochs that use every change kind, each with ops in the same epoch as its change.
HISTORY: list[Epoch] = [
    ((upsert("u1", "a", 1, name="Ann", age="41", score=3), upsert("u2", "b", 2, name="Bob", age="n/a", score=5),
      upsert("u3", "c", 3, name="Cy", age="7", score=None), patch("p1", ("s", 1), 4, title="T1", body="B1", price="1.50"),
      patch("p2", ("s", 2), 5, body="B2", price="cheap"), incr("x1", 6, 2)),
     [declare(USERS, NOTES, TALLY)]),
    # A column dropped and one renamed: a row of the same epoch takes the new shape; an op
    # still naming the old column is rejected.
    ((upsert("u4", "d", 1_010, full_name="Di", age="30"), upsert("u5", "e", 1_020, name="Eve", age="1"),
      patch("p3", ("s", 1), 1_030, heading="H1")),
     [changes({"op": "drop_column", "table": "users", "column": "score"},
              {"op": "rename_column", "table": "users", "column": "name", "to": "full_name"},
              {"op": "rename_column", "table": "notes", "column": "title", "to": "heading"},
              {"op": "drop_column", "table": "notes", "column": "body"})]),
    # A retype that cannot convert "n/a" is refused whole; the epoch's op still commits.
    ((upsert("u6", "f", 2_010, full_name="Fay", age="2"),),
     [changes({"op": "retype_column", "table": "users", "column": "age", "type": "integer"})]),
    # With on_failure "null" they apply, each table rebuilt; the counter counts on in decimal.
    ((patch("p4", ("s", 3), 3_010, price="2"), incr("x2", 3_020, "0.25"), upsert("u7", "g", 3_030, full_name="G", age=9)),
     [changes({"op": "retype_column", "table": "notes", "column": "price", "type": "decimal", "on_failure": "null"},
              {"op": "retype_column", "table": "tally", "column": "n", "type": "decimal"}),
      changes({"op": "retype_column", "table": "users", "column": "age", "type": "integer", "on_failure": "null"})]),
    ((op("dz", ("b",), at=4_010, table="users", kind=OpKind.DELETE),), []),
    ((), [changes({"op": "drop_table", "table": "users"})]),
]  # fmt: skip


def run(peer: Peer, epochs: list[Epoch]) -> None:
    for ops, schema in epochs:
        peer.commit(*ops, schema=schema)


def stamp(op_id: str, at: int) -> list[Any]:
    return [ORIGIN + at, 0, "p1", op_id]


def test_every_change_kind_commits_with_rows_of_the_same_epoch(
    peers: Callable[[str], Peer], backends: BackendFactory
) -> None:
    peer = peers("p")
    run(peer, HISTORY)
    backend = peer.backend
    # Epoch 1: u5 still names "name". Epoch 2: the retype to integer is refused ("n/a").
    assert rejections(backends, backend) == [(151, "u5", "unknown_column"), (200, None, "schema")]
    (detail,) = backends.query(backend, "SELECT detail FROM oplog_rejections WHERE seq = 200")[0]
    assert '1 of 4 stored rows hold a value the rule does not take (keys ["b"])' in detail
    tables = backend.tables()
    assert set(tables) == {"notes", "tally"}
    notes = tables["notes"]
    assert [(c.name, c.type.value) for c in notes.columns] == [("shop", "text"), ("n", "integer"), ("heading", "text"),
                                                              ("price", "decimal")]  # fmt: skip
    # field-lww: stamps follow the renamed column and leave with the dropped one; a price
    # that is no decimal became NULL, its write's stamp kept.
    assert backend.read_rows(notes, [("s", 1), ("s", 2), ("s", 3)]) == {
        ("s", 1): RowState({"heading": "H1", "price": "1.5"},
                           {"cols": {"heading": stamp("p3", 1_030), "price": stamp("p1", 4)}, "row": stamp("p3", 1_030)}),
        ("s", 2): RowState({"heading": None, "price": None}, {"cols": {"price": stamp("p2", 5)}, "row": stamp("p2", 5)}),
        ("s", 3): RowState({"heading": None, "price": "2"}, {"cols": {"price": stamp("p4", 3_010)},
                                                             "row": stamp("p4", 3_010)}),
    }  # fmt: skip
    # The counter's 2 became "2" and went on adding, in decimal.
    assert backend.read_rows(tables["tally"], [("t",)])[("t",)].values == {"n": "2.25"}
    # The dropped table is gone with its definition and its tombstones; so are the columns.
    assert fails(backends, backend, "SELECT id FROM users")
    assert backends.query(backend, "SELECT COUNT(*) FROM oplog_tombstones WHERE tbl = 'users'") == [(0,)]
    assert backends.query(backend, "SELECT name FROM oplog_tables ORDER BY name") == [("notes",), ("tally",)]
    assert fails(backends, backend, "SELECT body FROM notes") and fails(backends, backend, "SELECT title FROM notes")


def test_a_retyped_table_holds_the_converted_values_and_takes_ops_of_the_new_type(peers: Callable[[str], Peer]) -> None:
    peer = peers("p")
    run(peer, HISTORY[:4])
    users = peer.backend.tables()["users"]
    assert [(c.name, c.type.value, c.nullable) for c in users.columns] == [
        ("id", "text", False), ("full_name", "text", True), ("age", "integer", True)]  # fmt: skip
    keys = [("a",), ("b",), ("c",), ("d",), ("f",), ("g",)]
    assert {key: state.values for key, state in peer.backend.read_rows(users, keys).items()} == {
        ("a",): {"full_name": "Ann", "age": 41}, ("b",): {"full_name": "Bob", "age": None},
        ("c",): {"full_name": "Cy", "age": 7}, ("d",): {"full_name": "Di", "age": 30},
        ("f",): {"full_name": "Fay", "age": 2}, ("g",): {"full_name": "G", "age": 9},
    }  # fmt: skip


def test_peers_from_one_genesis_commit_the_same_changes_to_the_same_hashes(peers: Callable[[str], Peer]) -> None:
    early = peers("early")
    run(early, HISTORY)
    time.sleep(APART_S)  # the other peer's clock reads another time for every commit
    late = peers("late")
    run(late, HISTORY)
    # Each planned from its own database: the same plans, committed to the same hashes.
    assert late.plans == early.plans
    assert late.hashes == early.hashes and len(set(early.hashes)) == len(HISTORY)
    assert late.backend.epoch_hashes() == early.backend.epoch_hashes() == list(enumerate(early.hashes))
    for name in ("notes", "tally", "oplog_tables", "oplog_tombstones", "oplog_rejections"):
        assert late.backend.table_hash(name) == early.backend.table_hash(name)


# -- the dry run ------------------------------------------------------------------------------------


def scratch(backend: Backend) -> Any:
    """The dry run's scratch copy of ``backend``'s database, for its kind."""
    if isinstance(backend, DoltServerBackend):
        return dolt_server_branch(
            host=backend.host, port=backend.port, user="root", password="", database=backend.database
        )
    return doltlite_copy(backend.path)  # type: ignore[attr-defined]


def branches(backends: BackendFactory, backend: Backend) -> list[tuple[Any, ...]]:
    if not isinstance(backend, DoltServerBackend):
        return []
    return backends.query(backend, "SELECT name FROM dolt_branches ORDER BY name")


RETYPE_AGE = {"op": "retype_column", "table": "users", "column": "age", "type": "integer"}


def test_a_dry_run_reports_on_a_copy_and_leaves_the_peers_database_as_it_was(
    peers: Callable[[str], Peer], backends: BackendFactory
) -> None:
    peer = peers("p")
    run(peer, HISTORY[:2])
    backend = peer.backend  # stays open, as a running peer's would
    head, tables, known = backend.head(), backend.tables(), branches(backends, backend)

    def dry(body: dict[str, Any]) -> DryRun:
        with scratch(backend) as (copy, where):
            return dry_run(copy, body, where)

    refused = dry(changes(RETYPE_AGE))
    assert refused.epoch == 1
    assert refused.refused is not None and "1 of 4 stored rows hold a value the rule does not take" in refused.refused
    (report,) = refused.changes
    assert (report.table, report.change, report.rows, report.converted, report.not_converted, report.examples) == (
        "users", "retype_column", 4, 3, 1, (("b",),))  # fmt: skip
    assert refused.tables[0].columns_after == refused.tables[0].columns_before  # nothing applied
    assert any(line.startswith("REFUSED") for line in refused.lines())

    applies = dry(changes({**RETYPE_AGE, "on_failure": "null"}, {"op": "drop_column", "table": "notes", "column": "price"},
                          {"op": "drop_table", "table": "tally"}))  # fmt: skip
    assert applies.refused is None
    assert [(c.table, c.change, c.column, c.rows, c.converted, c.not_converted) for c in applies.changes] == [
        ("users", "retype_column", "age", 4, 3, 1), ("notes", "drop_column", "price", 2, 0, 0),
        ("tally", "drop_table", None, None, 0, 0)]  # fmt: skip
    outcome = {t.name: t for t in applies.tables}
    assert (outcome["users"].rows_before, outcome["users"].rows_after) == (4, 4)
    assert outcome["users"].columns_after == ("id text", "full_name text", "age integer")
    assert outcome["tally"].columns_after is None and outcome["tally"].rows_before == 1
    assert applies.to_json()["applies"] is True
    # The peer's own database: untouched, and no scratch branch left behind.
    assert (backend.head(), backend.tables(), branches(backends, backend)) == (head, tables, known)
    peer.commit()  # and it commits on as before


def test_the_change_feed_reads_every_epoch_across_the_changes(peers: Callable[[str], Peer]) -> None:
    peer = peers("p")
    run(peer, HISTORY)
    feed = {e.epoch: {(c.table, c.key): c for c in e.changes} for e in read_changes(peer.backend, 0)}
    assert sorted(feed) == list(range(len(HISTORY)))
    # The retype's epoch: the old values rendered as the old type, the new as the new.
    retyped = feed[3][("users", ("a",))]
    assert (retyped.kind, retyped.before, retyped.after) == (
        "update", {"id": "a", "full_name": "Ann", "age": "41"}, {"id": "a", "full_name": "Ann", "age": 41})  # fmt: skip
    assert feed[3][("tally", ("t",))].after == {"id": "t", "n": "2.25"}
    # A table dropped since still has the changes it had (the drop itself lists no rows).
    assert feed[4][("users", ("b",))].kind == "delete"
    assert feed[5] == {}


def test_oplog_schema_apply_dry_run_says_what_a_change_does_and_exits_1_when_refused(
    peers: Callable[[str], Peer], backends: BackendFactory, tmp_path: Path
) -> None:
    peer = peers("p")
    run(peer, HISTORY[:2])
    backend = peer.backend
    if isinstance(backend, DoltServerBackend):
        where = ["--backend", "dolt-server", "--dolt-host", backend.host, "--dolt-port", str(backend.port),
                 "--db", backend.database]  # fmt: skip
    else:
        where = ["--data-dir", str(backend.path.parent), "--db", backend.path.stem]  # type: ignore[attr-defined]

    def dry(body: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
        message = tmp_path / "message.json"
        message.write_text(body if isinstance(body, str) else json.dumps(body))
        return subprocess.run([sys.executable, "-m", "peer.cli", "schema", "apply", str(message), "--dry-run", *where],
                              env=child_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    refused = dry(changes(RETYPE_AGE))
    assert refused.returncode == 1, refused.stderr
    assert "users: retype_column age from text to integer (on_failure reject): 4 rows, 3 values converted, " \
           '1 do not convert (keys ["b"])' in refused.stdout  # fmt: skip
    assert "REFUSED: the peers would record it as rejected (reason schema)" in refused.stdout

    applies = dry(changes({"op": "rename_column", "table": "notes", "column": "heading", "to": "title"}))
    assert applies.returncode == 0, applies.stderr
    assert "table notes: before 2 rows (shop text, n integer, heading text, price text); " \
           "after 2 rows (shop text, n integer, title text, price text)" in applies.stdout  # fmt: skip
    assert applies.stdout.rstrip().endswith("the peers would apply it at the next epoch boundary")

    bad = dry('{"changes": [{"op": "drop_column", "table": "users"}]}')
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("oplog: schema ") and "changes.0.drop_column.column: Field required" in bad.stderr
