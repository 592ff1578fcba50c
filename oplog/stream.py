"""Declaring a database's stream on JetStream (explicitly, never as a side effect)."""

from __future__ import annotations

from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from oplog.topology import Topology


def stream_config(topology: Topology, *, name: str | None = None, subjects: str | None = None) -> StreamConfig:
    """The database's stream (or, with ``name`` and ``subjects``, another stream of the
    database under the same limits: the change feed's)."""
    limits = topology.limits
    return StreamConfig(
        name=name or topology.stream,
        subjects=[subjects or topology.all_subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=limits.duplicate_window_s,
        max_msg_size=limits.max_msg_bytes,
        num_replicas=limits.replicas,
    )


async def ensure_stream(js: JetStreamContext, topology: Topology) -> None:
    """Create the database's stream if it does not exist (idempotent)."""
    try:
        await js.stream_info(topology.stream)
    except NotFoundError:
        await js.add_stream(stream_config(topology))


async def publish_json(
    js: JetStreamContext,
    topology: Topology,
    subject: str,
    body: Any,
    *,
    msg_id: str | None = None,
    timeout: float = 5.0,
) -> int:
    """Publish one control message (config, schema, seal); returns its stream sequence."""
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    ack = await js.publish(subject, orjson.dumps(body), timeout=timeout, stream=topology.stream, headers=headers)
    return int(ack.seq)
