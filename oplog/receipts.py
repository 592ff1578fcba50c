"""Receipts: what a producer hands back for each op, resolved per message, not per op.

The stream acknowledges a *message* (one :class:`Batch` of one table's ops), so a batch is
resolved once and an op's :class:`Receipt` is derived from its batch only when someone
asks for it (:class:`ReceiptFuture` for one op, :class:`Receipts` for many). Why it is
built this way, measured: :mod:`oplog.producer`'s docstring.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from oplog.hlc import HLC
from oplog.op import Op

# A message: {"v":1,"ops":[<op>,<op>,...]}; each op is copied in as it is queued.
BATCH_HEAD, BATCH_TAIL = b'{"v":1,"ops":[', b"]}"


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


def make_receipt(op_id: str, hlc: HLC, stream_seq: int, duplicate: bool, epoch: int | None) -> Receipt:
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



PENDING, ACKED, FAILED, CANCELLED = 0, 1, 2, 3


class CallbackRunner:
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


class Batch:
    """One message of one table: its ops, their encoded bytes, and then its outcome.

    A message made ahead by :meth:`Producer.make_ops` arrives whole: ``payload`` and
    ``msg_id`` are set, and ``ops`` holds its ops' ids instead of :class:`Op` objects.
    """

    __slots__ = ("table", "ops", "buffer", "nbytes", "timer", "state", "seq", "duplicate", "error", "waiters", "done")
    __slots__ += ("runner", "epoch_of", "payload", "msg_id")

    def __init__(self, table: str, runner: CallbackRunner, epoch_of: Callable[[int], int] | None) -> None:
        self.table = table
        self.ops: list[Any] = []  # Op objects (ids, for a message made ahead)
        # The message as it grows. Each op's orjson output is copied in and dropped at
        # once: keeping 10^5 of them alive (a list joined at send time) fragments the
        # C heap, which made queuing an op three times slower.
        self.buffer = bytearray(BATCH_HEAD)
        self.nbytes = 0  # the ops' bytes, one separator each (what max_batch_bytes bounds)
        self.timer: asyncio.TimerHandle | None = None  # linger_ms after the first op
        self.state = PENDING
        self.seq = 0
        self.duplicate = False
        self.error: BaseException | None = None
        self.waiters: list[ReceiptFuture] = []  # receipt futures that have callbacks
        self.done: asyncio.Future[None] | None = None  # made only when awaited as a whole
        self.runner = runner
        self.epoch_of = epoch_of  # the producer's, for the receipts built from this batch
        self.payload: bytes | None = None  # the whole message, when it was made ahead
        self.msg_id: str | None = None  # its Nats-Msg-Id, likewise

    def settle(self, state: int, seq: int = 0, duplicate: bool = False, error: BaseException | None = None) -> None:
        if self.state != PENDING:
            return
        self.state, self.seq, self.duplicate, self.error = state, seq, duplicate, error
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        for future in self.waiters:
            if future._batch is self:  # a cancelled future has run its callbacks already
                future._run_callbacks()
        self.waiters = []

    async def wait(self) -> None:
        if self.state == PENDING:
            if self.done is None:
                self.done = self.runner.loop.create_future()
            await self.done


class _Cancelled:
    """Where a cancelled receipt future points instead of its batch."""

    __slots__ = ("state", "runner", "message")

    def __init__(self, runner: CallbackRunner, message: Any) -> None:
        self.state = CANCELLED
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

    def __init__(self, batch: Batch, op: Op) -> None:
        self._batch: Batch | _Cancelled = batch
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
        return self._batch.state != PENDING

    def cancelled(self) -> bool:
        """True if :meth:`cancel` stopped the wait for this receipt."""
        return self._batch.state == CANCELLED

    def result(self) -> Receipt:
        """The receipt; raises like ``asyncio.Future.result``."""
        batch = self._batch
        if batch.state == ACKED:
            op = self._op
            epoch_of = batch.epoch_of  # type: ignore[union-attr]
            epoch = epoch_of(op.hlc.wall_ms) if epoch_of else None
            return make_receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)  # type: ignore[union-attr]
        if batch.state == FAILED:
            # One error object serves every op of the message: raise it with a fresh
            # traceback each time, as asyncio.Future does, so tracebacks do not pile up.
            raise batch.error.with_traceback(None)  # type: ignore[union-attr]
        if batch.state == CANCELLED:
            raise self._make_cancelled_error()
        raise asyncio.InvalidStateError("the receipt is not ready: the op's message is not acknowledged yet")

    def exception(self) -> BaseException | None:
        """The :class:`PublishError` of a failed message, None if acknowledged."""
        batch = self._batch
        if batch.state == CANCELLED:
            raise self._make_cancelled_error()
        if batch.state == PENDING:
            raise asyncio.InvalidStateError("the receipt is not ready: the op's message is not acknowledged yet")
        return batch.error  # type: ignore[union-attr]

    def add_done_callback(
        self, fn: Callable[[ReceiptFuture], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Call ``fn(self)`` soon after this is done (see the class docstring on ``context``)."""
        batch = self._batch
        if batch.state != PENDING:
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
        if batch.state != PENDING:
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
        if self._batch.state == PENDING:
            self._asyncio_future_blocking = True
            yield self  # the task adds its wake-up as a done-callback
        if self._batch.state == PENDING:
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
    does not also mean allocating 10^5 objects nobody may look at. ``ops`` may be any
    sequence of items with an ``id`` and an ``hlc`` (:meth:`OpBatch.stamps`, for one).
    """

    __slots__ = ("_ops", "_batches", "_epoch_of")

    def __init__(self, ops: Sequence[Any], batches: list[Batch], epoch_of: Callable[[int], int] | None) -> None:
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
        return make_receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)

    def __iter__(self) -> Iterator[Receipt]:
        epoch_of = self._epoch_of
        for op, batch in zip(self._ops, self._batches, strict=True):
            epoch = epoch_of(op.hlc.wall_ms) if epoch_of else None
            yield make_receipt(op.id, op.hlc, batch.seq, batch.duplicate, epoch)

    def __repr__(self) -> str:
        return f"<Receipts of {len(self._ops)} op(s)>"
