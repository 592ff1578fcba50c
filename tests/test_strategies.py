"""The field-lww, counter and crdt strategies: pure folds, order-independent.

The property each strategy must keep: the planner folds each epoch's ops in HLC
order, but an op may arrive late — in a later epoch than its HLC implies, after
newer ops were already folded and committed. The final row must still be what
folding every op in HLC order gives, and its values and meta must be byte-identical
(canonical JSON) however the ops were split into epochs. Each strategy is checked
against a reference model written as plainly as possible, over random histories
split at random into epochs with late ops.
"""

from __future__ import annotations

import base64
import itertools
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, merge_updates

from materializer.errors import OpRejected
from materializer.strategies.counter import Counter
from materializer.strategies.crdt import CrdtDocument, fully_integrated
from materializer.strategies.field_lww import FieldLastWriterWins
from materializer.strategies.lww import stamp
from materializer.strategy import ABSENT, RowState, Strategy, get_strategy
from oplog.codec import canonical_json, record_of
from oplog.crdt_helper import DocumentWriter, decode_update
from oplog.op import Op, OpKind
from oplog.schema import TableSchema, normalize_value

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ("k1", "k2", "k3")
EPOCH_MS = 25


def table(strategy: str, *columns: dict[str, Any]) -> TableSchema:
    return TableSchema.model_validate(
        {
            "name": "things",
            "columns": [{"name": "id", "type": "text", "nullable": False}, *columns],
            "primary_key": ["id"],
            "strategy": strategy,
        }
    )


def make_op(op_id: str, hlc: tuple[int, int, str], kind: str, key: str = "k1", data: Any = None) -> Op:
    wire: dict[str, Any] = {"id": op_id, "hlc": list(hlc), "table": "things", "key": [key], "kind": kind}
    if data is not None:
        wire["data"] = data
    return Op.model_validate(wire)


Rows = dict[tuple[str | int, ...], RowState]


def fold_epochs(strategy: Strategy, schema: TableSchema, epochs: list[list[Op]]) -> Rows:
    """Fold epoch by epoch the way the planner does, storing rows between epochs.

    Each epoch's ops are sorted by HLC and folded per row from the stored state; a
    rejected op is skipped. Between epochs the meta goes through canonical JSON, as
    it does through the ``_oplog_meta`` column or the tombstones table.
    """
    stored: Rows = {}
    for ops in epochs:
        by_row: dict[tuple[str | int, ...], list[Op]] = {}
        for op in sorted(ops, key=Op.sort_key):
            by_row.setdefault(op.key, []).append(op)
        for key, row_ops in by_row.items():
            state = stored.get(key, ABSENT)
            for op in row_ops:
                try:
                    state = strategy.apply(schema, state, op)
                except OpRejected:
                    continue
            stored[key] = RowState(state.values, orjson.loads(canonical_json(state.meta)))
    return stored


