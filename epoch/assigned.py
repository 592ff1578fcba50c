"""What assignment makes of the stream: its values, and how a rejected input is recorded.

:class:`~epoch.assign.Assigner` turns stream messages (:class:`StreamMessage`) into sealed
epochs (:class:`SealedEpoch`): the ops accepted into a commit (:class:`Accepted`), what was
rejected and why (:class:`Rejected`, :class:`Reason`), and the schema and config messages
applied with it (:class:`Control`). Pure values; the rules that make them are in
:mod:`epoch.assign`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from epoch.config import DatabaseConfig
from oplog.codec import canonical_json
from oplog.errors import CodecError
from oplog.op import Op, OpRecord

NO_EPOCH = -(2**62)
MAX_RECORDED_PAYLOAD = 65_536
# Ops in one batch message. Producers cut batches at ProducerConfig.max_batch_ops (1,000
# by default, at most this); a message of more is rejected whole, as one rejection row.
MAX_OPS_PER_MESSAGE = 10_000
# Commit dates: Dolt and Python both take years 1970 (epoch commits) to 9999.
MAX_COMMIT_MS = 253_402_300_799_999


class Reason:
    """Rejection codes recorded at assignment time (the materializer adds its own)."""

    MALFORMED = "malformed"
    INVALID_OP = "invalid_op"
    OVERSIZE = "oversize"
    LATE = "late"
    FUTURE = "future"
    NO_CONFIG = "no_config"
    BAD_CONFIG = "bad_config"
    UNKNOWN_SUBJECT = "unknown_subject"
    WRONG_SUBJECT = "wrong_subject"
    BAD_SEAL = "bad_seal"
    UNEXPECTED = "unexpected_error"


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One stream message as the assigner sees it."""

    seq: int
    kind: str  # ops | seal | config | schema | unknown (see oplog.topology)
    payload: bytes
    # The table an ops subject names; every op of the message must name it. None: not
    # bound (hand-built messages in tests; the stream reader always sets it).
    table: str | None = None


class Accepted(NamedTuple):
    """An op accepted into a commit; ``late`` if it was carried past its own epoch.

    ``op`` is an :class:`~oplog.op.OpRecord` when the assigner made it; planning also
    takes a pydantic :class:`~oplog.op.Op` (hand-built epochs in tests and benchmarks).
    ``prepared`` is the result of the assigner's ``prepare`` hook for the op, if any: for
    the materializer a :class:`materializer.prepare.Prepared`, which planning checks by
    type before use; opaque here, where nothing may depend on it.
    A tuple rather than a dataclass: one is made per op, and a tuple is built in half
    the time and held in less memory.
    """

    seq: int
    index: int
    op: OpRecord | Op
    epoch: int
    late: bool = False
    prepared: object = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Something recorded as rejected; ``index`` is the op's place in its batch, or -1."""

    seq: int
    index: int
    op_id: str | None
    reason: str
    detail: str
    payload: str = ""


@dataclass(frozen=True, slots=True)
class Control:
    """A schema or config message, applied at the commit it is attached to."""

    seq: int
    kind: str
    body: Any


@dataclass(frozen=True)
class SealedEpoch:
    """Everything one epoch commit is made from."""

    epoch: int
    first_epoch: int
    seal_seq: int
    resume_seq: int
    end_ms: int
    config: DatabaseConfig
    ops: tuple[Accepted, ...]
    rejected: tuple[Rejected, ...]
    controls: tuple[Control, ...]


def recordable(payload: Any) -> str:
    """What a rejection row keeps of the rejected input (it is also in the stream).

    Total: a value canonical JSON cannot render (nested past orjson's limit, say) is
    kept as its type's name, the same on every peer."""
    if payload is None:
        return ""
    if isinstance(payload, bytes):
        return payload[:MAX_RECORDED_PAYLOAD].decode("utf-8", errors="replace")
    try:
        return canonical_json(payload)[:MAX_RECORDED_PAYLOAD]
    except CodecError:
        return f"<{type(payload).__name__} that canonical JSON cannot render>"
