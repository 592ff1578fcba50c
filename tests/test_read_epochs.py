"""The read side on every backend: read-your-writes from a producer receipt, each epoch
as committed (``AS OF`` / ``dolt_at_<t>``), and diffs between epochs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.natsd import NatsServer
from epoch.config import Timeline
from materializer.backends.base import Backend
from materializer.plan import TableChange, TableWrites
from materializer.read.epochs import (
    EpochNotCommitted,
    RowChange,
    diff_epochs,
    rows_at_epoch,
    wait_for_epoch,
    wait_for_epoch_async,
)
from oplog.hlc import HybridLogicalClock
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.schema import TableSchema
from oplog.topology import Topology
from tests.support import BackendFactory, InProcessPeer, config, connected, publish_batch, seal, setup_db, wall
from tests.test_backend_contract import END_MS, HISTORY, plan

pytestmark = pytest.mark.integration


def meta(key: str, name: str) -> str:
    return f'{{"v":[{END_MS},0,"n","{key}-{name}"]}}'


@pytest.fixture
def committed(backends: BackendFactory) -> Iterator[Backend]:
    """A peer database holding epochs 0-2 of the contract suite's history."""
    backend = backends("reader")
    backend.open()
    backend.create_genesis()
    for p in HISTORY:
        backend.commit_epoch(p)
    try:
        yield backend
    finally:
        backend.close()


def test_each_epoch_reads_as_it_was_committed(committed: Backend) -> None:
    # Epoch 0 wrote a and b; epoch 1 added c and deleted b; epoch 2 changed a.
    ann, bob, cy = ("a", "Ann", 1, meta("a", "Ann")), ("b", "Bob", 2, meta("b", "Bob")), ("c", "Cy", 3, meta("c", "Cy"))
    columns = ["id", "name", "score", "_oplog_meta"]

    def rows(epoch: int) -> list[tuple[Any, ...]]:
        return [tuple(r[c] for c in columns) for r in rows_at_epoch(committed, "users", epoch)]

    assert rows(0) == [ann, bob]
    assert rows(1) == [ann, cy]
    assert rows(2) == [("a", "Ann", 5, meta("a", "Ann")), cy]


def test_a_diff_between_two_epochs_names_every_changed_row(committed: Backend) -> None:
    def row(key: str, name: str, score: int) -> dict[str, Any]:
        return {"id": key, "name": name, "score": score, "_oplog_meta": meta(key, name)}

    # From epoch 0 to 2, across the commit in between: one row each way, one changed.
    assert diff_epochs(committed, "users", 0, 2) == [
        RowChange("modified", row("a", "Ann", 1), row("a", "Ann", 5)),
        RowChange("removed", row("b", "Bob", 2), None),
        RowChange("added", None, row("c", "Cy", 3)),
    ]
    assert diff_epochs(committed, "users", 2, 2) == []
    assert diff_epochs(committed, "users", 2, 0)[1] == RowChange("added", None, row("b", "Bob", 2))


def test_a_diff_is_exact_whatever_the_columns_are_called(backends: BackendFactory) -> None:
    # Dolt's dolt_diff() names its columns to_<c>/from_<c> beside to_commit and
    # from_commit_date: a user column called "commit" or "commit_date" collided with them.
    odd = TableSchema.model_validate({
        "name": "odd", "primary_key": ["id"],
        "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "commit", "type": "text"},
                    {"name": "commit_date", "type": "text"}, {"name": "diff_type", "type": "integer"}],
    })  # fmt: skip
    backend = backends("odd")
    backend.open()
    try:
        backend.create_genesis()
        first = {"commit": "c1", "commit_date": "d1", "diff_type": 1}
        backend.commit_epoch(plan(0, changes=(TableChange(None, odd),),
                                  writes=(TableWrites(odd, upserts=[(("k",), first, {"m": 0})]),)))  # fmt: skip
        second = {"commit": "c2", "commit_date": "d1", "diff_type": 2}
        backend.commit_epoch(plan(1, writes=(TableWrites(odd, upserts=[(("k",), second, {"m": 1})]),)))

        assert diff_epochs(backend, "odd", 0, 1) == [
            RowChange("modified", {"id": "k", **first, "_oplog_meta": '{"m":0}'}, {"id": "k", **second, "_oplog_meta": '{"m":1}'})
        ]
    finally:
        backend.close()


