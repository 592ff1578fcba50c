"""``oplog init``, ``oplog config set`` and ``oplog roster``: an admin's commands."""

from __future__ import annotations

import argparse
import asyncio
import time

from pydantic import ValidationError

from epoch.config import (
    DEFAULT_EPOCH_MS,
    DEFAULT_GRACE_MS,
    DEFAULT_MAX_FUTURE_EPOCHS,
    DatabaseConfig,
    LatePolicy,
    Roster,
)
from oplog.errors import OplogError
from oplog.schema import format_epoch_ms
from oplog.stream import publish_json
from peer.commands.common import add_nats_options, jetstream, say, topology
from peer.control import ChangeRefused, default_origin_ms, init_database, plan_change, read_config, wait_for_change


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a database's stream and publish its config")
    add_nats_options(p)
    p.add_argument("--epoch-ms", type=int, default=DEFAULT_EPOCH_MS)
    p.add_argument("--grace-ms", type=int, default=DEFAULT_GRACE_MS)
    p.add_argument("--late-policy", choices=[x.value for x in LatePolicy], default="carry")
    p.add_argument(
        "--max-future-epochs",
        type=int,
        default=DEFAULT_MAX_FUTURE_EPOCHS,
        help="how far past the last seal an op (or a seal) may be; also how soon a config change can apply",
    )
    p.add_argument("--author-name", default="oplog")
    p.add_argument("--author-email", default="oplog@localhost")
    p.add_argument(
        "--checkpoint-epochs", type=int, metavar="N",
        help="bound storage: re-root every peer's history on a checkpoint every N epochs (history before it is dropped)",
    )  # fmt: skip
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("config", help="change a running database's epoch length and grace")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser("set", help="schedule a new epoch length and grace at a safe epoch boundary")
    add_nats_options(p)
    p.add_argument("--epoch-ms", type=int, required=True, help="the new epoch length")
    p.add_argument("--grace-ms", type=int, required=True, help="the new grace period")
    p.add_argument("--at-epoch", type=int, help="from this epoch on (default: the earliest safe one)")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for a peer to take the change (0: do not wait)")  # fmt: skip
    p.set_defaults(handler=cmd_config_set)

    p = sub.add_parser("roster", help="declare the peers that count toward agreement")
    add_nats_options(p)
    p.add_argument("--peers", required=True, help="comma-separated peer names")
    p.set_defaults(handler=cmd_roster)


async def cmd_init(args: argparse.Namespace) -> int:
    t = topology(args)
    try:
        config = DatabaseConfig(
            db=args.db,
            origin_ms=default_origin_ms(args.epoch_ms),
            epoch_ms=args.epoch_ms,
            grace_ms=args.grace_ms,
            late_policy=LatePolicy(args.late_policy),
            max_future_epochs=args.max_future_epochs,
            author_name=args.author_name,
            author_email=args.author_email,
            checkpoint_epochs=args.checkpoint_epochs,
        )
    except ValidationError as e:
        raise OplogError(f"config: {_problems(e)}") from None
    async with jetstream(args, "oplog-init") as (_, js):
        if await init_database(js, t, config):
            print(f"database {args.db}: initialized ({args.epoch_ms} ms epochs, {args.grace_ms} ms grace)")
            return 0
        stored = (await read_config(js, t)).config
    if stored is None:
        raise OplogError(f"database {args.db}: its stream has a config message that no peer would accept")
    # The origin is "now" at each init: every other value must match.
    differs = {
        name: (getattr(stored, name), getattr(config, name))
        for name in DatabaseConfig.model_fields
        if name != "origin_ms" and getattr(stored, name) != getattr(config, name)
    }
    if differs:
        listed = ", ".join(f"{name} is {old!r}, not {new!r}" for name, (old, new) in differs.items())
        raise OplogError(
            f"database {args.db} already exists with another config: {listed}. A config cannot be replaced; "
            "change epoch length and grace with `oplog config set`"
        )
    print(f"database {args.db}: already initialized with this config")
    return 0


async def cmd_config_set(args: argparse.Namespace) -> int:
    t = topology(args)
    async with jetstream(args, "oplog-config") as (_, js):
        now_ms = time.time_ns() // 1_000_000
        try:
            change, earliest = await plan_change(
                js, t, epoch_ms=args.epoch_ms, grace_ms=args.grace_ms, at_epoch=args.at_epoch, now_ms=now_ms
            )
        except ValidationError as e:
            raise OplogError(f"config change: {_problems(e)}") from None
        seq = await publish_json(js, t, t.config_subject, change.model_dump(mode="json"))
        state = await read_config(js, t)
        assert state.timeline is not None
        starts = state.timeline.end_ms(change.effective_epoch - 1)
        print(
            f"published at stream seq {seq}: {change.epoch_ms} ms epochs, {change.grace_ms} ms grace from epoch "
            f"{change.effective_epoch} ({format_epoch_ms(starts)}, in {max(0, starts - now_ms) / 1000:.1f} s; "
            f"earliest safe epoch was {earliest})"
        )
        if args.wait <= 0:
            return 0
        try:
            peer = await asyncio.wait_for(wait_for_change(js, t, seq, change), args.wait)
        except TimeoutError:
            say(f"no peer has read the change within {args.wait:.0f} s; check `oplog status --db {args.db}`")
            return 1
        except ChangeRefused as e:
            say(f"the peers rejected the change: {e}")
            return 1
    print(f"peer {peer} accepted it")
    return 0


async def cmd_roster(args: argparse.Namespace) -> int:
    t = topology(args)
    try:
        roster = Roster(peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()))
    except ValidationError as e:
        raise OplogError(f"roster: {_problems(e)}") from None
    async with jetstream(args, "oplog-roster") as (_, js):
        if (await read_config(js, t)).config is None:
            raise OplogError(f"database {args.db} has no config yet; run `oplog init --db {args.db}` first")
        seq = await publish_json(js, t, t.config_subject, roster.model_dump(mode="json"))
    print(f"roster of {args.db}: {', '.join(roster.peers)} (stream seq {seq}); only they count toward agreement")
    return 0


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {str(err['msg']).removeprefix('Value error, ')}"
        for err in error.errors()
    )
