"""The async producer: batches ops into stream messages and returns receipts.

``producer.enqueue(op)`` queues an op and returns a :class:`ReceiptFuture`, which
resolves once JetStream has acknowledged the message holding the op;
``await producer.submit(op)`` does both, and ``await producer.publish_many(ops)``
publishes a list and returns its receipts in one await. ``make_op`` stamps an op with
the producer's HLC (unless an explicit ``hlc`` is given, as when replaying a log).

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
import contextvars
import hashlib
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field

from oplog.codec import decode_op
from oplog.connection import NatsOptions
from oplog.connection import connect as connect_nats
from oplog.epochs import EpochTracker
from oplog.errors import CodecError, InvalidOp, OversizeOp, PublishError
from oplog.hlc import HLC, HybridLogicalClock
from oplog.nats_errors import TRANSIENT
from oplog.op import Op, OpKind, fast_op
from oplog.topology import StreamLimits, Topology

BATCH_OVERHEAD = 32
_BATCH_HEAD, _BATCH_TAIL = b'{"v":1,"ops":[', b"]}"
_SORT_KEYS = orjson.OPT_SORT_KEYS

logger = logging.getLogger(__name__)


class ProducerConfig(BaseModel):
    """How a producer batches and retries.

    A message is cut at ``max_batch_ops`` ops or ``max_batch_bytes`` bytes, or
    ``linger_ms`` after its first op; at most ``max_inflight_batches`` messages await
    their acknowledgement at once (more do not go faster on one connection, and each
    holds its payload in memory). An attempt waits ``ack_timeout_s`` for its ack and is
    repeated up to ``retries`` times, ``retry_backoff_s`` doubling between attempts.
    """

    model_config = ConfigDict(frozen=True)

    linger_ms: float = Field(5.0, ge=0)
    max_batch_ops: int = Field(1000, ge=1)
    max_batch_bytes: int = Field(512 * 1024, gt=BATCH_OVERHEAD)
    max_inflight_batches: int = Field(16, ge=1)
    ack_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(0.2, ge=0)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that an op is in the stream: where, and (if known) in which epoch."""

    op_id: str
    hlc: HLC
    stream_seq: int
    duplicate: bool
    epoch: int | None


_new_receipt = object.__new__
_set_receipt_fields = tuple(getattr(Receipt, name).__set__ for name in Receipt.__slots__)


def _receipt(op_id: str, hlc: HLC, stream_seq: int, duplicate: bool, epoch: int | None) -> Receipt:
    # A frozen dataclass's __init__ sets each field through object.__setattr__; setting
    # the slots directly builds the same value in half the time (one receipt per op).
    receipt = _new_receipt(Receipt)
    set_op_id, set_hlc, set_stream_seq, set_duplicate, set_epoch = _set_receipt_fields
    set_op_id(receipt, op_id)
    set_hlc(receipt, hlc)
    set_stream_seq(receipt, stream_seq)
    set_duplicate(receipt, duplicate)
    set_epoch(receipt, epoch)
    return receipt


def encode_op(op: Op) -> bytes:
    """The op as canonical wire JSON: the same bytes as ``canonical_bytes(op.to_wire())``.

    Built from the fields directly (orjson writes the key tuple as an array and the kind,
    a ``str`` enum, as its value), which is twice as fast as going through ``to_wire``.
    Raises :class:`InvalidOp` if ``data`` holds something JSON cannot represent.
    """
    wire = {"hlc": list(op.hlc), "id": op.id, "key": op.key, "kind": op.kind, "table": op.table}
    if op.data is not None:
        wire["data"] = op.data
    try:
        return orjson.dumps(wire, option=_SORT_KEYS)
    except TypeError as e:  # orjson.JSONEncodeError
        raise InvalidOp(f"op {op.id!r} is not JSON-serializable ({e}); nothing was queued") from None


