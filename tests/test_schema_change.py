"""Schema changes that remove, rename and retype, planned at an epoch boundary (pure).

The backends run the same changes in tests/test_schema_change_backends.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epoch.assign import Accepted, Control
from materializer.plan import Key, TableChange, plan_epoch
from materializer.schema_change import ChangeReport
from materializer.strategy import RowState
from oplog.codec import canonical_json
from oplog.convert import LOSSLESS, RULES, NotConvertible, convert, has_rule
from oplog.errors import SchemaError
from oplog.op import OpKind
from oplog.schema import (
    MAX_INTEGER,
    Column,
    ColumnType,
    DropColumn,
    RenameColumn,
    RetypeColumn,
    SchemaMessage,
    TableSchema,
    normalize_value,
)
from tests.test_plan import ITEMS, op, row, sealed

T = ColumnType
NOTES = TableSchema.model_validate(
    {"name": "notes", "primary_key": ["id"], "strategy": "field-lww",
     "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "title", "type": "text"},
                 {"name": "body", "type": "text"}, {"name": "stars", "type": "text"}]}
)  # fmt: skip
DOCS = TableSchema.model_validate(
    {"name": "docs", "primary_key": ["id"], "strategy": "crdt",
     "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "doc", "type": "json"}]}
)  # fmt: skip
TALLY = TableSchema.model_validate(
    {"name": "tally", "primary_key": ["id"], "strategy": "counter",
     "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "n", "type": "integer", "nullable": False},
                 {"name": "note", "type": "text"}]}
)  # fmt: skip
TABLES = {"items": ITEMS, "notes": NOTES, "docs": DOCS, "tally": TALLY}


class ScanReader:
    """Stored rows per table (rows and tombstones), read by key or whole, as a backend
    would: only under the table's stored definition."""

    def __init__(self, rows: dict[str, dict[Key, RowState]], tables: dict[str, TableSchema] = TABLES) -> None:
        self.rows = rows
        self.tables = tables
        self.scans: list[str] = []

    def _check(self, table: TableSchema) -> dict[Key, RowState]:
        # A backend reads the columns as stored: a table of this epoch's shape would name
        # columns the database does not have yet.
        assert table == self.tables[table.name], f"read {table.name!r} under a definition the database does not hold"
        return self.rows.get(table.name, {})

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        stored = self._check(table)
        return {key: stored[key] for key in keys if key in stored}

    def scan_rows(self, table: TableSchema) -> dict[Key, RowState]:
        self.scans.append(table.name)
        return dict(self._check(table))

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        return {}

    def check_key(self, table: TableSchema, key: Key) -> None:
        return None


def schema(*changes: dict[str, Any], tables: tuple[TableSchema, ...] = (), seq: int = 5) -> Control:
    body: dict[str, Any] = {"changes": list(changes)}
    if tables:
        body["tables"] = [t.model_dump(mode="json") for t in tables]
    return Control(seq, "schema", body)


def stamp(op_id: str, at: int = 1_000) -> list[Any]:
    return [1_767_225_600_000 + at, 0, "p1", op_id]


STORED_ITEMS = {
    ("a",): RowState({"name": "Ann", "qty": 1, "price": "2.5"}, {"v": stamp("a")}),
    ("b",): RowState({"name": "12", "qty": None, "price": "3"}, {"v": stamp("b")}),
    ("c",): RowState(None, {"v": stamp("c")}),  # a tombstone
}
STORED_NOTES = {
    ("n",): RowState({"title": "T", "body": "B", "stars": "5"}, {"cols": {"title": stamp("t"), "body": stamp("b"), "stars": stamp("s")}, "row": stamp("t")}),
    ("m",): RowState({"title": None, "body": "only", "stars": None}, {"cols": {"body": stamp("m")}, "row": stamp("m")}),
    ("d",): RowState(None, {"del": stamp("d", 2_000)}),
}  # fmt: skip


def reader() -> ScanReader:
    return ScanReader({"items": dict(STORED_ITEMS), "notes": dict(STORED_NOTES)})


# -- the message format -------------------------------------------------------------------------


