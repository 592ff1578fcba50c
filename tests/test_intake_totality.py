"""Totality of intake: every message that once stopped every peer is now taken or recorded.

Each test replays one message found to stop every peer for good (issue: "nothing anyone
sends stops an epoch") through the pure path a peer runs — assign, plan — and then
commits the plan into a real doltlite database, which is what used to fail. The epoch
must commit, the message must be recorded as rejected with the stated reason, and the
good op beside it must be applied.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (before anything imports sqlite3)
import pytest

from epoch.assign import Assigner, SealedEpoch, StreamMessage
from epoch.config import MAX_EPOCH_MS, seal_ceiling
from epoch.sealer import Sealer
from materializer.backends.doltlite import DoltliteBackend
from materializer.plan import EpochPlan, plan_epoch
from materializer.strategies import lww
from materializer.strategies.crdt import MAX_PENDING_UPDATES, CrdtDocument
from materializer.strategy import ABSENT
from oplog.crdt_helper import DocumentWriter
from oplog.op import MAX_JSON_DEPTH
from oplog.schema import MAX_COLUMNS
from tests.support import config, wall

SCHEMA = {
    "tables": [
        {
            "name": "users",
            "columns": [
                {"name": "id", "type": "text", "nullable": False},
                {"name": "n", "type": "integer"},
                {"name": "doc", "type": "json"},
                {"name": "price", "type": "decimal"},
                {"name": "seen", "type": "timestamp"},
            ],
            "primary_key": ["id"],
        },
        {
            "name": "pairs",
            "columns": [
                {"name": "a", "type": "integer", "nullable": False},
                {"name": "b", "type": "integer", "nullable": False},
            ],
            "primary_key": ["a", "b"],
        },
    ]
}


class Peer:
    """One peer's pure path over a real doltlite file: feed messages, commit what seals."""

    def __init__(self, directory: Path) -> None:
        self.backend = DoltliteBackend(directory / "peer.db")
        self.backend.open()
        self.backend.create_genesis()
        self.assigner = Assigner()
        self.seq = 0
        self.plans: list[EpochPlan] = []
        self.feed("config", config().model_dump(mode="json"))
        self.feed("schema", SCHEMA)
        self.feed("seal", {"epoch": 0})

    def feed(self, kind: str, body: Any, *, table: str | None = None) -> None:
        self.seq += 1
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        sealed = self.assigner.feed(StreamMessage(self.seq, kind, payload, table))
        if sealed is not None:
            self.commit(sealed)

    def commit(self, sealed: SealedEpoch) -> None:
        plan = plan_epoch(sealed, self.backend.tables(), self.backend)
        self.backend.commit_epoch(plan)
        self.plans.append(plan)

    def ops(self, *ops: dict[str, Any], subject: str = "users") -> None:
        self.feed("ops", {"v": 1, "ops": list(ops)}, table=subject)

    def rejections(self) -> list[tuple[str | None, str]]:
        return [(r.op_id, r.reason) for r in self.plans[-1].rejections]

    def rows(self, table: str = "users") -> list[tuple[Any, ...]]:
        return self.backend.conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def peer(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = Peer(tmp_path)
    try:
        yield p
    finally:
        p.close()


def op(op_id: str, key: list[Any], data: dict[str, Any] | None = None, table: str = "users") -> dict[str, Any]:
    return {"id": op_id, "hlc": [wall(1), 0, "n"], "table": table, "key": key, "kind": "upsert", "data": data or {}}


GOOD = op("good", ["g"], {"n": 1})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


def test_data_nested_hundreds_deep_is_rejected_and_its_neighbour_applied(peer: Peer) -> None:
    # 300 levels: past orjson's encoder (254), which once crashed digesting the op.
    peer.ops(op("deep", ["d"], {"doc": nested(300)}), op("limit", ["l"], {"doc": nested(MAX_JSON_DEPTH - 1)}), GOOD)
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [("deep", "invalid_op")]
    assert [row[0] for row in peer.rows()] == ["g", "l"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ([2**63, 1], "bad_key"),  # past BIGINT
        ([-(2**63) - 1, 1], "invalid_op"),  # below i64, orjson reads it as a float: not a key
        ([1], "bad_key"),  # too few parts for (a, b)
        ([1, 2, 3], "bad_key"),  # too many
        ([1, "x"], "bad_key"),  # a text part for an integer column
        ([2**70, 1], "invalid_op"),  # beyond 64 bits, orjson reads it as a float: not a key at all
    ],
)
def test_a_key_the_table_cannot_hold_is_rejected(peer: Peer, key: list[Any], reason: str) -> None:
    peer.ops(op("bad", key, table="pairs"), op("ok", [2**63 - 1, -(2**63)], table="pairs"), subject="pairs")
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [("bad", reason)]
    assert peer.rows("pairs") == [(2**63 - 1, -(2**63), peer.rows("pairs")[0][2])]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Users", "only in case"),
        ("sqlite_stat9", "reserved prefix 'sqlite_'"),
        ("Dolt_things", "reserved prefix 'dolt_'"),
        ("oplog_x", "reserved prefix 'oplog_'"),
    ],
)
def test_a_table_name_an_engine_would_refuse_is_a_rejected_schema(peer: Peer, name: str, why: str) -> None:
    table = {"name": name, "columns": [{"name": "id", "type": "text", "nullable": False}], "primary_key": ["id"]}
    peer.feed("schema", {"tables": [table]})
    peer.ops(GOOD)
    peer.feed("seal", {"epoch": 1})
    [rejection] = peer.plans[-1].rejections
    assert rejection.reason == "schema" and why in rejection.detail
    assert peer.rows() and name not in peer.backend.tables()