class _OpIds:
    """Unique op ids, 32 hex characters like ``uuid4().hex``, about 10x cheaper.

    An id is a random 96-bit prefix and a 32-bit counter. The prefix is redrawn when the
    counter wraps and in a forked child (which would otherwise repeat its parent's ids).
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(12).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        n = next(self._counter)
        if n > 0xFFFFFFFF:
            self._reseed()
            n = next(self._counter)
        return f"{self._prefix}{n:08x}"


_op_ids = _OpIds()

# -- receipts ---------------------------------------------------------------------------

_PENDING, _ACKED, _FAILED, _CANCELLED = 0, 1, 2, 3


class _CallbackRunner:
    """Runs the done-callbacks of receipt futures, all that are due in one loop turn.

    An asyncio future schedules one event-loop handle per callback; with a future per
    op (and ``asyncio.gather`` adding a callback to each) that cost about as much as the
    publishing itself. Here due callbacks wait in one queue, drained by one handle, and
    errors are reported as asyncio reports them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Flat (fn, future, context) triples: a tuple per callback would be one more
        # object for the garbage collector to visit, and with 10^5 queued ops each
        # surviving object costs about a microsecond of collection.
        self._queue: deque[Any] = deque()
        self._scheduled = False

    def push(self, fn: Callable[[Any], object], future: Any, context: contextvars.Context | None) -> None:
        queue = self._queue
        queue.append(fn)
        queue.append(future)
        queue.append(context)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        queue = self._queue
        pop = queue.popleft
        # Only what was due when this turn started, like the loop's own ready queue:
        # callbacks added meanwhile run in the next turn, so the loop is never starved.
        for _ in range(len(queue) // 3):
            fn, future, context = pop(), pop(), pop()
            try:
                if context is None:
                    fn(future)
                else:
                    context.run(fn, future)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as e:
                self.loop.call_exception_handler(
                    {"message": f"Exception in callback {fn!r}", "exception": e, "future": future}
                )


class _Batch:
    """One message of one table: its ops, their encoded bytes, and then its outcome."""

    __slots__ = ("table", "ops", "buffer", "nbytes", "timer", "state", "seq", "duplicate", "error", "waiters", "done")
    __slots__ += ("runner", "epoch_of")

    def __init__(self, table: str, runner: _CallbackRunner, epoch_of: Callable[[int], int] | None) -> None:
        self.table = table
        self.ops: list[Op] = []
        # The message as it grows. Each op's orjson output is copied in and dropped at
        # once: keeping 10^5 of them alive (a list joined at send time) fragments the
        # C heap, which made queuing an op three times slower.
        self.buffer = bytearray(_BATCH_HEAD)
        self.nbytes = 0  # the ops' bytes, one separator each (what max_batch_bytes bounds)
        self.timer: asyncio.TimerHandle | None = None  # linger_ms after the first op
        self.state = _PENDING
        self.seq = 0
        self.duplicate = False
        self.error: BaseException | None = None
        self.waiters: list[ReceiptFuture] = []  # receipt futures that have callbacks
        self.done: asyncio.Future[None] | None = None  # made only when awaited as a whole
        self.runner = runner
        self.epoch_of = epoch_of  # the producer's, for the receipts built from this batch

    def settle(self, state: int, seq: int = 0, duplicate: bool = False, error: BaseException | None = None) -> None:
        if self.state != _PENDING:
            return
        self.state, self.seq, self.duplicate, self.error = state, seq, duplicate, error
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        for future in self.waiters:
            if future._batch is self:  # a cancelled future has run its callbacks already
                future._run_callbacks()
        self.waiters = []

    async def wait(self) -> None:
        if self.state == _PENDING:
            if self.done is None:
                self.done = self.runner.loop.create_future()
            await self.done


class _Cancelled:
    """Where a cancelled receipt future points instead of its batch."""

    __slots__ = ("state", "runner", "message")

    def __init__(self, runner: _CallbackRunner, message: Any) -> None:
        self.state = _CANCELLED
        self.runner = runner
        self.message = message


class ReceiptFuture:
    """The receipt of one queued op: an asyncio future-like object (``asyncio.isfuture``).

    Await it, or pass it to ``asyncio.gather``, ``wait``, ``wait_for`` or ``shield``; it
    resolves to a :class:`Receipt` when the stream acknowledges the op's message, or
    raises :class:`PublishError` if the stream did not. Cancelling it only stops
    waiting: the op may still be published.

    It is not an ``asyncio.Future``: it shares its outcome with the other ops of its
    message and builds the receipt when asked, so queuing an op costs one small object.
    One difference shows: a done-callback added *without* a ``context`` runs in the
    event loop's context of the moment the receipt resolves, not a copy of the context
    current when it was added (copying one per op was a measurable cost). Tasks that
    await a receipt pass their context and are not affected.
    """

    __slots__ = ("_batch", "_op", "_callback", "_context", "_more", "_asyncio_future_blocking")

    def __init__(self, batch: _Batch, op: Op) -> None:
        self._batch: _Batch | _Cancelled = batch
        self._op = op
        # The first done-callback in two slots and any others in a list, so that the usual
        # single callback (asyncio.gather's, or an awaiting task's) allocates nothing.
        self._callback: Callable[[ReceiptFuture], object] | None = None
        self._context: contextvars.Context | None = None
        self._more: list[tuple[Callable[[ReceiptFuture], object], contextvars.Context | None]] | None = None
        self._asyncio_future_blocking = False  # asyncio's marker of a future-like object

    @property
    def op(self) -> Op:
        """The op this receipt is for."""
        return self._op

    # The methods below behave as asyncio.Future's of the same names.

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the producer runs in."""
        return self._batch.runner.loop

    def done(self) -> bool:
        """True once the op's message is acknowledged or failed, or this is cancelled."""
        return self._batch.state != _PENDING

    def cancelled(self) -> bool:
        """True if :meth:`cancel` stopped the wait for this receipt."""
        return self._batch.state == _CANCELLED

    def result(self) -> Receipt:
        """The receipt; raises like ``asyncio.Future.result``."""
        batch = self._batch
        if batch.state == _ACKED:
            op = self._op
            epoch_of = batch.epoch_of  # type: ignore[union-attr]
            epoch = epoch_of(op.hlc.wall_ms) if epoch_of else None
            return _receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)  # type: ignore[union-attr]
        if batch.state == _FAILED:
            # One error object serves every op of the message: raise it with a fresh
            # traceback each time, as asyncio.Future does, so tracebacks do not pile up.
            raise batch.error.with_traceback(None)  # type: ignore[union-attr]
        if batch.state == _CANCELLED:
            raise self._make_cancelled_error()
        raise asyncio.InvalidStateError("the receipt is not ready: the op's message is not acknowledged yet")

    def exception(self) -> BaseException | None:
        """The :class:`PublishError` of a failed message, None if acknowledged."""
        batch = self._batch
        if batch.state == _CANCELLED:
            raise self._make_cancelled_error()
        if batch.state == _PENDING:
            raise asyncio.InvalidStateError("the receipt is not ready: the op's message is not acknowledged yet")
        return batch.error  # type: ignore[union-attr]

    def add_done_callback(
        self, fn: Callable[[ReceiptFuture], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Call ``fn(self)`` soon after this is done (see the class docstring on ``context``)."""
        batch = self._batch
        if batch.state != _PENDING:
            batch.runner.push(fn, self, context)
        elif self._callback is None:
            self._callback, self._context = fn, context
            if self._more is None:
                batch.waiters.append(self)  # type: ignore[union-attr]
        else:
            if self._more is None:
                self._more = []
            self._more.append((fn, context))

    def remove_done_callback(self, fn: Callable[[ReceiptFuture], object]) -> int:
        """Forget every pending ``fn`` callback; how many there were."""
        removed = 0
        if self._more:
            kept = [(f, c) for f, c in self._more if f != fn]
            removed, self._more = len(self._more) - len(kept), kept
        if self._callback is not None and self._callback == fn:
            self._callback, self._context = None, None
            removed += 1
        return removed

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting for this receipt (the op itself may still be published)."""
        batch = self._batch
        if batch.state != _PENDING:
            return False
        self._batch = _Cancelled(batch.runner, msg)
        self._run_callbacks()
        return True

    def _run_callbacks(self) -> None:
        push = self._batch.runner.push
        if self._callback is not None:
            push(self._callback, self, self._context)
        for fn, context in self._more or ():
            push(fn, self, context)
        self._callback = self._context = self._more = None

    @property
    def _cancel_message(self) -> Any:  # read by asyncio.gather
        batch = self._batch
        return batch.message if isinstance(batch, _Cancelled) else None

    def _make_cancelled_error(self) -> asyncio.CancelledError:  # called by asyncio.gather
        message = self._cancel_message
        return asyncio.CancelledError(message) if message is not None else asyncio.CancelledError()

    def __await__(self) -> Generator[Any, None, Receipt]:
        if self._batch.state == _PENDING:
            self._asyncio_future_blocking = True
            yield self  # the task adds its wake-up as a done-callback
        if self._batch.state == _PENDING:
            raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__

    def __repr__(self) -> str:
        state = ("pending", "acknowledged", "failed", "cancelled")[self._batch.state]
        return f"<ReceiptFuture {self._op.id!r} {state}>"


class Receipts(Sequence[Receipt]):
    """The receipts of :meth:`Producer.publish_many`, in the order of its ops.

    Every op is acknowledged when this exists; each :class:`Receipt` is built when it
    is read, from its op and its message's acknowledgement, so that publishing 10^5 ops
    does not also mean allocating 10^5 objects nobody may look at.
    """

    __slots__ = ("_ops", "_batches", "_epoch_of")

    def __init__(self, ops: list[Op], batches: list[_Batch], epoch_of: Callable[[int], int] | None) -> None:
        self._ops = ops
        self._batches = batches
        self._epoch_of = epoch_of

    def __len__(self) -> int:
        return len(self._ops)

    @overload
    def __getitem__(self, index: int) -> Receipt: ...

    @overload
    def __getitem__(self, index: slice) -> list[Receipt]: ...

    def __getitem__(self, index: int | slice) -> Receipt | list[Receipt]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._ops)))]
        op, batch = self._ops[index], self._batches[index]
        epoch = self._epoch_of(op.hlc.wall_ms) if self._epoch_of else None
        return _receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)

    def __iter__(self) -> Iterator[Receipt]:
        epoch_of = self._epoch_of
        for op, batch in zip(self._ops, self._batches, strict=True):
            epoch = epoch_of(op.hlc.wall_ms) if epoch_of else None
            yield _receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)

    def __repr__(self) -> str:
        return f"<Receipts of {len(self._ops)} op(s)>"


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
        self._epoch_of = epoch_of
        self._open: dict[str, _Batch] = {}  # the batch being filled, per table
        self._inflight: set[asyncio.Task[None]] = set()
        self._window: asyncio.Semaphore | None = None
        self._runner: _CallbackRunner | None = None  # made on first use, in the running loop
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
        raw = {
            "id": op_id or _op_ids.next(),
            "hlc": stamp,
            "table": table,
            "key": key,
            "kind": kind.value if isinstance(kind, OpKind) else kind,
        }
        if data is not None:
            raw["data"] = data
        op = fast_op(raw)  # the validated fast path; decode_op words the error otherwise
        if op is not None:
            return op
        try:
            return decode_op(raw)
        except CodecError as e:
            raise InvalidOp(f"{e}; nothing was published") from None

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

    async def publish_many(self, ops: Iterable[Op]) -> Receipts:
        """Publish ``ops`` and return their receipts, in order, in one await.

        Every op is checked before any is queued, so an :class:`InvalidOp` or
        :class:`OversizeOp` means nothing was published. The ops' batches are sent at
        once (no linger). Raises :class:`PublishError` if a message was not acknowledged;
        the other messages may be in the stream, and publishing all ``ops`` again with
        the same ids is safe.
        """
        if self._closed:
            raise PublishError("the producer is closed")
        ops = list(ops)
        # Encode everything first, so that a bad op raises before any op is queued, into
        # one buffer (see _Batch.buffer), each op followed by its comma; ends[k] is where
        # op k's comma ends.
        encoded, ends, op_limit = bytearray(), [], self._op_limit
        for op in ops:
            data = encode_op(op)
            if len(data) + 1 > op_limit:
                self._check_size(op, data)  # raises, with the message
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
        for batch in distinct:
            await batch.wait()
        for batch in distinct:
            if batch.state == _FAILED:
                raise batch.error.with_traceback(None)  # type: ignore[union-attr]
        return Receipts(ops, batches, self._epoch_of)

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

    def _check_size(self, op: Op, data: bytes) -> int:
        size = len(data) + 1  # its separator in the message
        if size > self._op_limit:
            raise OversizeOp(
                f"op {op.id!r} is {size} bytes; the limit is {self._op_limit}. Split the row or store a reference"
            )
        return size

    def _append(self, op: Op, data: bytes) -> _Batch:
        """Add an encoded op to its table's open batch; the batch it went into."""
        size = len(data) + 1  # its separator in the message
        if size > self._op_limit:
            self._check_size(op, data)  # raises, with the message
        batch = self._batch_with_room(op.table, size)
        buffer = batch.buffer
        buffer += data
        buffer.append(0x2C)  # a comma; the last one becomes the closing bracket
        batch.ops.append(op)
        batch.nbytes += size
        if len(batch.ops) >= self._max_ops:
            self._send(batch)
        return batch

    def _batch_with_room(self, table: str, size: int) -> _Batch:
        """The table's open batch if ``size`` more bytes fit in it, else a new one."""
        batch = self._open.get(table)
        if batch is None:
            return self._open_batch(table)
        if batch.nbytes + size > self._batch_limit:
            self._send(batch)
            return self._open_batch(table)
        return batch

    def _open_batch(self, table: str) -> _Batch:
        runner = self._runner
        if runner is None:
            runner = self._runner = _CallbackRunner(asyncio.get_running_loop())
            self._window = asyncio.Semaphore(self.config.max_inflight_batches)
        batch = self._open[table] = _Batch(table, runner, self._epoch_of)
        batch.timer = runner.loop.call_later(self.config.linger_ms / 1000, self._linger_over, batch)
        return batch

    def _linger_over(self, batch: _Batch) -> None:
        if self._open.get(batch.table) is batch:
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        del self._open[batch.table]
        if batch.timer is not None:
            batch.timer.cancel()
        assert self._runner is not None
        task = self._runner.loop.create_task(self._publish(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, batch: _Batch) -> None:
        # Whatever stops a publish settles its batch: no receipt is left waiting forever.
        assert self._window is not None
        try:
            async with self._window:
                await self._publish_batch(batch)
        except asyncio.CancelledError:
            batch.settle(_FAILED, error=PublishError(f"the publish of {len(batch.ops)} op(s) was cancelled"))
            raise
        except Exception as e:
            failure = PublishError(f"publishing {len(batch.ops)} op(s) failed: {e!r}; retrying them is safe")
            failure.__cause__ = e
            logger.warning("%s", failure)
            batch.settle(_FAILED, error=failure)

    async def _publish_batch(self, batch: _Batch) -> None:
        batch.buffer[-1:] = _BATCH_TAIL  # over the last op's comma
        payload = bytes(batch.buffer)
        batch.buffer = bytearray()
        ids = "\n".join([op.id for op in batch.ops])
        headers = {"Nats-Msg-Id": "ops-" + hashlib.sha256(ids.encode()).hexdigest()[:32]}
        subject = self.topology.ops_subject(batch.table)
        timeout = self.config.ack_timeout_s
        error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                pending = await self._js.publish_async(
                    subject, payload, wait_stall=timeout, stream=self.topology.stream, headers=headers
                )
                # wait_for cancels the pending ack on timeout, which frees nats-py's slot.
                ack = await asyncio.wait_for(pending, timeout)
            except TRANSIENT as e:
                # Same payload and Nats-Msg-Id: the stream stores it at most once. A
                # permanent refusal (a bad request) is not retried: it fails the batch.
                error = e
                if attempt < self.config.retries:
                    await asyncio.sleep(self.config.retry_backoff_s * (2**attempt))
                continue
            batch.settle(_ACKED, seq=ack.seq, duplicate=bool(ack.duplicate))
            return
        message = (
            f"stream {self.topology.stream} did not acknowledge {len(batch.ops)} op(s) after "
            f"{self.config.retries + 1} attempts ({error!r}); retrying them with the same ids is safe"
        )
        logger.warning("%s", message)
        batch.settle(_FAILED, error=PublishError(message))


async def _close_connection(nc: Any) -> None:
    """Close a connection :meth:`Producer.connect` made: bounded, and quiet when the
    server is already gone (there is nothing left to flush then)."""
    try:
        await asyncio.wait_for(nc.close(), 5.0)
    except (OSError, TimeoutError) as e:
        logger.debug("closing the NATS connection: %r", e)