def split(ops: list[Op], delays: list[int]) -> list[list[Op]]:
    """Epochs by wall time, each op arriving ``delay`` epochs late."""
    epochs: dict[int, list[Op]] = {}
    for op, delay in zip(ops, delays, strict=True):
        epochs.setdefault(op.hlc.wall_ms // EPOCH_MS + delay, []).append(op)
    return [epochs[k] for k in sorted(epochs)]


def canonical(rows: Rows) -> dict[str, Any]:
    """What the database holds: rows (values + meta) and tombstones, as canonical text."""
    return {
        canonical_json(list(key)): canonical_json({"values": state.values, "meta": state.meta})
        for key, state in sorted(rows.items())
    }


def live(rows: Rows) -> dict[str, dict[str, Any]]:
    return {str(key[0]): state.values for key, state in rows.items() if state.values is not None}


@st.composite
def histories(draw: st.DrawFn, ops: st.SearchStrategy[tuple[str, Any]]) -> tuple[list[Op], list[int], list[int]]:
    """Ops from three producers with skewed clocks, plus two random arrival patterns."""
    skews = [draw(st.integers(-30, 30)) for _ in range(3)]
    count = draw(st.integers(1, 24))
    history = []
    for i in range(count):
        producer = draw(st.integers(0, 2))
        wall = max(0, draw(st.integers(0, 120)) + skews[producer])
        kind, data = draw(ops)
        hlc = (wall, draw(st.integers(0, 2)), f"p{producer}")
        history.append(make_op(f"op{i}", hlc, kind, draw(st.sampled_from(KEYS)), data))
    lateness = st.lists(st.sampled_from([0, 0, 0, 1, 2, 5]), min_size=count, max_size=count)
    return history, draw(lateness), draw(lateness)


def assert_order_independent(strategy: Strategy, schema: TableSchema, history: list[Op], *arrivals: list[int]) -> Rows:
    in_hlc_order = fold_epochs(strategy, schema, [history])
    for delays in arrivals:
        assert canonical(fold_epochs(strategy, schema, split(history, delays))) == canonical(in_hlc_order)
    return in_hlc_order


def test_the_three_strategies_are_registered_as_entry_points() -> None:
    assert isinstance(get_strategy("field-lww"), FieldLastWriterWins)
    assert isinstance(get_strategy("counter"), Counter)
    assert isinstance(get_strategy("crdt"), CrdtDocument)


# -- field-lww --------------------------------------------------------------------------

NOTES = table(
    "field-lww", {"name": "a", "type": "integer"}, {"name": "b", "type": "text"}, {"name": "c", "type": "json"}
)
FLWW = FieldLastWriterWins()
COLUMN_VALUES = {
    "a": st.none() | st.integers(-3, 3),
    "b": st.none() | st.sampled_from(["x", "y", ""]),
    "c": st.none() | st.sampled_from([{"z": 1, "y": [1]}, [2, 1], "s"]),
}
patch_data = st.fixed_dictionaries({}, optional=COLUMN_VALUES)
field_ops = st.one_of(
    st.tuples(st.just("patch"), patch_data),
    st.tuples(st.just("upsert"), patch_data),
    st.tuples(st.just("delete"), st.none()),
)


def field_lww_reference(history: list[Op]) -> dict[str, dict[str, Any]]:
    """Per row: nothing survives the newest delete; each column takes the value of its
    newest surviving write (an upsert writes every column, NULL if left out)."""
    rows = {}
    for key in KEYS:
        ops = [op for op in history if op.key == (key,)]
        deletes = [stamp(op) for op in ops if op.kind == "delete"]
        last_delete = max(deletes) if deletes else None
        writes = [op for op in ops if op.kind != "delete" and (last_delete is None or stamp(op) > last_delete)]
        if not writes:
            continue
        row = {}
        for column in ("a", "b", "c"):
            setters = [op for op in writes if op.kind == "upsert" or column in (op.data or {})]
            newest = max(setters, key=stamp, default=None)
            value = (newest.data or {}).get(column) if newest is not None else None
            row[column] = normalize_value(NOTES.column(column), value)  # type: ignore[arg-type]
        rows[key] = row
    return rows


@EXAMPLES
@given(histories(field_ops))
def test_field_lww_matches_the_reference_whatever_epochs_the_ops_arrive_in(case: Any) -> None:
    history, arrivals, other_arrivals = case
    rows = assert_order_independent(FLWW, NOTES, history, arrivals, other_arrivals)
    assert live(rows) == field_lww_reference(history)


def test_concurrent_patches_to_different_columns_both_survive() -> None:
    # Two producers patch one row at nearly the same time, each its own column.
    rows = fold_epochs(
        FLWW,
        NOTES,
        [[make_op("x", (10, 0, "p1"), "patch", data={"a": 1}), make_op("y", (10, 0, "p2"), "patch", data={"b": "hi"})]],
    )
    assert rows[("k1",)].values == {"a": 1, "b": "hi", "c": None}
    assert rows[("k1",)].meta == {
        "cols": {"a": [10, 0, "p1", "x"], "b": [10, 0, "p2", "y"]},
        "row": [10, 0, "p2", "y"],
    }


def test_a_patch_newer_than_a_delete_resurrects_only_the_columns_written_after_it() -> None:
    # a and b are set, the row is deleted, then only b is patched again.
    history = [
        make_op("1", (1, 0, "p"), "patch", data={"a": 1, "b": "old"}),
        make_op("2", (2, 0, "p"), "delete"),
        make_op("3", (3, 0, "p"), "patch", data={"b": "new"}),
    ]
    rows = fold_epochs(FLWW, NOTES, [history])
    assert rows[("k1",)].values == {"a": None, "b": "new", "c": None}
    # The same ops with the delete arriving two epochs late give the same row.
    late = fold_epochs(FLWW, NOTES, [[history[0]], [history[2]], [history[1]]])
    assert canonical(late) == canonical(rows)


def test_a_late_delete_wipes_only_the_columns_written_before_it() -> None:
    # Committed: a at t=1, b at t=5. A delete stamped t=3 then arrives late.
    committed = fold_epochs(
        FLWW,
        NOTES,
        [[make_op("1", (1, 0, "p"), "patch", data={"a": 1}), make_op("2", (5, 0, "q"), "patch", data={"b": "kept"})]],
    )
    state = FLWW.apply(NOTES, committed[("k1",)], make_op("3", (3, 0, "r"), "delete"))
    assert state.values == {"a": None, "b": "kept", "c": None}
    assert state.meta == {"cols": {"b": [5, 0, "q", "2"]}, "row": [5, 0, "q", "2"], "del": [3, 0, "r", "3"]}


def test_a_late_write_older_than_the_stored_delete_changes_nothing() -> None:
    tombstone = FLWW.apply(NOTES, ABSENT, make_op("d", (9, 0, "p"), "delete"))
    assert tombstone == RowState(None, {"del": [9, 0, "p", "d"]})
    assert FLWW.apply(NOTES, tombstone, make_op("w", (8, 0, "q"), "patch", data={"a": 2})) is tombstone


def test_an_upsert_writes_every_column_and_nulls_the_ones_it_leaves_out() -> None:
    state = FLWW.apply(NOTES, ABSENT, make_op("1", (1, 0, "p"), "patch", data={"a": 1, "b": "x"}))
    state = FLWW.apply(NOTES, state, make_op("2", (2, 0, "p"), "upsert", data={"c": {"b": 2, "a": 1}}))
    assert state.values == {"a": None, "b": None, "c": '{"a":1,"b":2}'}


def test_field_lww_rejects_a_table_with_a_not_null_value_column() -> None:
    strict = table("field-lww", {"name": "a", "type": "integer", "nullable": False})
    with pytest.raises(OpRejected) as e:
        FLWW.apply(strict, ABSENT, make_op("1", (1, 0, "p"), "patch", data={"a": 1}))
    assert e.value.reason == "not_nullable"


@pytest.mark.parametrize(
    ("kind", "data", "reason"),
    [
        ("patch", {"nope": 1}, "unknown_column"),
        ("patch", {"a": "one"}, "bad_value"),
        ("patch", [1], "bad_data"),
        ("incr", {"a": 1}, "kind_not_allowed"),
    ],
)
def test_field_lww_rejections(kind: str, data: Any, reason: str) -> None:
    with pytest.raises(OpRejected) as e:
        FLWW.apply(NOTES, ABSENT, _raw_op(kind, data))
    assert e.value.reason == reason


def _raw_op(kind: str, data: Any) -> Op:
    # Op validates data as an object; build a list-data op around that for bad_data.
    if isinstance(data, dict):
        return make_op("1", (1, 0, "p"), kind, data=data)
    return Op.model_construct(
        id="1", hlc=make_op("1", (1, 0, "p"), "patch").hlc, table="things", key=("k1",), kind=kind, data=data
    )


# -- counter ----------------------------------------------------------------------------

COUNTS = table(
    "counter",
    {"name": "n", "type": "integer", "nullable": False},
    {"name": "d", "type": "decimal"},
    {"name": "note", "type": "text"},
)
COUNTER = Counter()
counter_ops = st.tuples(
    st.just("incr"),
    st.fixed_dictionaries(
        {},
        optional={
            "n": st.integers(-1000, 1000),
            "d": st.sampled_from(["0.10", "-1.5", "2", "0.01", "-0.11", "100.005"])
            | st.integers(-5, 5)
            | st.sampled_from([0.25, -0.5]),
        },
    ),
)


def counter_reference(history: list[Op]) -> dict[str, dict[str, Any]]:
    """Per row that got any incr: the sum of its deltas per counter, from 0."""
    rows = {}
    for key in KEYS:
        deltas = [op.data or {} for op in history if op.key == (key,)]
        if deltas:
            n = sum(delta.get("n", 0) for delta in deltas)
            d = sum((Decimal(str(delta.get("d", 0))) for delta in deltas), Decimal(0))
            rows[key] = {"n": n, "d": d, "note": None}
    return rows


@EXAMPLES
@given(histories(counter_ops))
def test_counter_matches_the_reference_whatever_epochs_the_ops_arrive_in(case: Any) -> None:
    history, arrivals, other_arrivals = case
    rows = assert_order_independent(COUNTER, COUNTS, history, arrivals, other_arrivals)
    values = live(rows)
    assert {key: {**row, "d": Decimal(row["d"])} for key, row in values.items()} == counter_reference(history)
    for row in values.values():
        # Decimals are written in normalize_value's rendering ("1.5", never "1.50").
        assert row["d"] == normalize_value(COUNTS.column("d"), row["d"])  # type: ignore[arg-type]
    assert all(state.meta == {} for state in rows.values())


def test_counter_adds_decimals_exactly_and_starts_new_rows_at_zero() -> None:
    state = ABSENT
    for i, delta in enumerate(["0.1", "0.1", "0.1", "1.50"]):
        state = COUNTER.apply(COUNTS, state, make_op(f"{i}", (i, 0, "p"), "incr", data={"d": delta}))
    assert state.values == {"n": 0, "d": "1.8", "note": None}
    state = COUNTER.apply(COUNTS, state, make_op("x", (9, 0, "p"), "incr", data={"d": "-1.8", "n": -3}))
    assert state.values == {"n": -3, "d": "0", "note": None}


def test_counter_keeps_38_digit_decimals_exact() -> None:
    big = "1234567890123456789012345678901234567.8"  # 38 significant digits
    state = COUNTER.apply(COUNTS, ABSENT, make_op("1", (1, 0, "p"), "incr", data={"d": big}))
    state = COUNTER.apply(COUNTS, state, make_op("2", (2, 0, "p"), "incr", data={"d": "0.1"}))
    assert state.values["d"] == "1234567890123456789012345678901234567.9"  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"n": "5"}, "bad_delta"),
        ({"n": True}, "bad_delta"),
        ({"n": 1.5}, "bad_delta"),
        ({"n": None}, "bad_delta"),
        ({"d": "abc"}, "bad_delta"),
        ({"d": False}, "bad_delta"),
        ({"d": "NaN"}, "bad_delta"),
        ({"d": "1e40"}, "bad_delta"),
        ({"d": "0." + "1" * 39}, "bad_delta"),
        ({"n": 2**63}, "bad_delta"),
        ({"missing": 1}, "unknown_column"),
        ({"note": 1}, "not_a_counter"),
        ({"id": 1}, "not_a_counter"),
    ],
)
def test_counter_rejections(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(COUNTS, ABSENT, make_op("1", (1, 0, "p"), "incr", data=data))
    assert e.value.reason == reason


def test_counter_rejects_a_float_column_as_not_a_counter() -> None:
    floats = table("counter", {"name": "f", "type": "float"})
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(floats, ABSENT, make_op("1", (1, 0, "p"), "incr", data={"f": 1}))
    assert e.value.reason == "not_a_counter"


def test_counter_rejects_delete() -> None:
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(COUNTS, ABSENT, make_op("1", (1, 0, "p"), "delete"))
    assert e.value.reason == "kind_not_allowed"


def test_counter_rejects_a_table_whose_non_counter_column_is_not_null() -> None:
    strict = table("counter", {"name": "n", "type": "integer"}, {"name": "label", "type": "text", "nullable": False})
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(strict, ABSENT, make_op("1", (1, 0, "p"), "incr", data={"n": 1}))
    assert e.value.reason == "not_nullable"


def test_counter_rejects_the_increment_that_would_overflow() -> None:
    state = COUNTER.apply(COUNTS, ABSENT, make_op("1", (1, 0, "p"), "incr", data={"n": 2**63 - 1}))
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(COUNTS, state, make_op("2", (2, 0, "p"), "incr", data={"n": 1}))
    assert e.value.reason == "overflow"


def test_counter_rejects_data_that_is_not_an_object() -> None:
    with pytest.raises(OpRejected) as e:
        COUNTER.apply(COUNTS, ABSENT, _raw_op("incr", [1]))
    assert e.value.reason == "bad_data"


# -- crdt -------------------------------------------------------------------------------

DOCS = table("crdt", {"name": "body", "type": "json", "nullable": False})
CRDT = CrdtDocument()


def crdt_op(op_id: str, wall: int, update: str, node: str = "p") -> Op:
    return make_op(op_id, (wall, 0, node), "crdt", data=DocumentWriter.data(update))


def body(state: RowState) -> Any:
    assert state.values is not None
    return orjson.loads(state.values["body"])


edits = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["set", "set", "append", "delete", "nested", "sync"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 9),
    ),
    min_size=1,
    max_size=9,
)


