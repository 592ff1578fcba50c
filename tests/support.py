"""Helpers for integration tests: real NATS, real doltlite, explicit seals.

Tests publish seals themselves (peers run without a sealer) so that where each seal
falls in the stream, and so which epoch every op lands in, is decided by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext

from epoch.config import DatabaseConfig
from materializer.backends.doltlite import DoltliteBackend
from materializer.materializer import Materializer
from oplog.codec import canonical_bytes
from oplog.op import Op
from oplog.schema import SchemaMessage
from oplog.stream import publish_json
from oplog.topology import Topology
from peer.control import init_database, publish_schema

ORIGIN_MS = 1_700_000_000_000
EPOCH_MS = 1000
WAIT_S = 30.0

USERS = SchemaMessage.model_validate(
    {
        "tables": [
            {
                "name": "users",
                "columns": [
                    {"name": "id", "type": "text", "nullable": False},
                    {"name": "name", "type": "text"},
                    {"name": "score", "type": "integer"},
                ],
                "primary_key": ["id"],
                "strategy": "lww",
            }
        ]
    }
)


def config(db: str = "t", **overrides: Any) -> DatabaseConfig:
    fields: dict[str, Any] = {"db": db, "origin_ms": ORIGIN_MS, "epoch_ms": EPOCH_MS, "grace_ms": 0}
    fields.update(overrides)
    return DatabaseConfig(**fields)


def wall(epoch: int, offset_ms: int = 0) -> int:
    """A wall time inside ``epoch`` of :func:`config`'s timeline."""
    return ORIGIN_MS + epoch * EPOCH_MS + offset_ms


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        yield nc
    finally:
        await nc.close()


async def setup_db(
    js: JetStreamContext, topology: Topology, cfg: DatabaseConfig, schema: SchemaMessage = USERS
) -> None:
    await init_database(js, topology, cfg)
    await publish_schema(js, topology, schema)


async def publish_batch(js: JetStreamContext, topology: Topology, ops: list[Op], *, msg_id: str | None = None) -> int:
    payload = b'{"v":1,"ops":[' + b",".join(canonical_bytes(op.to_wire()) for op in ops) + b"]}"
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    ack = await js.publish(topology.ops_subject(ops[0].table), payload, stream=topology.stream, headers=headers)
    return int(ack.seq)


async def publish_raw(js: JetStreamContext, topology: Topology, subject: str, payload: bytes) -> int:
    ack = await js.publish(subject, payload, stream=topology.stream)
    return int(ack.seq)


async def seal(js: JetStreamContext, topology: Topology, epoch: int) -> int:
    return await publish_json(js, topology, topology.seal_subject, {"epoch": epoch}, msg_id=topology.seal_msg_id(epoch))


class InProcessPeer:
    """A materializer on a doltlite file, stepped by the test (no sealer)."""

    def __init__(
        self, js: JetStreamContext, topology: Topology, path: Path, name: str, *, read_batch: int = 2000
    ) -> None:
        self.backend = DoltliteBackend(path)
        self.materializer = Materializer(js, topology, self.backend, peer=name, read_batch=read_batch)
        self.name = name

    async def start(self) -> InProcessPeer:
        await self.materializer.start()
        return self

    async def close(self) -> None:
        await self.materializer.close()

    async def run_until(self, epoch: int, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while self.materializer.last is None or self.materializer.last.epoch < epoch:
            if time.monotonic() > deadline:
                got = self.materializer.last.epoch if self.materializer.last else None
                raise AssertionError(f"peer {self.name} did not commit epoch {epoch} within {timeout} s (at {got})")
            await self.materializer.step()

    def hashes(self) -> list[tuple[int, str]]:
        return self.backend.epoch_hashes()

    def rows(self, table: str = "users") -> list[tuple[Any, ...]]:
        return self.backend.conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()

    def rejections(self) -> list[tuple[Any, ...]]:
        return self.backend.conn.execute(
            "SELECT epoch, op_id, reason FROM oplog_rejections ORDER BY epoch, seq, idx"
        ).fetchall()

    def epochs(self) -> list[tuple[Any, ...]]:
        return self.backend.conn.execute(
            "SELECT epoch, applied, rejected, duplicates, late FROM oplog_epochs ORDER BY epoch"
        ).fetchall()


def read_db(path: Path, query: str) -> list[tuple[Any, ...]]:
    backend = DoltliteBackend(path)
    with backend:
        return backend.conn.execute(query).fetchall()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def lww_reference(ops: list[Op]) -> dict[str, tuple[str | None, int | None]]:
    """Users rows by plain LWW: per key, the op with the highest (hlc, id); deletes remove."""
    winners: dict[str, Op] = {}
    for op in ops:
        key = op.key[0]
        assert isinstance(key, str)
        if key not in winners or op.sort_key() > winners[key].sort_key():
            winners[key] = op
    return {
        key: ((op.data or {}).get("name"), (op.data or {}).get("score"))
        for key, op in winners.items()
        if op.kind == "upsert"
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