def test_more_columns_than_both_engines_take_is_a_rejected_schema(peer: Peer) -> None:
    columns = [{"name": "id", "type": "text", "nullable": False}]
    columns += [{"name": f"c{i}", "type": "timestamp"} for i in range(MAX_COLUMNS)]
    peer.feed("schema", {"tables": [{"name": "wide", "columns": columns, "primary_key": ["id"]}]})
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [(None, "schema")]
    # At the limit it is created.
    peer.feed("schema", {"tables": [{"name": "wide", "columns": columns[:MAX_COLUMNS], "primary_key": ["id"]}]})
    peer.feed("seal", {"epoch": 2})
    assert peer.rejections() == [] and "wide" in peer.backend.tables()


@pytest.mark.parametrize(
    ("epoch", "recorded"),
    [(10**15, [(None, "bad_seal")]), (2**62, [(None, "bad_seal")]), (1_000_000, [(None, "bad_seal")]),
     (-(10**15), [])],  # at or below the last sealed epoch: a stale copy, ignored
)  # fmt: skip
def test_a_seal_for_an_absurd_epoch_is_rejected_and_sealing_goes_on(
    peer: Peer, epoch: int, recorded: list[tuple[str | None, str]]
) -> None:
    # 10**15 once overflowed the commit date; a million ahead closed every epoch for
    # ten days of clock and left the sealers nothing to propose.
    peer.feed("seal", {"epoch": epoch})
    peer.ops(GOOD)
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == recorded
    assert peer.plans[-1].epoch.epoch == 1 and peer.rows()[0][0] == "g"


def test_the_sealer_never_proposes_past_the_ceiling_and_catches_up_in_steps() -> None:
    cfg = config(max_future_epochs=600)
    assigner = Assigner()
    assigner.feed(StreamMessage(1, "config", json.dumps(cfg.model_dump(mode="json")).encode()))
    assert assigner.timeline is not None
    proposed: list[int] = []

    async def publish(epoch: int) -> None:
        proposed.append(epoch)
        assigner.feed(StreamMessage(len(proposed) + 1, "seal", json.dumps({"epoch": epoch}).encode()))

    def state() -> tuple[Any, int, int | None]:
        last = assigner.last_sealed
        ceiling = seal_ceiling(cfg, assigner.timeline, None if last < -(2**60) else last)  # type: ignore[arg-type]
        return assigner.timeline, last, ceiling

    # Peers start 2,000 epochs after the origin: every seal they propose is taken.
    sealer = Sealer(state, publish, now_ms=lambda: wall(2000))
    for _ in range(5):
        asyncio.run(sealer.tick())
    assert proposed == [600, 1200, 1800, 1999] and assigner.last_sealed == 1999


def test_a_config_change_out_of_range_is_rejected(peer: Peer) -> None:
    peer.feed("config", {"type": "change", "effective_epoch": 700, "epoch_ms": 10**15, "grace_ms": 0})
    peer.feed("config", {"type": "change", "effective_epoch": 700, "epoch_ms": MAX_EPOCH_MS + 1, "grace_ms": 0})
    peer.feed("config", {"type": "change", "effective_epoch": 10**12, "epoch_ms": 1000, "grace_ms": 0})
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [(None, "bad_config")] * 3


