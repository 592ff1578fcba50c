"""The async producer: batches ops into stream messages and returns receipts.

``await producer.submit(...)`` stamps an op with the producer's HLC (unless an
explicit ``hlc`` is given, as when replaying a log), queues it, and resolves once
JetStream has acknowledged the message holding it. Messages are cut per table when
``max_batch_ops`` ops or ``max_batch_bytes`` bytes are queued, or ``linger_ms`` after
the first op queued. Each message carries ``Nats-Msg-Id`` = a hash of its op ids, so
a retried publish of the same batch is stored once (and the materializer drops any
op id it has already applied, whatever batch it comes in).

The producer does not know epochs (that is the ``epoch`` package's business): the
caller may pass ``epoch_of`` to have receipts name the epoch an op belongs to.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, TooManyStalledMsgsError
from pydantic import BaseModel, ConfigDict, Field

from oplog.codec import canonical_bytes, decode_op
from oplog.errors import CodecError, InvalidOp, OversizeOp, PublishError
from oplog.hlc import HLC, HybridLogicalClock
from oplog.op import Op, OpKind
from oplog.topology import Topology

BATCH_OVERHEAD = 32


class ProducerConfig(BaseModel):
    """How a producer batches and retries."""

    model_config = ConfigDict(frozen=True)

    linger_ms: float = Field(5.0, ge=0)
    max_batch_ops: int = Field(1000, ge=1)
    max_batch_bytes: int = Field(512 * 1024, gt=BATCH_OVERHEAD)
    ack_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(0.2, ge=0)


@dataclass(frozen=True)
class Receipt:
    """Proof that an op is in the stream: where, and (if known) in which epoch."""

    op_id: str
    hlc: HLC
    stream_seq: int
    duplicate: bool
    epoch: int | None


@dataclass
class _Pending:
    op: Op
    size: int
    future: asyncio.Future[Receipt]


class Producer:
    """Publishes ops of one database in batches (see module docstring).

    Use as ``async with Producer(js, topology, clock=...) as producer``; leaving the
    block flushes what is queued and waits for its acknowledgements.
    """

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        *,
        clock: HybridLogicalClock,
        config: ProducerConfig | None = None,
        epoch_of: Callable[[int], int] | None = None,
    ) -> None:
        self._js = js
        self.topology = topology
        self.clock = clock
        self.config = config or ProducerConfig()
        self._epoch_of = epoch_of
        self._queues: dict[str, list[_Pending]] = {}
        self._bytes: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def make_op(
        self,
        table: str,
        key: Any,
        kind: OpKind | str,
        data: dict[str, Any] | None = None,
        *,
        op_id: str | None = None,
        hlc: HLC | tuple[int, int, str] | list[Any] | None = None,
    ) -> Op:
        """Validate and stamp an op without sending it (raises InvalidOp/ClockError)."""
        if hlc is None:
            stamp: Any = self.clock.now()
        else:
            self.clock.check_stamp(tuple(hlc))  # type: ignore[arg-type]
            stamp = list(hlc)
            # An explicit stamp is still observed, so our own later stamps order after it.
            self.clock.receive(tuple(hlc))  # type: ignore[arg-type]
        raw = {
            "id": op_id or uuid.uuid4().hex,
            "hlc": stamp.to_wire() if isinstance(stamp, HLC) else stamp,
            "table": table,
            "key": key,
            "kind": kind.value if isinstance(kind, OpKind) else kind,
        }
        if data is not None:
            raw["data"] = data
        try:
            return decode_op(raw)
        except CodecError as e:
            raise InvalidOp(f"{e}; nothing was published") from None

    async def submit(self, op: Op) -> Receipt:
        """Queue ``op`` and wait for the stream to acknowledge it."""
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> asyncio.Future[Receipt]:
        """Queue ``op``; the returned future resolves to its receipt."""
        if self._closed:
            raise PublishError("the producer is closed")
        size = len(canonical_bytes(op.to_wire())) + 1
        limit = min(self.topology.limits.max_op_bytes, self.config.max_batch_bytes - BATCH_OVERHEAD)
        if size > limit:
            raise OversizeOp(f"op {op.id!r} is {size} bytes; the limit is {limit}. Split the row or store a reference")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        table = op.table
        queue = self._queues.setdefault(table, [])
        if queue and self._bytes[table] + size > self.config.max_batch_bytes - BATCH_OVERHEAD:
            self._flush(table)
            queue = self._queues.setdefault(table, [])
        queue.append(_Pending(op, size, future))
        self._bytes[table] = self._bytes.get(table, 0) + size
        if len(queue) >= self.config.max_batch_ops:
            self._flush(table)
        elif table not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[table] = loop.call_later(self.config.linger_ms / 1000, self._flush, table)
        return future

    async def flush(self) -> None:
        """Send everything queued and wait for all acknowledgements."""
        for table in list(self._queues):
            self._flush(table)
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        await self.flush()

    def _flush(self, table: str) -> None:
        timer = self._timers.pop(table, None)
        if timer is not None:
            timer.cancel()
        batch = self._queues.pop(table, [])
        self._bytes.pop(table, None)
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._publish(table, batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, table: str, batch: list[_Pending]) -> None:
        payload = b'{"v":1,"ops":[' + b",".join(canonical_bytes(p.op.to_wire()) for p in batch) + b"]}"
        msg_id = "ops-" + hashlib.sha256("\n".join(p.op.id for p in batch).encode()).hexdigest()[:32]
        headers = {"Nats-Msg-Id": msg_id}
        subject = self.topology.ops_subject(table)
        error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                pending = await self._js.publish_async(
                    subject, payload, wait_stall=self.config.ack_timeout_s, stream=self.topology.stream, headers=headers
                )
                ack = await asyncio.wait_for(pending, self.config.ack_timeout_s)
            except (TimeoutError, NatsTimeoutError, NoRespondersError, TooManyStalledMsgsError, APIError) as e:
                # Same payload and Nats-Msg-Id: the stream stores it at most once.
                error = e
                await asyncio.sleep(self.config.retry_backoff_s * (2**attempt))
                continue
            for p in batch:
                if not p.future.done():
                    epoch = self._epoch_of(p.op.hlc.wall_ms) if self._epoch_of else None
                    p.future.set_result(Receipt(p.op.id, p.op.hlc, ack.seq, bool(ack.duplicate), epoch))
            return
        failure = PublishError(
            f"stream {self.topology.stream} did not acknowledge {len(batch)} op(s) after "
            f"{self.config.retries + 1} attempts ({error!r}); retrying them with the same ids is safe"
        )
        for p in batch:
            if not p.future.done():
                p.future.set_exception(failure)
