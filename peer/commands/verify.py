"""``oplog verify``: recompute epochs in a scratch database of the deployment's kind, compare,
and with ``--explain`` say which tables and rows of a differing peer's commit differ."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import orjson

from oplog.errors import OplogError
from peer.commands.common import add_dolt_options, add_nats_options, jetstream, topology

DEFAULT_EXPLAIN_ROWS = 20


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="recompute epochs from the stream in a scratch database and compare hashes")
    add_nats_options(p)
    p.add_argument("--epoch", type=int, help="last epoch to verify (default: the newest any peer reported)")
    p.add_argument("--from-epoch", type=int, help="first epoch to verify (default: --epoch alone)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the recomputation")
    p.add_argument("--json", action="store_true", help="one JSON document (for scripts)")
    add_dolt_options(
        p,
        backend_help="the peers' backend: recompute in a scratch doltlite file, or in a scratch database on the "
        "dolt sql-server --dolt-host/--dolt-port name (dropped afterwards)",
        purpose="backend dolt-server: the scratch database's server",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="for each peer that differs, name the tables and rows of its commit that differ (see --peer-db)",
    )
    p.add_argument(
        "--peer-db",
        default="",
        metavar="NAME=WHERE,...",
        help="where each peer's database is, for --explain: its doltlite file, or HOST:PORT[/DATABASE] "
        "of its dolt sql-server (database default: --db; logged in as --dolt-user)",
    )
    p.add_argument(
        "--explain-rows", type=int, default=DEFAULT_EXPLAIN_ROWS, metavar="N", help="rows listed per differing table"
    )
    p.set_defaults(handler=cmd_verify)


def peer_databases(args: argparse.Namespace) -> dict[str, Any]:
    """``peer -> location`` from ``--peer-db`` (raises OplogError naming a bad entry)."""
    from materializer.agreement.commits import DoltliteFile, DoltServerDatabase

    found: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in args.peer_db.split(","))):
        name, sep, where = item.partition("=")
        name, where = name.strip(), where.strip()
        if not sep or not name or not where:
            raise OplogError(f"--peer-db: {item!r} is not NAME=WHERE (a peer name, '=', where its database is)")
        if args.backend == "doltlite":
            found[name] = DoltliteFile(Path(where).expanduser())
            continue
        address, _, database = where.partition("/")
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise OplogError(f"--peer-db: {item!r}: with --backend dolt-server, WHERE is HOST:PORT[/DATABASE]")
        found[name] = DoltServerDatabase(host, int(port), database or args.db, args.dolt_user, args.dolt_password)
    return found


async def cmd_verify(args: argparse.Namespace) -> int:
    from materializer.agreement.scratch import DoltliteScratch, DoltServerScratch, Scratch
    from materializer.agreement.verify import verify

    if args.explain_rows < 0:
        raise OplogError("--explain-rows must be 0 or more")
    explain = peer_databases(args) if args.explain else None  # --peer-db alone is kept for --explain
    t = topology(args)
    with tempfile.TemporaryDirectory(prefix="oplog-verify-") as workdir:
        scratch: Scratch = (
            DoltServerScratch(args.dolt_host, args.dolt_port, user=args.dolt_user, password=args.dolt_password)
            if args.backend == "dolt-server"
            else DoltliteScratch(Path(workdir))
        )
        async with jetstream(args, "oplog-verify") as (_, js):
            result = await verify(
                js, t, scratch, through=args.epoch, since=args.from_epoch, timeout_s=args.timeout,
                explain=explain, explain_rows=args.explain_rows,
            )  # fmt: skip
    if args.json:
        checks = [{"epoch": c.epoch, "recomputed": c.recomputed, "reports": c.reports, "disagreeing": c.disagreeing}
                  for c in result.checks]  # fmt: skip
        document: dict[str, Any] = {"base": result.base, "scratch": result.scratch, "checks": checks, "ok": result.ok}
        if result.explanations is not None:
            document["explanations"] = [e.to_json() for e in result.explanations]
        print(orjson.dumps(document).decode())
    else:
        print(f"recomputed from {result.base} in a {result.scratch}")
        peers = sorted({p for c in result.checks for p in c.reports})
        print("epoch".rjust(12), "recomputed".ljust(12), *(p.ljust(12) for p in peers), "verdict")
        for c in result.checks:
            cells = [c.reports.get(p, "-")[:10].ljust(12) for p in peers]
            verdict = "ok" if not c.disagreeing else "DIFFERS: " + ", ".join(c.disagreeing)
            print(str(c.epoch).rjust(12), c.recomputed[:10].ljust(12), *cells, verdict)
        print("every report matches the recomputation" if result.ok else
              f"DIVERGENCE: {', '.join(result.disagreeing_peers)} differ from the recomputation")  # fmt: skip
        for explanation in result.explanations or []:
            print()
            print("\n".join(explanation.lines()))
    return 0 if result.ok else 1