def three_writers(script: list[tuple[int, str, str, int]]) -> tuple[list[Op], Any]:
    """Three producers edit one document; returns their ops (in the order made) and
    the reference: the JSON of one document that received every update in that order."""
    writers = [DocumentWriter(client_id=101 + i) for i in range(3)]
    made = [writers[0].set("list", [])]
    for writer in writers[1:]:
        writer.load(made[0])
    for who, action, key, value in script:
        writer = writers[who]
        if action == "sync":
            # This producer catches up with everything published so far: its next
            # edits depend on the others' updates.
            for update in made:
                writer.load(update)
            continue
        if action == "set":
            made.append(writer.set(key, value))
        elif action == "append":
            made.append(writer.append("list", f"{key}{value}"))
        elif action == "nested":
            made.append(writer.set(("m", key), [value, {"v": value}]))
        elif key in writer.to_json():
            made.append(writer.delete(key))
    reference = DocumentWriter(client_id=999)
    for update in made:
        reference.load(update)
    ops = [crdt_op(f"u{i}", i, update, node=f"p{i % 3}") for i, update in enumerate(made)]
    return ops, reference.to_json()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_three_producers_converge_byte_identically_in_every_arrival_order(data: st.DataObject) -> None:
    ops, reference = three_writers(data.draw(edits))
    in_hlc_order = fold_epochs(CRDT, DOCS, [ops])
    for _ in range(3):
        # Each op in an epoch of its own, in an arbitrary order: most are late.
        order = data.draw(st.permutations(ops))
        one_by_one = fold_epochs(CRDT, DOCS, [[op] for op in order])
        assert canonical(one_by_one) == canonical(in_hlc_order)
    state = in_hlc_order[("k1",)]
    assert body(state) == reference
    assert set(state.meta) == {"state"}  # nothing left waiting once every update is in


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_crdt_meta_is_canonical_even_while_updates_wait_for_their_predecessors(data: st.DataObject) -> None:
    ops, _ = three_writers(data.draw(edits))
    # Some updates never arrive; the rest arrive in two different orders.
    subset = data.draw(st.lists(st.sampled_from(ops), unique_by=lambda op: op.id, min_size=1))
    first = fold_epochs(CRDT, DOCS, [[op] for op in data.draw(st.permutations(subset))])
    second = fold_epochs(CRDT, DOCS, [[op] for op in data.draw(st.permutations(subset))])
    assert canonical(first) == canonical(second)


