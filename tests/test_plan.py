"""Planning one epoch commit: a pure function of the sealed epoch and stored state."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epoch.assign import Accepted, Control, Rejected, SealedEpoch
from epoch.config import DatabaseConfig
from materializer.metadata import CommitMeta, ops_digest
from materializer.plan import EpochPlan, EpochRow, Key, RejectionRow, TableChange, TableWrites, plan_epoch
from materializer.prepare import prepare_op
from materializer.strategy import RowState
from oplog.codec import canonical_json, digest, record_of
from oplog.hlc import HLC
from oplog.op import Op, OpKind
from oplog.schema import Column, ColumnType, TableSchema

ORIGIN = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CONFIG = DatabaseConfig(db="t", origin_ms=ORIGIN, epoch_ms=1_000, author_name="Ops Bot", author_email="ops@example.com")
ITEMS = TableSchema(
    name="items",
    columns=(
        Column(name="id", type=ColumnType.TEXT, nullable=False),
        Column(name="name", type=ColumnType.TEXT),
        Column(name="qty", type=ColumnType.INTEGER),
        Column(name="price", type=ColumnType.DECIMAL),
    ),
    primary_key=("id",),
)
STOCK = TableSchema(
    name="stock",
    columns=(
        Column(name="shop", type=ColumnType.TEXT, nullable=False),
        Column(name="sku", type=ColumnType.INTEGER, nullable=False),
        Column(name="qty", type=ColumnType.INTEGER),
    ),
    primary_key=("shop", "sku"),
)
TABLES = {"items": ITEMS, "stock": STOCK}


class FakeReader:
    """Stored rows per table and key, and op ids applied within the dedup horizon."""

    def __init__(self, rows: dict[str, dict[Key, RowState]] | None = None, known: dict[str, str] | None = None) -> None:
        self.rows = rows or {}
        self.known = known or {}
        self.reads: list[tuple[str, list[Key]]] = []

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        self.reads.append((table.name, keys))
        stored = self.rows.get(table.name, {})
        return {key: stored[key] for key in keys if key in stored}

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        return {op_id: self.known[op_id] for op_id in ids if op_id in self.known}

    def check_key(self, table: TableSchema, key: Key) -> None:
        return None  # no storage limits beyond the schema's


def op(
    op_id: str,
    key: tuple[Any, ...] = ("a",),
    *,
    at: int = 3_000,
    logical: int = 0,
    node: str = "p1",
    kind: OpKind = OpKind.UPSERT,
    table: str = "items",
    data: dict[str, Any] | None = None,
) -> Op:
    """An op ``at`` ms past the origin (epoch 3 by default)."""
    if data is None and kind is not OpKind.DELETE:
        data = {"name": op_id}
    return Op(id=op_id, hlc=HLC(ORIGIN + at, logical, node), table=table, key=key, kind=kind, data=data)


def sealed(*ops: Accepted, controls: tuple[Control, ...] = (), rejected: tuple[Rejected, ...] = ()) -> SealedEpoch:
    return SealedEpoch(
        epoch=3,
        first_epoch=3,
        seal_seq=50,
        resume_seq=51,
        end_ms=ORIGIN + 4_000,
        config=CONFIG,
        ops=ops,
        rejected=rejected,
        controls=controls,
    )


def row(op_: Op, values: dict[str, Any] | None) -> RowState:
    """The lww state ``op_`` leaves behind."""
    return RowState(values, {"v": [op_.hlc.wall_ms, op_.hlc.logical, op_.hlc.node, op_.id]})


def refused(acc: Accepted, reason: str, detail: str) -> RejectionRow:
    return RejectionRow(acc.seq, acc.index, acc.op.id, reason, detail, canonical_json(acc.op.to_wire()))


def test_an_epoch_becomes_one_planned_commit_with_the_newest_write_per_row() -> None:
    older = Accepted(10, 0, op("a1", ("a",), at=3_100, data={"name": "first", "qty": 1}), 3)
    newer = Accepted(11, 0, op("a2", ("a",), at=3_200, data={"name": "second", "price": "1.50"}), 3)
    gone = Accepted(11, 1, op("b1", ("b",), at=3_050, kind=OpKind.DELETE), 3)
    stored_b = row(op("b0", ("b",), at=1_000), {"name": "old", "qty": 5, "price": None})
    reader = FakeReader(rows={"items": {("b",): stored_b}})

    # Stream order puts a2 before a1, but HLC order decides: a2 is newer and wins.
    plan = plan_epoch(sealed(newer, gone, older), TABLES, reader)

    applied = ["b1", "a1", "a2"]  # HLC order
    assert plan == EpochPlan(
        epoch=EpochRow(
            epoch=3,
            first_epoch=3,
            seal_seq=50,
            resume_seq=51,
            end_ms=ORIGIN + 4_000,
            applied=3,
            rejected=0,
            duplicates=0,
            late=0,
            digest=ops_digest(applied),
        ),
        table_changes=(),
        writes=(
            TableWrites(
                ITEMS,
                # The full row of the winner: missing columns are NULL, decimals canonical.
                upserts=[(("a",), {"name": "second", "qty": None, "price": "1.5"}, row(newer.op, None).meta)],
                deletes=[(("b",), row(gone.op, None).meta)],
            ),
        ),
        op_ids=tuple(sorted((a.op.id, digest(a.op.to_wire())) for a in (older, newer, gone))),
        prune_op_ids_before=3 - CONFIG.dedup_epochs,
        rejections=(),
        config_rows=(),
        commit=CommitMeta(
            "Ops Bot",
            "ops@example.com",
            "2026-01-01T00:00:04.000Z",
            f"epoch 3\n\nepochs: 3\nops: 3\nrejected: 0\nduplicates: 0\ndigest: {ops_digest(applied)}\n",
        ),
    )
    # Stored state was read once, in bulk, for the rows touched.
    assert reader.reads == [("items", [("a",), ("b",)])]


@pytest.mark.parametrize(
    ("bad", "reason", "detail"),
    [
        (op("x", table="ghosts"), "unknown_table", "no table 'ghosts' is declared; publish its schema first"),
        (op("x", ("a", "b")), "bad_key", "table 'items' has primary key ['id']; got 2 key part(s)"),
        (op("x", (7,)), "bad_key", "key column 'id' is text; got 7"),
        (op("x", ("s1", "7"), table="stock", data={}), "bad_key", "key column 'sku' is integer; got '7'"),
        (
            op("x", data={"qty": "three"}),
            "bad_value",
            "column 'qty' (integer): cannot take 'three': expected an integer",
        ),
        (op("x", data={"colour": "red"}), "unknown_column", "table 'items' has no column 'colour'"),
        (
            op("x", kind=OpKind.PATCH, data={"qty": 1}),
            "kind_not_allowed",
            "table uses strategy 'lww', which takes delete, upsert; got 'patch'",
        ),
    ],
)
def test_an_op_that_does_not_fit_its_table_is_rejected_and_the_epoch_goes_on(bad: Op, reason: str, detail: str) -> None:
    good = Accepted(10, 0, op("ok", ("z",), data={"qty": 2}), 3)
    wrong = Accepted(10, 1, bad, 3)

    plan = plan_epoch(sealed(good, wrong), TABLES, FakeReader())

    assert plan.rejections == (refused(wrong, reason, detail),)
    assert plan.writes == (
        TableWrites(ITEMS, upserts=[(("z",), {"name": None, "qty": 2, "price": None}, row(good.op, None).meta)]),
    )
    assert (plan.epoch.applied, plan.epoch.rejected, plan.epoch.digest) == (1, 1, ops_digest(["ok"]))
    # The rejected op's id is remembered too, so a retry of it is a duplicate.
    assert [op_id for op_id, _ in plan.op_ids] == ["ok", "x"]


def test_an_identical_copy_of_an_op_is_dropped_and_counted() -> None:
    first = Accepted(10, 0, op("a1", data={"qty": 1}), 3)
    retry = Accepted(12, 0, first.op, 3)

    plan = plan_epoch(sealed(retry, first), TABLES, FakeReader())

    assert (plan.epoch.applied, plan.epoch.duplicates, plan.rejections) == (1, 1, ())
    assert plan.writes[0].upserts == [(("a",), {"name": None, "qty": 1, "price": None}, row(first.op, None).meta)]
    assert "duplicates: 1\n" in plan.commit.message


def test_a_different_op_reusing_an_id_is_a_conflict_and_the_first_copy_wins() -> None:
    first = Accepted(10, 0, op("a1", data={"qty": 1}), 3)
    # Same id, different content, and a newer HLC: still the later copy in the stream.
    impostor = Accepted(12, 0, op("a1", at=3_900, data={"qty": 2}), 3)

    plan = plan_epoch(sealed(impostor, first), TABLES, FakeReader())

    assert plan.rejections == (
        refused(
            impostor,
            "duplicate_id_conflict",
            "op id 'a1' was already used for a different op; give each new op a new id",
        ),
    )
    assert plan.writes[0].upserts == [(("a",), {"name": None, "qty": 1, "price": None}, row(first.op, None).meta)]
    assert (plan.epoch.applied, plan.epoch.duplicates, plan.epoch.rejected) == (1, 0, 1)


def test_ids_applied_in_an_earlier_epoch_are_duplicates_or_conflicts_by_digest() -> None:
    again = Accepted(10, 0, op("a1", data={"qty": 1}), 3)
    reused = Accepted(10, 1, op("b1", ("b",), data={"qty": 9}), 3)
    reader = FakeReader(known={"a1": digest(again.op.to_wire()), "b1": "0" * 64})

    plan = plan_epoch(sealed(again, reused), TABLES, reader)

    # Nothing is written and neither id is remembered again.
    assert plan.writes == ()
    assert plan.op_ids == ()
    assert (plan.epoch.applied, plan.epoch.duplicates) == (0, 1)
    assert plan.rejections == (
        refused(
            reused,
            "duplicate_id_conflict",
            "op id 'b1' was already used for a different op; give each new op a new id",
        ),
    )


def test_a_table_declared_in_the_epoch_takes_ops_in_the_same_commit() -> None:
    declare = Control(5, "schema", {"tables": [ITEMS.model_dump(mode="json")]})
    config = Control(4, "config", {"type": "change", "effective_epoch": 9, "epoch_ms": 500, "grace_ms": 0})
    # The op was published before the schema message, yet schema applies first.
    first = Accepted(3, 0, op("a1", data={"qty": 1}), 3)
    reader = FakeReader()

    plan = plan_epoch(sealed(first, controls=(config, declare)), {}, reader)

    assert plan.table_changes == (TableChange(None, ITEMS),)
    assert plan.config_rows == ((4, canonical_json(config.body)),)
    assert plan.writes == (
        TableWrites(ITEMS, upserts=[(("a",), {"name": None, "qty": 1, "price": None}, row(first.op, None).meta)]),
    )
    # A table created by this commit has nothing stored: no read.
    assert reader.reads == []


def test_a_refused_schema_message_is_recorded_and_the_rest_of_the_epoch_is_planned() -> None:
    notes = {"name": "notes", "columns": [{"name": "id", "type": "text", "nullable": False}], "primary_key": "id"}
    without_price = ITEMS.model_copy(update={"columns": ITEMS.columns[:3]}).model_dump(mode="json")
    # One message adding "notes" and dropping a column: all or nothing, so neither.
    drop = Control(5, "schema", {"tables": [notes, without_price]})
    odd = Control(6, "schema", {"tables": [{**notes, "name": "odd", "strategy": "nope"}]})
    to_items = Accepted(7, 0, op("i1", data={"qty": 1}), 3)
    to_notes = Accepted(7, 1, op("n1", table="notes", data={}), 3)

    plan = plan_epoch(sealed(to_items, to_notes, controls=(drop, odd)), {"items": ITEMS}, FakeReader())

    dropped, unknown_strategy, no_notes = plan.rejections
    assert dropped == RejectionRow(
        5, -1, None, "schema", "table 'items': column 'price' cannot be dropped", canonical_json(drop.body)
    )
    assert (unknown_strategy.seq, unknown_strategy.reason, unknown_strategy.payload) == (
        6,
        "schema",
        canonical_json(odd.body),
    )
    assert unknown_strategy.detail.startswith("unknown strategy 'nope'; registered: ")
    assert no_notes == refused(to_notes, "unknown_table", "no table 'notes' is declared; publish its schema first")
    assert plan.table_changes == ()
    assert plan.writes == (
        TableWrites(ITEMS, upserts=[(("a",), {"name": None, "qty": 1, "price": None}, row(to_items.op, None).meta)]),
    )
    assert (plan.epoch.applied, plan.epoch.rejected) == (1, 3)


def test_a_late_op_with_an_older_hlc_loses_to_the_newer_committed_row() -> None:
    # Epoch 5 already committed a write to row "a" at 5_000 ms.
    committed = row(op("new", at=5_000), {"name": "new", "qty": 2, "price": None})
    reader = FakeReader(rows={"items": {("a",): committed}})
    # Epoch 2's op arrives late and is carried into commit 6.
    late = Accepted(40, 0, op("old", at=2_500, data={"qty": 1}), 2, late=True)

    plan = plan_epoch(dataclasses.replace(sealed(late), epoch=6, first_epoch=6), TABLES, reader)

    # It counts as applied (and late) but changes nothing.
    assert plan.writes == ()
    assert (plan.epoch.applied, plan.epoch.late, plan.rejections) == (1, 1, ())


def test_a_late_op_with_a_newer_hlc_overwrites_a_tombstone() -> None:
    tombstone = RowState(None, {"v": [ORIGIN + 1_000, 0, "p1", "del"]})
    reader = FakeReader(rows={"items": {("a",): tombstone}})
    late = Accepted(40, 0, op("up", at=2_500, data={"qty": 1}), 2, late=True)

    plan = plan_epoch(sealed(late), TABLES, reader)

    assert plan.writes == (
        TableWrites(
            ITEMS,
            upserts=[(("a",), {"name": None, "qty": 1, "price": None}, row(late.op, None).meta)],
            cleared_tombstones=[("a",)],
        ),
    )


# -- order independence ----------------------------------------------------------------

KEYS: list[tuple[Any, ...]] = [("a",), ("b",), ("c",), (1,)]
DATA: list[dict[str, Any] | None] = [
    {"name": "x", "qty": 1},
    {"name": "y", "qty": 2, "price": "1.50"},
    {"qty": "bad"},
    {"colour": "red"},
    None,
]


@st.composite
def epochs(draw: st.DrawFn) -> tuple[SealedEpoch, FakeReader]:
    """A sealed epoch with clashing rows, retried and reused ids, bad ops, and stored state."""
    accepted: list[Accepted] = []
    for i in range(draw(st.integers(1, 25))):
        choice = draw(st.sampled_from("nnnndc")) if accepted else "n"
        if choice == "d":  # a retry of an earlier op
            this = draw(st.sampled_from(accepted)).op
        elif choice == "c":  # an earlier op's id, reused for different content
            this = draw(st.sampled_from(accepted)).op.model_copy(update={"data": {"qty": i}})
        else:
            this = op(
                f"o{i}",
                draw(st.sampled_from(KEYS)),
                at=draw(st.integers(2_000, 3_999)),
                logical=draw(st.integers(0, 2)),
                node=draw(st.sampled_from(["p1", "p2"])),
                kind=draw(st.sampled_from([OpKind.UPSERT, OpKind.UPSERT, OpKind.DELETE, OpKind.PATCH])),
                table=draw(st.sampled_from(["items", "items", "items", "ghosts"])),
                data=draw(st.sampled_from(DATA)),
            )
        late = this.hlc.wall_ms < ORIGIN + 3_000
        accepted.append(Accepted(10 + i // 3, i % 3, this, (this.hlc.wall_ms - ORIGIN) // 1_000, late=late))

    stored: dict[Key, RowState] = {}
    for key in KEYS[:3]:
        wall = ORIGIN + draw(st.integers(0, 4_000))
        kind = draw(st.sampled_from(["none", "row", "tombstone"]))
        if kind != "none":
            values = {"name": "s", "qty": 0, "price": None} if kind == "row" else None
            stored[key] = RowState(values, {"v": [wall, 0, "p3", "stored"]})
    ids = sorted({a.op.id for a in accepted})
    known_ids = draw(st.lists(st.sampled_from(ids), unique=True, max_size=3))
    known = {i: draw(st.sampled_from(["0" * 64, "match"])) for i in known_ids}
    for op_id in known:
        if known[op_id] == "match":
            known[op_id] = digest(next(a.op for a in accepted if a.op.id == op_id).to_wire())
    return sealed(*accepted), FakeReader(rows={"items": stored}, known=known)


@settings(max_examples=200, deadline=None)
@given(epochs(), st.data())
def test_the_plan_does_not_depend_on_the_order_ops_are_handed_over(
    epoch_and_reader: tuple[SealedEpoch, FakeReader], data: st.DataObject
) -> None:
    epoch, reader = epoch_and_reader
    shuffled = dataclasses.replace(epoch, ops=tuple(data.draw(st.permutations(epoch.ops))))
    # The stored state, too, comes back in another dict order.
    reversed_reader = FakeReader(
        rows={"items": dict(reversed(list(reader.rows["items"].items())))},
        known=dict(reversed(list(reader.known.items()))),
    )

    plan = plan_epoch(epoch, TABLES, reader)

    assert plan_epoch(shuffled, TABLES, reversed_reader) == plan
    # The commit metadata names only the sealed epoch and the stream's config.
    assert plan.commit.author == "Ops Bot <ops@example.com>"
    assert plan.commit.date == "2026-01-01T00:00:04.000Z"
    assert plan.commit.message.startswith("epoch 3\n\nepochs: 3\n")
    assert f"digest: {plan.epoch.digest}\n" in plan.commit.message


# -- work done ahead of the seal ------------------------------------------------------------

ITEMS_NO_PRICE = ITEMS.model_copy(update={"columns": ITEMS.columns[:3]})
ITEMS_FIELDWISE = ITEMS.model_copy(update={"strategy": "field-lww"})


def prepared_against(
    epoch: SealedEpoch, reader: FakeReader, tables: dict[str, TableSchema], which: list[bool]
) -> SealedEpoch:
    """``epoch`` as a peer's assigner hands it over: records, some prepared against ``tables``."""
    ops = []
    for acc, prepare in zip(epoch.ops, which * len(epoch.ops), strict=False):
        record = record_of(acc.op)
        ops.append(acc._replace(op=record, prepared=prepare_op(record, tables, reader) if prepare else None))
    return dataclasses.replace(epoch, ops=tuple(ops))


