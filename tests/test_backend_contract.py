"""The backend contract (materializer/backends/base.py), one suite run against every backend.

Each test gets the ``backends`` fixture once per backend kind (doltlite files; databases
on a real dolt sql-server, one server per module) and does not ask which it is, except
where the contract itself depends on the backend (the text key limit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from materializer.backends.base import Backend
from materializer.errors import BackendError, OpRejected
from materializer.metadata import CommitMeta, checkpoint_meta, commit_meta, ops_digest
from materializer.plan import EpochPlan, EpochRow, Key, RejectionRow, TableChange, TableWrites
from materializer.strategy import RowState
from oplog.codec import canonical_json
from oplog.schema import Column, ColumnType, TableSchema, normalize_value
from tests.support import BackendFactory

END_MS = 1_700_000_000_000
APART_S = 2.1  # long enough for any wall-clock timestamp in a commit to differ

USERS = TableSchema.model_validate(
    {
        "name": "users",
        "columns": [
            {"name": "id", "type": "text", "nullable": False},
            {"name": "name", "type": "text"},
            {"name": "score", "type": "integer"},
        ],
        "primary_key": ["id"],
    }
)
USERS_WITH_EMAIL = USERS.model_copy(update={"columns": (*USERS.columns, Column(name="email", type=ColumnType.TEXT))})
ITEMS = TableSchema.model_validate(
    {
        "name": "items",
        "columns": [
            {"name": "shop", "type": "text", "nullable": False},
            {"name": "sku", "type": "integer", "nullable": False},
            {"name": "price", "type": "decimal"},
            {"name": "weight", "type": "float"},
            {"name": "note", "type": "text"},
            {"name": "active", "type": "boolean"},
            {"name": "attrs", "type": "json"},
            {"name": "blob", "type": "bytes"},
            {"name": "seen", "type": "timestamp"},
        ],
        "primary_key": ["shop", "sku"],
    }
)


def plan(
    epoch: int,
    *,
    changes: tuple[TableChange, ...] = (),
    writes: tuple[TableWrites, ...] = (),
    op_ids: tuple[tuple[str, str], ...] = (),
    prune_before: int | None = None,
    rejections: tuple[RejectionRow, ...] = (),
    config_rows: tuple[tuple[int, str], ...] = (),
    seal_seq: int | None = None,
) -> EpochPlan:
    """An epoch plan as the planner would make it, with metadata from the epoch alone."""
    seal_seq = 10 * (epoch + 1) if seal_seq is None else seal_seq
    digest = ops_digest([op_id for op_id, _ in op_ids])
    row = EpochRow(epoch, epoch, seal_seq, seal_seq + 1, END_MS + 1000 * (epoch + 1), len(op_ids),
                   len(rejections), 0, 0, digest)  # fmt: skip
    meta = commit_meta(epoch=epoch, first_epoch=epoch, end_ms=row.end_ms, author_name="oplog",
                       author_email="oplog@example.invalid", applied=row.applied, rejected=row.rejected,
                       duplicates=0, digest=digest)  # fmt: skip
    prune = epoch - 3600 if prune_before is None else prune_before
    return EpochPlan(row, changes, writes, op_ids, prune, rejections, config_rows, meta)


def user(key: str, name: str, score: int) -> tuple[Key, dict[str, Any], dict[str, Any]]:
    return (key,), {"name": name, "score": score}, {"v": [END_MS, 0, "n", f"{key}-{name}"]}


def create(*tables: TableSchema) -> tuple[TableChange, ...]:
    return tuple(TableChange(None, t) for t in tables)


# Three epochs as a peer commits them: a table is created, rows come and go.
HISTORY = (
    plan(0, changes=create(USERS), writes=(TableWrites(USERS, upserts=[user("a", "Ann", 1), user("b", "Bob", 2)]),),
         op_ids=(("op-a", "d-a"), ("op-b", "d-b"))),
    plan(1, writes=(TableWrites(USERS, upserts=[user("c", "Cy", 3)], deletes=[(("b",), {"v": "gone"})]),),
         op_ids=(("op-c", "d-c"), ("op-b2", "d-b2"))),
    plan(2, writes=(TableWrites(USERS, upserts=[user("a", "Ann", 5)]),), op_ids=(("op-a2", "d-a2"),)),
)  # fmt: skip


@pytest.fixture
def opened(backends: BackendFactory) -> Iterator[Callable[[str], Backend]]:
    """Open a backend by database name; everything opened is closed after the test."""
    made: list[Backend] = []

    def open_backend(name: str) -> Backend:
        backend = backends(name)
        backend.open()
        made.append(backend)
        return backend

    yield open_backend
    for backend in made:
        backend.close()


@pytest.fixture
def genesis(opened: Callable[[str], Backend]) -> bytes:
    """The shared genesis, made once by a first peer."""
    return opened("origin").create_genesis()


@pytest.fixture
def peer(opened: Callable[[str], Backend], genesis: bytes) -> Callable[[str], Backend]:
    """A backend holding the shared genesis."""

    def make(name: str) -> Backend:
        backend = opened(name)
        backend.install_snapshot(genesis)
        return backend

    return make


def test_a_new_database_is_initialized_by_the_genesis_or_its_artifact(opened: Callable[[str], Backend]) -> None:
    # A fresh database holds nothing yet.
    first = opened("first")
    assert not first.is_initialized()
    artifact = first.create_genesis()
    assert first.is_initialized()
    assert (first.last_epoch(), first.epoch_hashes(), first.tables(), first.config_log()) == (None, [], {}, [])
    # Installing the artifact elsewhere gives the very same commit.
    second = opened("second")
    assert not second.is_initialized()
    second.install_snapshot(artifact)
    assert second.is_initialized()
    assert second.head() == first.head()


def test_the_same_plans_give_the_same_hashes_on_instances_made_seconds_apart(peer: Callable[[str], Backend]) -> None:
    # One peer commits three epochs...
    early = peer("early")
    returned = [early.commit_epoch(p) for p in HISTORY]
    # ...another starts from the same genesis later, with its clock seconds ahead.
    time.sleep(APART_S)
    late = peer("late")
    assert [late.commit_epoch(p) for p in HISTORY] == returned
    assert late.epoch_hashes() == early.epoch_hashes() == list(enumerate(returned))
    assert late.head() == early.head() == returned[-1]


def test_rows_and_tombstones_read_back_as_written(peer: Callable[[str], Backend]) -> None:
    backend = peer("p")
    for p in HISTORY[:2]:
        backend.commit_epoch(p)
    # a and c are rows, b a tombstone with its meta, d was never written.
    keys: list[Key] = [("a",), ("b",), ("c",), ("d",)]
    assert backend.read_rows(USERS, keys) == {
        ("a",): RowState({"name": "Ann", "score": 1}, {"v": [END_MS, 0, "n", "a-Ann"]}),
        ("b",): RowState(None, {"v": "gone"}),
        ("c",): RowState({"name": "Cy", "score": 3}, {"v": [END_MS, 0, "n", "c-Cy"]}),
    }
    # A row written again clears its tombstone.
    backend.commit_epoch(
        plan(2, writes=(TableWrites(USERS, upserts=[user("b", "Bo", 7)], cleared_tombstones=[("b",)]),))
    )
    assert backend.read_rows(USERS, [("b",)]) == {("b",): RowState({"name": "Bo", "score": 7}, user("b", "Bo", 7)[2])}
    assert backend.read_rows(USERS, []) == {}


def test_every_column_type_and_composite_keys_round_trip_exactly(
    peer: Callable[[str], Backend], backends: BackendFactory
) -> None:
    backend = peer("p")
    limit = backend.text_key_limit(ITEMS) or 1024
    raw = {
        "price": "1.50", "weight": 0.1, "note": "multi\nline ‘quoted’ \\ 🙂", "active": True,
        "attrs": {"b": [1, 2.5, None], "a": "x"}, "blob": "AAEC/w==", "seen": "2026-01-01T01:02:03.004+01:00",
    }  # fmt: skip
    values = {c.name: normalize_value(c, raw[c.name]) for c in ITEMS.value_columns}
    empty = {c.name: None for c in ITEMS.value_columns}
    # Keys differing only in case or a trailing space are different rows; so are signs and extremes.
    keys: list[Key] = [("a", 1), ("A", 1), ("a ", 1), ("ä/🙂", -(2**63)), ("z" * limit, 2**63 - 1)]
    upserts = [(keys[0], values, {"m": 0})] + [(k, empty, {"m": i}) for i, k in enumerate(keys[1:], 1)]
    backend.commit_epoch(plan(0, changes=create(ITEMS), writes=(TableWrites(ITEMS, upserts=upserts),)))
    stored = backend.read_rows(ITEMS, [*keys, ("a", 2)])
    assert stored == {key: RowState(v, meta) for key, v, meta in upserts}
    assert values == {
        "price": "1.5", "weight": 0.1, "note": raw["note"], "active": 1, "attrs": canonical_json(raw["attrs"]),
        "blob": b"\x00\x01\x02\xff", "seen": "2026-01-01T00:02:03.004Z",
    }  # fmt: skip
    assert len(backends.query(backend, "SELECT * FROM items")) == 5


def test_known_op_ids_stay_inside_the_dedup_horizon(peer: Callable[[str], Backend]) -> None:
    backend = peer("p")
    backend.commit_epoch(plan(0, op_ids=(("x", "dx"), ("y", "dy"))))
    backend.commit_epoch(plan(1, op_ids=(("z", "dz"),)))
    assert backend.known_op_ids(["x", "y", "z", "w"]) == {"x": "dx", "y": "dy", "z": "dz"}
    # Epoch 2's horizon starts at epoch 1: the ids of epoch 0 are pruned in its commit.
    backend.commit_epoch(plan(2, op_ids=(("v", "dv"),), prune_before=1))
    assert backend.known_op_ids(["x", "y", "z", "v"]) == {"z": "dz", "v": "dv"}
    assert backend.known_op_ids([f"id-{i}" for i in range(1000)]) == {}


COUNTS = TableSchema.model_validate(
    {
        "name": "counts",
        "columns": [{"name": "n", "type": "integer", "nullable": False}, {"name": "v", "type": "text"}],
        "primary_key": ["n"],
    }
)


def test_lookups_find_exactly_the_keys_asked_for(peer: Callable[[str], Backend]) -> None:
    # Reads travel in batches the engine matches on its side (an IN list, or on Dolt
    # sql-server a JSON_TABLE join): integers past 2**53 must not round onto a
    # neighbour, text keys and op ids differing in case, a trailing space or an accent
    # are different keys, and a lookup of more keys than one batch holds finds them all.
    backend = peer("p")
    ints = [2**53, 2**53 + 1, 2**63 - 1, -(2**63), -(2**53) - 1, 0]
    texts = ["op", "Op", "op ", "é", "e\u0301"]
    many = [f"k{i:06d}" for i in range(12_001)]  # more than any backend's lookup batch
    stamp = {"v": [END_MS, 0, "n", "x"]}
    backend.commit_epoch(
        plan(
            0,
            changes=create(COUNTS, USERS),
            writes=(
                TableWrites(COUNTS, upserts=[((n,), {"v": str(n)}, stamp) for n in ints[:3]],
                            deletes=[((n,), {"v": f"gone {n}"}) for n in ints[3:]]),
                TableWrites(USERS, upserts=[((t,), {"name": t, "score": 1}, stamp) for t in texts[:3] + many],
                            deletes=[((t,), {"v": t}) for t in texts[3:]]),
            ),
            op_ids=tuple((t, f"d-{t}") for t in texts[:3] + many),
        )
    )  # fmt: skip
    for n in ints:
        expected = RowState({"v": str(n)}, stamp) if n in ints[:3] else RowState(None, {"v": f"gone {n}"})
        assert backend.read_rows(COUNTS, [(n,)]) == {(n,): expected}, n
    assert backend.read_rows(COUNTS, [(2**53 + 2,), (2**53 - 1,), (1,)]) == {}
    for t in texts:
        expected = RowState({"name": t, "score": 1}, stamp) if t in texts[:3] else RowState(None, {"v": t})
        assert backend.read_rows(USERS, [(t,)]) == {(t,): expected}, t
        assert backend.known_op_ids([t]) == ({t: f"d-{t}"} if t in texts[:3] else {}), t
    assert backend.read_rows(USERS, [("OP",), ("o",), ("op  ",), ("e",)]) == {}
    assert backend.known_op_ids(["OP", "o", "op  ", "é"]) == {}
    found = backend.read_rows(USERS, [(k,) for k in many] + [("k999999",)])
    assert sorted(found) == [(k,) for k in many]
    assert backend.known_op_ids([*many, "k999999"]) == {k: f"d-{k}" for k in many}


def test_tables_are_created_and_gain_nullable_columns(peer: Callable[[str], Backend], backends: BackendFactory) -> None:
    backend = peer("p")
    backend.commit_epoch(HISTORY[0])
    assert backend.tables() == {"users": USERS}
    # A column added at epoch 1 is NULL in the rows written before it.
    added = (TableChange(USERS, USERS_WITH_EMAIL),)
    row = (("e",), {"name": "Eve", "score": 4, "email": "e@x"}, {"m": 1})
    backend.commit_epoch(plan(1, changes=added, writes=(TableWrites(USERS_WITH_EMAIL, upserts=[row]),)))
    assert backend.tables() == {"users": USERS_WITH_EMAIL}
    assert backend.read_rows(USERS_WITH_EMAIL, [("a",), ("e",)]) == {
        ("a",): RowState({"name": "Ann", "score": 1, "email": None}, {"v": [END_MS, 0, "n", "a-Ann"]}),
        ("e",): RowState(row[1], row[2]),
    }
    internal = ["oplog_config", "oplog_epochs", "oplog_op_ids", "oplog_rejections", "oplog_tables", "oplog_tombstones"]
    assert backends.table_names(backend) == sorted([*internal, "users"])


def test_every_epoch_commit_is_listed(peer: Callable[[str], Backend]) -> None:
    backend = peer("p")
    hashes = [backend.commit_epoch(p) for p in HISTORY]
    assert len(set(hashes)) == 3
    assert backend.epoch_hashes() == [(0, hashes[0]), (1, hashes[1]), (2, hashes[2])]
    assert backend.epoch_hashes(since_epoch=1) == [(1, hashes[1]), (2, hashes[2])]
    assert backend.head() == hashes[2]


def test_table_hash_depends_on_content_not_history(peer: Callable[[str], Backend]) -> None:
    # The same final rows, reached in two commits on one peer and in one on the other.
    stepwise, at_once = peer("stepwise"), peer("at-once")
    stepwise.commit_epoch(plan(0, changes=create(USERS), writes=(TableWrites(USERS, upserts=[user("a", "A", 1)]),)))
    stepwise.commit_epoch(plan(1, writes=(TableWrites(USERS, upserts=[user("b", "B", 2)]),)))
    both = TableWrites(USERS, upserts=[user("a", "A", 1), user("b", "B", 2)])
    at_once.commit_epoch(plan(0, changes=create(USERS), writes=(both,)))
    assert stepwise.table_hash("users") == at_once.table_hash("users")
    assert stepwise.head() != at_once.head()
    assert stepwise.table_hash("users") != stepwise.table_hash("oplog_epochs")


def test_progress_rows_answer_the_resume_questions(peer: Callable[[str], Backend]) -> None:
    backend = peer("p")
    config = canonical_json({"type": "init", "epoch_ms": 1000})
    backend.commit_epoch(plan(0, seal_seq=5, config_rows=((2, config),)))
    backend.commit_epoch(plan(1, seal_seq=9))
    backend.commit_epoch(plan(4, seal_seq=14))
    last = backend.last_epoch()
    assert last is not None and (last.epoch, last.seal_seq, last.resume_seq) == (4, 14, 15)
    # The highest committed epoch whose seal precedes a stream position.
    assert [backend.sealed_before(seq) for seq in (5, 6, 9, 10, 14, 15)] == [None, 0, 0, 1, 1, 4]
    assert backend.config_log() == [(2, {"type": "init", "epoch_ms": 1000})]


def test_a_snapshot_installs_the_same_head_and_continues_to_the_same_next_hash(peer: Callable[[str], Backend]) -> None:
    source = peer("source")
    for p in HISTORY[:2]:
        source.commit_epoch(p)
    # A joining peer installs the source's snapshot: same HEAD, history, tags and progress.
    joiner = peer("joiner")
    joiner.install_snapshot(source.export_snapshot())
    assert joiner.head() == source.head()
    assert joiner.epoch_hashes() == source.epoch_hashes()
    assert joiner.last_epoch() == source.last_epoch()
    assert joiner.read_rows(USERS, [("a",), ("b",)]) == source.read_rows(USERS, [("a",), ("b",)])
    # Both make the next commit identically.
    assert joiner.commit_epoch(HISTORY[2]) == source.commit_epoch(HISTORY[2])


def test_a_plan_failing_mid_write_leaves_the_previous_commit_and_nothing_else(
    peer: Callable[[str], Backend], backends: BackendFactory
) -> None:
    backend, reference = peer("p"), peer("reference")
    for p in HISTORY[:2]:
        backend.commit_epoch(p)
        reference.commit_epoch(p)
    before = backend.head()
    # Epoch 2 creates a table and writes rows, then fails on its rejections (two with
    # one primary key), after everything else was written.
    twice = RejectionRow(seq=30, index=0, op_id="r", reason="bad_value", detail="d", payload="{}")
    bad = plan(2, changes=create(ITEMS), rejections=(twice, twice),
               writes=(TableWrites(USERS, upserts=[user("a", "Zed", 9)], deletes=[(("c",), {"v": "x"})]),))  # fmt: skip
    with pytest.raises(BackendError):
        backend.commit_epoch(bad)
    # Nothing of it is visible: not the rows, not the table, not the progress row.
    assert backend.head() == before
    assert backend.last_epoch() == reference.last_epoch()
    assert backend.read_rows(USERS, [("a",), ("c",)]) == reference.read_rows(USERS, [("a",), ("c",)])
    assert "items" not in backends.table_names(backend)
    assert backend.tables() == {"users": USERS}
    # The corrected epoch then commits exactly as on a peer that never failed.
    assert backend.commit_epoch(HISTORY[2]) == reference.commit_epoch(HISTORY[2])


def test_epoch_commits_are_found_by_their_messages_and_not_tagged(
    peer: Callable[[str], Backend], opened: Callable[[str], Backend], backends: BackendFactory
) -> None:
    backend = peer("p")
    hashes = [backend.commit_epoch(p) for p in HISTORY]
    # No tag per epoch on either backend (decisions #28, #41), so there is none a crash could lose.
    tags = [name for (name,) in backends.query(backend, "SELECT tag_name FROM dolt_tags")]
    assert not [t for t in tags if t.startswith("epoch-")]
    backend.close()
    assert opened("p").epoch_hashes() == list(enumerate(hashes))


def test_keys_the_backend_cannot_store_are_refused_before_anything_is_written(peer: Callable[[str], Backend]) -> None:
    backend = peer("p")
    backend.commit_epoch(HISTORY[0])
    # Integer keys are signed 64-bit everywhere.
    with pytest.raises(OpRejected, match="outside the signed 64-bit range") as caught:
        backend.check_key(ITEMS, ("shop", 2**63))
    assert caught.value.reason == "bad_key"
    backend.check_key(ITEMS, ("shop", -(2**63)))
    # Text keys up to the backend's limit (none for doltlite).
    limit = backend.text_key_limit(USERS)
    backend.check_key(USERS, ("x" * (limit or 100_000),))
    if limit is not None:
        with pytest.raises(OpRejected, match=f"stores at most {limit}"):
            backend.check_key(USERS, ("x" * (limit + 1),))
    # A plan holding such a key fails whole, before writing.
    before = backend.head()
    overflow = plan(1, changes=create(ITEMS), writes=(TableWrites(ITEMS, upserts=[(("s", 2**64), {}, {})]),))
    with pytest.raises(BackendError, match="nothing was written"):
        backend.commit_epoch(overflow)
    assert backend.head() == before
    assert backend.tables() == {"users": USERS}


def every_write_kind() -> list[EpochPlan]:
    """Epochs that use every part of a plan: tables created and widened, every column
    type, composite keys, deletes, cleared tombstones, op ids and their pruning,
    rejections and config rows."""
    items = [
        (("s", i), {"price": f"{i}.25", "weight": i / 3, "note": f"n{i}", "active": i % 2, "attrs": '{"k":1}',
                    "blob": bytes([i]), "seen": "2026-01-01T00:00:00Z"}, {"m": i})
        for i in range(12)
    ]  # fmt: skip
    reject = RejectionRow(seq=41, index=0, op_id="bad", reason="bad_value", detail="d", payload='{"x":1}')
    with_email = TableChange(USERS, USERS_WITH_EMAIL)
    return [
        *HISTORY,
        plan(3, changes=(*create(ITEMS), with_email), op_ids=(("op-i", "d-i"),), config_rows=((35, '{"epoch_ms":1000}'),),
             writes=(TableWrites(ITEMS, upserts=items, deletes=[(("s", 99), {"m": "gone"})]),
                     TableWrites(USERS_WITH_EMAIL, upserts=[(("e",), {"name": "Eve", "score": 4, "email": "e@x"}, {"v": 1})]))),
        plan(4, rejections=(reject,), op_ids=(("op-j", "d-j"),), prune_before=2,
             writes=(TableWrites(ITEMS, upserts=[(("s", 99), items[0][1], {"m": "back"})], cleared_tombstones=[("s", 99)],
                                 deletes=[(("s", 3), {"m": "x"}), (("s", 4), {"m": "y"})]),)),
    ]  # fmt: skip


# Dolt's content hash of every table after every_write_kind(), per backend kind. They
# pin the stored format: a change of table layout, column types or bookkeeping rows moves
# them. (Commit hashes cannot be pinned across runs: each run makes its own genesis, and
# a database's peers share theirs.) A deliberate change is a new format version
# (docs/decisions.md); an accidental one is a bug.
FORMAT_TABLE_HASHES: dict[str, dict[str, str]] = {
    "doltlite": {
        "oplog_epochs": "f613b8676b6d96c5747d3db82c6c0bb59f6d1f39",
        "oplog_rejections": "ff0da5f77cd31652d4e9598f302364f9a0a114fb",
        "oplog_op_ids": "f52e62d1e2963a25f49ba8afe26cd75e83226eb8",
        "oplog_tables": "ba498efe0b862df888040eb42c6d19e0c90b4067",
        "oplog_config": "e3cbe6657c3f5f70d4e79b714052672caea79e18",
        "oplog_tombstones": "41d18ddd0923c04bd6aeb3aca6bccf15b89af0d0",
        "users": "a7998761f1f5f26af65e6fac361ae0698c61af7b",
        "items": "04330bd3b341e93f6f9fd02d0ca2fdd71815502f",
    },
    "dolt-server": {
        "oplog_epochs": "vdkoo9511ai7r6vluqkorjgk86c97q9h",
        "oplog_rejections": "ftp5dgt8rfm73av38cmlbm6pp21f5en1",
        "oplog_op_ids": "1gbgtlg3164969c3ds4usqllguibdje2",
        "oplog_tables": "qn74b5hq0chu0ogt4ktsi5cqk6d4gl3t",
        "oplog_config": "u7jb2rifjirvvim98f2cdjph1l3nmkao",
        "oplog_tombstones": "casggkn0tvsk9279mrt6enrn5er87g9p",
        "users": "vplsjviropq18gsdq6a34c3ali3517u1",
        "items": "setfihmq933qa8oep3d0onk4rigut35m",
    },
}
INTERNAL_TABLES = ("oplog_epochs", "oplog_rejections", "oplog_op_ids", "oplog_tables", "oplog_config", "oplog_tombstones")


def test_the_stored_format_is_pinned_by_the_table_hashes_of_every_write_kind(
    peer: Callable[[str], Backend], backends: BackendFactory
) -> None:
    backend = peer("p")
    for p in every_write_kind():
        backend.commit_epoch(p)
    hashes = {t: backend.table_hash(t) for t in (*INTERNAL_TABLES, "users", "items")}
    assert hashes == FORMAT_TABLE_HASHES[backends.kind]


def checkpoint_of(epoch: int) -> CommitMeta:
    return checkpoint_meta(epoch=epoch, end_ms=END_MS + 1000 * (epoch + 1), author_name="oplog",
                           author_email="oplog@example.invalid")  # fmt: skip


def test_a_checkpoint_re_roots_the_history_identically_and_keeps_every_row(
    peer: Callable[[str], Backend], genesis: bytes, backends: BackendFactory
) -> None:
    plans = every_write_kind()
    early, late, plain = peer("early"), peer("late"), peer("plain")
    for p in plans[:4]:
        early.commit_epoch(p)
        late.commit_epoch(p)
        plain.commit_epoch(p)
    keys: list[Key] = [("s", i) for i in range(12)] + [("s", 99)]
    before = early.read_rows(ITEMS, keys)
    # Two peers re-root at the same point: the same checkpoint commit, whatever their clocks.
    first = early.checkpoint(genesis, checkpoint_of(3), before_epoch=4)
    time.sleep(APART_S)
    assert late.checkpoint(genesis, checkpoint_of(3), before_epoch=4) == first
    # The history is now the genesis and the checkpoint; the state and the progress stay.
    assert early.head() == first and early.epoch_hashes() == []
    log = backends.query(early, "SELECT message FROM dolt_log")
    firsts = [m.split("\n", 1)[0] for (m,) in log]
    assert firsts[:2] == ["checkpoint 3", "genesis"] and len(firsts) == 3  # and the engine's own first commit
    assert early.read_rows(ITEMS, keys) == before
    assert early.last_epoch() == plain.last_epoch() and early.tables() == plain.tables()
    assert early.known_op_ids(["op-i", "op-a2"]) == plain.known_op_ids(["op-i", "op-a2"])
    # Epochs on top agree between the re-rooted peers, and write what a peer without the checkpoint writes.
    assert early.commit_epoch(plans[4]) == late.commit_epoch(plans[4])
    plain.commit_epoch(plans[4])
    assert early.read_rows(ITEMS, keys) == plain.read_rows(ITEMS, keys)
    assert [k for k, _ in early.epoch_hashes()] == [4]


def test_a_checkpoint_that_fails_leaves_the_history_as_it_was(
    peer: Callable[[str], Backend], genesis: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = peer("p")
    hashes = [backend.commit_epoch(p) for p in HISTORY]

    class Died(Exception):
        pass

    def die(*_: object) -> str:
        raise Died

    monkeypatch.setattr(backend.dialect, "create_table_sql", die)
    with pytest.raises(Died):
        backend.checkpoint(genesis, checkpoint_of(2), before_epoch=3)
    monkeypatch.undo()
    assert backend.head() == hashes[-1] and backend.epoch_hashes() == list(enumerate(hashes))
    assert backend.checkpoint(genesis, checkpoint_of(2), before_epoch=3) != hashes[-1]
