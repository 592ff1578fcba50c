"""``oplog publish``: ops from JSON lines, or a schema file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from oplog.errors import OplogError
from oplog.hlc import HybridLogicalClock
from oplog.producer import Producer, ProducerConfig
from oplog.schema import SchemaMessage
from peer.commands.common import add_nats_options, jetstream, topology
from peer.control import publish_schema, read_timeline


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="publish ops read as JSON lines (file or stdin), or a schema")
    add_nats_options(p)
    p.add_argument("file", nargs="?", default="-", help="JSON lines of ops; '-' for stdin")
    p.add_argument("--schema", type=Path, help="publish this schema file ({'tables': [...]}) instead")
    p.add_argument("--node", default=f"cli-{os.getpid()}", help="HLC node name of this producer")
    p.set_defaults(handler=cmd_publish)


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
    t = topology(args)
    async with jetstream(args, "oplog-publish") as (_, js):
        if args.schema:
            try:
                schema = SchemaMessage.model_validate_json(args.schema.read_bytes())
            except ValidationError as e:
                print(f"oplog: schema {args.schema}: {e}", file=sys.stderr)
                return 2
            seq = await publish_schema(js, t, schema)
            print(orjson.dumps({"schema": [table.name for table in schema.tables], "stream_seq": seq}).decode())
            return 0
        timeline = await read_timeline(js, t)
        producer = Producer(
            js,
            t,
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
        receipt = {"id": r.op_id, "hlc": list(r.hlc), "stream_seq": r.stream_seq, "epoch": r.epoch,
                   "duplicate": r.duplicate}  # fmt: skip
        print(orjson.dumps(receipt).decode())
    return 0
