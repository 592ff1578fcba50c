"""The async producer: batches ops into stream messages and returns receipts.

``producer.enqueue(op)`` queues an op and returns a :class:`ReceiptFuture`, which
resolves once JetStream has acknowledged the message holding the op;
``await producer.submit(op)`` does both, and ``await producer.publish_many(ops)``
publishes a list and returns its receipts in one await. ``make_op`` stamps an op with
the producer's HLC (unless an explicit ``hlc`` is given, as when replaying a log);
``make_ops`` stamps, checks and encodes many rows of one table at once
(:mod:`oplog.opbatch`), and ``publish_many`` then only sends them.

Messages are cut per table when ``max_batch_ops`` ops or ``max_batch_bytes`` bytes are
queued, or ``linger_ms`` after the first op queued, and at most ``max_inflight_batches``
of them await their acknowledgement at a time. Each message carries ``Nats-Msg-Id`` = a
hash of its op ids, so a retried publish of the same batch is stored once (and the
materializer drops any op id it has already applied, whatever batch it comes in).

Why the hot path looks the way it does (measured, ``docs/benchmarks.md``): with one
asyncio future per op, creating, resolving and gathering those futures was about half of
the producer's time. The stream acknowledges a *message*, so a batch is resolved once,
and an op's receipt is derived from its batch only when someone asks for it. Each op is
encoded once, when it is queued, straight into its message's buffer. What a queued op
still costs in Python objects matters twice: to build, and to the garbage collector,
which visits every surviving object again as the heap grows. ``publish_many`` is the
fastest way in (no per-op object at all until a receipt is read); ``enqueue`` costs one
small object per op, and ``asyncio.gather`` over those adds per-op work of its own.

The producer does not know epochs (that is the ``epoch`` package's business): the
caller may pass ``epoch_of`` to have receipts name the epoch an op belongs to.
:meth:`Producer.connect` does that itself: it connects, reads the database's config
from the stream (:mod:`oplog.epochs`, decisions.md #39) and owns the connection, which
:meth:`Producer.close` closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from nats.js import JetStreamContext

from oplog.codec import encode_op
from oplog.connection import NatsOptions
from oplog.connection import connect as connect_nats
from oplog.epochs import EpochTracker
from oplog.errors import PublishError
from oplog.hlc import HLC, HybridLogicalClock
from oplog.nats_errors import TRANSIENT, RetryPolicy
from oplog.op import Op, OpKind, new_op_id
from oplog.opbatch import OpBatch, build_op, make_batch, message_id, oversize
from oplog.producer_config import BATCH_OVERHEAD, ProducerConfig
from oplog.receipts import ACKED, BATCH_TAIL, FAILED, Batch, CallbackRunner, Receipt, ReceiptFuture, Receipts
from oplog.topology import StreamLimits, Topology

logger = logging.getLogger(__name__)


class Producer:
    """Publishes ops of one database in batches (see module docstring).

    Use as ``async with Producer(js, topology, clock=...) as producer``; leaving the
    block flushes what is queued and waits for its acknowledgements. Or let it connect
    and name epochs itself: ``async with await Producer.connect(url, "shop") as producer``.
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
        self._retry = RetryPolicy(TRANSIENT, attempts=self.config.retries + 1,
                                  first_pause_s=self.config.retry_backoff_s, max_pause_s=float("inf"))  # fmt: skip
        self._epoch_of = epoch_of
        self._open: dict[str, Batch] = {}  # the batch being filled, per table
        self._inflight: set[asyncio.Task[None]] = set()
        self._window: asyncio.Semaphore | None = None
        self._runner: CallbackRunner | None = None  # made on first use, in the running loop
        self._op_limit = min(topology.limits.max_op_bytes, self.config.max_batch_bytes - BATCH_OVERHEAD)
        self._batch_limit = self.config.max_batch_bytes - BATCH_OVERHEAD
        self._max_ops = self.config.max_batch_ops
        self._closed = False
        # Set by connect(): the connection this producer owns, and what names its epochs.
        self._connection: Any = None
        self.epochs: EpochTracker | None = None

    @classmethod
    async def connect(
        cls,
        nats: str | NatsOptions,
        db: str | Topology,
        *,
        node: str | None = None,
        config: ProducerConfig | None = None,
        clock: HybridLogicalClock | None = None,
        require_config: bool = True,
        name: str = "oplog-producer",
    ) -> Producer:
        """A producer on a connection of its own, whose receipts carry their epoch.

        ``nats`` is a URL (credentials in it allowed) or :class:`NatsOptions`; ``db`` a
        database name or its :class:`Topology`. ``node`` names this producer in its ops'
        HLC stamps (default ``<host>-<pid>``; give every producer its own), or pass a
        ``clock``. The database's config is read from its stream and followed while the
        producer runs (config changes included), so every receipt names its op's epoch;
        with a database name, ops are also held to the config's ``max_op_bytes``.

        Raises :class:`~oplog.errors.NatsConnectError` / ``NatsAuthError`` as
        :func:`oplog.connection.connect` does, and :class:`~oplog.epochs.NoConfig` when
        the stream holds no config (unless ``require_config=False``: receipts then carry
        ``epoch=None`` until a config appears). :meth:`close` (or leaving ``async with``)
        flushes and then closes the connection.
        """
        options = NatsOptions.coerce(nats)
        topology = db if isinstance(db, Topology) else Topology(db=db)
        nc = await connect_nats(options, name=name)
        tracker: EpochTracker | None = None
        try:
            js = nc.jetstream()
            tracker = await EpochTracker.start(js, topology)
            init = tracker.require_config() if require_config else tracker.config
            if init is not None and not isinstance(db, Topology):
                limits = StreamLimits(**{**topology.limits.model_dump(), "max_op_bytes": init.max_op_bytes})
                topology = Topology(db=topology.db, limits=limits)
            producer = cls(
                js,
                topology,
                clock=clock or HybridLogicalClock(node or f"{socket.gethostname()}-{os.getpid()}"),
                config=config,
                epoch_of=tracker.epoch_of,  # type: ignore[arg-type]  (None until a config appears)
            )
        except BaseException:
            if tracker is not None:
                await tracker.close()
            await _close_connection(nc)
            raise
        producer._connection, producer.epochs = nc, tracker
        return producer

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
            stamp: list[Any] = list(self.clock.now())
        else:
            self.clock.check_stamp(tuple(hlc))  # type: ignore[arg-type]
            stamp = list(hlc)
            # An explicit stamp is still observed, so our own later stamps order after it.
            self.clock.receive(tuple(hlc))  # type: ignore[arg-type]
        kind = kind.value if isinstance(kind, OpKind) else kind
        return build_op(op_id or new_op_id(), stamp, table, key, kind, data)

    def make_ops(self, table: str, kind: OpKind | str, rows: Iterable[tuple[Any, dict[str, Any] | None]]) -> OpBatch:
        """Validate, stamp and encode one op per ``(key, data)`` row, all of ``table`` and ``kind``.

        The fast way to publish many ops: pass the :class:`~oplog.opbatch.OpBatch` to
        :meth:`publish_many`. Each op is what ``make_op(table, key, kind, data)`` would
        make (new id, an HLC stamp of this producer; ``data`` None for none), encoded to
        the same bytes, but the clock is read once for all of them (one wall time,
        consecutive logical counters) and no :class:`Op` object is built. Raises what
        ``make_op`` and then ``publish_many`` would for the first bad row
        (:class:`InvalidOp`, prefixed ``row <i>:``, or :class:`OversizeOp`), and then
        nothing is made; :class:`ClockError` if the clock cannot stamp them.
        """
        return make_batch(table, kind, rows, clock=self.clock, max_ops=self._max_ops, op_limit=self._op_limit,
                          batch_limit=self._batch_limit)  # fmt: skip

    async def submit(self, op: Op) -> Receipt:
        """Queue ``op`` and wait for the stream to acknowledge it."""
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> ReceiptFuture:
        """Queue ``op``; the returned future-like object resolves to its receipt.

        Raises :class:`OversizeOp` or :class:`InvalidOp` (nothing queued) for an op that
        can never be published, and :class:`PublishError` once the producer is closed.
        """
        if self._closed:
            raise PublishError("the producer is closed")
        return ReceiptFuture(self._append(op, encode_op(op)), op)

    async def publish_many(self, ops: Iterable[Op] | OpBatch) -> Receipts:
        """Publish ``ops`` and return their receipts, in order, in one await.

        ``ops`` is a list (any iterable) of ops, or what :meth:`make_ops` made, whose
        messages are sent as they were made. Every op is checked before any is queued,
        so an :class:`InvalidOp` or :class:`OversizeOp` means nothing was published. The
        ops' batches are sent at once (no linger). Raises :class:`PublishError` if a
        message was not acknowledged; the other messages may be in the stream, and
        publishing all ``ops`` again with the same ids is safe.
        """
        if self._closed:
            raise PublishError("the producer is closed")
        if type(ops) is OpBatch:
            if ops.limits == (self._max_ops, self._op_limit, self._batch_limit):
                return await self._publish_made(ops)
            ops = ops.ops()  # made by a producer with other limits: cut again, as ops
        ops = list(ops)
        # Encode everything first, so that a bad op raises before any op is queued, into
        # one buffer (see Batch.buffer), each op followed by its comma; ends[k] is where
        # op k's comma ends.
        encoded, ends, op_limit = bytearray(), [], self._op_limit
        for op in ops:
            data = encode_op(op)
            if len(data) + 1 > op_limit:
                raise oversize(op.id, len(data) + 1, op_limit)
            encoded += data
            encoded.append(0x2C)
            ends.append(len(encoded))
        # Then copy runs of consecutive ops of one table into batches, a run at a time.
        view, batches, k, n = memoryview(encoded), [], 0, len(ops)
        while k < n:
            table, start = ops[k].table, ends[k - 1] if k else 0
            batch = self._batch_with_room(table, ends[k] - start)
            stop, bound = min(n, k + self._max_ops - len(batch.ops)), start + self._batch_limit - batch.nbytes
            j = k + 1
            while j < stop and ends[j] <= bound and ops[j].table == table:
                j += 1
            batch.buffer += view[start : ends[j - 1]]
            batch.ops += ops[k:j]
            batch.nbytes += ends[j - 1] - start
            batches += [batch] * (j - k)
            if len(batch.ops) >= self._max_ops:
                self._send(batch)
            k = j
        view.release()
        distinct = list(dict.fromkeys(batches))
        for batch in distinct:
            if self._open.get(batch.table) is batch:
                self._send(batch)
        await _settled(distinct)
        return Receipts(ops, batches, self._epoch_of)

    async def _publish_made(self, made: OpBatch) -> Receipts:
        """Send the messages :meth:`make_ops` made, as they are; their receipts."""
        runner = self._runner or self._start_runner()
        distinct, batches, ids, start = [], [], made.ids, 0
        for payload, stop, msg_id in made.messages:
            batch = Batch(made.table, runner, self._epoch_of)
            batch.payload, batch.msg_id, batch.ops = payload, msg_id, ids[start:stop]
            self._start(batch)
            distinct.append(batch)
            batches += [batch] * (stop - start)
            start = stop
        await _settled(distinct)
        return Receipts(made.stamps(), batches, self._epoch_of)

    async def flush(self) -> None:
        """Send everything queued and wait for all acknowledgements."""
        for batch in list(self._open.values()):
            self._send(batch)
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def close(self) -> None:
        """Refuse new ops, then flush (waits for every acknowledgement); a producer made
        by :meth:`connect` then closes its connection."""
        self._closed = True
        try:
            await self.flush()
        finally:
            nc, tracker = self._connection, self.epochs
            self._connection = None
            if tracker is not None:
                await tracker.close()
            if nc is not None:
                await _close_connection(nc)

    def _append(self, op: Op, data: bytes) -> Batch:
        """Add an encoded op to its table's open batch; the batch it went into."""
        size = len(data) + 1  # its separator in the message
        if size > self._op_limit:
            raise oversize(op.id, size, self._op_limit)
        batch = self._batch_with_room(op.table, size)
        buffer = batch.buffer
        buffer += data
        buffer.append(0x2C)  # a comma; the last one becomes the closing bracket
        batch.ops.append(op)
        batch.nbytes += size
        if len(batch.ops) >= self._max_ops:
            self._send(batch)
        return batch

    def _batch_with_room(self, table: str, size: int) -> Batch:
        """The table's open batch if ``size`` more bytes fit in it, else a new one."""
        batch = self._open.get(table)
        if batch is None:
            return self._open_batch(table)
        if batch.nbytes + size > self._batch_limit:
            self._send(batch)
            return self._open_batch(table)
        return batch

    def _start_runner(self) -> CallbackRunner:
        runner = self._runner = CallbackRunner(asyncio.get_running_loop())
        self._window = asyncio.Semaphore(self.config.max_inflight_batches)
        return runner

    def _open_batch(self, table: str) -> Batch:
        runner = self._runner or self._start_runner()
        batch = self._open[table] = Batch(table, runner, self._epoch_of)
        batch.timer = runner.loop.call_later(self.config.linger_ms / 1000, self._linger_over, batch)
        return batch

    def _linger_over(self, batch: Batch) -> None:
        if self._open.get(batch.table) is batch:
            self._send(batch)

    def _send(self, batch: Batch) -> None:
        del self._open[batch.table]
        if batch.timer is not None:
            batch.timer.cancel()
        self._start(batch)

    def _start(self, batch: Batch) -> None:
        assert self._runner is not None
        task = self._runner.loop.create_task(self._publish(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, batch: Batch) -> None:
        # Whatever stops a publish settles its batch: no receipt is left waiting forever.
        assert self._window is not None
        try:
            async with self._window:
                await self._publish_batch(batch)
        except asyncio.CancelledError:
            batch.settle(FAILED, error=PublishError(f"the publish of {len(batch.ops)} op(s) was cancelled"))
            raise
        except Exception as e:
            failure = PublishError(f"publishing {len(batch.ops)} op(s) failed: {e!r}; retrying them is safe")
            failure.__cause__ = e
            logger.warning("%s", failure)
            batch.settle(FAILED, error=failure)

    async def _publish_batch(self, batch: Batch) -> None:
        payload, msg_id = batch.payload, batch.msg_id
        if payload is None or msg_id is None:
            batch.buffer[-1:] = BATCH_TAIL  # over the last op's comma
            payload = bytes(batch.buffer)
            batch.buffer = bytearray()
            msg_id = message_id([op.id for op in batch.ops])
        headers = {"Nats-Msg-Id": msg_id}
        subject = self.topology.ops_subject(batch.table)
        timeout = self.config.ack_timeout_s

        async def attempt() -> Any:
            pending = await self._js.publish_async(
                subject, payload, wait_stall=timeout, stream=self.topology.stream, headers=headers
            )
            # wait_for cancels the pending ack on timeout, which frees nats-py's slot.
            return await asyncio.wait_for(pending, timeout)

        # Same payload and Nats-Msg-Id every time: the stream stores it at most once. A
        # permanent refusal (a bad request) is not retried: it fails the batch.
        try:
            ack = await self._retry.run(attempt)
        except TRANSIENT as error:
            self._fail(batch, error)
            return
        batch.settle(ACKED, seq=ack.seq, duplicate=bool(ack.duplicate))

    def _fail(self, batch: Batch, error: BaseException) -> None:
        message = (
            f"stream {self.topology.stream} did not acknowledge {len(batch.ops)} op(s) after "
            f"{self.config.retries + 1} attempts ({error!r}); retrying them with the same ids is safe"
        )
        logger.warning("%s", message)
        batch.settle(FAILED, error=PublishError(message))


async def _settled(batches: list[Batch]) -> None:
    """Wait until every batch is acknowledged; raises the first failure's error."""
    for batch in batches:
        await batch.wait()
    for batch in batches:
        if batch.state == FAILED:
            raise batch.error.with_traceback(None)  # type: ignore[union-attr]


async def _close_connection(nc: Any) -> None:
    """Close a connection :meth:`Producer.connect` made: bounded, and quiet when the
    server is already gone (there is nothing left to flush then)."""
    try:
        await asyncio.wait_for(nc.close(), 5.0)
    except (OSError, TimeoutError) as e:
        logger.debug("closing the NATS connection: %r", e)
