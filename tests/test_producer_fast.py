"""The producer's fast publish path against a real nats-server: batches, receipts, retries.

What is checked here is what a caller relies on: every op is stored exactly once (retries
included), each receipt names the message that holds its op and the op's epoch, and a
receipt future behaves as an asyncio future does wherever asyncio accepts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from nats.js import JetStreamContext

from devtools.natsd import NatsServer
from oplog.codec import canonical_bytes, decode_batch, decode_op, encode_op
from oplog.errors import InvalidOp, OversizeOp, PublishError
from oplog.hlc import HybridLogicalClock
from oplog.op import Op, _OpIds
from oplog.producer import Producer, ProducerConfig
from oplog.receipts import Receipt, ReceiptFuture, make_receipt
from oplog.stream import ensure_stream
from oplog.topology import StreamLimits, Topology
from tests.support import connected

pytestmark = pytest.mark.integration

EPOCH_MS = 1000


def epoch_of(wall_ms: int) -> int:
    return wall_ms // EPOCH_MS


def ops_for(producer: Producer, n: int, table: str = "users", tag: str = "") -> list[Op]:
    return [producer.make_op(table, f"k{tag}{i}", "upsert", {"name": f"n{i}", "score": i}) for i in range(n)]


@contextlib.asynccontextmanager
async def stream(url: str, db: str = "fast") -> AsyncIterator[tuple[JetStreamContext, Topology]]:
    topology = Topology(db=db)
    async with connected(url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        yield js, topology


async def stored(js: JetStreamContext, topology: Topology) -> dict[int, list[Op]]:
    """Every ops message of the stream, decoded the way the materializer decodes it."""
    info = await js.stream_info(topology.stream)
    messages = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(topology.stream, seq)
        if topology.message_kind(msg.subject) == "ops":
            messages[seq] = [decode_op(raw) for raw in decode_batch(msg.data)]
    return messages


def assert_receipts_match_stream(receipts: list[Receipt], ops: list[Op], messages: dict[int, list[Op]]) -> None:
    """Each op is stored exactly once, in the message its receipt names, and unchanged."""
    where = {}
    for seq, batch in messages.items():
        for op in batch:
            assert op.id not in where, f"op {op.id} stored twice"
            where[op.id] = (seq, op)
    assert sorted(where) == sorted(op.id for op in ops)
    assert len(receipts) == len(ops)
    for receipt, op in zip(receipts, ops, strict=True):
        seq, stored_op = where[op.id]
        assert (receipt.op_id, receipt.hlc, receipt.stream_seq) == (op.id, op.hlc, seq)
        assert stored_op == op


# -- no server --------------------------------------------------------------------------


def test_encode_op_writes_the_canonical_wire_bytes() -> None:
    producer = Producer(None, Topology(db="x"), clock=HybridLogicalClock("enc"))  # type: ignore[arg-type]
    ops = [
        producer.make_op("users", "k", "upsert", {"z": 1, "a": {"y": [1, 2.5, None], "b": "é"}}),
        producer.make_op("users", ["a", 7], "delete"),
        producer.make_op("users", 12, "incr", {}, op_id="x" * 200, hlc=(1, 2, "other")),
        Op.model_validate({"id": "v", "hlc": [5, 0, "n"], "table": "t", "key": "k", "kind": "patch", "data": None}),
    ]
    for op in ops:
        assert encode_op(op) == canonical_bytes(op.to_wire())


def test_encode_op_refuses_what_json_cannot_hold() -> None:
    producer = Producer(None, Topology(db="x"), clock=HybridLogicalClock("enc"))  # type: ignore[arg-type]
    op = producer.make_op("users", "k", "upsert", {"when": {1, 2}})
    with pytest.raises(InvalidOp, match="not JSON-serializable"):
        encode_op(op)


def test_receipts_built_fast_equal_receipts_built_plainly() -> None:
    hlc = HybridLogicalClock("r").now()
    fast = make_receipt("id", hlc, 7, True, 3)
    assert fast == Receipt("id", hlc, 7, True, 3)
    assert hash(fast) == hash(Receipt("id", hlc, 7, True, 3))
    assert repr(fast) == repr(Receipt("id", hlc, 7, True, 3))


def test_made_op_ids_are_unique_and_shaped_like_uuid4_hex() -> None:
    producer = Producer(None, Topology(db="x"), clock=HybridLogicalClock("ids"))  # type: ignore[arg-type]
    ids = [producer.make_op("users", "k", "delete").id for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


def test_op_ids_get_a_new_prefix_when_the_counter_wraps_and_in_a_forked_child() -> None:
    source = _OpIds()
    first = source.next()
    source._counter = iter([0x1_0000_0000])  # the next value would need a 33rd bit
    wrapped = source.next()
    assert wrapped[:24] != first[:24] and wrapped.endswith("00000000")
    before = source.next()
    source._reseed()  # what os.register_at_fork runs in a forked child
    assert source.next()[:24] != before[:24]


# -- against nats-server ----------------------------------------------------------------


async def test_publish_many_stores_every_op_once_and_names_its_message(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        config = ProducerConfig(max_batch_ops=1000, max_inflight_batches=2)
        async with Producer(
            js, topology, clock=HybridLogicalClock("many"), config=config, epoch_of=epoch_of
        ) as producer:
            ops = ops_for(producer, 2500) + ops_for(producer, 700, table="orders")
            receipts = await producer.publish_many(ops)
            assert list(await producer.publish_many([])) == []
        messages = await stored(js, topology)
        assert len(messages) == 4  # users: 1000 + 1000 + 500; orders: 700
        assert sorted(len(batch) for batch in messages.values()) == [500, 700, 1000, 1000]
        assert_receipts_match_stream(list(receipts), ops, messages)
        assert list(receipts) == [receipts[i] for i in range(len(ops))] == receipts[:]
        assert {r.epoch for r in receipts} == {epoch_of(op.hlc.wall_ms) for op in ops}
        assert all(r.epoch == epoch_of(r.hlc.wall_ms) and r.duplicate is False for r in receipts)

        # Publishing the same ops again (same ids, same batches) is stored once: the
        # stream's duplicate window recognizes each message id.
        again = Producer(js, topology, clock=HybridLogicalClock("many"), config=config)
        repeat = await again.publish_many(ops)
        await again.close()
        assert [r.duplicate for r in repeat] == [True] * len(ops)
        assert [r.stream_seq for r in repeat] == [r.stream_seq for r in receipts]
        assert await stored(js, topology) == messages


async def test_enqueued_receipts_resolve_with_their_message_and_epoch(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        config = ProducerConfig(max_batch_ops=300, linger_ms=1)
        async with Producer(js, topology, clock=HybridLogicalClock("enq"), config=config, epoch_of=epoch_of) as p:
            ops = ops_for(p, 1000)
            futures = [p.enqueue(op) for op in ops]
            assert all(asyncio.isfuture(f) and isinstance(f, ReceiptFuture) for f in futures)
            receipts = await asyncio.gather(*futures)
        messages = await stored(js, topology)
        assert [len(batch) for batch in messages.values()] == [300, 300, 300, 100]
        assert_receipts_match_stream(receipts, ops, messages)
        assert all(r.epoch == epoch_of(r.hlc.wall_ms) for r in receipts)
        with pytest.raises(PublishError, match="closed"):
            p.enqueue(ops[0])


async def test_a_lone_op_is_sent_after_linger_without_a_flush(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        producer = Producer(js, topology, clock=HybridLogicalClock("lone"), config=ProducerConfig(linger_ms=20))
        receipt = await asyncio.wait_for(producer.submit(producer.make_op("users", "k", "delete")), 5)
        assert receipt.stream_seq == 1
        await producer.close()


async def test_batches_are_cut_by_bytes_and_by_count(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        config = ProducerConfig(max_batch_bytes=4096, max_batch_ops=7, linger_ms=10_000)
        async with Producer(js, topology, clock=HybridLogicalClock("bytes"), config=config) as producer:
            ops = [producer.make_op("users", f"k{i}", "upsert", {"blob": "x" * (i * 37 % 900)}) for i in range(100)]
            futures = [producer.enqueue(op) for op in ops]
            first = producer.make_op("orders", "o", "upsert", {"blob": "y" * 3000})
            lone = producer.enqueue(first)
            # A bulk publish continues the batches that enqueue left open (and sends them
            # at once), and cuts runs of consecutive ops of one table by the same limits.
            tables = ["orders", "orders", "users", "orders", "users", "users", "users"] * 15
            bulk = [
                producer.make_op(t, f"b{i}", "upsert", {"blob": "z" * (i * 53 % 900)}) for i, t in enumerate(tables)
            ]
            bulk_receipts = await asyncio.wait_for(producer.publish_many(bulk), 5)  # no linger
            receipts = await asyncio.wait_for(asyncio.gather(*futures, lone), 5)  # sent with the bulk, no linger
        assert receipts[-1].stream_seq == bulk_receipts[0].stream_seq  # "o" and "b0" share a message
        messages = await stored(js, topology)
        sizes = {seq: len((await js.get_msg(topology.stream, seq)).data) for seq in messages}
        assert max(sizes.values()) <= 4096
        assert all(len(batch) <= 7 and len({op.table for op in batch}) == 1 for batch in messages.values())
        assert sum(len(batch) == 7 for batch in messages.values()) > 5  # cut by count
        assert sum(len(batch) < 7 for batch in messages.values()) > 5  # cut by bytes
        assert_receipts_match_stream([*receipts, *bulk_receipts], [*ops, first, *bulk], messages)


async def test_a_bad_op_in_a_bulk_publish_publishes_nothing(nats_server: NatsServer) -> None:
    topology = Topology(db="bad", limits=StreamLimits(max_op_bytes=1024))
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        async with Producer(js, topology, clock=HybridLogicalClock("bad")) as producer:
            good = ops_for(producer, 10)
            with pytest.raises(OversizeOp, match="limit is 1024"):
                await producer.publish_many([*good, producer.make_op("users", "big", "upsert", {"x": "y" * 2000})])
            with pytest.raises(InvalidOp, match="not JSON-serializable"):
                await producer.publish_many([*good, producer.make_op("users", "set", "upsert", {"x": {1}})])
            with pytest.raises(InvalidOp, match="not JSON-serializable"):
                producer.enqueue(producer.make_op("users", "set", "upsert", {"x": {1}}))
        assert (await js.stream_info(topology.stream)).state.messages == 0


@contextlib.contextmanager
def stopped(server: NatsServer) -> Iterator[None]:
    """Freeze the server process: it keeps its sockets but answers nothing until resumed."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def test_an_unacknowledged_batch_is_retried_and_stored_once(nats_server: NatsServer) -> None:
    async with stream(nats_server.url) as (js, topology):
        config = ProducerConfig(ack_timeout_s=0.3, retries=8, retry_backoff_s=0.05, linger_ms=1)
        producer = Producer(js, topology, clock=HybridLogicalClock("retry"), config=config)
        ops = ops_for(producer, 50)
        with stopped(nats_server):
            futures = [producer.enqueue(op) for op in ops]
            # Attempts are written to the socket and time out unanswered; each retry
            # sends the same payload with the same Nats-Msg-Id.
            await asyncio.sleep(1.0)
            assert not any(f.done() for f in futures)
        receipts = await asyncio.wait_for(asyncio.gather(*futures), 10)
        await producer.close()
        messages = await stored(js, topology)
        assert len(messages) == 1
        assert_receipts_match_stream(receipts, ops, messages)
        # The first attempt was stored, but the attempt that got its ack was a later one.
        assert all(r.duplicate for r in receipts)


