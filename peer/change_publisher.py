"""The change feed on NATS: ``oplog serve --publish-changes``.

Every peer computes the same change sets from its own epoch commits
(:mod:`materializer.read.changes`). A publishing peer puts them in the stream
``OPLOG-CHANGES_<db>`` (:class:`~oplog.topology.Topology`), one message per epoch commit
and changed table, on ``oplog-changes.<db>.<table>``. docs/reading.md "On NATS" is the
consumer's contract, decisions.md #43 the reasons. In short:

* The payload is what ``oplog changes --json`` prints for that epoch and table: one
  canonical JSON envelope per changed row, each line ending in a newline. A set larger
  than :data:`PART_BYTES` is cut between lines into parts (``Oplog-Part: i/n``), so no
  epoch can hit the server's payload limit and stall the feed.
* The stream holds the messages in one order, ``(epoch, table, part)``, each once, however
  many peers publish: each publish carries ``Nats-Expected-Last-Sequence`` (the stream's
  last sequence as this peer knows it), so the server stores only the publish that
  follows the stream's actual last message. A peer that loses that race reads the last
  message again and goes on after it. ``Nats-Msg-Id`` (``changes-<db>-<table>-<epoch>-<part>``)
  also drops a retried publish inside the duplicate window; the sequence check holds
  after the window too.
* Where to go on is read from the stream (its last message's headers), never from local
  state, so a peer that restarts, falls behind or joins late publishes what is missing,
  in order. A stream with no message is started after the newest epoch this peer had
  committed when it started publishing (on a new database: from its first commit).
* Publishing runs beside committing and never holds it up: database reads run in a worker
  thread of their own, the commit loop only sets an event, and every failure is logged
  once per outage (then at debug level) and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError

from materializer.backends.base import Backend
from materializer.errors import TransientBackendError
from materializer.read.changes import EpochChanges, iter_changes
from materializer.read.epoch_commits import HistoryGone
from oplog.errors import OplogError
from oplog.nats_errors import is_transient
from oplog.stream import stream_config
from oplog.topology import Topology

# Parts: well under nats-server's default max_payload (1 MiB) and the stream's
# max_msg_size, with room for the headers. A constant, not the server's limit: every
# peer must cut a set at the same lines, or their message ids would differ.
PART_BYTES = 256 * 1024
BATCH_COMMITS = 16  # epoch commits read per round: bounds memory and how long a stop waits on a read
IDLE_POLL_S = 2.0  # a commit wakes the publisher at once; this only bounds a missed wake-up
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
PUBLISH_TIMEOUT_S = 5.0
FROM_THE_START = -(2**62)  # below any epoch (epochs may be negative: before the origin)
# "wrong last sequence": another publish got there first (10164 is the same check's
# newer code on some servers).
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
MSG_ID = "Nats-Msg-Id"
EPOCH, FIRST_EPOCH, COMMIT, TABLE = "Oplog-Epoch", "Oplog-First-Epoch", "Oplog-Commit", "Oplog-Table"
END_MS, PART, CHANGES = "Oplog-End-Ms", "Oplog-Part", "Oplog-Changes"
T = TypeVar("T")


class ForeignMessage(OplogError):
    """The changes stream's last message was not published by an oplog peer, so where the
    feed goes on cannot be read from it."""


@dataclass(frozen=True, order=True)
class Position:
    """A message's place in the feed's one order."""

    epoch: int
    table: str
    part: int


@dataclass(frozen=True)
class ChangeMessage:
    """One message of the feed: (a part of) one table's changes in one epoch commit."""

    position: Position
    subject: str
    payload: bytes
    headers: Mapping[str, str]


def change_messages(topology: Topology, epoch: EpochChanges, part_bytes: int = PART_BYTES) -> list[ChangeMessage]:
    """The messages of one epoch commit's change set, in feed order (none for an empty set)."""
    lines: dict[str, list[bytes]] = {}
    for change in epoch.changes:
        lines.setdefault(change.table, []).append(change.to_json().encode() + b"\n")
    messages = []
    for table in sorted(lines):
        parts = _parts(lines[table], part_bytes)
        for number, part in enumerate(parts, 1):
            headers = {
                MSG_ID: topology.changes_msg_id(table, epoch.epoch, number),
                EPOCH: str(epoch.epoch),
                FIRST_EPOCH: str(epoch.epoch if epoch.first_epoch is None else epoch.first_epoch),
                COMMIT: epoch.commit_hash,
                TABLE: table,
                END_MS: str(epoch.end_ms),
                PART: f"{number}/{len(parts)}",
                CHANGES: str(len(part)),
            }
            messages.append(ChangeMessage(Position(epoch.epoch, table, number), topology.changes_subject(table),
                                          b"".join(part), headers))  # fmt: skip
    return messages