def test_a_message_of_tables_alone_keeps_its_meaning_and_changes_say_their_intent() -> None:
    old = SchemaMessage.model_validate({"tables": [ITEMS.model_dump(mode="json")]})
    assert (old.tables, old.changes) == ((ITEMS,), ())
    new = SchemaMessage.model_validate({"changes": [
        {"op": "drop_table", "table": "a"}, {"op": "drop_column", "table": "b", "column": "c"},
        {"op": "rename_column", "table": "b", "column": "d", "to": "e"},
        {"op": "retype_column", "table": "b", "column": "f", "type": "decimal"},
    ]})  # fmt: skip
    assert [type(c).__name__ for c in new.changes] == ["DropTable", "DropColumn", "RenameColumn", "RetypeColumn"]
    assert isinstance(new.changes[3], RetypeColumn) and new.changes[3].on_failure == "reject"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tables": []},
        {"changes": [{"op": "drop_column", "table": "items", "column": "qty", "cascade": True}]},  # unknown field
        {"changes": [{"op": "retype_column", "table": "items", "column": "qty", "type": "text", "on_fail": "null"}]},
        {"changes": [{"op": "truncate", "table": "items"}]},
        {"changes": [{"op": "rename_column", "table": "items", "column": "qty", "to": "_oplog_qty"}]},
        {"changes": [{"op": "drop_table", "table": "oplog_epochs"}]},
    ],
)
def test_a_malformed_message_is_refused_whole(body: dict[str, Any]) -> None:
    plan = plan_epoch(sealed(controls=(Control(5, "schema", body),)), TABLES, reader())
    assert [(r.seq, r.reason) for r in plan.rejections] == [(5, "schema")]
    assert plan.rejections[0].detail.startswith("invalid schema message at ")
    assert plan.table_changes == ()


# -- refusals -----------------------------------------------------------------------------------------

REFUSALS = [
    ({"op": "drop_column", "table": "items", "column": "id"}, "primary key column 'id' cannot be dropped"),
    ({"op": "rename_column", "table": "items", "column": "id", "to": "sku"}, "primary key column 'id' cannot be renamed"),
    ({"op": "retype_column", "table": "items", "column": "id", "type": "integer"}, "primary key column 'id' cannot be retyped"),
    ({"op": "drop_table", "table": "ghosts"}, "drop_table: there is no table 'ghosts'"),
    ({"op": "drop_column", "table": "items", "column": "colour"}, "table 'items' has no column 'colour' to be dropped"),
    ({"op": "rename_column", "table": "items", "column": "qty", "to": "NAME"}, "already has a column 'name'"),
    ({"op": "rename_column", "table": "items", "column": "qty", "to": "qty"}, "is already called 'qty'"),
    ({"op": "retype_column", "table": "items", "column": "qty", "type": "integer"}, "column 'qty' is already integer"),
    ({"op": "retype_column", "table": "items", "column": "qty", "type": "bytes"}, "from integer to bytes: there is no conversion rule"),
    ({"op": "retype_column", "table": "tally", "column": "n", "type": "decimal", "on_failure": "null"},
     "column 'n' is NOT NULL, so \"on_failure\" cannot be \"null\""),
    ({"op": "retype_column", "table": "tally", "column": "n", "type": "text"}, "NOT NULL counter column 'n' cannot become text"),
    ({"op": "drop_column", "table": "docs", "column": "doc"}, "its document column 'doc' cannot be dropped"),
    ({"op": "retype_column", "table": "docs", "column": "doc", "type": "text"}, "its document column 'doc' cannot be retyped"),
    ({"op": "retype_column", "table": "items", "column": "name", "type": "integer"},
     "column 'name' cannot be retyped from text to integer (on_failure reject): 1 of 2 stored rows hold a value the rule "
     "does not take (keys [\"a\"])"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "why"), REFUSALS, ids=[why[:40] for _, why in REFUSALS])
