"""``oplog schema apply FILE``: publish a schema message, or first see what it would do.

The file is a schema message (docs/schema.md): ``tables`` to declare, and explicit
``changes`` (drop a table, drop, rename or retype a column). Without ``--dry-run`` it is
checked and published on the schema subject, as ``oplog publish --schema`` does; the
peers apply it at the next epoch boundary, or record it as rejected.

With ``--dry-run`` nothing is published and no NATS server is needed: the message is
applied to a scratch copy of one peer's database (its doltlite file under ``--data-dir``,
or a branch of its database on ``--backend dolt-server``), exactly as the peers would
apply it after their last commit, and the report says per change what it does to the
stored rows and whether the peers would refuse it (:mod:`materializer.commit.schema_dry_run`).
Exit status: 0 it applies, 1 it would be refused, 2 the dry run could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson
from pydantic import ValidationError

from oplog.errors import OplogError
from oplog.schema import SchemaMessage
from peer.commands.common import add_dolt_options, add_nats_options, jetstream, topology
from peer.control import publish_schema, schema_body

EXIT_REFUSED = 1  # --dry-run: the peers would refuse the message (errors exit 2, as every command's)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("schema", help="declare and change tables (docs/schema.md)")
    actions = p.add_subparsers(dest="schema_command", required=True)
    apply = actions.add_parser(
        "apply", help="publish a schema message (tables and changes), or --dry-run it on a copy of a peer's database"
    )
    add_nats_options(apply)
    apply.add_argument("file", type=Path, help="the schema message, JSON (docs/schema.md)")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="publish nothing: apply it to a scratch copy of a peer's database and report what it does",
    )
    apply.add_argument(
        "--data-dir", type=Path, help="--dry-run on doltlite: the peer's --data-dir (file <data-dir>/<db>.db)"
    )
    add_dolt_options(
        apply,
        backend_help="--dry-run: the peer's backend; with dolt-server, the copy is a branch of database --db "
        "on --dolt-host/--dolt-port, deleted afterwards",
        purpose="--dry-run on dolt-server: the peer's server",
    )
    apply.add_argument("--json", action="store_true", help="--dry-run: the report as one JSON document")
    apply.set_defaults(handler=cmd_schema_apply)


def read_message(path: Path) -> SchemaMessage:
    """The schema message in ``path``, checked; OplogError (one line, saying where) if bad."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OplogError(f"cannot read {path}: {e.strerror}") from None
    try:
        return SchemaMessage.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as e:
        raise OplogError(f"schema {path}: not JSON: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top"
        raise OplogError(f"schema {path}: at {where}: {first['msg']}") from None


async def cmd_schema_apply(args: argparse.Namespace) -> int:
    message = read_message(args.file)
    if args.dry_run:
        return await asyncio.to_thread(_dry_run, args, message)
    t = topology(args)
    async with jetstream(args, "oplog-schema") as (_, js):
        seq = await publish_schema(js, t, message)
    print(orjson.dumps({"schema": [table.name for table in message.tables], "changes": len(message.changes),
                        "stream_seq": seq}).decode())  # fmt: skip
    return 0


def _dry_run(args: argparse.Namespace, message: SchemaMessage) -> int:
    from materializer.commit.schema_dry_run import dolt_server_branch, doltlite_copy, dry_run

    body = schema_body(message)  # what the peers would decode, as published without --dry-run
    if args.backend == "dolt-server":
        copy = dolt_server_branch(host=args.dolt_host, port=args.dolt_port, user=args.dolt_user,
                                  password=args.dolt_password, database=args.db)  # fmt: skip
    else:
        if args.data_dir is None:
            raise OplogError("--dry-run needs the peer's database: --data-dir (doltlite) or --backend dolt-server")
        copy = doltlite_copy(args.data_dir / f"{args.db}.db")
    with copy as (backend, where):
        result = dry_run(backend, body, where)
    if args.json:
        print(orjson.dumps(result.to_json()).decode())
    else:
        print("\n".join(result.lines()))
    sys.stdout.flush()
    return 0 if result.refused is None else EXIT_REFUSED
