"""Reading stored state ahead of the seal (materializer/commit/readahead.py), and the doltlite
reads it relies on: answers exactly the backend's, never anything a commit replaced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from epoch.assign import Assigner, SealedEpoch, StreamMessage
from epoch.config import DatabaseConfig
from materializer.backends.doltlite import DoltliteBackend
from materializer.commit.readahead import ReadAhead
from materializer.plan import plan_epoch
from materializer.strategy import RowState
from oplog.codec import canonical_bytes, decode_record
from oplog.op import OpRecord
from oplog.schema import TableSchema

ORIGIN = 1_767_225_600_000
CONFIG = DatabaseConfig(db="t", origin_ms=ORIGIN, epoch_ms=1_000, grace_ms=0)
USERS = {
    "name": "users",
    "columns": [
        {"name": "id", "type": "text", "nullable": False},
        {"name": "name", "type": "text"},
        {"name": "score", "type": "integer"},
    ],
    "primary_key": ["id"],
}


def wire(op_id: str, key: str, epoch: int, kind: str = "upsert", **data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": op_id, "hlc": [ORIGIN + epoch * 1_000 + 1, 0, "n"], "table": "users", "key": [key],
                           "kind": kind}  # fmt: skip
    if kind != "delete":
        raw["data"] = data
    return raw


def record(raw: dict[str, Any]) -> OpRecord:
    return decode_record(raw, canonical_bytes(raw))


class Peer:
    """A doltlite database fed a stream in-process, as a materializer does."""

    def __init__(self, path: Path) -> None:
        self.backend = DoltliteBackend(path)
        self.backend.open()
        self.backend.create_genesis()
        self.assigner = Assigner()
        self.seq = 0

    def feed(self, kind: str, body: Any) -> SealedEpoch | None:
        self.seq += 1
        return self.assigner.feed(StreamMessage(self.seq, kind, orjson.dumps(body)))

    def epoch(self, k: int, *ops: dict[str, Any], schema: Any = None) -> None:
        if schema is not None:
            self.feed("schema", schema)
        if ops:
            self.feed("ops", {"v": 1, "ops": list(ops)})
        sealed = self.feed("seal", {"epoch": k})
        assert sealed is not None
        self.backend.commit_epoch(plan_epoch(sealed, self.backend.tables(), self.backend))


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "p.db")
    p.feed("config", CONFIG.model_dump(mode="json"))
    # Epoch 0 makes users a, b, c; epoch 1 deletes b (a tombstone) and rewrites c.
    p.epoch(0, wire("a0", "a", 0, name="Ann", score=1), wire("b0", "b", 0, name="Bo", score=2),
            wire("c0", "c", 0, name="Cy", score=3), schema={"tables": [USERS]})  # fmt: skip
    p.epoch(1, wire("b1", "b", 1, kind="delete"), wire("c1", "c", 1, name="Cyd", score=4))
    yield p
    p.backend.close()


def test_the_reader_answers_as_the_backend_does_from_what_was_read_and_for_the_rest(peer: Peer) -> None:
    backend = peer.backend
    tables = backend.tables()
    ahead = ReadAhead(backend)
    # Ops of the open epoch touch a stored row, a tombstone and a new row.
    for raw in (wire("a2", "a", 2, name="A"), wire("b2", "b", 2, name="B"), wire("z2", "z", 2, name="Z")):
        ahead.note(record(raw), tables)
    assert ahead.pending
    ahead.fill()
    assert not ahead.pending

    reader = ahead.reader()
    users = tables["users"]
    # Read ahead (a, b, z) or not (c, q): the same answers as the backend's.
    keys = [("a",), ("b",), ("c",), ("q",), ("z",)]
    assert reader.read_rows(users, keys) == backend.read_rows(users, keys)
    assert reader.read_rows(users, keys)[("b",)].values is None  # the tombstone
    ids = ["a0", "a2", "b1", "c1", "nope", "z2"]
    assert (
        reader.known_op_ids(ids)
        == backend.known_op_ids(ids)
        == {i: d for i, d in backend.known_op_ids(ids).items() if i in ("a0", "b1", "c1")}
    )
    # What the plan asks of a reader beyond reads is the backend's.
    reader.check_key(users, ("a",))
    assert reader.text_key_limit(users) is None


def test_a_plan_through_read_ahead_is_the_plan_through_the_backend(peer: Peer) -> None:
    backend = peer.backend
    ahead = ReadAhead(backend)
    peer.assigner.prepare = lambda op: ahead.note(op, backend.tables())
    peer.feed("ops", {"v": 1, "ops": [wire("a2", "a", 2, name="A"), wire("b2", "b", 2, name="B"),
                                      wire("c0", "c", 2, name="Cy", score=3)]})  # fmt: skip
    ahead.fill()
    sealed = peer.feed("seal", {"epoch": 2})
    assert sealed is not None

    # c0 was applied in epoch 0 with other content: a conflict either way.
    through_cache = plan_epoch(sealed, backend.tables(), ahead.reader())
    assert through_cache == plan_epoch(sealed, backend.tables(), backend)
    assert [r.reason for r in through_cache.rejections] == ["duplicate_id_conflict"]


def test_nothing_read_before_a_commit_is_used_after_it(peer: Peer) -> None:
    backend = peer.backend
    users = backend.tables()["users"]
    ahead = ReadAhead(backend)
    ahead.note(record(wire("a2", "a", 2, name="A")), backend.tables())
    ahead.fill()
    # Epoch 2 is committed (a is rewritten), and the materializer clears read-ahead.
    peer.epoch(2, wire("a9", "a", 2, name="Al", score=9))
    ahead.clear()

    assert ahead.reader().read_rows(users, [("a",)])[("a",)].values == {"name": "Al", "score": 9}
    assert "a9" in ahead.reader().known_op_ids(["a9"])


def test_rows_read_under_an_older_definition_of_the_table_are_read_again(peer: Peer) -> None:
    backend = peer.backend
    ahead = ReadAhead(backend)
    ahead.note(record(wire("a2", "a", 2, name="A")), backend.tables())
    ahead.fill()
    # A definition other than the one the rows were read under (here without a column:
    # a plan only ever reads with the stored definition, so one the database can serve)
    # does not answer from the cache: the rows are read again, in its shape.
    narrower = TableSchema.model_validate({**USERS, "columns": USERS["columns"][:2]})

    assert ahead.reader().read_rows(narrower, [("a",)]) == backend.read_rows(narrower, [("a",)])
    assert set(ahead.reader().read_rows(narrower, [("a",)])[("a",)].values) == {"name"}


def test_doltlite_reads_every_text_and_integer_type_exactly(tmp_path: Path) -> None:
    # Rows are read as one JSON value per query when every column is stored as text or
    # integer (float and bytes columns read row by row): values must come back exactly.
    p = Peer(tmp_path / "types.db")
    p.feed("config", CONFIG.model_dump(mode="json"))
    kinds = {
        "name": "kinds",
        "columns": [
            {"name": "shop", "type": "text", "nullable": False},
            {"name": "sku", "type": "integer", "nullable": False},
            {"name": "t", "type": "text"},
            {"name": "i", "type": "integer"},
            {"name": "d", "type": "decimal"},
            {"name": "j", "type": "json"},
            {"name": "b", "type": "boolean"},
            {"name": "ts", "type": "timestamp"},
        ],
        "primary_key": ["shop", "sku"],
    }
    texts = ["", "é ü ß", 'quote " and \\ back', "line\nbreak\ttab", "😀 \u2028", "0", "null"]
    ops = []
    for n, text in enumerate(texts):
        data = {"t": text, "i": [2**63 - 1, -(2**63) + 1, 0, None][n % 4], "d": ["1.50", "-0.000001", None][n % 3],
                "j": [{"b": [1, {"a": None}]}, "s", None][n % 3], "b": [True, False, None][n % 3],
                "ts": ["2026-01-01T00:00:00.123Z", None][n % 2]}  # fmt: skip
        ops.append({"id": f"o{n}", "hlc": [ORIGIN + 1, n, "n"], "table": "kinds", "key": [text, -n * 2**40],
                    "kind": "upsert", "data": data})  # fmt: skip
    p.epoch(0, *ops, schema={"tables": [kinds]})
    table = p.backend.tables()["kinds"]
    keys = [(text, -n * 2**40) for n, text in enumerate(texts)] + [("absent", 1)]

    read = p.backend.read_rows(table, keys)

    columns = [c.name for c in table.value_columns]
    direct = {
        (row[0], row[1]): RowState(dict(zip(columns, row[2:-1], strict=True)), orjson.loads(row[-1]))
        for row in p.backend.conn.execute(f"SELECT shop, sku, {', '.join(columns)}, _oplog_meta FROM kinds")
    }
    assert read == direct
    assert len(read) == len(texts)
    p.backend.close()
