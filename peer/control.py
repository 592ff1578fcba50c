"""Control-plane helpers for the CLI: initializing a database, reading its config."""

from __future__ import annotations

import time

import orjson
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from epoch.assign import Assigner, StreamMessage
from epoch.config import DatabaseConfig, Roster, Timeline
from materializer.reader import StreamReader
from oplog.schema import SchemaMessage
from oplog.stream import ensure_stream, publish_json
from oplog.topology import Topology


async def init_database(js: JetStreamContext, topology: Topology, config: DatabaseConfig) -> bool:
    """Create the stream and publish the init config; False if it already had one."""
    await ensure_stream(js, topology)
    try:
        await js._jsm.get_last_msg(topology.stream, topology.config_subject)
        return False
    except NotFoundError:
        pass
    await publish_json(
        js, topology, topology.config_subject, config.model_dump(mode="json"), msg_id=f"config-{topology.db}-init"
    )
    return True


def default_origin_ms(epoch_ms: int, now_ms: int | None = None) -> int:
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return now - now % epoch_ms


async def read_config(js: JetStreamContext, topology: Topology, *, wait_s: float = 0.5) -> Assigner:
    """An assigner fed every config message the stream still holds: its ``config``,
    ``timeline`` and ``roster`` are the database's as of the stream's end (None where
    no such message was published, or retention purged it)."""
    reader = StreamReader(js, topology, 1, wait_s=wait_s, subject=topology.config_subject)
    assigner = Assigner()
    try:
        info = await js.stream_info(topology.stream)
        last = info.state.last_seq
        while reader.next_seq <= last:
            batch = await reader.next_batch()
            if not batch:
                break
            for message in batch:
                assigner.feed(StreamMessage(message.seq, "config", message.payload))
    finally:
        await reader.close()
    return assigner


async def read_timeline(js: JetStreamContext, topology: Topology, *, wait_s: float = 0.5) -> Timeline | None:
    """The epoch timeline as the stream's config messages define it (None before init)."""
    return (await read_config(js, topology, wait_s=wait_s)).timeline


async def publish_roster(js: JetStreamContext, topology: Topology, roster: Roster) -> int:
    """Declare the peers that count toward agreement (an admin's message on the config subject)."""
    return await publish_json(js, topology, topology.config_subject, roster.model_dump(mode="json"))


async def publish_schema(js: JetStreamContext, topology: Topology, schema: SchemaMessage) -> int:
    body = orjson.loads(schema.model_dump_json())
    return await publish_json(js, topology, topology.schema_subject, body)
