"""Wire codec (orjson) and canonical JSON.

A batch message is ``{"v": 1, "ops": [op, ...]}``. Decoding happens in two steps so
that one bad op cannot sink its neighbours: :func:`decode_batch` splits the message
into raw op dicts (failing only if the message as a whole is not a batch), and
:func:`decode_op` validates each one (:func:`decode_record` on a peer: the same
validation, into a lean :class:`~oplog.op.OpRecord`).

Canonical JSON (sorted keys, no whitespace, UTF-8) is what gets written into Dolt and
hashed, so it must render the same value the same way on every peer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import ValidationError

from oplog.errors import CodecError, InvalidOp
from oplog.op import Op, OpRecord, fast_op, fast_record

WIRE_VERSION = 1


def canonical_json(value: Any) -> str:
    """Render ``value`` as canonical JSON text (sorted keys, compact)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as e:
        raise CodecError(f"value is not JSON-serializable: {e}") from e


def canonical_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def encode_batch(ops: list[Op]) -> bytes:
    return orjson.dumps({"v": WIRE_VERSION, "ops": [op.to_wire() for op in ops]})


def decode_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise CodecError(f"message is not valid JSON: {e}") from e


def decode_batch(payload: bytes) -> list[Any]:
    """Split a batch message into raw (unvalidated) op objects."""
    message = decode_json(payload)
    if not isinstance(message, dict) or not isinstance(message.get("ops"), list):
        raise CodecError('a batch message must be a JSON object with an "ops" array')
    if message.get("v", WIRE_VERSION) != WIRE_VERSION:
        raise CodecError(f"unsupported batch version {message.get('v')!r}; expected {WIRE_VERSION}")
    return message["ops"]


def decode_op(raw: Any) -> Op:
    """Validate one raw op; raises :class:`CodecError` naming every bad field."""
    op = fast_op(raw)
    if op is not None:
        return op
    try:
        return Op.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'op'}: {err['msg']}" for err in e.errors())
        raise CodecError(f"invalid op: {problems}") from None


def op_digest(op: Op | OpRecord) -> str:
    """The content digest of an op: SHA-256 of its canonical wire JSON (what dedup compares)."""
    return hashlib.sha256(canonical_bytes(op.to_wire())).hexdigest()


def record_of(op: Op | OpRecord) -> OpRecord:
    """``op`` as an :class:`OpRecord` (itself if it is one)."""
    if type(op) is OpRecord:
        return op
    hlc = op.hlc
    return OpRecord(hlc.wall_ms, hlc.logical, hlc.node, op.id, op.table, op.key, op.kind, op.data, op_digest(op))


def decode_record(raw: Any, wire: bytes | None = None) -> OpRecord:
    """Validate one raw op into an :class:`OpRecord`; raises :class:`CodecError` as
    :func:`decode_op` does, for exactly the same inputs.

    ``wire`` may be ``canonical_bytes(raw)`` when the caller has it already (the size
    check makes it). If ``raw`` holds exactly the fields :meth:`Op.to_wire` writes, its
    canonical bytes are those of ``to_wire()``, so the digest is hashed from ``wire``
    instead of encoding the op a second time.
    """
    if (
        wire is not None
        and type(raw) is dict
        and type(raw.get("key")) is list
        and len(raw) == (5 if raw.get("data") is None else 6)
        and ("data" in raw) == (len(raw) == 6)
    ):
        record = fast_record(raw, hashlib.sha256(wire).hexdigest())
        if record is not None:
            return record
    return record_of(decode_op(raw))


def raw_op_id(raw: Any) -> str | None:
    """The id of a raw op if it has a usable one (for recording rejections)."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return raw["id"][:200]
    return None


_SORT_KEYS = orjson.OPT_SORT_KEYS


def encode_op(op: Op) -> bytes:
    """The op as canonical wire JSON: the same bytes as ``canonical_bytes(op.to_wire())``.

    Built from the fields directly (orjson writes the key tuple as an array and the kind,
    a ``str`` enum, as its value), which is twice as fast as going through ``to_wire``.
    Raises :class:`InvalidOp` if ``data`` holds something JSON cannot represent.
    """
    wire = {"hlc": list(op.hlc), "id": op.id, "key": op.key, "kind": op.kind, "table": op.table}
    if op.data is not None:
        wire["data"] = op.data
    try:
        return orjson.dumps(wire, option=_SORT_KEYS)
    except TypeError as e:  # orjson.JSONEncodeError
        raise InvalidOp(f"op {op.id!r} is not JSON-serializable ({e}); nothing was queued") from None