def test_an_unsafe_change_is_refused_with_its_reason_and_the_epoch_commits_its_ops(
    change: dict[str, Any], why: str
) -> None:
    # A valid change before the refused one, in the same message: all or nothing.
    message = schema({"op": "rename_column", "table": "items", "column": "price", "to": "cost"}, change)
    upsert = Accepted(7, 0, op("u1", ("z",), data={"name": "Zed", "qty": 3, "price": "1"}), 3)
    plan = plan_epoch(sealed(upsert, controls=(message,)), TABLES, reader())

    assert [(r.seq, r.index, r.reason) for r in plan.rejections] == [(5, -1, "schema")]
    assert why in plan.rejections[0].detail
    assert plan.rejections[0].payload == canonical_json(message.body)
    assert plan.table_changes == ()
    # The epoch's ops apply to the tables as they were: 'price' was not renamed.
    assert plan.writes[0].upserts == [(("z",), {"name": "Zed", "qty": 3, "price": "1"}, row(upsert.op, None).meta)]


# -- what a change does to the tables and the rows ------------------------------------------------------


def test_dropped_and_renamed_columns_take_ops_of_the_same_epoch_in_the_new_shape() -> None:
    message = schema({"op": "drop_column", "table": "items", "column": "qty"},
                     {"op": "rename_column", "table": "items", "column": "price", "to": "cost"})  # fmt: skip
    upsert = Accepted(7, 0, op("u1", ("z",), data={"name": "Zed", "cost": "1.50"}), 3)
    stale = Accepted(8, 0, op("u2", ("z",), at=3_500, data={"name": "Zed", "qty": 4}), 3)
    patchless = Accepted(9, 0, op("u3", ("a",), at=999, data={"name": "old", "cost": "9"}), 3)  # older than a's stamp
    r = reader()
    plan = plan_epoch(sealed(upsert, stale, patchless, controls=(message,)), TABLES, r)

    after = TableSchema.model_validate({**ITEMS.model_dump(mode="json"), "columns": [
        {"name": "id", "type": "text", "nullable": False}, {"name": "name", "type": "text"},
        {"name": "cost", "type": "decimal"}]})  # fmt: skip
    steps = (DropColumn(op="drop_column", table="items", column="qty"),
             RenameColumn(op="rename_column", table="items", column="price", to="cost"))  # fmt: skip
    assert plan.table_changes == (TableChange(ITEMS, after, steps),)
    assert [(r.op_id, r.reason) for r in plan.rejections] == [("u2", "unknown_column")]
    (writes,) = plan.writes
    assert writes.table == after
    assert writes.upserts == [(("z",), {"name": "Zed", "cost": "1.5"}, row(upsert.op, None).meta)]
    # lww keeps no column in its meta: nothing was read whole, nothing else rewritten.
    assert r.scans == []


def test_a_retype_converts_stored_rows_in_python_and_rewrites_the_rebuilt_table() -> None:
    message = schema({"op": "retype_column", "table": "items", "column": "name", "type": "integer", "on_failure": "null"},
                     {"op": "retype_column", "table": "items", "column": "qty", "type": "decimal"})  # fmt: skip
    upsert = Accepted(7, 0, op("u1", ("z",), data={"name": 7, "qty": "0.5", "price": "1"}), 3)
    reports: list[ChangeReport] = []
    plan = plan_epoch(sealed(upsert, controls=(message,)), TABLES, reader(), report=reports)

    (change,) = plan.table_changes
    assert change.rebuild and change.after is not None
    assert [(c.name, c.type.value) for c in change.after.columns] == [("id", "text"), ("name", "integer"),
                                                                     ("qty", "decimal"), ("price", "decimal")]  # fmt: skip
    (writes,) = plan.writes
    # Every row is written again (the table is made anew); the tombstone is not a row.
    assert writes.upserts == [
        (("z",), {"name": 7, "qty": "0.5", "price": "1"}, row(upsert.op, None).meta),
        (("a",), {"name": None, "qty": "1", "price": "2.5"}, {"v": stamp("a")}),
        (("b",), {"name": 12, "qty": None, "price": "3"}, {"v": stamp("b")}),
    ]
    assert writes.deletes == []
    assert reports == [
        ChangeReport("items", "retype_column", "name", "from text to integer (on_failure null)", 2, 1, 1, (("a",),)),
        ChangeReport("items", "retype_column", "qty", "from integer to decimal (on_failure reject)", 2, 1, 0, ()),
    ]


