"""``oplog status`` and ``oplog verify``: are the peers healthy, and are they right?

``verify`` lives in :mod:`peer.commands.verify`; it is registered here, after ``status``."""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from peer.commands import verify
from peer.commands.common import add_nats_options, jetstream, topology
from peer.status import Status, gather


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="every peer's health and hashes; exit 0 agree, 1 diverged, 3 degraded (a peer down or lagging)",
    )
    add_nats_options(p)
    p.add_argument("--last", type=int, default=10, help="how many recent epochs to compare")
    p.add_argument("--json", action="store_true", help="one JSON document (for scripts)")
    p.add_argument("--watch", type=float, metavar="S", help="redraw every S seconds until interrupted")
    p.set_defaults(handler=cmd_status)

    verify.register(sub)  # its own module; listed here, after status, as always


async def cmd_status(args: argparse.Namespace) -> int:
    t = topology(args)
    async with jetstream(args, "oplog-status") as (_, js):
        while True:
            status = await gather(js, t, now_ms=time.time_ns() // 1_000_000, last=args.last)
            if args.json:
                print(orjson.dumps(status.to_json()).decode(), flush=True)
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")  # clear the terminal, cursor home
                print(render(status), flush=True)
            if not args.watch:
                return status.verdict.exit_status
            await asyncio.sleep(args.watch)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def render(status: Status) -> str:
    """The status as a table for a terminal."""
    header = ("peer", "state", "epoch", "hash", "commit age", "behind", "ops/s", "applied", "rejected")
    rows = [header]
    for p in status.peers:
        state = "up" if p.up else "DOWN"
        if p.diverged:
            state += ",DIVERGED"
        if not p.counted:
            state += ",not counted"
        behind = "-" if p.lag_epochs is None else f"{p.lag_epochs} ({_age(p.lag_s)})"
        rows.append((p.name, state, "-" if p.epoch is None else str(p.epoch), p.commit_hash[:10] or "-",
                     _age(p.commit_age_s), behind, f"{p.ops_per_s:g}", str(p.applied), str(p.rejected)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"database {status.db}: newest seal {status.newest_seal if status.newest_seal is not None else '-'}"
             + (f", roster {', '.join(status.roster)}" if status.roster else "")]  # fmt: skip
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if status.epochs:
        shown = [p.name for p in status.peers]
        lines.append("")
        lines.append("epoch".rjust(12) + "  " + "  ".join(name.ljust(10) for name in shown) + "  agree")
        for e in status.epochs:
            cells = "  ".join(e.hashes.get(name, "-")[:10].ljust(10) for name in shown)
            lines.append(f"{e.epoch:>12}  {cells}  {'yes' if e.agree else 'NO'}")
    lines.append("")
    lines.append(f"{status.verdict.word.upper()}" + (": " + "; ".join(status.reasons) if status.reasons else ""))
    return "\n".join(lines)