def test_concurrent_edits_of_different_keys_both_survive_in_sorted_canonical_json() -> None:
    alice, bob = DocumentWriter(client_id=1), DocumentWriter(client_id=2)
    ops = [crdt_op("a", 1, alice.set("zeta", 1), "alice"), crdt_op("b", 1, bob.set("alpha", [1.5, "x"]), "bob")]
    state = fold_epochs(CRDT, DOCS, [ops])[("k1",)]
    assert state.values == {"body": '{"alpha":[1.5,"x"],"zeta":1}'}


def test_an_update_that_arrives_before_its_predecessor_waits_in_pending() -> None:
    writer = DocumentWriter(client_id=7)
    first = writer.set("title", "draft")
    second = writer.set("title", "final")
    # The second edit arrives first: it cannot integrate yet, and is kept.
    state = CRDT.apply(DOCS, ABSENT, crdt_op("2", 2, second))
    assert body(state) == {}
    assert state.meta["pending"] == [base64.b64encode(merge_updates(decode_update(second))).decode()]
    # Its predecessor arrives late: both take effect, nothing waits any more.
    state = CRDT.apply(DOCS, state, crdt_op("1", 1, first))
    assert body(state) == {"title": "final"}
    assert set(state.meta) == {"state"}


def test_a_repeated_update_changes_nothing() -> None:
    writer = DocumentWriter(client_id=7)
    update = writer.set("x", 1)
    state = CRDT.apply(DOCS, ABSENT, crdt_op("1", 1, update))
    assert CRDT.apply(DOCS, state, crdt_op("2", 2, update)) is state


