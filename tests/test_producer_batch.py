"""Producer.make_ops: many ops stamped under one clock lock, checked in one loop, encoded once.

What is held here: an OpBatch publishes exactly what make_op + publish_many would (the same
ops, byte for byte, whatever the rows), refuses exactly what they refuse with the same
error (prefixed by the row), cuts messages within the producer's limits, and its stamps
and ids are those that one-at-a-time stamping and id making give.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.natsd import NatsServer
from oplog.codec import encode_op
from oplog.errors import ClockError, InvalidOp, OversizeOp
from oplog.hlc import HLC, MAX_LOGICAL, HybridLogicalClock
from oplog.op import Op, OpKind, _OpIds
from oplog.opbatch import OpBatch, message_id
from oplog.producer import Producer, ProducerConfig
from oplog.receipts import BATCH_HEAD, BATCH_TAIL
from oplog.topology import StreamLimits, Topology
from tests.test_producer_fast import assert_receipts_match_stream, epoch_of, stored, stream


def producer(max_ops: int = 1000, max_op_bytes: int = 64 * 1024, max_batch_bytes: int = 512 * 1024) -> Producer:
    topology = Topology(db="x", limits=StreamLimits(max_op_bytes=max_op_bytes))
    config = ProducerConfig(max_batch_ops=max_ops, max_batch_bytes=max_batch_bytes)
    return Producer(None, topology, clock=HybridLogicalClock("batch"), config=config)  # type: ignore[arg-type]


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)  # fmt: skip
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)  # fmt: skip
good_keys = st.one_of(st.text(max_size=10), st.integers(-(2**63), 2**63 - 1),
                      st.lists(st.text(max_size=4) | st.integers(0, 99), min_size=1, max_size=3))  # fmt: skip
keys = st.one_of(
    good_keys, good_keys,
    st.tuples(st.text(max_size=4), st.integers(0, 9)),   # tuple keys go through pydantic in make_op
    st.booleans(), st.floats(), st.none(), st.just([]), st.just(()), st.just(["a", True]), st.just(2**70),
)  # fmt: skip
data = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.just({1: "not a str key"}), st.just({"when": {1, 2}}), st.just({"big": 2**70}), st.just([1, 2]),
    st.just("text"), st.sampled_from([deep(252), deep(253), deep(254), deep(255)]),
    st.just({"long": "x" * 400}),
)  # fmt: skip
tables = st.sampled_from(["users", "users", "Orders_2", "bad name", "oplog_x", "dolt_y", ""])
kinds = st.sampled_from(["upsert", "delete", OpKind.PATCH, "incr", "nope"])
limits = st.tuples(st.sampled_from([1, 3, 1000]), st.sampled_from([64 * 1024, 350]), st.sampled_from([512 * 1024, 900]))

ID = re.compile(r"'[0-9a-f]{32}'")


def reference(made_by: Producer, table: Any, kind: Any, rows: list[tuple[Any, Any]]) -> tuple[int, type, str] | None:
    """The first row that make_op, or publish_many's encoding and size check, refuses:
    (row, error class, message with ids blanked); None if every row is accepted."""
    for i, (key, data_) in enumerate(rows):
        try:
            op = made_by.make_op(table, key, kind, data_)
            encoded = encode_op(op)
        except InvalidOp as e:
            return i, type(e), ID.sub("ID", str(e))
        if len(encoded) + 1 > made_by._op_limit:
            return i, OversizeOp, ID.sub("ID", f"op {op.id!r} is {len(encoded) + 1} bytes; the limit is "
                                              f"{made_by._op_limit}. Split the row or store a reference")  # fmt: skip
    return None


def check_messages(batch: OpBatch, made_by: Producer, expected: list[Op]) -> None:
    """The messages hold the ops in order, each op's bytes exactly encode_op's, within the limits."""
    start = 0
    for payload, stop, msg_id in batch.messages:
        assert 0 < stop - start <= made_by._max_ops
        encoded = [encode_op(op) for op in expected[start:stop]]
        assert payload == BATCH_HEAD + b",".join(encoded) + BATCH_TAIL
        assert sum(len(e) + 1 for e in encoded) <= made_by._batch_limit
        assert msg_id == message_id(batch.ids[start:stop])
        start = stop
    assert start == len(expected) == len(batch)


@settings(max_examples=300, deadline=None)
@given(tables, kinds, st.lists(st.tuples(keys, data), max_size=12), limits)
def test_made_ops_are_make_ops_ops_byte_for_byte_and_refused_alike(
    table: Any, kind: Any, rows: list[tuple[Any, Any]], limit: tuple[int, int, int]
) -> None:
    made_by = producer(*limit)
    refused = reference(producer(*limit), table, kind, rows)
    if refused is None and rows:
        batch = made_by.make_ops(table, kind, rows)
        checker = producer(*limit)
        expected = [
            checker.make_op(table, key, kind, data_, op_id=batch.ids[i], hlc=batch.hlc(i))
            for i, (key, data_) in enumerate(rows)
        ]
        check_messages(batch, made_by, expected)
        assert batch.ops() == list(batch) == expected
        assert [s.hlc for s in batch.stamps()] == [op.hlc for op in expected]
    elif refused is not None:
        row, error, message = refused
        with pytest.raises(InvalidOp) as caught:
            made_by.make_ops(table, kind, rows)
        assert type(caught.value) is error
        assert ID.sub("ID", str(caught.value)) == f"row {row}: {message}"


def assert_like_make_op(made_by: Producer, table: Any, kind: Any, rows: list[tuple[Any, Any]]) -> None:
    refused = reference(producer(), table, kind, rows)
    if refused is None:
        batch = made_by.make_ops(table, kind, rows)
        expected = [
            producer().make_op(table, k, kind, d, op_id=batch.ids[i], hlc=batch.hlc(i)) for i, (k, d) in enumerate(rows)
        ]
        check_messages(batch, made_by, expected)
    else:
        with pytest.raises(refused[1]) as caught:
            made_by.make_ops(table, kind, rows)
        assert ID.sub("ID", str(caught.value)) == f"row {refused[0]}: {refused[2]}"


@pytest.mark.parametrize("key", ["k", 7, ["k", 1], ("k", 1), ("k",), True, 1.5, [], ()])
@pytest.mark.parametrize("data_", [None, {}, {"a": 1}, {1: "x"}, {"s": {1}}, {"b": 2**70}, [1], "t", deep(253),
                                   deep(254), deep(255), {"a": deep(253)}])  # fmt: skip
def test_each_shape_of_row_is_made_or_refused_as_make_op_does(key: Any, data_: Any) -> None:
    # The same row alone, after good rows (the fast run path), and after a refused one.
    made_by = producer()
    for rows in ([(key, data_)], [("a", {"x": 1})] * 5 + [(key, data_)], [(key, data_), (None, None)]):
        assert_like_make_op(made_by, "users", "upsert", rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.integers(0, 2**40)), min_size=1, max_size=3000),
       st.sampled_from([1, 7, 1000]), st.sampled_from([2000, 30_000, 512 * 1024]))  # fmt: skip
def test_messages_are_cut_within_the_producers_limits(
    rows: list[tuple[str, int]], max_ops: int, max_bytes: int
) -> None:
    made_by = producer(max_ops=max_ops, max_batch_bytes=max_bytes)
    # Sizes vary by row, and some runs are too large to bound their ops' sizes.
    batch = made_by.make_ops("users", "upsert", [(k, {"s": "y" * (n % 900), "n": n}) for k, n in rows])
    check_messages(batch, made_by, batch.ops())
    assert [op.key for op in batch.ops()] == [(k,) for k, _ in rows]


def test_the_usual_rows_and_kinds_without_data() -> None:
    made_by = producer()
    before = made_by.clock.now()
    batch = made_by.make_ops("users", OpKind.DELETE, [(f"k{i}", None) for i in range(600)] + [([1, "a"], None)])
    ops = batch.ops()
    assert [op.data for op in ops] == [None] * 601 and ops[-1].key == (1, "a")
    assert all(b"data" not in payload for payload, _, _ in batch.messages)
    stamps = [op.hlc for op in ops]
    assert stamps == sorted(stamps) and stamps[0] > before and len(set(stamps)) == 601
    assert made_by.clock.last == stamps[-1] and made_by.clock.now() > stamps[-1]
    assert len(set(batch.ids)) == 601 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in batch.ids)
    assert batch.hlc(-1) == stamps[-1] and batch.stamps()[1:3] == [(batch.ids[k], stamps[k]) for k in (1, 2)]
    with pytest.raises(IndexError):
        batch.hlc(601)
    assert "601 delete op(s) on 'users'" in repr(batch)


def test_refusals_that_make_op_has_no_row_for() -> None:
    made_by = producer()
    with pytest.raises(InvalidOp, match=r"^row 1: a row is a \(key, data\) pair"):
        made_by.make_ops("users", "upsert", [("a", None), ("b", None, 3)])
    with pytest.raises(InvalidOp) as caught:
        # Row 2 does not encode; row 3 is refused by the checks: the earlier row decides.
        made_by.make_ops("users", "upsert", [("a", None), ("b", {}), ("c", {"s": {1}}), (True, None)])
    assert ID.sub("ID", str(caught.value)).startswith("row 2: op ID is not JSON-serializable")
    with pytest.raises(InvalidOp, match="table name 'bad name'"):
        made_by.make_ops("bad name", "upsert", [])  # checked even without rows
    assert len(made_by.make_ops("users", "upsert", iter([]))) == 0


def test_many_stamps_at_once_are_the_stamps_of_as_many_calls() -> None:
    programs = st.lists(st.tuples(st.sampled_from(["tick", "now", "many", "receive"]), st.integers(1, 5)), max_size=30)

    @settings(max_examples=200, deadline=None)
    @given(programs)
    def run(program: list[tuple[str, int]]) -> None:
        now = [1000]
        one, many = (HybridLogicalClock("c", now_ms=lambda: now[0]) for _ in range(2))
        for action, k in program:
            if action == "tick":
                now[0] += k - 3  # the physical clock may also step back
            elif action == "now":
                assert one.now() == many.now()
            elif action == "receive":
                assert one.receive((now[0] + k, k, "r")) == many.receive((now[0] + k, k, "r"))
            else:
                singles = [one.now() for _ in range(k)]
                first = many.now_many(k)
                assert singles == [HLC(first.wall_ms, first.logical + i, "c") for i in range(k)]
            assert one.last == many.last

    run()


def test_many_stamps_refuse_to_overflow_and_leave_the_clock_unchanged() -> None:
    clock = HybridLogicalClock("c", now_ms=lambda: 5)
    clock.now()
    clock._logical = MAX_LOGICAL - 3
    with pytest.raises(ClockError, match="overflow"):
        clock.now_many(4)
    assert clock.last == HLC(5, MAX_LOGICAL - 3, "c")
    assert clock.now_many(3) == HLC(5, MAX_LOGICAL - 2, "c") and clock.last.logical == MAX_LOGICAL
    with pytest.raises(ValueError):
        clock.now_many(0)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
def test_ids_made_many_at_a_time_are_the_ids_made_one_at_a_time(n: int) -> None:
    source = _OpIds()
    before = source.next()
    made = source.next_many(n)
    after = source.next()
    counter = int(before[24:], 16)
    assert made == [f"{source._prefix}{counter + 1 + i:08x}" for i in range(n)]
    assert after == f"{source._prefix}{counter + 1 + n:08x}"


def test_ids_made_many_at_a_time_get_a_new_prefix_when_the_counter_wraps() -> None:
    source = _OpIds()
    old = source._prefix
    source._counter = itertools.count(0xFFFF_FFFE)
    made = source.next_many(5)
    assert len(set(made)) == 5 and all(len(i) == 32 for i in made)
    assert all(not i.startswith(old) for i in made)


# -- against nats-server ----------------------------------------------------------------


@pytest.mark.integration
async def test_a_made_batch_is_stored_once_per_op_and_names_its_messages(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        config = ProducerConfig(max_batch_ops=400, max_inflight_batches=2)
        async with Producer(js, topology, clock=HybridLogicalClock("made"), config=config, epoch_of=epoch_of) as prod:
            early = [prod.make_op("users", "e1", "upsert", {"name": "early"})]
            pending = prod.enqueue(early[0])  # an open batch of the same table is left alone
            users = prod.make_ops("users", "upsert", [(f"u{i}", {"name": f"n{i}", "score": i}) for i in range(1000)])
            orders = prod.make_ops("orders", "delete", [((i, "x"), None) for i in range(300)])
            got_users, got_orders = await asyncio.gather(prod.publish_many(users), prod.publish_many(orders))
            await pending
            again = await prod.publish_many(users)  # the same ids, the same messages
        messages = await stored(js, topology)
        assert sorted(len(m) for m in messages.values()) == [1, 200, 300, 400, 400]
        ops = users.ops() + orders.ops()
        receipts = list(got_users) + list(got_orders)
        assert_receipts_match_stream(receipts, ops, {s: m for s, m in messages.items() if len(m) > 1})
        assert {r.epoch for r in receipts} == {epoch_of(op.hlc.wall_ms) for op in ops}
        assert [r.duplicate for r in again] == [True] * 1000
        assert [(r.op_id, r.hlc, r.stream_seq) for r in again] == [(r.op_id, r.hlc, r.stream_seq) for r in got_users]


@pytest.mark.integration
async def test_a_batch_made_for_other_limits_is_cut_again(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        batch = producer(max_ops=1000).make_ops("users", "upsert", [(f"u{i}", {"score": i}) for i in range(250)])
        config = ProducerConfig(max_batch_ops=100)
        async with Producer(js, topology, clock=HybridLogicalClock("other"), config=config) as prod:
            receipts = await prod.publish_many(batch)
        messages = await stored(js, topology)
        assert sorted(len(m) for m in messages.values()) == [50, 100, 100]
        assert_receipts_match_stream(list(receipts), batch.ops(), messages)
