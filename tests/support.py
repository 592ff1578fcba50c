"""Helpers for integration tests: real NATS, real doltlite or Dolt sql-server, explicit seals.

Tests publish seals themselves (peers run without a sealer) so that where each seal
falls in the stream, and so which epoch every op lands in, is decided by the test.

A :class:`BackendFactory` (the ``backends`` fixture of ``tests/conftest.py``, one per
backend kind) makes a peer's database by name — the same name gives the same database
again, as after a restart — and reads it with plain SQL in its own dialect.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from nats.js import JetStreamContext

from devtools.demo import USERS
from epoch.config import DatabaseConfig
from materializer.backends.base import Backend
from materializer.backends.dolt_server import DoltServerBackend
from materializer.backends.dolt_server_launcher import DoltServer
from materializer.backends.doltlite import DoltliteBackend
from materializer.commit.loop import Materializer
from oplog.codec import canonical_bytes
from oplog.op import Op
from oplog.schema import SchemaMessage
from oplog.stream import publish_json
from oplog.topology import Topology
from peer.control import init_database, publish_schema
from peer.service import connected as connected  # re-exported for the tests and measurements

ORIGIN_MS = 1_700_000_000_000
EPOCH_MS = 1000
WAIT_S = 30.0


def config(db: str = "t", **overrides: Any) -> DatabaseConfig:
    fields: dict[str, Any] = {"db": db, "origin_ms": ORIGIN_MS, "epoch_ms": EPOCH_MS, "grace_ms": 0}
    fields.update(overrides)
    return DatabaseConfig(**fields)


def wall(epoch: int, offset_ms: int = 0) -> int:
    """A wall time inside ``epoch`` of :func:`config`'s timeline."""
    return ORIGIN_MS + epoch * EPOCH_MS + offset_ms


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


class BackendFactory(ABC):
    """Makes the databases of one test on one backend kind, and reads them with SQL."""

    kind: str

    @abstractmethod
    def __call__(self, name: str) -> Backend:
        """A new (unopened) backend for database ``name``; the same name is the same database."""

    @abstractmethod
    def query(self, backend: Backend, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (``?`` placeholders) on ``backend``'s database; dates as doltlite renders them."""

    @abstractmethod
    def quote(self, name: str) -> str:
        """An identifier in this backend's dialect."""

    def table_names(self, backend: Backend) -> list[str]:
        """Every table of the database's working set, sorted."""
        return sorted(name for (name,) in self.query(backend, self.tables_sql))

    tables_sql: str


class DoltliteBackends(BackendFactory):
    kind = "doltlite"
    tables_sql = "SELECT name FROM sqlite_master WHERE type = 'table'"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, name: str) -> DoltliteBackend:
        return DoltliteBackend(self.directory / f"{name}.db")

    def query(self, backend: Backend, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert isinstance(backend, DoltliteBackend)
        return backend.conn.execute(sql, params).fetchall()

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'


class DoltServerBackends(BackendFactory):
    """Databases on one shared server; each test gets its own name prefix."""

    kind = "dolt-server"
    tables_sql = "SHOW TABLES"
    _tests = itertools.count()

    def __init__(self, server: DoltServer) -> None:
        self.server = server
        self.prefix = f"t{next(self._tests)}"

    def database(self, name: str) -> str:
        return f"{self.prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"

    def __call__(self, name: str) -> DoltServerBackend:
        return DoltServerBackend(host=self.server.host, port=self.server.port, database=self.database(name))

    def query(self, backend: Backend, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert isinstance(backend, DoltServerBackend)
        with backend.connect(backend.database) as conn, conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params or None)
            return [tuple(_as_doltlite(v) for v in row) for row in cur.fetchall()]

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"


def _as_doltlite(value: Any) -> Any:
    # doltlite renders dates as text to the second; Dolt returns datetimes with milliseconds.
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else value


class InProcessPeer:
    """A materializer stepped by the test (no sealer).

    ``store`` is a :class:`BackendFactory` (the database is ``db``, default the peer's
    name) or, as before, the path of a doltlite file."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        store: BackendFactory | Path,
        name: str,
        *,
        db: str | None = None,
        read_batch: int = 2000,
    ) -> None:
        if isinstance(store, Path):  # a doltlite file, as older tests pass it
            db = store.stem
            store = DoltliteBackends(store.parent)
        self.backends = store
        self.backend = store(db or name)
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

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.backends.query(self.backend, sql, params)

    def rows(self, table: str = "users") -> list[tuple[Any, ...]]:
        return self.query(f"SELECT * FROM {self.backends.quote(table)} ORDER BY 1")

    def rejections(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT epoch, op_id, reason FROM oplog_rejections ORDER BY epoch, seq, idx")

    def epochs(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT epoch, applied, rejected, duplicates, late FROM oplog_epochs ORDER BY epoch")


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


@cache
def doltlite_genesis() -> bytes:
    """One doltlite genesis artifact, made once per test process (making one takes a
    moment; tests that commit into many fresh files install this one)."""
    with tempfile.TemporaryDirectory() as scratch:
        maker = DoltliteBackend(Path(scratch) / "genesis.db")
        maker.open()
        try:
            return maker.create_genesis()
        finally:
            maker.close()