def test_fully_integrated_checks_structs_and_deletions() -> None:
    writer = DocumentWriter(client_id=7)
    insert = decode_update(writer.set("x", 1))
    delete = decode_update(writer.delete("x"))
    empty: Doc[Any] = Doc(client_id=1)
    assert not fully_integrated(insert, empty)
    assert not fully_integrated(delete, empty)  # it deletes an item the doc does not have
    both: Doc[Any] = Doc(client_id=1)
    both.apply_update(insert)
    both.apply_update(delete)
    assert fully_integrated(insert, both) and fully_integrated(delete, both)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"update": "not base64!"}, "bad_crdt_update"),
        ({"update": base64.b64encode(b"hello world").decode()}, "bad_crdt_update"),
        ({"update": ""}, "bad_crdt_update"),
        ({"patch": "x"}, "bad_data"),
        ({"update": 5}, "bad_data"),
    ],
)
def test_crdt_rejections(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(OpRejected) as e:
        CRDT.apply(DOCS, ABSENT, make_op("1", (1, 0, "p"), "crdt", data=data))
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "columns",
    [
        [{"name": "body", "type": "text"}],
        [{"name": "body", "type": "json"}, {"name": "title", "type": "text"}],
    ],
)
def test_crdt_rejects_a_table_without_exactly_one_json_column(columns: list[dict[str, Any]]) -> None:
    with pytest.raises(OpRejected) as e:
        CRDT.apply(table("crdt", *columns), ABSENT, crdt_op("1", 1, DocumentWriter().set("x", 1)))
    assert e.value.reason == "bad_table"


