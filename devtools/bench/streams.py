"""Filling a database's stream with demo ops: batch messages, seals, a whole prefilled stream."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from nats.js import JetStreamContext

from devtools.demo import TABLE, USERS, demo_config, wire_upsert
from oplog.codec import canonical_bytes
from oplog.stream import publish_json
from oplog.topology import Topology
from peer.control import init_database, publish_schema
from peer.service import connected as connected  # re-exported for the tests and measurements


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


async def init_demo(js: JetStreamContext, topology: Topology) -> None:
    """Create the stream with the demo timeline and the ``users`` schema."""
    await init_database(js, topology, demo_config(topology.db))
    await publish_schema(js, topology, USERS)


def epoch_wires(ops: int, epochs: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    """The raw ops of :func:`prefill`, epoch by epoch (the same ops for the same ``rng`` state)."""
    per = ops // epochs
    return [
        [wire_upsert(epoch * per + i, epoch, rng) for i in range(per if epoch < epochs - 1 else ops - per * (epochs - 1))]
        for epoch in range(epochs)
    ]


def payloads(ops: int, epochs: int, rng: random.Random, per_msg: int = 1000) -> list[tuple[int, bytes]]:
    """:func:`prefill`'s batch messages, as (epoch, bytes)."""
    return [(epoch, payload_of(wires[s : s + per_msg])) for epoch, wires in enumerate(epoch_wires(ops, epochs, rng))
            for s in range(0, len(wires), per_msg)]  # fmt: skip


async def prefill(
    js: JetStreamContext, topology: Topology, ops: int, epochs: int, rng: random.Random, *, per_msg: int = 1000
) -> int:
    """init + schema, then ``ops`` unique-row upserts spread over epochs 0..epochs-1, each sealed."""
    await init_demo(js, topology)
    last = 0
    for epoch, wires in enumerate(epoch_wires(ops, epochs, rng)):
        await publish_wires(js, topology, wires, per_msg)
        last = await seal(js, topology, epoch)
    return last