def _parts(lines: list[bytes], limit: int) -> list[list[bytes]]:
    """Consecutive runs of whole lines of at most ``limit`` bytes (a longer line alone)."""
    parts: list[list[bytes]] = [[]]
    size = 0
    for line in lines:
        if parts[-1] and size + len(line) > limit:
            parts.append([])
            size = 0
        parts[-1].append(line)
        size += len(line)
    return parts


def stored_position(stream: str, seq: int, subject: str, headers: Mapping[str, str] | None) -> Position:
    """The position of a stored message, from its headers."""
    try:
        return Position(int(headers[EPOCH]), headers[TABLE], int(headers[PART].split("/", 1)[0]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):  # TypeError: no headers at all
        raise ForeignMessage(
            f"the last message of stream {stream} (seq {seq}, subject {subject}) has no {EPOCH}, {TABLE} and "
            f"{PART} headers: it was not published by an oplog peer; delete it (nats stream rmm) so peers can go on"
        ) from None


def changes_stream_config(topology: Topology) -> StreamConfig:
    """The stream peers create when it is missing. An admin may create it first with other
    limits (max_age, max_bytes): peers never change an existing stream."""
    return stream_config(topology, name=topology.changes_stream, subjects=topology.changes_subjects)


def feed_source(backend: Backend) -> Backend | Path:
    """What to read the change sets from: a doltlite peer's file by its path (opened
    read-only, and a snapshot that replaces the file is read from then on), else the backend
    (a connection of its own)."""
    path = getattr(backend, "path", None)
    return Path(path) if backend.name == "doltlite" and path is not None else backend


def _read(source: Backend | Path, topology: Topology, from_epoch: int, limit: int,
          part_bytes: int) -> tuple[int, int | None, list[ChangeMessage]]:  # fmt: skip
    """``(commits read, the last one's epoch, their messages)``: up to ``limit`` epoch
    commits from ``from_epoch`` on. Runs in the publisher's worker thread."""
    with contextlib.closing(iter_changes(source, from_epoch)) as commits:
        epochs = list(itertools.islice(commits, limit))
    messages = [m for epoch in epochs for m in change_messages(topology, epoch, part_bytes)]
    return len(epochs), (epochs[-1].epoch if epochs else None), messages


class Overtaken(OplogError):
    """Another publisher stored a message first: go on after the stream's new last message."""

    retryable = True


class ChangePublisher:
    """Publishes this peer's change sets after the stream's last message (see the module
    docstring). :meth:`start` runs it in a task, :meth:`committed` wakes it, :meth:`stop`
    ends it; :meth:`publish_pending` is one round, for callers that drive it themselves."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        source: Backend | Path,
        *,
        logger: logging.Logger,
        part_bytes: int = PART_BYTES,
        batch_commits: int = BATCH_COMMITS,
    ) -> None:
        self._js, self._topology, self._source, self._log = js, topology, source, logger
        self._part_bytes, self._batch = part_bytes, batch_commits
        self._wake = asyncio.Event()
        self._position: Position | None = None  # the stream's last message, as last read or stored
        self._expected: int | None = None  # the stream's last sequence; None: read the stream again
        self._start = FROM_THE_START  # where an empty stream starts
        self._cursor = FROM_THE_START  # the next epoch to read from this peer's database
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.stored = 0  # messages this peer's publishes stored (the others lost a race or were duplicates)

    def start(self, committed: int | None) -> None:
        """Publish in a task of its own; ``committed`` is the newest epoch this peer has
        committed (None: none), after which an empty stream starts."""
        self._start = FROM_THE_START if committed is None else committed + 1
        self._task = asyncio.create_task(self.run(), name=f"oplog-feed-{self._topology.db}")

    def committed(self, epoch: int) -> None:
        """The peer committed ``epoch``: publish it (without waiting for it here)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            # A read may still run; it ends by itself (one batch) and closes its connection.
            self._executor.shutdown(wait=False)

    async def run(self) -> None:
        """Publish until cancelled; no error ends it (the peer must go on committing)."""
        delay, overtaken, stored = RETRY_FIRST_S, 0, self.stored
        while True:
            self._wake.clear()  # before reading: a commit from now on wakes the next round
            try:
                await self.publish_pending()
            except Overtaken:
                # Normally the next round goes on at once after the winner's message. A
                # stream that keeps refusing without this peer storing anything (a cluster
                # whose stream leader is moving) is asked again more slowly, not in a spin.
                overtaken = 0 if self.stored > stored else overtaken + 1
                stored = self.stored
                if overtaken > 3:
                    await asyncio.sleep(min(0.1 * overtaken, RETRY_MAX_S))
                continue
            except Exception as e:
                self._failed(e)
                self._expected = None  # a publish may have landed unacknowledged: ask the stream
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            delay, overtaken = RETRY_FIRST_S, 0
            self._recovered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def publish_pending(self) -> None:
        """Publish every message this peer has committed after the stream's last one.

        Raises what failed (the task logs it and tries again), or :class:`Overtaken` when
        another publisher stored a message first (the next round goes on after it)."""
        if self._expected is None:
            await self._locate()
        while True:
            try:
                read, last, messages = await self._in_thread(
                    _read, self._source, self._topology, self._cursor, self._batch, self._part_bytes
                )
            except HistoryGone as gone:
                # A checkpoint re-rooted the history past what the feed has published: those
                # epochs' change sets can no longer be read by anyone. Say so once, go on.
                self._log.error("change feed: %s; epochs %d-%d are missing from the feed",
                                gone, self._cursor, gone.first_kept - 1)  # fmt: skip
                self._cursor = gone.first_kept
                continue
            for message in messages:
                if self._position is None or message.position > self._position:
                    await self._publish(message)
            if last is not None:
                self._cursor = last + 1
            if read < self._batch:
                return

    async def _locate(self) -> None:
        """Read the stream's last sequence and last message (creating the stream if missing)."""
        js, name = self._js, self._topology.changes_stream
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(changes_stream_config(self._topology))
            info = await js.stream_info(name)
        expected = int(info.state.last_seq)
        if info.state.messages:
            try:
                stored = await js.get_msg(name, subject=self._topology.changes_subjects)  # the newest message
            except NotFoundError:
                stored = None  # removed meanwhile (max_age): as if the stream were empty
            if stored is not None:
                assert stored.seq is not None and stored.subject is not None
                self._position = stored_position(name, stored.seq, stored.subject, stored.headers)
                expected = max(expected, int(stored.seq))
        # An empty stream keeps the position this process last knew, if it knows one.
        self._expected = expected
        self._cursor = self._start if self._position is None else self._position.epoch

    async def _publish(self, message: ChangeMessage) -> None:
        headers = {**message.headers, EXPECTED_LAST_SEQUENCE: str(self._expected)}
        try:
            ack = await self._js.publish(message.subject, message.payload, timeout=PUBLISH_TIMEOUT_S,
                                         stream=self._topology.changes_stream, headers=headers)  # fmt: skip
        except APIError as e:
            if e.err_code in WRONG_LAST_SEQUENCE:
                self._expected = None
                raise Overtaken from None
            raise
        self._position = message.position
        # A duplicate (its id is in the window, the stream unchanged: its copy was removed
        # after it was stored) stores nothing, so the last sequence stays.
        if not ack.duplicate:
            self._expected = int(ack.seq)
            self.stored += 1

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="oplog-feed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        what = f"{type(error).__name__}: {error}"
        if self._failures == 1:
            transient = is_transient(error) or isinstance(error, TransientBackendError)
            self._log.log(logging.WARNING if transient else logging.ERROR,
                          "could not publish the change feed to stream %s (%s); retrying, commits go on",
                          self._topology.changes_stream, what)  # fmt: skip
        else:
            self._log.debug("the change feed is still not published (attempt %d): %s", self._failures, what)

    def _recovered(self) -> None:
        if self._failures:
            self._log.info("publishing the change feed to stream %s again, after %d failed attempts",
                           self._topology.changes_stream, self._failures)  # fmt: skip
            self._failures = 0