async def test_a_publish_retries_until_its_stream_exists(nats_server: NatsServer) -> None:
    topology = Topology(db="late")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        config = ProducerConfig(ack_timeout_s=1, retries=10, retry_backoff_s=0.05)
        async with Producer(js, topology, clock=HybridLogicalClock("late"), config=config) as producer:
            ops = ops_for(producer, 20)
            publishing = asyncio.ensure_future(producer.publish_many(ops))
            await asyncio.sleep(0.3)  # "no stream" answers meanwhile, each one retried
            assert not publishing.done()
            await ensure_stream(js, topology)
            receipts = await asyncio.wait_for(publishing, 30)
        assert_receipts_match_stream(list(receipts), ops, await stored(js, topology))


async def test_when_every_attempt_fails_every_receipt_fails_and_a_republish_is_safe(nats_server: NatsServer) -> None:
    topology = Topology(db="gone")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        config = ProducerConfig(ack_timeout_s=1, retries=1, retry_backoff_s=0.01, linger_ms=1)
        producer = Producer(js, topology, clock=HybridLogicalClock("gone"), config=config)
        ops = ops_for(producer, 30)
        futures = [producer.enqueue(op) for op in ops]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, PublishError) and "after 2 attempts" in str(r) for r in results)
        assert all(isinstance(f.exception(), PublishError) for f in futures)
        with pytest.raises(PublishError, match="same ids is safe"):
            await producer.publish_many(ops)
        await ensure_stream(js, topology)
        receipts = await producer.publish_many(ops)
        receipts_again = await producer.publish_many(ops)
        await producer.close()
        assert [r.duplicate for r in receipts_again] == [True] * len(ops)
        assert_receipts_match_stream(list(receipts), ops, await stored(js, topology))


