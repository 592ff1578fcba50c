"""How a producer batches and retries: :class:`ProducerConfig` (re-exported by :mod:`oplog.producer`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BATCH_OVERHEAD = 32  # room in max_batch_bytes for a message's JSON head and tail


class ProducerConfig(BaseModel):
    """How a producer batches and retries.

    A message is cut at ``max_batch_ops`` ops or ``max_batch_bytes`` bytes, or
    ``linger_ms`` after its first op; at most ``max_inflight_batches`` messages await
    their acknowledgement at once (more do not go faster on one connection, and each
    holds its payload in memory). An attempt waits ``ack_timeout_s`` for its ack and is
    repeated up to ``retries`` times, ``retry_backoff_s`` doubling between attempts.
    """

    model_config = ConfigDict(frozen=True)

    linger_ms: float = Field(5.0, ge=0)
    max_batch_ops: int = Field(1000, ge=1)
    max_batch_bytes: int = Field(512 * 1024, gt=BATCH_OVERHEAD)
    max_inflight_batches: int = Field(16, ge=1)
    ack_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(0.2, ge=0)
