"""JetStream KV and Object Store buckets beside a database's stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from materializer.errors import BucketNotReady
from oplog.nats_errors import CLUSTER_SETTLING, RetryPolicy

READY_TIMEOUT_S = 30.0
T = TypeVar("T")


async def key_value(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> KeyValue:
    """Open ``bucket``, creating it if missing (creation is idempotent on the server)."""
    return await _open(
        f"KV_{bucket}",
        lambda: js.key_value(bucket),
        lambda: js.create_key_value(bucket=bucket, history=1, replicas=replicas),
        js,
    )


async def object_store(js: JetStreamContext, bucket: str, *, replicas: int = 1) -> ObjectStore:
    """Open ``bucket``, creating it if missing."""
    return await _open(
        f"OBJ_{bucket}",
        lambda: js.object_store(bucket),
        lambda: js.create_object_store(bucket=bucket, replicas=replicas),
        js,
    )


# What a JetStream cluster answers (or fails to) while it elects a leader for a stream,
# or for its meta layer, that a new bucket needs: worth retrying until a deadline
# (oplog.nats_errors decides which errors those are).


async def _open(stream: str, find: Callable[[], Awaitable[T]], create: Callable[[], Awaitable[T]], js: JetStreamContext,
                timeout_s: float = READY_TIMEOUT_S) -> T:  # fmt: skip
    """Find or create a bucket, then wait until its stream has a leader.

    Creating a replicated stream returns before its replicas elected a leader; until
    then requests about it get no answer and time out. Clients that create the same
    bucket at once (peers starting together on a fresh cluster) all meet this, on the
    lookup, the creation or the first read.
    """
    async def ready() -> T:
        try:
            bucket = await find()
        except BucketNotFoundError:
            bucket = await create()
        info = await js.stream_info(stream)
        if info.cluster is not None and not info.cluster.leader:
            raise _NoLeaderYet
        return bucket

    policy = RetryPolicy((*CLUSTER_SETTLING, _NoLeaderYet), deadline_s=timeout_s, first_pause_s=0.1, max_pause_s=0.1)
    try:
        return await policy.run(ready)
    except (*CLUSTER_SETTLING, _NoLeaderYet):
        raise BucketNotReady(f"stream {stream} has no leader after {timeout_s:.0f} s; "
                             "check that a majority of the JetStream cluster's nodes is up") from None  # fmt: skip


class _NoLeaderYet(Exception):
    """The bucket's stream exists but has not elected a leader yet (internal)."""


async def keys_matching(js: JetStreamContext, bucket: str, pattern: str) -> list[str]:
    """The keys of KV ``bucket`` that match subject ``pattern`` (``"p.>"``), deleted ones included.

    One stream-info request, filtered by the server. (nats-py's ``KeyValue.keys(filters=...)``
    instead watches every key of the bucket and matches substrings on the client.)
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))
