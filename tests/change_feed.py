"""Helpers for the change-feed tests: peers run with ``run_peer`` in this process, on a real
nats-server and real doltlite files, and the feed read back from its stream.

Seals are published by the tests (peers run without a sealer), so which commit holds
which op is fixed, as in tests/support.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import doltlite  # noqa: F401  (before sqlite3 is used)
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from materializer.read.changes import read_changes
from oplog.connection import NatsOptions
from oplog.op import Op
from oplog.topology import Topology
from peer.change_publisher import Position, change_messages, stored_position
from peer.service import PeerConfig, run_peer
from tests.support import publish_batch, seal
from tests.test_changes import op

WAIT_S = 60.0
TOPOLOGY = Topology(db="t")


class Peer:
    """One ``run_peer`` task (no sealer); :meth:`start` again after :meth:`stop` is a restart."""

    def __init__(self, nats: str | NatsOptions, root: Path, name: str, *, publish: bool) -> None:
        options = NatsOptions.coerce(nats)
        self.config = PeerConfig(name=name, db=TOPOLOGY.db, nats=options, data_dir=root / name, seal=False,
                                 publish_changes=publish, heartbeat_s=0.2, check_interval_s=0.2)  # fmt: skip
        self.name = name
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def db_path(self) -> Path:
        return self.config.data_dir / f"{TOPOLOGY.db}.db"

    def start(self) -> Peer:
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(run_peer(self.config, self._stop), name=f"test-peer-{self.name}")
        return self

    async def stop(self) -> None:
        if self.task is None:
            return
        self._stop.set()
        task, self.task = self.task, None
        await asyncio.wait_for(task, WAIT_S)

    def check(self) -> None:
        """Raise what stopped this peer, if it stopped by itself."""
        if self.task is not None and self.task.done():
            self.task.result()
            raise AssertionError(f"peer {self.name} stopped by itself")

    def committed(self) -> int | None:
        """The newest epoch this peer committed (read from its file, read-only)."""
        if not self.db_path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
            try:
                value = conn.execute("SELECT MAX(epoch) FROM oplog_epochs").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return None  # not made yet, or busy: ask again
        return None if value is None else int(value)


@contextlib.asynccontextmanager
async def stopped_at_exit(*peers: Peer) -> AsyncIterator[None]:
    """Every peer (started or not) is stopped on the way out, even when the test failed."""
    try:
        yield
    finally:
        results = await asyncio.gather(*(p.stop() for p in peers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, peers: list[Peer]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        for peer in peers:
            peer.check()
        assert time.monotonic() < deadline, f"timed out after {WAIT_S} s waiting for {what}"
        await asyncio.sleep(0.05)


async def wait_committed(peers: list[Peer], epoch: int) -> None:
    async def done() -> bool:
        return all((p.committed() or -(2**62)) >= epoch for p in peers)

    await wait_until(done, f"peers {[p.name for p in peers]} to commit epoch {epoch}", peers)


async def feed(js: JetStreamContext, topology: Topology = TOPOLOGY) -> list[RawStreamMsg]:
    """Every message of the changes stream, in stream order."""
    state = (await js.stream_info(topology.changes_stream)).state
    if not state.messages:
        return []
    return [await js.get_msg(topology.changes_stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]


def position(msg: RawStreamMsg, topology: Topology = TOPOLOGY) -> Position:
    assert msg.seq is not None and msg.subject is not None
    return stored_position(topology.changes_stream, msg.seq, msg.subject, msg.headers)


async def wait_fed(js: JetStreamContext, last: Position, peers: list[Peer], topology: Topology = TOPOLOGY) -> None:
    """Until the stream's last message is at ``last``."""

    async def reached() -> bool:
        try:
            messages = await feed(js, topology)
        except NotFoundError:  # no peer made the stream yet
            return False
        return bool(messages) and position(messages[-1], topology) >= last

    await wait_until(reached, f"the feed to reach {last}", peers)


def expected_feed(
    path: Path, topology: Topology = TOPOLOGY, from_epoch: int = -(2**62)
) -> list[tuple[Position, bytes]]:
    """The messages a peer's file gives, in feed order: ``(position, payload)``."""
    return [(m.position, m.payload) for e in read_changes(path, from_epoch) for m in change_messages(topology, e)]


async def publish_epoch(js: JetStreamContext, epoch: int, batches: list[list[Op]], *, sealed: bool = True) -> None:
    """Each batch (ops of one table: peers reject an op whose table is not its subject's),
    then the seal of ``epoch``."""
    for batch in batches:
        await publish_batch(js, TOPOLOGY, batch)
    if sealed:
        await seal(js, TOPOLOGY, epoch)


def churn(epoch: int) -> list[list[Op]]:
    """Epoch ``epoch`` of a steady load: a user added, the previous one changed, the one
    before deleted, and a counter moved."""
    users = [op(f"add{epoch}", epoch, 1, "users", f"u{epoch}", "upsert", {"name": f"n{epoch}", "score": epoch})]
    if epoch >= 1:
        users.append(op(f"upd{epoch}", epoch, 2, "users", f"u{epoch - 1}", "upsert", {"name": "changed", "score": 0}))
    if epoch >= 2:
        users.append(op(f"del{epoch}", epoch, 3, "users", f"u{epoch - 2}", "delete"))
    return [users, [op(f"inc{epoch}", epoch, 4, "stock", "s1", "incr", {"qty": epoch + 1})]]