def test_field_lww_stamps_follow_a_renamed_column_and_leave_with_a_dropped_one() -> None:
    message = schema({"op": "rename_column", "table": "notes", "column": "title", "to": "headline"},
                     {"op": "drop_column", "table": "notes", "column": "body"})  # fmt: skip
    # A late patch of the renamed column, older than the stored stamp of 'title': it loses.
    late = Accepted(7, 0, op("late", ("n",), at=500, kind=OpKind.PATCH, table="notes", data={"headline": "old"}), 3)
    fresh = Accepted(8, 0, op("new", ("m",), at=3_000, kind=OpKind.PATCH, table="notes", data={"headline": "H"}), 3)
    r = reader()
    plan = plan_epoch(sealed(late, fresh, controls=(message,)), TABLES, r)

    assert plan.rejections == ()
    assert r.scans == ["notes"]
    (writes,) = plan.writes
    assert writes.upserts == [
        (
            ("m",),
            {"headline": "H", "stars": None},
            {"cols": {"headline": stamp("new", 3_000)}, "row": stamp("new", 3_000)},
        ),
        (
            ("n",),
            {"headline": "T", "stars": "5"},
            {"cols": {"headline": stamp("t"), "stars": stamp("s")}, "row": stamp("t")},
        ),
    ]
    # The tombstone's meta names no column: unchanged, not written.
    assert writes.deletes == []


def test_a_table_dropped_and_declared_again_in_one_message_starts_empty() -> None:
    fresh = TableSchema.model_validate({"name": "items", "primary_key": ["id"], "strategy": "field-lww",
                                        "columns": [{"name": "id", "type": "integer", "nullable": False}]})  # fmt: skip
    message = schema({"op": "drop_table", "table": "items"}, tables=(fresh,))
    upsert = Accepted(7, 0, op("u1", (1,), data={}), 3)
    plan = plan_epoch(sealed(upsert, controls=(message,)), TABLES, reader())

    assert plan.table_changes == (TableChange(ITEMS, None), TableChange(None, fresh))
    assert plan.rejections == ()
    # Nothing of the old table is read or kept: the op makes the only row.
    assert [w.upserts for w in plan.writes] == [[((1,), {}, {"row": stamp("u1", 3_000)})]]


def test_messages_of_one_epoch_apply_in_turn_over_what_the_earlier_ones_left() -> None:
    with_colour = TableSchema.model_validate({**ITEMS.model_dump(mode="json"), "columns": [
        *ITEMS.model_dump(mode="json")["columns"], {"name": "colour", "type": "text"}]})  # fmt: skip
    first = schema(tables=(with_colour,), seq=5)  # adds a column
    second = schema({"op": "rename_column", "table": "items", "column": "colour", "to": "hue"},
                    {"op": "retype_column", "table": "items", "column": "qty", "type": "text"}, seq=6)  # fmt: skip
    third = schema({"op": "drop_column", "table": "items", "column": "hue"}, seq=7)
    plan = plan_epoch(sealed(controls=(first, second, third)), TABLES, reader())

    assert plan.rejections == ()
    assert [(c.before is not None, c.after is not None, len(c.steps), c.rebuild) for c in plan.table_changes] == [
        (True, True, 0, False), (True, True, 2, True), (True, True, 1, False)]  # fmt: skip
    final = plan.table_changes[-1].after
    assert final is not None and [c.name for c in final.columns] == ["id", "name", "qty", "price"]
    assert plan.writes[0].upserts == [
        (("a",), {"name": "Ann", "qty": "1", "price": "2.5"}, {"v": stamp("a")}),
        (("b",), {"name": "12", "qty": None, "price": "3"}, {"v": stamp("b")}),
    ]


