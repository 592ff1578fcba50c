"""The chaos suite's harness: a deployment of real processes, load, and ledgers.

:class:`Deployment` starts a nats-server (or a 3-node cluster), declares the database
and runs peers as ``oplog serve`` subprocesses; leaving it stops them all, whatever
happened. :class:`Load` runs producers that re-send every op (same id) until it is
acknowledged. :func:`read_ledger` reads a stopped peer's own database. Every wait
has a deadline and raises :class:`ChaosError` past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from devtools.chaos_rows import TABLE, PeerLedger
from devtools.natsd import NatsCluster, NatsServer
from devtools.processes import PeerProcess, stop_all
from epoch.config import DatabaseConfig, LatePolicy, Timeline
from materializer.backends.doltlite import DoltliteBackend
from materializer.buckets import key_value
from oplog.errors import PublishError
from oplog.hlc import HybridLogicalClock, system_clock_ms
from oplog.nats_errors import TRANSIENT
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.receipts import Receipt
from oplog.schema import SchemaMessage
from oplog.topology import StreamLimits, Topology
from peer.control import default_origin_ms, init_database, publish_schema
from peer.service import connect

DB = "chaos"
SCHEMA = SchemaMessage.model_validate(
    {
        "tables": [
            {
                "name": TABLE,
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
SETTLE_S = 60.0  # every peer commits past the last acked op within this, after the load stops
RETRY_BUDGET_S = 60.0  # a producer re-sends an unacknowledged op (same id) for this long
RESEND_PAUSE_S = 0.2
POLL_S = 0.1
TICK_S = 0.02  # the load generator's pacing
TEN_MINUTES_MS = 10 * 60 * 1000


class ChaosError(RuntimeError):
    """A scenario could not run to its end (a deadline passed, a process died)."""


# -- I/O: reading a peer's database -----------------------------------------------------------


def read_ledger(name: str, path: Path) -> PeerLedger:
    """Everything :func:`build_row` needs, from the peer's own doltlite file (peer stopped)."""
    backend = DoltliteBackend(path)
    with backend:
        conn = backend.conn
        hashes = dict(backend.epoch_hashes())
        applied, rejected, duplicates, late = conn.execute(
            "SELECT COALESCE(SUM(applied), 0), COALESCE(SUM(rejected), 0), COALESCE(SUM(duplicates), 0),"
            " COALESCE(SUM(late), 0) FROM oplog_epochs"
        ).fetchone()
        rejection_rows = conn.execute("SELECT op_id, reason FROM oplog_rejections").fetchall()
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchall()
        rows = conn.execute(f"SELECT id, name, score FROM {TABLE}").fetchall() if has_table else []
    return PeerLedger(
        name=name,
        applied=int(applied),
        rejected=int(rejected),
        rejection_rows=len(rejection_rows),
        duplicates=int(duplicates),
        late=int(late),
        hashes=hashes,
        rejections=dict(rejection_rows),
        rows={row[0]: (row[1], row[2]) for row in rows},
    )


def last_committed_epoch(path: Path) -> int | None:
    """The newest epoch in a (stopped) peer's database, None before its first commit."""
    backend = DoltliteBackend(path)
    with backend:
        if not backend.is_initialized():
            return None
        row = backend.last_epoch()
        return None if row is None else row.epoch


# -- I/O: load ----------------------------------------------------------------------------------


