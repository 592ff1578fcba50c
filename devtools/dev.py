"""``oplog dev``: a whole local deployment that runs unattended and stops by itself.

It starts a JetStream server (or a 3-node cluster) on loopback, initializes a demo
database, starts N doltlite peers as separate processes, runs a demo producer for
``--seconds``, waits until every peer has committed the epoch of the last op, stops
everything, and writes a JSON report comparing every peer's commit hash per epoch.
Exit status 0 means every sealed epoch had one identical hash on all peers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from devtools.demo import DEMO_SCHEMA
from devtools.natsd import NatsCluster, NatsServer
from devtools.processes import PeerProcess
from epoch.config import DatabaseConfig
from materializer.agreement.hashes import HashBoard
from materializer.backends.doltlite import DoltliteBackend
from oplog.hlc import HybridLogicalClock
from oplog.producer import Producer
from oplog.topology import StreamLimits, Topology
from peer.control import default_origin_ms, init_database, publish_schema
from peer.service import connect

DB = "demo"
SETTLE_TIMEOUT_S = 30.0


def run_dev(args: argparse.Namespace) -> int:
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="oplog-dev-"))
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if args.cluster:
            nats: Any = NatsCluster(root / "nats")
            replicas = 3
        else:
            nats = NatsServer(root / "nats")
            replicas = 1
        nats.start()
        stack.callback(nats.stop)
        print(f"nats: {nats.url}")
        topology = Topology(db=DB, limits=StreamLimits(replicas=replicas))
        config = DatabaseConfig(
            db=DB, origin_ms=default_origin_ms(args.epoch_ms), epoch_ms=args.epoch_ms, grace_ms=args.grace_ms
        )
        asyncio.run(_init(nats.url, topology, config))
        peers = [
            PeerProcess(
                f"peer{i}",
                DB,
                nats.url,
                root / f"peer{i}",
                extra=["--replicas", str(replicas), "--expected-peers", str(args.peers)],
            )  # fmt: skip
            for i in range(1, args.peers + 1)
        ]
        for peer in peers:
            stack.callback(peer.stop)
            peer.start()
        print(f"peers: {', '.join(p.name for p in peers)} (data in {root})")
        published, last_epoch = asyncio.run(_load(nats.url, topology, config, args.seconds, args.rate))
        print(f"published {published} ops; waiting for every peer to commit epoch {last_epoch}")
        settled = asyncio.run(_settle(nats.url, topology, [p.name for p in peers], last_epoch, peers))
        for peer in peers:
            peer.stop()
        report = build_report([(p.name, p.db_path) for p in peers])
        report.update({"published": published, "settled": settled, "data_dir": str(root)})
    args.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _print_summary(report)
    if args.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report["agree"] and settled else 1


async def _init(url: str, topology: Topology, config: DatabaseConfig) -> None:
    nc = await connect(url, name="oplog-dev")
    try:
        js = nc.jetstream()
        await init_database(js, topology, config)
        await publish_schema(js, topology, DEMO_SCHEMA)
    finally:
        await nc.close()


async def _load(url: str, topology: Topology, config: DatabaseConfig, seconds: float, rate: float) -> tuple[int, int]:
    """Three producers write random upserts and deletes for ``seconds``."""
    from epoch.config import Timeline

    timeline = Timeline.from_config(config)
    rng = random.Random(7)
    nc = await connect(url, name="oplog-dev-load")
    count, last_wall = 0, 0
    try:
        js = nc.jetstream()
        producers = [Producer(js, topology, clock=HybridLogicalClock(f"demo{i}")) for i in range(3)]
        deadline = time.monotonic() + seconds
        tick = 0.05
        futures = []
        while time.monotonic() < deadline:
            started = time.monotonic()
            for _ in range(max(1, int(rate * tick))):
                producer = rng.choice(producers)
                key = f"u{rng.randrange(200)}"
                if rng.random() < 0.1:
                    op = producer.make_op("users", key, "delete")
                else:
                    data = {
                        "name": f"user {key}",
                        "score": rng.randrange(1000),
                        "balance": f"{rng.randrange(10**6) / 100}",
                    }
                    op = producer.make_op("users", key, "upsert", data)
                futures.append(producer.enqueue(op))
                last_wall = max(last_wall, op.hlc.wall_ms)
                count += 1
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))
        for producer in producers:
            await producer.close()
        await asyncio.gather(*futures)
    finally:
        await nc.close()
    return count, timeline.epoch_of(last_wall)


async def _settle(url: str, topology: Topology, names: list[str], epoch: int, peers: list[PeerProcess]) -> bool:
    """Wait until every peer reported a commit at or past ``epoch``."""
    nc = await connect(url, name="oplog-dev-settle")
    try:
        board = HashBoard(nc.jetstream(), topology)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            rows = await board.collect(last=5)
            done = {p for r in rows if r.epoch >= epoch for p in r.hashes}
            if set(names) <= done:
                return True
            dead = [p for p in peers if not p.running]
            if dead:
                print(f"peer {dead[0].name} exited; its log:\n{dead[0].log_tail()}")
                return False
            await asyncio.sleep(0.2)
        print(f"peers did not all reach epoch {epoch} within {SETTLE_TIMEOUT_S:.0f} s")
        return False
    finally:
        await nc.close()


def build_report(peers: list[tuple[str, Path]]) -> dict[str, Any]:
    """Every peer's (epoch, hash) read from its own database, compared per epoch."""
    hashes: dict[int, dict[str, str]] = {}
    ops: dict[int, int] = {}
    for name, path in peers:
        backend = DoltliteBackend(path)
        with backend:
            if not backend.is_initialized():  # the peer died before it had a genesis
                continue
            for epoch, commit_hash in backend.epoch_hashes():
                hashes.setdefault(epoch, {})[name] = commit_hash
            for epoch, applied in backend.conn.execute("SELECT epoch, applied FROM oplog_epochs"):
                ops[epoch] = applied
    names = [name for name, _ in peers]
    epochs = [
        {"epoch": k, "ops": ops.get(k, 0), "hashes": hashes[k], "agree": len(set(hashes[k].values())) == 1
         and set(hashes[k]) == set(names)}
        for k in sorted(hashes)
    ]  # fmt: skip
    # The newest epoch may be committed by some peers only at the moment they stopped.
    complete = [e for e in epochs if set(e["hashes"]) == set(names)]
    return {
        "peers": names,
        "epochs": epochs,
        "epochs_compared": len(complete),
        "agree": bool(complete) and all(e["agree"] for e in complete),
    }


def _print_summary(report: dict[str, Any]) -> None:
    for e in report["epochs"]:
        hashes = sorted(set(e["hashes"].values()))
        print(
            f"epoch {e['epoch']}: {e['ops']} ops, {len(e['hashes'])} peers, hash {' / '.join(h[:12] for h in hashes)}"
        )
    print(
        f"{report['epochs_compared']} epochs on all {len(report['peers'])} peers; "
        + ("every hash identical" if report["agree"] else "PEERS DISAGREE")
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``oplog dev`` (through the ``oplog.commands`` entry point)."""
    p = sub.add_parser("dev", help="local NATS + N doltlite peers + demo load; stops by itself")
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--report", type=Path, default=Path("dev-report.json"))
    p.add_argument("--data-dir", type=Path, help="keep everything here (default: a temporary dir)")
    p.add_argument("--epoch-ms", type=int, default=1000)
    p.add_argument("--grace-ms", type=int, default=300)
    p.add_argument("--rate", type=float, default=500.0, help="demo ops per second")
    p.add_argument("--cluster", action="store_true", help="a 3-node JetStream cluster with an R3 stream")
    p.set_defaults(run=run_dev)