def test_an_op_on_a_row_stored_before_a_column_was_added_reads_the_row_as_stored() -> None:
    # The stored row is read with the columns the database has (the added one is not there
    # yet), then given the new column: NULL (a read under the new shape would fail, or on
    # doltlite read the column's name as a string literal).
    with_colour = TableSchema.model_validate({**NOTES.model_dump(mode="json"), "columns": [
        *NOTES.model_dump(mode="json")["columns"], {"name": "colour", "type": "text"}]})  # fmt: skip
    patch = Accepted(7, 0, op("p", ("n",), at=3_000, kind=OpKind.PATCH, table="notes", data={"body": "new"}), 3)
    plan = plan_epoch(sealed(patch, controls=(schema(tables=(with_colour,)),)), TABLES, reader())

    assert plan.table_changes == (TableChange(NOTES, with_colour),)
    (writes,) = plan.writes
    ((key, values, _),) = writes.upserts
    assert (key, values) == (("n",), {"title": "T", "body": "new", "stars": "5", "colour": None})


def test_the_table_change_of_added_columns_keeps_its_older_form() -> None:
    with_colour = ITEMS.model_copy(update={"columns": (*ITEMS.columns, Column(name="colour", type=T.TEXT))})
    plan = plan_epoch(sealed(controls=(schema(tables=(with_colour,)),)), TABLES, reader())
    assert plan.table_changes == (TableChange(ITEMS, with_colour),)
    assert plan.table_changes[0].steps == ()


# -- conversion rules: total and deterministic -------------------------------------------------------------

VALUES = {
    T.INTEGER: st.integers(-MAX_INTEGER, MAX_INTEGER),
    T.DECIMAL: st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=Decimal("-1e30"),
                           max_value=Decimal("1e30")).map(str),
    T.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    T.TEXT: st.one_of(st.text(max_size=30), st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{1,5})?", fullmatch=True),
                      st.sampled_from(["2026-01-01T00:00:00Z", "[1, {\"b\": 2, \"a\": null}]", "1e3", "true"])),
    T.BOOLEAN: st.booleans(),
    T.JSON: st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                         max_leaves=8),
    T.BYTES: st.binary(max_size=8),
    T.TIMESTAMP: st.integers(-62_135_596_800_000, 253_402_300_799_999),
}  # fmt: skip


@st.composite
def stored_value(draw: st.DrawFn, kind: ColumnType) -> Any:
    """A value of ``kind`` as a backend reads it back: its canonical form."""
    return normalize_value(Column(name="v", type=kind), draw(VALUES[kind]))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_every_rule_is_total_and_deterministic_and_its_results_are_canonical(data: st.DataObject) -> None:
    source, target = data.draw(st.sampled_from(sorted(RULES)))
    value = data.draw(stored_value(source))
    column = Column(name="c", type=target)
    try:
        result = convert(source, column, value)
    except NotConvertible as e:
        assert (source, target) not in LOSSLESS, f"{source} -> {target} is lossless yet refused {value!r}"
        with pytest.raises(NotConvertible) as again:
            convert(source, column, value)
        assert str(again.value) == str(e)  # the reason is a function of the value
        return
    # What an op would store (canonical: unchanged by normalizing again), the same every time.
    again = normalize_value(column, orjson.loads(result) if target is T.JSON else result)
    assert again == result
    assert convert(source, column, value) == result
    assert convert(source, column, None) is None