class Load:
    """Producers that publish unique-key upserts and re-send each op until it is acked.

    Op ``<scenario>.<producer>.<n>`` upserts the row of the same key to ``(producer, n)``,
    so the ``users`` table must end as exactly the acked, non-rejected ops. A batch whose
    acknowledgement times out is retried by the producer with the same ``Nats-Msg-Id``;
    once the producer gives up (PublishError) the op is enqueued again, same id and HLC,
    in another batch: the materializer must then drop the copy by op id.
    """

    def __init__(self, js: JetStreamContext, topology: Topology, scenario: str) -> None:
        self._js = js
        self.topology = topology
        self.scenario = scenario
        self.producers: dict[str, Producer] = {}
        self.expected: dict[str, tuple[Any, ...]] = {}  # every op made: id -> (name, score)
        self.receipts: dict[str, Receipt] = {}
        self.ack_times: list[float] = []  # time.monotonic() of every first receipt
        self.by_producer: dict[str, list[str]] = {}
        self.resent = 0  # ops enqueued again after the producer gave up on their batch
        self.duplicate_acks = 0  # receipts of a batch the stream already held (same Nats-Msg-Id)
        self.unacked: list[str] = []
        self._waiting: dict[str, float] = {}  # op id -> time.monotonic() it was first enqueued
        self._deliveries: set[asyncio.Task[None]] = set()

    def add(self, name: str, *, skew_ms: int = 0, config: ProducerConfig | None = None) -> Producer:
        """A producer whose wall clock reads ``skew_ms`` off the real one."""
        clock = HybridLogicalClock(name, now_ms=lambda: system_clock_ms() + skew_ms)
        producer = Producer(self._js, self.topology, clock=clock, config=config)
        self.producers[name] = producer
        self.by_producer[name] = []
        return producer

    @property
    def acked(self) -> dict[str, tuple[Any, ...]]:
        """op id -> expected row, of every op with a receipt."""
        return {op_id: self.expected[op_id] for op_id in self.receipts}

    async def run(self, name: str, rate: float, stop: asyncio.Event) -> None:
        """Publish ``rate`` ops per second from producer ``name`` until ``stop`` is set."""
        producer = self.producers[name]
        owed, last = 0.0, time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            owed += rate * (now - last)
            last = now
            for _ in range(int(owed)):
                self._send(name, producer)
            owed -= int(owed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)

    def _send(self, name: str, producer: Producer) -> None:
        n = len(self.by_producer[name])
        op_id = f"{self.scenario}.{name}.{n}"
        op = producer.make_op(TABLE, op_id, "upsert", {"name": name, "score": n}, op_id=op_id)
        self.expected[op_id] = (name, n)
        self.by_producer[name].append(op_id)
        task = asyncio.get_running_loop().create_task(self._deliver(producer, op))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def longest_wait(self) -> float:
        """Seconds the longest-waiting unacknowledged op has waited for its receipt."""
        return time.monotonic() - min(self._waiting.values(), default=time.monotonic())

    async def _deliver(self, producer: Producer, op: Op) -> None:
        deadline = time.monotonic() + RETRY_BUDGET_S
        self._waiting[op.id] = time.monotonic()
        try:
            await self._deliver_until(producer, op, deadline)
        finally:
            self._waiting.pop(op.id, None)

    async def _deliver_until(self, producer: Producer, op: Op, deadline: float) -> None:
        while True:
            try:
                receipt = await producer.enqueue(op)
            except PublishError:
                if time.monotonic() >= deadline:
                    self.unacked.append(op.id)
                    return
                self.resent += 1
                await asyncio.sleep(RESEND_PAUSE_S)
                continue
            self.receipts[op.id] = receipt
            self.ack_times.append(time.monotonic())
            self.duplicate_acks += receipt.duplicate
            return

    async def drain(self, timeout: float = RETRY_BUDGET_S + 30.0) -> None:
        """Wait until every op is acked (or given up on), then close the producers."""
        deadline = time.monotonic() + timeout
        while self._deliveries:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChaosError(f"{len(self._deliveries)} ops neither acked nor given up after {timeout:.0f} s")
            await asyncio.wait(list(self._deliveries), timeout=left)
        for producer in self.producers.values():
            await producer.close()
        if self.unacked:
            raise ChaosError(f"{len(self.unacked)} ops were never acknowledged, e.g. {self.unacked[:3]}")

    async def abort(self) -> None:
        """Cancel deliveries still running (a scenario that failed)."""
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)


