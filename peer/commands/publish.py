"""``oplog publish``: ops from JSON lines (file or stdin, streamed), or a schema file.

Ops are read and published as they come: a line is queued as soon as it is read, the
producer cuts messages as usual (``linger_ms``, ``max_batch_ops``), and at most
:data:`WINDOW` ops wait for their acknowledgement at a time, so a file of any size, or
a pipe that never ends, is published with bounded memory. A bad line (not JSON, not an
op) is reported with its number and skipped; the rest is published and the exit status
is 2. ``--all-or-nothing`` instead reads and checks the whole input first and publishes
nothing if any line is bad (it holds every op in memory).

At the end one summary line: ops published, time and rate, duplicates (ops in messages
the stream already held: a re-run of the same ops with the same ids), the stream
sequences and the epochs they went to. ``--receipts`` prints one JSON receipt per op on stdout, in input order, as
they are acknowledged (then the summary goes to stderr); a receipt line is what
``oplog wait --receipt`` takes. On a terminal, stderr shows a progress line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from oplog.codec import encode_op
from oplog.errors import OplogError, PublishError
from oplog.producer import BATCH_OVERHEAD, Producer
from oplog.receipts import Receipt, ReceiptFuture
from oplog.schema import SchemaMessage
from peer.commands.common import add_nats_options, jetstream, nats_options, say, topology
from peer.control import publish_schema

WINDOW = 20_000  # ops queued and not yet acknowledged, at most
READ_BLOCK = 64 * 1024
PROGRESS_EVERY_S = 0.5
EXIT_BAD_INPUT = 2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="publish ops read as JSON lines (file or stdin, streamed), or a schema")
    add_nats_options(p)
    p.add_argument("file", nargs="?", default="-", help="JSON lines of ops; '-' for stdin")
    p.add_argument("--schema", type=Path, help="publish this schema file ({'tables': [...]}) instead")
    p.add_argument("--node", help="HLC node name of this producer (default cli-<pid>)")
    p.add_argument("--receipts", action="store_true",
                   help="print one JSON receipt per op on stdout (the summary then goes to stderr)")  # fmt: skip
    p.add_argument("--all-or-nothing", action="store_true",
                   help="check every line before publishing any; a bad line publishes nothing (reads all first)")  # fmt: skip
    p.set_defaults(handler=cmd_publish)


@dataclass
class Tally:
    """What was published, for the summary and the progress line."""

    started: float = field(default_factory=time.monotonic)
    lines: int = 0
    bad: int = 0
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    failure: str = ""
    first_seq: int | None = None
    last_seq: int | None = None
    first_epoch: int | None = None
    last_epoch: int | None = None

    def add(self, receipt: Receipt) -> None:
        self.published += 1
        self.duplicates += receipt.duplicate
        seq, epoch = receipt.stream_seq, receipt.epoch
        self.first_seq = seq if self.first_seq is None else min(self.first_seq, seq)
        self.last_seq = seq if self.last_seq is None else max(self.last_seq, seq)
        if epoch is not None:
            self.first_epoch = epoch if self.first_epoch is None else min(self.first_epoch, epoch)
            self.last_epoch = epoch if self.last_epoch is None else max(self.last_epoch, epoch)

    def rate(self) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return elapsed, self.published / elapsed

    def summary(self) -> str:
        elapsed, rate = self.rate()
        text = (f"published {_count(self.published, 'op')} in {elapsed:.2f} s ({rate:.0f} ops/s), "
                f"{_count(self.duplicates, 'duplicate')}")  # fmt: skip
        if self.first_seq is not None:
            text += f", stream seq {self.first_seq}..{self.last_seq}"
        if self.first_epoch is not None:
            text += f", epochs {self.first_epoch}..{self.last_epoch}"
        elif self.published:
            text += ", epochs unknown"
        if self.bad:
            text += f"; {_count(self.bad, 'bad line')} not published"
        if self.failed:
            text += f"; {_count(self.failed, 'op')} NOT acknowledged"
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _receipt_line(r: Receipt) -> bytes:
    receipt = {"id": r.op_id, "hlc": list(r.hlc), "stream_seq": r.stream_seq, "epoch": r.epoch, "duplicate": r.duplicate}
    return orjson.dumps(receipt) + b"\n"


async def _blocks(stream: IO[bytes]) -> AsyncIterator[bytes]:
    """The input in blocks as they become available, read by a thread of its own (a
    daemon: a read blocked on a terminal or a pipe never holds the process up)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)

    def reader() -> None:
        read = getattr(stream, "read1", stream.read)
        try:
            while block := read(READ_BLOCK):
                asyncio.run_coroutine_threadsafe(queue.put(block), loop).result()
            item: bytes | BaseException | None = None
        except BaseException as e:  # handed to the reading task, which raises it
            item = e
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except RuntimeError:
            pass  # the loop is gone: nobody is reading any more

    threading.Thread(target=reader, name="oplog-publish-input", daemon=True).start()
    while True:
        item = await queue.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise OplogError(f"reading the input failed: {item}")
        yield item


async def _lines(stream: IO[bytes]) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Numbered non-blank lines, a block's worth at a time."""
    rest, number = b"", 0
    async for block in _blocks(stream):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        found = []
        for line in parts:
            number += 1
            if line.strip():
                found.append((number, line))
        if found:
            yield found
    if rest.strip():
        yield [(number + 1, rest)]