def test_an_op_whose_table_differs_from_its_subject_is_rejected(peer: Peer) -> None:
    peer.ops(GOOD, op("sneaky", ["s"], {"n": 2}), subject="orders")
    peer.ops(op("fine", ["f"], {"n": 3}))
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [("good", "wrong_subject"), ("sneaky", "wrong_subject")]
    assert [row[0] for row in peer.rows()] == ["f"]


@pytest.mark.parametrize(
    ("value", "column", "ok"),
    [
        ("1e1000000", "price", False),  # 10 bytes that would render as a megabyte
        ("123456789012345678901234567890123456.123456789012345678901234567891", "price", False),  # 36 + 30
        ("12345678901234567890123456789012345.123456789012345678901234567891", "price", True),  # 35 + 30
        ("1.1234567890123456789012345678901", "price", False),  # 31 after the point
        (10**18, "seen", False),  # past the year 9999
        (-62_135_596_800_001, "seen", False),  # before the year 1
        (253_402_300_799_999, "seen", True),
    ],
)
def test_values_beyond_what_is_stored_exactly_are_rejected(peer: Peer, value: Any, column: str, ok: bool) -> None:
    peer.ops(op("v", ["v"], {column: value}), GOOD)
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == ([] if ok else [("v", "bad_value")])


def test_a_decimal_longer_than_28_digits_is_kept_exactly(peer: Peer) -> None:
    # Decimal.normalize() rounded to 28 digits, silently.
    exact = "123456789012345678901234567890123456.1"
    peer.ops(op("v", ["v"], {"price": exact}))
    peer.feed("seal", {"epoch": 1})
    assert peer.rows()[0][3] == exact


def test_a_batch_of_too_many_ops_is_one_rejection(peer: Peer) -> None:
    peer.ops(*[op(f"o{i}", [f"k{i}"]) for i in range(10_001)])
    peer.ops(GOOD)
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [(None, "oversize")]
    assert [row[0] for row in peer.rows()] == ["g"]


def test_an_unexpected_error_for_one_op_rejects_that_op_by_class_and_the_epoch_commits(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in a strategy, met by one op only: the op is rejected with the error's class
    # (never its message, which could differ between peers), the others apply.
    real_prepare = lww.LastWriterWins.prepare

    def buggy(self: Any, table: Any, op_: Any) -> Any:
        if op_.id == "boom":
            raise KeyError("an address like 0x7f3a that differs between peers")
        return real_prepare(self, table, op_)

    monkeypatch.setattr(lww.LastWriterWins, "prepare", buggy)
    peer.ops(op("boom", ["b"], {"n": 1}), GOOD)
    peer.feed("seal", {"epoch": 1})
    [rejection] = peer.plans[-1].rejections
    assert (rejection.op_id, rejection.reason, rejection.detail) == (
        "boom",
        "unexpected_error",
        "KeyError while planning this op",
    )
    assert [row[0] for row in peer.rows()] == ["g"]


def test_crdt_updates_that_never_integrate_cannot_pile_up() -> None:
    from tests.test_strategies import DOCS, crdt_op

    writer = DocumentWriter(client_id=7)
    updates = [writer.set("n", i) for i in range(MAX_PENDING_UPDATES + 3)]
    state = ABSENT
    # The first update never arrives: every later one waits for it.
    for i, update in enumerate(updates[1 : MAX_PENDING_UPDATES + 1], 1):
        state = CrdtDocument().apply(DOCS, state, crdt_op(str(i), i, update))
    assert len(state.meta["pending"]) == MAX_PENDING_UPDATES
    with pytest.raises(Exception) as refused:
        CrdtDocument().apply(DOCS, state, crdt_op("more", 99, updates[MAX_PENDING_UPDATES + 1]))
    assert getattr(refused.value, "reason", None) == "crdt_backlog"
    # The missing first update still integrates everything waiting.
    state = CrdtDocument().apply(DOCS, state, crdt_op("first", 0, updates[0]))
    assert "pending" not in state.meta


def test_a_hostile_payload_is_recorded_even_when_canonical_json_cannot_render_it(peer: Peer) -> None:
    # A schema message nested past orjson's encoder: refused, recorded, the epoch commits.
    peer.feed("schema", {"tables": nested(500)})
    peer.ops(GOOD)
    peer.feed("seal", {"epoch": 1})
    assert peer.rejections() == [(None, "schema")]
    assert peer.plans[-1].rejections[0].payload == "<dict that canonical JSON cannot render>"