async def test_a_receipt_future_works_wherever_asyncio_takes_a_future(nats_server: NatsServer) -> None:
    loop = asyncio.get_running_loop()
    async with stream(nats_server.url) as (js, topology):
        producer = Producer(js, topology, clock=HybridLogicalClock("fut"), config=ProducerConfig(linger_ms=200))
        ops = ops_for(producer, 6)
        futures = [producer.enqueue(op) for op in ops]
        first, second, third, fourth, fifth, sixth = futures
        assert first.get_loop() is loop and not first.done() and first.op is ops[0]
        with pytest.raises(asyncio.InvalidStateError):
            first.result()
        with pytest.raises(asyncio.InvalidStateError):
            first.exception()

        # Callbacks run with the context they were given, in order, and errors go to the
        # loop's exception handler, as with asyncio futures.
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
        var.set("given")
        given = contextvars.copy_context()
        var.set("other")
        seen: list[Any] = []
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        first.add_done_callback(lambda f: seen.append(("ctx", var.get())), context=given)
        first.add_done_callback(lambda f: seen.append(("done", f.result().op_id)))

        def fails(f: ReceiptFuture) -> None:
            raise RuntimeError("boom")

        first.add_done_callback(fails)
        removed = []
        first.add_done_callback(removed.append)
        assert first.remove_done_callback(removed.append) == 1

        # Cancelling a receipt stops waiting for it, not the op, which is still published.
        assert second.cancel("not needed")
        assert second.cancelled() and second.done() and not second.cancel()
        with pytest.raises(asyncio.CancelledError, match="not needed"):
            second.result()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(third, 0.001)  # wait_for cancels what it waited for
        assert third.cancelled()

        done, pending = await asyncio.wait([fourth, fifth], timeout=10)
        assert done == {fourth, fifth} and not pending
        assert (await asyncio.shield(sixth)).op_id == ops[5].id
        assert await first == first.result() and first.exception() is None
        await asyncio.sleep(0)  # callbacks of a resolved receipt run soon, not at once
        await asyncio.sleep(0)
        assert seen == [("ctx", "given"), ("done", ops[0].id)]
        assert [str(e["exception"]) for e in errors] == ["boom"]
        assert removed == []
        late: list[Any] = []
        fourth.add_done_callback(late.append)
        assert late == []
        await asyncio.sleep(0)
        assert late == [fourth]
        gathered = await asyncio.gather(second, first, return_exceptions=True)
        assert isinstance(gathered[0], asyncio.CancelledError) and gathered[1] == first.result()
        await producer.close()
        loop.set_exception_handler(None)
        messages = await stored(js, topology)
        assert sorted(op.id for batch in messages.values() for op in batch) == sorted(op.id for op in ops)