def _op(producer: Producer, number: int, line: bytes) -> Any:
    """The op of one input line; raises OplogError naming the line."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise OplogError(f"line {number}: not JSON: {e}") from None
    if not isinstance(row, dict):
        raise OplogError(f"line {number}: an op must be a JSON object")
    try:
        return producer.make_op(row.get("table", ""), row.get("key"), row.get("kind", ""), row.get("data"),
                                op_id=row.get("id"), hlc=row.get("hlc"))  # fmt: skip
    except OplogError as e:
        raise OplogError(f"line {number}: {e}") from None


class _Progress:
    """A ``\\r`` progress line on stderr, only when stderr is a terminal."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.shown = False
        self.enabled = sys.stderr.isatty()
        self._next = time.monotonic() + PROGRESS_EVERY_S

    def tick(self) -> None:
        if self.enabled and time.monotonic() >= self._next:
            self._next = time.monotonic() + PROGRESS_EVERY_S
            _, rate = self.tally.rate()
            sys.stderr.write(f"\r{self.tally.lines} lines read, {self.tally.published} ops published ({rate:.0f} ops/s)\x1b[K")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


async def _drain(queue: asyncio.Queue[ReceiptFuture | None], tally: Tally, receipts: bool) -> None:
    """Await the queued receipts in input order; count them, print them (``--receipts``)."""
    out = sys.stdout.buffer
    while (future := await queue.get()) is not None:
        try:
            receipt = await future
        except PublishError as e:
            tally.failed += 1
            tally.failure = str(e)
            continue
        tally.add(receipt)
        if receipts:
            out.write(_receipt_line(receipt))
            if queue.empty():
                out.flush()
    out.flush()


async def _stream_ops(producer: Producer, stream: IO[bytes], queue: asyncio.Queue[ReceiptFuture | None],
                      tally: Tally, progress: _Progress) -> None:  # fmt: skip
    """Read, check and queue line by line; report each bad line and go on."""
    async for lines in _lines(stream):
        if tally.failed:
            return  # the stream stopped acknowledging: do not queue more for it to refuse
        for number, line in lines:
            tally.lines = number
            try:
                future = producer.enqueue(_op(producer, number, line))
            except PublishError:
                raise
            except OplogError as e:
                text = str(e)
                say(text if text.startswith("line ") else f"line {number}: {text}")
                tally.bad += 1
                continue
            await queue.put(future)
        progress.tick()


async def _all_or_nothing(producer: Producer, stream: IO[bytes], queue: asyncio.Queue[ReceiptFuture | None],
                          tally: Tally, progress: _Progress) -> bool:  # fmt: skip
    """Check every line first; queue them only if all are good. False if any was bad."""
    limit = min(producer.topology.limits.max_op_bytes, producer.config.max_batch_bytes - BATCH_OVERHEAD)
    ops = []
    async for lines in _lines(stream):
        for number, line in lines:
            tally.lines = number
            try:
                op = _op(producer, number, line)
                size = len(encode_op(op)) + 1
                if size > limit:
                    raise OplogError(f"line {number}: op {op.id!r} is {size} bytes; the limit is {limit}")
            except OplogError as e:
                say(str(e))
                tally.bad += 1
                continue
            ops.append(op)
    if tally.bad:
        return False
    for op in ops:
        if tally.failed:
            break  # the stream stopped acknowledging: do not queue more for it to refuse
        await queue.put(producer.enqueue(op))
        progress.tick()
    return True


async def cmd_publish(args: argparse.Namespace) -> int:
    t = topology(args)
    if args.schema:
        return await _publish_schema(args, t)
    try:
        stream: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as e:
        raise OplogError(f"cannot read {args.file}: {e.strerror}") from None
    with stream:
        producer = await Producer.connect(nats_options(args), t.db, node=args.node or f"cli-{os.getpid()}",
                                          require_config=False, name="oplog-publish")  # fmt: skip
        tally, ok = Tally(), True
        progress = _Progress(tally)
        queue: asyncio.Queue[ReceiptFuture | None] = asyncio.Queue(maxsize=WINDOW)
        drain: asyncio.Task[None] | None = None
        try:
            assert producer.epochs is not None
            if producer.epochs.config is None:
                producer.epochs.require_config()  # raises, saying why, unless only purged from the stream
            if producer.epochs.config is None:
                say(f"the stream no longer holds the config of database {t.db} (purged): receipts carry no epoch")
            drain = asyncio.create_task(_drain(queue, tally, args.receipts))
            if args.all_or_nothing:
                ok = await _all_or_nothing(producer, stream, queue, tally, progress)
            else:
                await _stream_ops(producer, stream, queue, tally, progress)
            await queue.put(None)
            await drain
        finally:
            if drain is not None and not drain.done():
                drain.cancel()
            await producer.close()
    progress.clear()
    summary = tally.summary() if ok else f"published nothing: {tally.bad} of {tally.lines} lines are bad (--all-or-nothing)"
    print(summary, file=sys.stderr if args.receipts or not ok else sys.stdout, flush=True)
    if tally.failed:
        say(f"publishing stopped after line {tally.lines}: {tally.failure}")
    return EXIT_BAD_INPUT if tally.bad or tally.failed else 0


async def _publish_schema(args: argparse.Namespace, t: Any) -> int:
    async with jetstream(args, "oplog-publish") as (_, js):
        try:
            schema = SchemaMessage.model_validate_json(args.schema.read_bytes())
        except OSError as e:
            raise OplogError(f"cannot read {args.schema}: {e.strerror}") from None
        except ValidationError as e:
            print(f"oplog: schema {args.schema}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        seq = await publish_schema(js, t, schema)
        print(orjson.dumps({"schema": [table.name for table in schema.tables], "stream_seq": seq}).decode())
        return 0