@contextlib.asynccontextmanager
async def loading(load: Load, rates: Mapping[str, float]):  # type: ignore[no-untyped-def]
    """Run the named producers at their rates inside the block; stop them on the way out."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(name, rate, stop)) for name, rate in rates.items()]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- I/O: a deployment ---------------------------------------------------------------------------


class Deployment:
    """A NATS server (or 3-node cluster), one database, and peers as ``oplog serve`` processes.

    Use as ``async with``: leaving the block stops every peer and NATS node, whatever
    happened inside it.
    """

    def __init__(
        self,
        root: Path,
        config: DatabaseConfig,
        *,
        cluster: bool = False,
        peer_args: Sequence[str] = (),
        supervise: bool = False,
    ) -> None:
        """``supervise``: restart a peer that exits by itself, as a process supervisor
        would, and record it in :attr:`crashes`; otherwise such an exit fails the wait."""
        self.root = root
        self.config = config
        self.timeline = Timeline.from_config(config)
        self.cluster = cluster
        replicas = 3 if cluster else 1
        self.topology = Topology(db=config.db, limits=StreamLimits(replicas=replicas))
        self.nats: NatsServer | NatsCluster = NatsCluster(root / "nats") if cluster else NatsServer(root / "nats")
        self.peers: list[PeerProcess] = []
        self._peer_args = [*peer_args, "--replicas", str(replicas)]
        self._nc: Client | None = None
        self.supervise = supervise
        self.crashes: list[dict[str, Any]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._threads: set[asyncio.Future[Any]] = set()

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "use the deployment inside `async with`"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    def add_peer(self, name: str, extra: Sequence[str] = ()) -> PeerProcess:
        """A peer (not started yet) in ``root/<name>``."""
        peer = PeerProcess(name, self.config.db, self.nats.url, self.root / name, extra=[*self._peer_args, *extra])
        self.peers.append(peer)
        return peer

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking launcher call (start, restart) in a thread. If the scenario is
        cancelled meanwhile, :meth:`close` still waits for the thread, so nothing it
        spawns outlives the deployment."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        return await asyncio.shield(future)

    async def __aenter__(self) -> Deployment:
        try:
            await self.blocking(self.nats.start)
            self._nc = await connect(self.nats.url, name="oplog-chaos")
            await init_database(self.js, self.topology, self.config)
            await publish_schema(self.js, self.topology, SCHEMA)
            if self.supervise:
                self._supervisor = asyncio.create_task(self._restart_crashed())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        if self._threads:  # bounded by the launchers' own start deadlines
            await asyncio.gather(*self._threads, return_exceptions=True)
        # Synchronous from here on: it also runs while the scenario is being cancelled.
        stop_all(self.peers)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5.0)
            self._nc = None
        self.nats.stop()

    async def start_peers(self, peers: Sequence[PeerProcess]) -> None:
        """Start ``peers`` together and wait until each committed an epoch."""
        for peer in peers:
            peer.start()
        await self.wait_committed(self.epoch_now() - 1, peers)

    async def _restart_crashed(self) -> None:
        while True:
            for peer in self.peers:
                if peer.proc is not None and peer.proc.poll() is not None:
                    self.crashes.append(
                        {
                            "peer": peer.name,
                            "exit": peer.proc.returncode,
                            "error": (peer.log_tail(1) or "?")[:300],
                            "at_epoch": self.epoch_now(),
                        }
                    )
                    peer.start()
            await asyncio.sleep(POLL_S)

    def check_alive(self, peers: Iterable[PeerProcess] | None = None) -> None:
        """Raise ChaosError if a peer exited by itself (unless supervised: then it restarts)."""
        if self.supervise:
            return
        for peer in self.peers if peers is None else peers:
            if peer.proc is not None and not peer.running:
                raise ChaosError(f"peer {peer.name} exited ({peer.proc.returncode}):\n{peer.log_tail(15)}")

    async def progress(self) -> dict[str, int]:
        """peer -> the newest epoch it reported committing (KV ``p.<peer>``)."""
        kv = await key_value(self.js, self.topology.hashes_bucket, replicas=self.topology.limits.replicas)
        found: dict[str, int] = {}
        for peer in self.peers:
            try:
                entry = await kv.get(f"p.{peer.name}")
            except KeyNotFoundError:
                continue
            if entry.value:
                found[peer.name] = int(entry.value)
        return found

    async def wait_committed(
        self, epoch: int, peers: Sequence[PeerProcess] | None = None, timeout: float = SETTLE_S
    ) -> dict[str, int]:
        """Until every peer (default: all) reported a commit at or past ``epoch``."""
        peers = self.peers if peers is None else peers
        deadline = time.monotonic() + timeout
        seen: dict[str, int] = {}
        while True:
            self.check_alive(peers)
            with contextlib.suppress(*TRANSIENT):
                seen = await self.progress()
                if all(seen.get(p.name, -(2**62)) >= epoch for p in peers):
                    return seen
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {p.name}\n{p.log_tail(8)}" for p in peers)
                raise ChaosError(f"peers did not commit epoch {epoch} within {timeout:.0f} s (at {seen})\n{tails}")
            await asyncio.sleep(POLL_S)

    def epoch_now(self) -> int:
        return self.timeline.epoch_of(system_clock_ms())

    async def settle(self) -> None:
        """Wait until every peer committed an epoch whose seal was proposed after now.

        A seal of epoch ``now + 1`` is published only once the clock passes its end, so
        it follows every op acked so far in the stream: its commit holds all of them."""
        await self.wait_committed(self.epoch_now() + 1)

    def ledgers(self) -> list[PeerLedger]:
        """Every peer's ledger; call after the peers stopped."""
        return [read_ledger(p.name, p.db_path) for p in self.peers]


def db_config(
    *, epoch_ms: int, grace_ms: int, late_policy: LatePolicy = LatePolicy.CARRY, max_future_epochs: int = 600
) -> DatabaseConfig:
    return DatabaseConfig(
        db=DB,
        origin_ms=default_origin_ms(epoch_ms),
        epoch_ms=epoch_ms,
        grace_ms=grace_ms,
        late_policy=late_policy,
        max_future_epochs=max_future_epochs,
    )


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll ``predicate`` until true; ChaosError at the deadline. Transient NATS errors retry."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*TRANSIENT):
            if await predicate():
                return
        if time.monotonic() >= deadline:
            raise ChaosError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)
