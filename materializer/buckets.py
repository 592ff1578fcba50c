"""JetStream KV and Object Store buckets beside a database's stream."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore


async def key_value(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> KeyValue:
    """Open ``bucket``, creating it if missing (creation is idempotent on the server)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1, replicas=replicas)


async def object_store(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> ObjectStore:
    try:
        return await js.object_store(bucket)
    except BucketNotFoundError:
        return await js.create_object_store(bucket=bucket, replicas=replicas)


async def keys_matching(js: JetStreamContext, bucket: str, pattern: str) -> list[str]:
    """The keys of KV ``bucket`` that match subject ``pattern`` (``"p.>"``), deleted ones included.

    One stream-info request, filtered by the server. (nats-py's ``KeyValue.keys(filters=...)``
    instead watches every key of the bucket and matches substrings on the client.)
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))
