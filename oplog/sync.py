"""A blocking producer for code without an event loop (scripts, WSGI apps, workers).

:class:`SyncProducer` runs an :class:`~oplog.producer.Producer` made by
:meth:`Producer.connect` on an event loop in a background thread of its own::

    with SyncProducer("nats://127.0.0.1:4222", "shop", node="checkout-1") as producer:
        receipt = producer.publish("users", "u1", "upsert", {"name": "Ann"})
        receipt.stream_seq, receipt.epoch

``publish`` blocks until the stream acknowledged the op. It is thread-safe: ops that
several threads publish at once share messages, as with the async producer. For
throughput from one thread, ``publish_many`` sends a list in one call, and ``enqueue``
returns a :class:`concurrent.futures.Future` at once. ``close`` (or leaving the
``with`` block) waits for every acknowledgement, closes the connection and ends the
thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from oplog.connection import NatsOptions
from oplog.errors import PublishError
from oplog.hlc import HLC
from oplog.op import Op, OpKind
from oplog.opbatch import OpBatch
from oplog.producer import Producer, ProducerConfig
from oplog.receipts import Receipt, ReceiptFuture
from oplog.topology import Topology

T = TypeVar("T")


class SyncProducer:
    """A :class:`~oplog.producer.Producer` behind blocking calls (see the module docstring).

    The arguments are :meth:`Producer.connect`'s; connecting happens here, and raises
    what ``connect`` raises (``connect_timeout_s`` bounds it, default: the options' own
    ``start_wait_s`` plus a little).
    """

    def __init__(
        self,
        nats: str | NatsOptions,
        db: str | Topology,
        *,
        node: str | None = None,
        config: ProducerConfig | None = None,
        require_config: bool = True,
        name: str = "oplog-producer",
        connect_timeout_s: float | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="oplog-sync-producer", daemon=True)
        self._thread.start()
        self._closed = False
        options = NatsOptions.coerce(nats)
        timeout = connect_timeout_s if connect_timeout_s is not None else options.start_wait_s + 30.0
        try:
            self._producer: Producer = self._call(
                Producer.connect(options, db, node=node, config=config, require_config=require_config, name=name),
                timeout,
            )
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10.0)

    @property
    def producer(self) -> Producer:
        """The async producer underneath (use it only from its loop's thread)."""
        return self._producer

    @property
    def topology(self) -> Topology:
        return self._producer.topology

    @property
    def closed(self) -> bool:
        return self._closed

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
        return self._producer.make_op(table, key, kind, data, op_id=op_id, hlc=hlc)

    def make_ops(self, table: str, kind: OpKind | str, rows: Iterable[tuple[Any, dict[str, Any] | None]]) -> OpBatch:
        """Validate, stamp and encode one op per ``(key, data)`` row (see :meth:`Producer.make_ops`);
        pass the batch to :meth:`publish_many`."""
        return self._producer.make_ops(table, kind, rows)

    def publish(
        self,
        table: str,
        key: Any,
        kind: OpKind | str,
        data: dict[str, Any] | None = None,
        *,
        op_id: str | None = None,
        hlc: HLC | tuple[int, int, str] | list[Any] | None = None,
        timeout: float | None = None,
    ) -> Receipt:
        """Make an op and publish it; returns its receipt once the stream acknowledged it.

        Raises :class:`~oplog.errors.InvalidOp` (nothing sent), :class:`PublishError`
        (not acknowledged; publishing the same op again is safe), or ``TimeoutError``
        after ``timeout`` seconds (the op may still be published)."""
        return self.publish_op(self.make_op(table, key, kind, data, op_id=op_id, hlc=hlc), timeout=timeout)

    def publish_op(self, op: Op, *, timeout: float | None = None) -> Receipt:
        """Publish an op made by :meth:`make_op`; blocks until its receipt."""
        return self.enqueue(op).result(timeout)

    def enqueue(self, op: Op) -> concurrent.futures.Future[Receipt]:
        """Queue an op; the future resolves to its receipt (or its PublishError)."""
        self._check_open()
        return asyncio.run_coroutine_threadsafe(self._submit(op), self._loop)

    async def _submit(self, op: Op) -> Receipt:
        future: ReceiptFuture = self._producer.enqueue(op)
        return await future

    def publish_many(self, ops: Iterable[Op] | OpBatch, *, timeout: float | None = None) -> list[Receipt]:
        """Publish ops, or an :class:`~oplog.opbatch.OpBatch` from :meth:`make_ops`, in one
        call (see :meth:`Producer.publish_many`); their receipts, in order."""
        self._check_open()
        if not isinstance(ops, OpBatch):  # a batch is sent as it is, already encoded
            ops = list(ops)

        async def run() -> list[Receipt]:
            return list(await self._producer.publish_many(ops))

        return self._call(run(), timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait for its acknowledgements."""
        self._check_open()
        self._call(self._producer.flush(), timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Wait for every acknowledgement, close the connection, end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._producer.close(), timeout)
        finally:
            self._stop_loop()

    def _check_open(self) -> None:
        if self._closed:
            raise PublishError("the producer is closed")

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