@settings(max_examples=200, deadline=None)
@given(
    epochs(),
    st.sampled_from(["same", "equal", "stale price", "stale strategy", "none"]),
    st.lists(st.booleans(), min_size=1, max_size=7),
)
def test_a_plan_built_from_ops_prepared_as_they_arrived_equals_one_built_at_the_seal(
    epoch_and_reader: tuple[SealedEpoch, FakeReader], against: str, which: list[bool]
) -> None:
    epoch, reader = epoch_and_reader
    # Ops prepared against the tables in force at the seal, an equal copy of them, a
    # schema the seal no longer has (a column added, a strategy changed), or nothing;
    # each op prepared or not, as it happens to arrive before or after a commit.
    tables = {
        "same": TABLES,
        "equal": {name: t.model_copy() for name, t in TABLES.items()},
        "stale price": {**TABLES, "items": ITEMS_NO_PRICE},
        "stale strategy": {**TABLES, "items": ITEMS_FIELDWISE},
        "none": {},
    }[against]

    at_once = plan_epoch(epoch, TABLES, reader)

    assert plan_epoch(prepared_against(epoch, reader, tables, which), TABLES, reader) == at_once


def test_an_op_refused_by_the_schema_it_arrived_under_is_applied_under_the_one_its_seal_brings() -> None:
    # The op arrives while items has no price column, so preparing it refuses it...
    early = record_of(op("p1", data={"price": "2.50"}))
    prepared = prepare_op(early, {"items": ITEMS_NO_PRICE})
    assert prepared is not None and prepared.refused is not None and prepared.refused.reason == "unknown_column"
    # ...but the schema message adding the column is attached to the same commit.
    declare = Control(5, "schema", {"tables": [ITEMS.model_dump(mode="json")]})
    epoch = sealed(Accepted(7, 0, early, 3, prepared=prepared), controls=(declare,))

    plan = plan_epoch(epoch, {"items": ITEMS_NO_PRICE}, FakeReader())

    assert plan.rejections == ()
    assert plan.writes[0].upserts == [(("a",), {"name": None, "qty": None, "price": "2.5"}, row(early, None).meta)]