def test_the_helpers_take_a_readers_own_connection(committed: Backend, backends: BackendFactory) -> None:
    # A service that already holds a connection passes it instead of a backend.
    if backends.kind == "doltlite":
        import sqlite3

        conn: Any = sqlite3.connect(committed.path, isolation_level=None)  # type: ignore[attr-defined]
    else:
        conn = committed.connect(committed.database)  # type: ignore[attr-defined]
    try:
        assert rows_at_epoch(conn, "users", 1) == rows_at_epoch(committed, "users", 1)
        assert wait_for_epoch(conn, 2, 0, timeout=0).epoch == 2
        # In a transaction it would never see a newer commit: refused.
        conn.execute("BEGIN") if backends.kind == "doltlite" else conn.autocommit(False)
        with pytest.raises(ValueError, match="transaction|autocommit"):
            wait_for_epoch(conn, 2, 0, timeout=0)
    finally:
        conn.close()


def test_waiting_has_an_explicit_deadline(committed: Backend) -> None:
    # An injected clock: polls at 0, 0.4, 0.8, then once more at the deadline (1.0).
    now = [0.0]
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(now[0])
        now[0] += seconds

    with pytest.raises(EpochNotCommitted) as caught:
        wait_for_epoch(committed, 3, 0, timeout=1.0, poll_s=0.4, clock=lambda: now[0], sleep=sleep)
    assert polls == [0.0, 0.4, 0.8] and now[0] == pytest.approx(1.0)
    assert isinstance(caught.value, TimeoutError) and caught.value.retryable
    assert caught.value.last is not None and caught.value.last.epoch == 2
    assert "no commit of epoch >= 3 sealed after stream seq 0 within 1 s; this peer is at epoch 2" in str(caught.value)
    # A commit with a high enough epoch but sealed before the write does not count.
    with pytest.raises(EpochNotCommitted):
        wait_for_epoch(committed, 0, HISTORY[2].epoch.seal_seq, timeout=0)
    assert wait_for_epoch(committed, 0, HISTORY[2].epoch.seal_seq - 1, timeout=0).epoch == 2


async def test_a_producer_reads_its_own_write_even_when_it_lands_late(
    nats_server: NatsServer, backends: BackendFactory
) -> None:
    topology = Topology(db="t")
    timeline = Timeline.from_config(config())
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        await publish_batch(js, topology, [Op(id="first", hlc=(wall(0, 1), 0, "x"), table="users", key=("f",),
                                              kind="upsert", data={"name": "f", "score": 0})])  # fmt: skip
        await seal(js, topology, 0)
        # A producer whose clock is still in epoch 0: its write is late, so epoch 0's
        # commit does not hold it although its epoch matches the receipt's.
        clock = HybridLogicalClock("writer", now_ms=lambda: wall(0, 500))
        async with Producer(js, topology, clock=clock, config=ProducerConfig(linger_ms=1),
                            epoch_of=timeline.epoch_of) as producer:  # fmt: skip
            receipt = await producer.submit(producer.make_op("users", "mine", "upsert", {"name": "me", "score": 1}))
        assert receipt.epoch == 0
        peer = await InProcessPeer(js, topology, backends, "p").start()
        try:
            await peer.run_until(0)
            with pytest.raises(EpochNotCommitted, match="this peer is at epoch 0"):
                await wait_for_epoch_async(peer.backend, receipt.epoch, receipt.stream_seq, timeout=0.2)
            # The next seal carries it into epoch 1: waiting returns that commit, and the
            # row is there to read.
            await seal(js, topology, 1)
            waiting = asyncio.create_task(
                wait_for_epoch_async(peer.backend, receipt.epoch, receipt.stream_seq, timeout=30)
            )
            await peer.run_until(1)
            row = await waiting
            assert (row.epoch, row.applied, row.late) == (1, 1, 1)
            assert [r["name"] for r in rows_at_epoch(peer.backend, "users", row.epoch)] == ["f", "me"]
        finally:
            await peer.close()


def test_reading_a_table_that_is_not_declared_says_so(committed: Backend) -> None:
    from materializer.errors import BackendError

    with pytest.raises(BackendError, match="no table 'nope' is declared"):
        rows_at_epoch(committed, "nope", 0)
    with pytest.raises(ValueError, match="not a table name"):
        rows_at_epoch(committed, "users; DROP TABLE users", 0)