def test_crdt_rejects_other_kinds() -> None:
    with pytest.raises(OpRejected) as e:
        CRDT.apply(DOCS, ABSENT, make_op("1", (1, 0, "p"), "delete"))
    assert e.value.reason == "kind_not_allowed"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_corrupted_update_is_applied_or_rejected_never_crashes(flips: list[tuple[int, int]]) -> None:
    writer = DocumentWriter(client_id=3)
    writer.set("a", [1, {"b": "c"}])
    raw = bytearray(decode_update(writer.state()))
    for position, byte in flips:
        raw[position % len(raw)] = byte
    op = make_op("1", (1, 0, "p"), "crdt", data={"update": base64.b64encode(bytes(raw)).decode()})
    try:
        state = CRDT.apply(DOCS, ABSENT, op)
    except OpRejected as e:
        assert e.reason == "bad_crdt_update"
    else:
        assert state.values is not None and isinstance(orjson.loads(state.values["body"]), dict)


# -- the producer helper ----------------------------------------------------------------


def test_document_writer_edits_paths_and_renders_what_the_table_shows() -> None:
    writer = DocumentWriter(client_id=5)
    writer.set("title", "Minutes")
    writer.set(("people",), ["ana", "bo"])
    writer.append("people", "cy")
    writer.set("people.0", "Ana")
    writer.delete("people.1")
    writer.set("meta.rev", 3)
    writer.set("meta.ratio", 0.5)
    assert writer.to_json() == {"title": "Minutes", "people": ["Ana", "cy"], "meta": {"rev": 3, "ratio": 0.5}}
    # A second writer that loads the state sees the same document.
    assert DocumentWriter(writer.state()).to_json() == writer.to_json()


def test_document_writer_updates_replayed_through_the_strategy_give_its_json() -> None:
    writer = DocumentWriter(client_id=5)
    updates = [writer.set("a", {"b": [1, 2]}), writer.append("a.b", 3), writer.delete("a.b.0")]
    state = ABSENT
    for i, update in enumerate(updates):
        state = CRDT.apply(DOCS, state, crdt_op(str(i), i, update))
    assert body(state) == writer.to_json() == {"a": {"b": [2, 3]}}