def test_a_plan_of_pydantic_ops_equals_the_plan_of_their_records() -> None:
    ops = [Accepted(10, i, op(f"o{i}", (k,), at=3_000 + i), 3) for i, k in enumerate("abca")]
    as_records = sealed(*(acc._replace(op=record_of(acc.op)) for acc in ops))

    assert plan_epoch(as_records, TABLES, FakeReader()) == plan_epoch(sealed(*ops), TABLES, FakeReader())


def test_a_table_whose_column_lookups_were_used_gains_a_column_with_working_lookups() -> None:
    # The table has served ops already (its cached column lookups are filled)...
    items = ITEMS_NO_PRICE.model_copy(update={"columns": ITEMS_NO_PRICE.columns})
    assert items.column("qty") is not None and len(items.value_columns) == 2
    # ...when a schema message adds a column, and an op of the same commit sets it.
    declare = Control(5, "schema", {"tables": [ITEMS.model_dump(mode="json")]})
    priced = Accepted(7, 0, op("p1", data={"price": "2.50"}), 3)

    plan = plan_epoch(sealed(priced, controls=(declare,)), {"items": items}, FakeReader())

    assert plan.table_changes == (TableChange(items, ITEMS),)
    assert plan.rejections == ()
    assert plan.writes[0].upserts == [(("a",), {"name": None, "qty": None, "price": "2.5"}, row(priced.op, None).meta)]
