"""The publish measurement: :class:`Producer` against raw ``publish_async`` of one op per message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.js import JetStreamContext

from devtools.demo import TABLE
from oplog.codec import canonical_bytes
from oplog.hlc import HybridLogicalClock
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.stream import ensure_stream
from oplog.topology import Topology

from .options import Sizes
from .stats import rate
from .streams import connected


def make_ops(n: int, node: str = "bench") -> list[Op]:
    clock = HybridLogicalClock(node)
    producer = Producer(None, Topology(db="x"), clock=clock)  # type: ignore[arg-type]  # make_op only
    return [producer.make_op(TABLE, f"k{i:08d}", "upsert", {"name": f"n-{i}", "score": i}) for i in range(n)]


def make_ops_alone(n: int, batch_ops: int) -> float:
    """Seconds to build ``n`` rows and make_ops them (stamp, validate, encode), no publishing."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    producer = Producer(None, Topology(db="x"), clock=HybridLogicalClock("bench-make"), config=config)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    rows = [(f"k{i:08d}", {"name": f"n-{i}", "score": i}) for i in range(n)]
    batch = producer.make_ops(TABLE, "upsert", rows)
    seconds = time.perf_counter() - t0
    assert len(batch) == n
    return seconds


async def producer_run(js: JetStreamContext, topology: Topology, ops: list[Op], batch_ops: int) -> float:
    """Seconds to publish ``ops`` in one ``publish_many`` and have every one acknowledged."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-producer")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        receipts = await producer.publish_many(ops)
    seconds = time.perf_counter() - t0
    assert len(receipts) == len(ops)
    return seconds


async def producer_enqueue_run(js: JetStreamContext, topology: Topology, ops: list[Op], batch_ops: int) -> float:
    """Seconds to enqueue ``ops`` one at a time and gather every receipt (the per-op API)."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-enqueue")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        futures = [producer.enqueue(op) for op in ops]
    receipts = await asyncio.gather(*futures)
    seconds = time.perf_counter() - t0
    assert len(receipts) == len(ops)
    return seconds


async def producer_e2e(js: JetStreamContext, topology: Topology, n: int, batch_ops: int) -> float:
    """Seconds to make ``n`` ops with make_ops (stamp, validate, encode) from the caller's
    rows and publish them, all acknowledged: the fastest documented way in. Building
    the rows (the caller's keys and data) is timed too, as in :func:`producer_e2e_per_op`."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-e2e")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        rows = [(f"k{i:08d}", {"name": f"n-{i}", "score": i}) for i in range(n)]
        receipts = await producer.publish_many(producer.make_ops(TABLE, "upsert", rows))
    seconds = time.perf_counter() - t0
    assert len(receipts) == n
    return seconds


async def producer_e2e_per_op(js: JetStreamContext, topology: Topology, n: int, batch_ops: int) -> float:
    """Seconds to make_op (stamp + validate) ``n`` ops one at a time and publish them, all acknowledged."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-e2e-per-op")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        ops = [producer.make_op(TABLE, f"k{i:08d}", "upsert", {"name": f"n-{i}", "score": i}) for i in range(n)]
        receipts = await producer.publish_many(ops)
    seconds = time.perf_counter() - t0
    assert len(receipts) == n
    return seconds


async def raw_run(js: JetStreamContext, topology: Topology, ops: list[Op]) -> float:
    """Seconds to publish_async each op as its own message and get every ack."""
    subject = topology.ops_subject(TABLE)
    stream = topology.stream
    t0 = time.perf_counter()
    # No wait_stall: with one, nats-py wraps every publish in asyncio.wait_for (about 5x slower).
    futures = [await js.publish_async(subject, canonical_bytes(op.to_wire()), stream=stream) for op in ops]
    await asyncio.gather(*futures)
    return time.perf_counter() - t0


async def measure_publish(url: str, s: Sizes) -> dict[str, Any]:
    n = s.publish_ops
    t0 = time.perf_counter()
    ops = make_ops(n)
    make_s = time.perf_counter() - t0
    async with connected(url) as nc:
        js = nc.jetstream()
        prod_topo, raw_topo, e2e_topo = Topology(db="pubprod"), Topology(db="pubraw"), Topology(db="pube2e")
        enq_topo, per_op_topo = Topology(db="pubenq"), Topology(db="pube2eop")
        for topo in (prod_topo, raw_topo, e2e_topo, enq_topo, per_op_topo):
            await ensure_stream(js, topo)
        # Warm-up (connection, async inbox, server stream files), not timed.
        warm = Topology(db="pubwarm")
        await ensure_stream(js, warm)
        await producer_run(js, warm, ops[:2000], s.batch_ops)
        await producer_enqueue_run(js, warm, ops[:2000], s.batch_ops)
        await raw_run(js, warm, ops[:2000])
        await producer_e2e(js, warm, 2000, s.batch_ops)
        producer_s = await producer_run(js, prod_topo, ops, s.batch_ops)
        raw_s = await raw_run(js, raw_topo, ops)
        enqueue_s = await producer_enqueue_run(js, enq_topo, ops, s.batch_ops)
        per_op_s = await producer_e2e_per_op(js, per_op_topo, n, s.batch_ops)
        e2e_s = await producer_e2e(js, e2e_topo, n, s.batch_ops)
        stored = {t.db: (await js.stream_info(t.stream)).state.messages for t in (prod_topo, raw_topo, enq_topo)}
    make_ops_s = make_ops_alone(n, s.batch_ops)
    producer_rate, raw_rate, enqueue_rate = rate(n, producer_s), rate(n, raw_s), rate(n, enqueue_s)
    return {
        "ops": n,
        "batch_ops": s.batch_ops,
        "producer_s": producer_s,
        "producer_ops_per_s": producer_rate,
        "raw_s": raw_s,
        "raw_ops_per_s": raw_rate,
        "ratio": producer_rate / raw_rate,
        "enqueue_s": enqueue_s,
        "producer_enqueue_ops_per_s": enqueue_rate,
        "enqueue_ratio": enqueue_rate / raw_rate,
        "make_op_ops_per_s": rate(n, make_s),
        "producer_with_make_op_ops_per_s": rate(n, per_op_s),
        "make_ops_ops_per_s": rate(n, make_ops_s),
        "producer_with_make_ops_ops_per_s": rate(n, e2e_s),
        "make_ops_ratio": rate(n, e2e_s) / rate(n, per_op_s),
        "messages_stored": stored,
    }