def test_every_permutation_of_a_small_history_gives_identical_bytes() -> None:
    # Exhaustive for four updates from three producers, one of them dependent.
    ana, bo, cy = (DocumentWriter(client_id=i) for i in (1, 2, 3))
    base = ana.set("list", [])
    bo.load(base)
    cy.load(base)
    made = [base, bo.append("list", "b"), cy.append("list", "c")]
    cy.load(made[1])
    made.append(cy.delete("list.0"))
    ops = [crdt_op(f"u{i}", i, update) for i, update in enumerate(made)]
    results = {
        canonical_json(canonical(fold_epochs(CRDT, DOCS, [[op] for op in order])))
        for order in itertools.permutations(ops)
    }
    assert len(results) == 1


# -- preparing ahead of the seal ------------------------------------------------------------

LWW_THINGS = table("lww", {"name": "a", "type": "integer"}, {"name": "b", "type": "text", "nullable": False})
lww_ops = st.one_of(
    st.tuples(st.just("upsert"), patch_data | st.just({"b": "x"}) | st.just({"zz": 1})),
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("patch"), patch_data),
)
crdt_ops = st.tuples(
    st.just("crdt"),
    st.sampled_from([{"update": "!!"}, {"nope": 1}, None])
    | st.builds(lambda v: {"update": DocumentWriter(client_id=7).set("k", v)}, st.integers(0, 3)),
)
PREPARED_CASES = {
    "lww": (get_strategy("lww"), LWW_THINGS, lww_ops),
    "field-lww": (FLWW, NOTES, field_ops),
    "counter": (COUNTER, COUNTS, counter_ops),
    "crdt": (CRDT, DOCS, crdt_ops),
}


def outcome(call: Any) -> Any:
    """What a strategy call gives: the state, or the rejection's reason and detail."""
    try:
        return call()
    except OpRejected as e:
        return ("rejected", e.reason, e.detail)


@pytest.mark.parametrize("name", sorted(PREPARED_CASES))
@EXAMPLES
@given(data=st.data())
def test_apply_prepared_with_what_prepare_made_is_apply(name: str, data: st.DataObject) -> None:
    strategy, schema, ops = PREPARED_CASES[name]
    history, _, _ = data.draw(histories(ops))
    state = ABSENT
    # Along the fold, for every state it passes through, and for the op both as the
    # pydantic Op and as the record a peer carries:
    for op in sorted(history, key=Op.sort_key):
        for form in (op, record_of(op)):
            direct = outcome(lambda: strategy.apply(schema, state, form))  # noqa: B023
            try:
                prepared = strategy.prepare(schema, form)
            except OpRejected as e:
                # ...prepare refuses exactly the ops apply refuses whatever the state...
                assert direct == ("rejected", e.reason, e.detail)
                continue
            # ...and otherwise apply_prepared does exactly what apply does.
            assert outcome(lambda: strategy.apply_prepared(schema, state, form, prepared)) == direct  # noqa: B023
        if isinstance(direct, RowState):
            state = direct


def test_a_strategy_without_prepare_is_applied_as_before() -> None:
    class Plain(Strategy):
        name = "plain"
        kinds = frozenset({OpKind.UPSERT})

        def apply(self, table: TableSchema, state: RowState, op: Any) -> RowState:
            return RowState({"n": op.id}, {})

    op = make_op("o1", (1, 0, "p"), "upsert")
    # The default prepares nothing and applies as apply does.
    assert Plain().prepare(NOTES, op) is None
    assert Plain().apply_prepared(NOTES, ABSENT, op, None) == RowState({"n": "o1"}, {})


def test_an_update_pycrdt_refuses_with_a_runtime_error_is_rejected() -> None:
    # Found by the corruption property above: one flipped byte that pycrdt reports as a
    # RuntimeError, which escaped planning and stopped the epoch on every peer.
    writer = DocumentWriter(client_id=3)
    writer.set("a", [1, {"b": "c"}])
    raw = bytearray(decode_update(writer.state()))
    raw[1056 % len(raw)] = 1
    op = make_op("1", (1, 0, "p"), "crdt", data={"update": base64.b64encode(bytes(raw)).decode()})

    with pytest.raises(OpRejected) as caught:
        CRDT.apply(DOCS, ABSENT, op)

    assert caught.value.reason == "bad_crdt_update"