def test_the_rules_in_numbers() -> None:
    def c(source: ColumnType, target: ColumnType, value: Any) -> Any:
        try:
            return convert(source, Column(name="c", type=target), value)
        except NotConvertible:
            return "refused"

    assert [c(T.INTEGER, T.DECIMAL, 5), c(T.INTEGER, T.TEXT, -5), c(T.INTEGER, T.FLOAT, 2**53),
            c(T.INTEGER, T.FLOAT, 2**53 + 1)] == ["5", "-5", float(2**53), "refused"]  # fmt: skip
    assert [c(T.DECIMAL, T.INTEGER, "2"), c(T.DECIMAL, T.INTEGER, "2.5"), c(T.DECIMAL, T.TEXT, "2.5")] == [
        2,
        "refused",
        "2.5",
    ]
    # The signed 64-bit bound of an integer column, from either side of it.
    assert [c(T.DECIMAL, T.INTEGER, str(2**63 - 1)), c(T.DECIMAL, T.INTEGER, str(2**63)),
            c(T.TEXT, T.INTEGER, str(-(2**63) + 1)), c(T.TEXT, T.INTEGER, str(-(2**63)))] == [
        2**63 - 1, "refused", -(2**63) + 1, "refused"]  # fmt: skip
    assert [c(T.FLOAT, T.TEXT, 0.1), c(T.BOOLEAN, T.INTEGER, 1), c(T.BOOLEAN, T.TEXT, 0)] == ["0.1", 1, "false"]
    assert [c(T.TEXT, T.INTEGER, "-007"), c(T.TEXT, T.INTEGER, " 7"), c(T.TEXT, T.INTEGER, "٣"),
            c(T.TEXT, T.INTEGER, str(2**63))] == [-7, "refused", "refused", "refused"]  # fmt: skip
    assert [c(T.TEXT, T.DECIMAL, "1.50"), c(T.TEXT, T.DECIMAL, "3e2"), c(T.TEXT, T.DECIMAL, "1_0"),
            c(T.TEXT, T.DECIMAL, "NaN")] == ["1.5", "300", "refused", "refused"]  # fmt: skip
    assert [c(T.TEXT, T.JSON, '{"b": 1, "a": 2}'), c(T.TEXT, T.JSON, "{"), c(T.JSON, T.TEXT, '{"a":1}')] == [
        '{"a":2,"b":1}', "refused", '{"a":1}']  # fmt: skip
    assert [c(T.TEXT, T.TIMESTAMP, "2026-01-01T01:00:00+01:00"), c(T.TEXT, T.TIMESTAMP, "2026-01-01T00:00:00"),
            c(T.TIMESTAMP, T.TEXT, "2026-01-01T00:00:00.000Z")] == [
        "2026-01-01T00:00:00.000Z", "refused", "2026-01-01T00:00:00.000Z"]  # fmt: skip
    assert not has_rule(T.BYTES, T.TEXT) and not has_rule(T.FLOAT, T.INTEGER) and not has_rule(T.JSON, T.INTEGER)
    with pytest.raises(SchemaError, match="no conversion rule from bytes to text"):
        convert(T.BYTES, Column(name="c", type=T.TEXT), b"x")


def test_each_dialect_renders_the_ddl_of_every_change_kind() -> None:
    from materializer.backends.dolt_server_sql import DIALECT as DOLT
    from materializer.backends.doltlite import DIALECT as DOLTLITE

    message = schema({"op": "drop_column", "table": "items", "column": "qty"},
                     {"op": "rename_column", "table": "items", "column": "price", "to": "cost"})  # fmt: skip
    (columns,) = plan_epoch(sealed(controls=(message,)), TABLES, reader()).table_changes
    retype = schema({"op": "retype_column", "table": "items", "column": "qty", "type": "text"})
    (rebuild,) = plan_epoch(sealed(controls=(retype,)), TABLES, reader()).table_changes
    (dropped,) = plan_epoch(sealed(controls=(schema({"op": "drop_table", "table": "items"}),)), TABLES,
                            reader()).table_changes  # fmt: skip

    assert DOLTLITE.table_change_sql(columns) == [
        'ALTER TABLE "items" DROP COLUMN "qty"', 'ALTER TABLE "items" RENAME COLUMN "price" TO "cost"']
    assert DOLT.table_change_sql(columns) == ["ALTER TABLE `items` DROP COLUMN `qty`",
                                              "ALTER TABLE `items` RENAME COLUMN `price` TO `cost`"]  # fmt: skip
    assert rebuild.after is not None
    assert DOLTLITE.table_change_sql(rebuild) == ['DROP TABLE "items"', DOLTLITE.create_table_sql(rebuild.after)]
    assert DOLT.table_change_sql(rebuild) == ["DROP TABLE `items`", DOLT.create_table_sql(rebuild.after)]
    assert '"qty" TEXT' in DOLTLITE.create_table_sql(rebuild.after)
    assert DOLTLITE.table_change_sql(dropped) == ['DROP TABLE "items"']
