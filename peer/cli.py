"""The ``oplog`` command line: init, serve, publish, status, verify, dev, bench, auth.

Configuration is read here and only here (flags, with ``OPLOG_*`` environment
defaults), then passed down as typed values.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must be imported before anything imports sqlite3)
import orjson
from pydantic import ValidationError

from epoch.config import DatabaseConfig, LatePolicy
from materializer.errors import Divergence
from oplog.connection import NatsOptions
from oplog.errors import OplogError
from oplog.hlc import HybridLogicalClock
from oplog.producer import Producer, ProducerConfig
from oplog.schema import SchemaMessage
from oplog.topology import StreamLimits, Topology
from peer.control import default_origin_ms, init_database, publish_schema, read_timeline
from peer.service import GC_THRESHOLDS, PeerConfig, connect, run_peer

EXIT_DIVERGED = 3
DEFAULT_NATS = NatsOptions.default_url(os.environ)
DEFAULT_DB = os.environ.get("OPLOG_DB", "demo")


def _common(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--nats", default=DEFAULT_NATS, help="NATS URL(s), comma-separated (env OPLOG_NATS_URL, else NATS_URL)"
    )
    # One way to authenticate (docs/security.md). Secrets are best given through the
    # environment: a command line is visible to every user of the host (ps).
    auth = parser.add_argument_group("NATS authentication and TLS")
    auth.add_argument("--user", default=env("OPLOG_NATS_USER"), help="NATS user (env OPLOG_NATS_USER)")
    auth.add_argument("--password", default=env("OPLOG_NATS_PASSWORD"), help="its password (env OPLOG_NATS_PASSWORD)")
    auth.add_argument("--token", default=env("OPLOG_NATS_TOKEN"), help="NATS token (env OPLOG_NATS_TOKEN)")
    auth.add_argument("--creds", type=Path, default=env("OPLOG_NATS_CREDS"),
                      help="user .creds file, operator mode (env OPLOG_NATS_CREDS)")  # fmt: skip
    auth.add_argument("--nkey", type=Path, default=env("OPLOG_NATS_NKEY"),
                      help="NKEY seed file, e.g. from `oplog auth config` (env OPLOG_NATS_NKEY)")  # fmt: skip
    auth.add_argument("--tls-ca", type=Path, default=env("OPLOG_NATS_TLS_CA"), help="CA of the server's certificate")
    auth.add_argument("--tls-cert", type=Path, default=env("OPLOG_NATS_TLS_CERT"), help="client certificate")
    auth.add_argument("--tls-key", type=Path, default=env("OPLOG_NATS_TLS_KEY"), help="client certificate's key")
    parser.add_argument("--db", default=DEFAULT_DB, help="database name (env OPLOG_DB)")
    parser.add_argument("--replicas", type=int, default=1, help="stream replicas (3 on a JetStream cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oplog", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a database's stream and publish its config")
    _common(p)
    p.add_argument("--epoch-ms", type=int, default=1000)
    p.add_argument("--grace-ms", type=int, default=500)
    p.add_argument("--late-policy", choices=[x.value for x in LatePolicy], default="carry")
    p.add_argument("--max-future-epochs", type=int, default=600)
    p.add_argument("--author-name", default="oplog")
    p.add_argument("--author-email", default="oplog@localhost")

    p = sub.add_parser("serve", help="run one peer (materializer + sealer) until SIGINT/SIGTERM")
    _common(p)
    p.add_argument("--name", required=True, help="this peer's name (unique among peers)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--backend", choices=["doltlite", "dolt-server"], default="doltlite")
    p.add_argument("--dolt-port", type=int, default=3306, help="dolt sql-server port (backend dolt-server)")
    p.add_argument("--no-seal", action="store_true", help="do not propose seals (another peer does)")
    p.add_argument(
        "--snapshot-every", type=int, metavar="N", help="offer a snapshot of every N-th epoch to joining peers"
    )
    p.add_argument(
        "--snapshot-keep", type=int, default=2, metavar="K", help="keep K snapshots; purge the stream below the oldest"
    )

    p.add_argument(
        "--expected-peers",
        type=int,
        default=1,
        metavar="N",
        help="peers in this deployment: a hash needs a majority of at least N peers to judge a divergence",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="on divergence, reinstall the newest snapshot a majority confirmed (default: stop with exit 3)",
    )
    p.add_argument("--check-interval", type=float, default=1.0, help="seconds between hash comparisons")
    # Crash tests hold a peer at named commit points through files here (materializer/faults.py).
    p.add_argument("--fault-dir", type=Path, help=argparse.SUPPRESS)

    p = sub.add_parser("verify", help="recompute epochs from the stream in a scratch database and compare hashes")
    _common(p)
    p.add_argument("--epoch", type=int, help="last epoch to verify (default: the newest any peer reported)")
    p.add_argument("--from-epoch", type=int, help="first epoch to verify (default: --epoch alone)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the recomputation")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("publish", help="publish ops read as JSON lines (file or stdin), or a schema")
    _common(p)
    p.add_argument("file", nargs="?", default="-", help="JSON lines of ops; '-' for stdin")
    p.add_argument("--schema", type=Path, help="publish this schema file ({'tables': [...]}) instead")
    p.add_argument("--node", default=f"cli-{os.getpid()}", help="HLC node name of this producer")

    p = sub.add_parser("status", help="show every peer's commit hash per epoch and whether they agree")
    _common(p)
    p.add_argument("--last", type=int, default=20, help="how many recent epochs")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("dev", help="local NATS + N doltlite peers + demo load; stops by itself")
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--report", type=Path, default=Path("dev-report.json"))
    p.add_argument("--data-dir", type=Path, help="keep everything here (default: a temporary dir)")
    p.add_argument("--epoch-ms", type=int, default=1000)
    p.add_argument("--grace-ms", type=int, default=300)
    p.add_argument("--rate", type=float, default=500.0, help="demo ops per second")
    p.add_argument("--cluster", action="store_true", help="a 3-node JetStream cluster with an R3 stream")

    from peer.bench import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="measure throughput and latency against baselines (writes JSON)")
    add_bench_arguments(p)

    from peer.auth import add_arguments as add_auth_arguments

    p = sub.add_parser("auth", help="generate NATS users and permissions for oplog's roles (docs/security.md)")
    add_auth_arguments(p)
    return parser


def nats_options(args: argparse.Namespace) -> NatsOptions:
    """The NATS connection options of a command's flags (see :func:`_common`)."""
    fields = {"url": args.nats, "user": args.user, "password": args.password, "token": args.token,
              "creds": args.creds, "nkey": args.nkey, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
              "tls_key": args.tls_key}  # fmt: skip
    try:
        return NatsOptions(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        # Only the messages: pydantic would echo the input, a password included.
        why = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise OplogError(f"NATS options: {why}") from None


async def cmd_init(args: argparse.Namespace) -> int:
    topology = Topology(db=args.db, limits=StreamLimits(replicas=args.replicas))
    config = DatabaseConfig(
        db=args.db,
        origin_ms=default_origin_ms(args.epoch_ms),
        epoch_ms=args.epoch_ms,
        grace_ms=args.grace_ms,
        late_policy=LatePolicy(args.late_policy),
        max_future_epochs=args.max_future_epochs,
        author_name=args.author_name,
        author_email=args.author_email,
    )
    nc = await connect(nats_options(args), name="oplog-init")
    try:
        created = await init_database(nc.jetstream(), topology, config)
    finally:
        await nc.close()
    print(f"database {args.db}: " + ("initialized" if created else "already initialized; config unchanged"))
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    from materializer.snapshots import SnapshotPolicy

    config = PeerConfig(
        name=args.name,
        db=args.db,
        nats=nats_options(args),
        data_dir=args.data_dir,
        backend=args.backend,
        dolt_port=args.dolt_port,
        seal=not args.no_seal,
        replicas=args.replicas,
        snapshots=SnapshotPolicy(every_epochs=args.snapshot_every, keep=args.snapshot_keep)
        if args.snapshot_every
        else None,
        expected_peers=args.expected_peers,
        repair=args.repair,
        check_interval_s=args.check_interval,
        fault_dir=args.fault_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_peer(config, stop)
    return 0


def _read_lines(path: str) -> list[tuple[int, Any]]:
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    rows: list[tuple[int, Any]] = []
    with stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                try:
                    rows.append((number, orjson.loads(line)))
                except orjson.JSONDecodeError as e:
                    raise OplogError(f"line {number}: not JSON: {e}") from None
    return rows


async def cmd_publish(args: argparse.Namespace) -> int:
    topology = Topology(db=args.db, limits=StreamLimits(replicas=args.replicas))
    nc = await connect(nats_options(args), name="oplog-publish")
    try:
        js = nc.jetstream()
        if args.schema:
            try:
                schema = SchemaMessage.model_validate_json(args.schema.read_bytes())
            except ValidationError as e:
                print(f"oplog: schema {args.schema}: {e}", file=sys.stderr)
                return 2
            seq = await publish_schema(js, topology, schema)
            print(orjson.dumps({"schema": [t.name for t in schema.tables], "stream_seq": seq}).decode())
            return 0
        timeline = await read_timeline(js, topology)
        producer = Producer(
            js,
            topology,
            clock=HybridLogicalClock(args.node),
            config=ProducerConfig(),
            epoch_of=timeline.epoch_of if timeline else None,
        )
        # Validate every line before publishing any, so a bad file publishes nothing.
        ops, errors = [], []
        for number, row in _read_lines(args.file):
            if not isinstance(row, dict):
                errors.append(f"line {number}: an op must be a JSON object")
                continue
            try:
                ops.append(
                    producer.make_op(
                        row.get("table", ""),
                        row.get("key"),
                        row.get("kind", ""),
                        row.get("data"),
                        op_id=row.get("id"),
                        hlc=row.get("hlc"),
                    )
                )
            except OplogError as e:
                errors.append(f"line {number}: {e}")
        if errors:
            print("\n".join(f"oplog: {e}" for e in errors), file=sys.stderr)
            return 2
        async with producer:
            receipts = await producer.publish_many(ops)
        for r in receipts:
            print(
                orjson.dumps(
                    {
                        "id": r.op_id,
                        "hlc": list(r.hlc),
                        "stream_seq": r.stream_seq,
                        "epoch": r.epoch,
                        "duplicate": r.duplicate,
                    }
                ).decode()
            )
        return 0
    finally:
        await nc.close()


async def cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from materializer.verify import verify

    topology = Topology(db=args.db, limits=StreamLimits(replicas=args.replicas))
    nc = await connect(nats_options(args), name="oplog-verify")
    try:
        with tempfile.TemporaryDirectory(prefix="oplog-verify-") as workdir:
            result = await verify(
                nc.jetstream(), topology, Path(workdir), through=args.epoch, since=args.from_epoch,
                timeout_s=args.timeout,
            )  # fmt: skip
    finally:
        await nc.close()
    if args.json:
        checks = [{"epoch": c.epoch, "recomputed": c.recomputed, "reports": c.reports, "disagreeing": c.disagreeing}
                  for c in result.checks]  # fmt: skip
        print(orjson.dumps({"base": result.base, "checks": checks, "ok": result.ok}).decode())
    else:
        print(f"recomputed from {result.base}")
        peers = sorted({p for c in result.checks for p in c.reports})
        print("epoch".rjust(12), "recomputed".ljust(12), *(p.ljust(12) for p in peers), "verdict")
        for c in result.checks:
            cells = [c.reports.get(p, "-")[:10].ljust(12) for p in peers]
            verdict = "ok" if not c.disagreeing else "DIFFERS: " + ", ".join(c.disagreeing)
            print(str(c.epoch).rjust(12), c.recomputed[:10].ljust(12), *cells, verdict)
        print("every report matches the recomputation" if result.ok else
              f"DIVERGENCE: {', '.join(result.disagreeing_peers)} differ from the recomputation")  # fmt: skip
    return 0 if result.ok else 1


async def cmd_status(args: argparse.Namespace) -> int:
    from materializer.hashes import HashBoard

    topology = Topology(db=args.db)
    nc = await connect(nats_options(args), name="oplog-status")
    try:
        board = HashBoard(nc.jetstream(), topology)
        rows = await board.collect(args.last)
        diverged = await board.divergences()
    finally:
        await nc.close()
    agree = all(r.agree for r in rows) and not diverged
    if args.json:
        epochs = [{"epoch": r.epoch, "hashes": r.hashes, "agree": r.agree} for r in rows]
        print(orjson.dumps({"epochs": epochs, "diverged": diverged, "agree": agree}).decode())
    else:
        peers = sorted({p for r in rows for p in r.hashes})
        print("epoch".rjust(12), *(p.ljust(12) for p in peers), "agree")
        for r in rows:
            cells = [r.hashes.get(p, "-")[:10].ljust(12) for p in peers]
            print(str(r.epoch).rjust(12), *cells, "yes" if r.agree else "NO  <-- DIVERGED")
        for peer, record in sorted(diverged.items()):
            print(f"peer {peer} reported its own divergence at epoch {record.get('epoch')} (not repaired)")
        print("all peers agree" if agree else "DIVERGENCE: peers disagree on at least one epoch")
    return 0 if agree else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if args.command == "dev":
        from peer.dev import run_dev

        return run_dev(args)
    if args.command == "bench":
        from peer.bench import run_bench

        return run_bench(args)
    if args.command == "auth":
        from peer.auth import run_auth

        try:
            return run_auth(args)
        except OplogError as e:
            print(f"oplog: {e}", file=sys.stderr)
            return 2
    handler = {
        "init": cmd_init, "serve": cmd_serve, "publish": cmd_publish, "status": cmd_status, "verify": cmd_verify,
    }[args.command]  # fmt: skip
    try:
        return asyncio.run(handler(args))
    except Divergence as e:
        # Its own status, so a supervisor can tell "this peer's data is wrong" from a crash.
        print(f"oplog: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except OplogError as e:
        print(f"oplog: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
