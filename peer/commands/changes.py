"""``oplog changes``: each epoch's changed rows, read from a doltlite peer's database file.

The records are :mod:`materializer.read.changes`'s, the same on every peer: with ``--json``
one canonical JSON line per change (the envelope of docs/reading.md "Change feeds"),
otherwise a table to read. ``--follow`` keeps going as the peer commits new epochs, until
SIGINT or SIGTERM (exit 0); ``--to-epoch`` ends the output there (with ``--follow``, once
that epoch is committed). The file is only read (``mode=ro``, ``query_only``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import doltlite  # noqa: F401  (must precede sqlite3)
import orjson

from materializer.read.changes import DEFAULT_POLL_S, MAX_POLL_S, Change, EpochChanges, follow_changes, iter_changes
from oplog.errors import OplogError
from peer.commands.common import DEFAULT_DB


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "changes", help="each epoch's changed rows from a doltlite peer's database (a change feed; --follow)"
    )
    p.add_argument("--data-dir", type=Path, required=True, help="the peer's --data-dir")
    p.add_argument("--db", default=DEFAULT_DB, help="database name; the file is <data-dir>/<db>.db")
    p.add_argument("--from-epoch", type=int, required=True, metavar="K", help="the first epoch to show")
    p.add_argument("--to-epoch", type=int, metavar="N",
                   help="the last epoch to show (it must be committed, unless --follow waits for it)")  # fmt: skip
    p.add_argument("--table", help="only this table's changes")
    p.add_argument("--follow", action="store_true", help="then wait for new epochs, until SIGINT/SIGTERM")
    p.add_argument("--poll", type=float, default=DEFAULT_POLL_S, metavar="S",
                   help=f"with --follow, look for new epochs every S seconds (default {DEFAULT_POLL_S:g})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one canonical JSON line per change")
    p.set_defaults(handler=cmd_changes)


def _value(value: Any) -> str:
    return orjson.dumps(value).decode()


def _summary(change: Change) -> str:
    """The values of a change: those inserted or deleted, or for an update the ones that changed."""
    if change.kind == "update":
        assert change.before is not None and change.after is not None
        moved = [f"{c}: {_value(change.before.get(c))} -> {_value(v)}"
                 for c, v in change.after.items() if change.before.get(c) != v]  # fmt: skip
        return ", ".join(moved) or "(metadata only)"
    side = change.after if change.kind == "insert" else change.before
    assert side is not None
    return ", ".join(f"{c}={_value(v)}" for c, v in side.items())


HEADER = f"{'epoch':>8}  {'commit':<12}  {'table':<16}  {'kind':<6}  {'key':<16}  {'op_id':<32}  values"


def text_lines(epoch: EpochChanges) -> list[str]:
    return [
        f"{c.epoch:>8}  {c.commit[:12]:<12}  {c.table:<16}  {c.kind:<6}  {_value(list(c.key)):<16}  "
        f"{c.op_id or '-':<32}  {_summary(c)}"
        for c in epoch.changes
    ]


class Printer:
    """Writes change sets as they come: JSON lines, or table lines under one header."""

    def __init__(self, out: TextIO, *, json: bool, to_epoch: int | None) -> None:
        self.out, self.json, self.to_epoch = out, json, to_epoch
        self.header = not json

    def write(self, epoch: EpochChanges) -> bool:
        """Print one change set; False once the one holding ``to_epoch`` is printed."""
        lines = [c.to_json() for c in epoch.changes] if self.json else text_lines(epoch)
        if lines:
            if self.header:
                lines.insert(0, HEADER)
                self.header = False
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        return self.to_epoch is None or epoch.epoch < self.to_epoch

    def write_all(self, epochs: Iterable[EpochChanges]) -> None:
        for epoch in epochs:
            if not self.write(epoch):
                return


async def _follow(path: Path, args: argparse.Namespace, printer: Printer) -> None:
    # aclosing: the generator's connection is closed when this stops, by a signal or at --to-epoch.
    async with contextlib.aclosing(follow_changes(path, from_epoch=args.from_epoch, table=args.table,
                                                  poll_s=args.poll)) as feed:  # fmt: skip
        async for epoch in feed:
            if not printer.write(epoch):
                return


async def cmd_changes(args: argparse.Namespace) -> int:
    path = args.data_dir / f"{args.db}.db"
    if not path.is_file():
        raise OplogError(f"no database file {path} (is --data-dir the peer's data directory and --db its database?)")
    if args.to_epoch is not None and args.to_epoch < args.from_epoch:
        raise OplogError(f"--to-epoch {args.to_epoch} is before --from-epoch {args.from_epoch}")
    if not 0 < args.poll <= MAX_POLL_S:
        raise OplogError(f"--poll must be more than 0 and at most {MAX_POLL_S:g} seconds")
    printer = Printer(sys.stdout, json=args.json, to_epoch=args.to_epoch)
    try:
        if not args.follow:
            printer.write_all(iter_changes(path, args.from_epoch, args.to_epoch, table=args.table))
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        following = asyncio.create_task(_follow(path, args, printer))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (following, stopping):
                task.cancel()
            await asyncio.gather(following, stopping, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if following.done() and not following.cancelled() and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]
        return 0
    except ValueError as e:
        raise OplogError(str(e)) from None
    except BrokenPipeError:  # the reader of our output went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
