"""JetStream KV and Object Store buckets beside a database's stream."""

from __future__ import annotations

import asyncio
import time

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from materializer.errors import BucketNotReady

READY_TIMEOUT_S = 30.0


async def key_value(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> KeyValue:
    """Open ``bucket``, creating it if missing (creation is idempotent on the server)."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        kv = await js.create_key_value(bucket=bucket, history=1, replicas=replicas)
    await wait_ready(js, f"KV_{bucket}")  # found or created: another client may have just created it
    return kv


async def object_store(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> ObjectStore:
    try:
        store = await js.object_store(bucket)
    except BucketNotFoundError:
        store = await js.create_object_store(bucket=bucket, replicas=replicas)
    await wait_ready(js, f"OBJ_{bucket}")
    return store


async def wait_ready(js: JetStreamContext, stream: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until a just-created stream has a leader.

    Creating a replicated stream returns before its replicas elected a leader; until
    then reads of it get no answer and time out. Clients that create the same bucket
    at once (peers starting together on a fresh cluster) all meet this.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
        except (NatsTimeoutError, ServiceUnavailableError, NoRespondersError):
            pass
        if time.monotonic() > deadline:
            raise BucketNotReady(f"stream {stream} has no leader {timeout_s:.0f} s after it was created; "
                                 "check that a majority of the JetStream cluster's nodes is up")  # fmt: skip
        await asyncio.sleep(0.1)


async def keys_matching(js: JetStreamContext, bucket: str, pattern: str) -> list[str]:
    """The keys of KV ``bucket`` that match subject ``pattern`` (``"p.>"``), deleted ones included.

    One stream-info request, filtered by the server. (nats-py's ``KeyValue.keys(filters=...)``
    instead watches every key of the bucket and matches substrings on the client.)
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))
