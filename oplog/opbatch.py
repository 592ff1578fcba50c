"""Ops made many at a time: stamped under one clock lock, validated in one loop, encoded once.

:meth:`Producer.make_ops <oplog.producer.Producer.make_ops>` turns rows of one table into
an :class:`OpBatch`: the ops' ids, their HLC stamps and their messages, encoded and cut
as the producer would cut them, so that :meth:`Producer.publish_many` only sends them.
It accepts and refuses exactly what ``make_op`` followed by ``publish_many`` does, with
the same errors, and each op's wire bytes are those :func:`oplog.codec.encode_op`
writes (``tests/test_producer_batch.py`` holds both to that).

Why (measured, ``docs/benchmarks.md``): per op, ``make_op`` builds a pydantic
:class:`~oplog.op.Op`, takes the clock's lock and makes an id, and ``publish_many``
then encodes the op with one ``orjson`` call of its own. Here the clock is read once per
batch, the ids are made in one go, an op is a plain dict that lives only until it is
encoded, and ``orjson`` encodes a run of ops in one call; each op's size (the stream's
limit applies to every op) is bounded by its run's, and a run too large for that bound
is encoded op by op instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, overload

import orjson

from oplog.codec import CodecError, decode_batch, decode_op
from oplog.errors import InvalidOp, OversizeOp
from oplog.hlc import HLC, HybridLogicalClock
from oplog.op import Op, OpKind, check_table_name, fast_op, json_too_deep, new_op_ids
from oplog.receipts import BATCH_HEAD, BATCH_TAIL

_SORT_KEYS = orjson.OPT_SORT_KEYS
_dumps = orjson.dumps
# Ops per orjson call, at most; fewer when ops are large (see _next_run).
MAX_RUN = 256


def build_op(op_id: str, hlc: list[Any], table: str, key: Any, kind: str, data: Any) -> Op:
    """The op ``make_op`` makes of these fields, or the :class:`InvalidOp` it raises."""
    raw = {"id": op_id, "hlc": hlc, "table": table, "key": key, "kind": kind}
    if data is not None:
        raw["data"] = data
    op = fast_op(raw)  # the validated fast path; decode_op words the error otherwise
    if op is not None:
        return op
    try:
        return decode_op(raw)
    except CodecError as e:
        raise InvalidOp(f"{e}; nothing was published") from None


_KINDS = {kind.value: kind for kind in OpKind}


def _bad_table(table: str) -> bool:
    try:
        check_table_name(table)
    except ValueError:
        return True
    return False


def message_id(op_ids: list[str]) -> str:
    """The ``Nats-Msg-Id`` of a message holding these ops: a hash of their ids, so that
    the stream stores a retried publish of the same message once."""
    return "ops-" + hashlib.sha256("\n".join(op_ids).encode()).hexdigest()[:32]


def oversize(op_id: str, size: int, limit: int) -> OversizeOp:
    """The error of an op of ``size`` bytes (its separator included) over ``limit``."""
    return OversizeOp(f"op {op_id!r} is {size} bytes; the limit is {limit}. Split the row or store a reference")


def _encoded(wire: dict[str, Any], row: int, op_limit: int) -> bytes:
    """Row ``row``'s wire dict as canonical JSON, or the error ``publish_many`` raises
    for its op (:func:`~oplog.codec.encode_op`'s, or the size limit's), prefixed."""
    try:
        data = _dumps(wire, option=_SORT_KEYS)
    except TypeError as e:  # orjson.JSONEncodeError
        raise InvalidOp(f"row {row}: op {wire['id']!r} is not JSON-serializable ({e}); nothing was queued") from None
    if len(data) + 1 > op_limit:
        raise OversizeOp(f"row {row}: {oversize(wire['id'], len(data) + 1, op_limit)}")
    return data


class OpStamp(NamedTuple):
    """An op's id and HLC stamp: what its receipt names."""

    id: str
    hlc: HLC


class OpBatch:
    """Ops of one table and kind made by :meth:`Producer.make_ops`, ready to publish.

    Pass it to :meth:`Producer.publish_many`, which sends its messages as they are.
    ``len(batch)`` ops; ``batch.ids[i]`` and ``batch.hlc(i)`` are op ``i``'s id and
    stamp (one wall time, consecutive logical counters). The ops themselves are not
    kept as objects: :meth:`ops` (and iterating) decodes them from the encoded
    messages, as a peer will. Publishing the same batch again publishes the same ops
    (same ids), which is safe.
    """

    __slots__ = ("table", "kind", "ids", "first", "messages", "limits")

    def __init__(
        self,
        table: str,
        kind: OpKind,
        ids: list[str],
        first: HLC,
        messages: list[tuple[bytes, int, str]],
        limits: tuple[int, int, int],
    ) -> None:
        self.table = table
        self.kind = kind
        self.ids = ids
        self.first = first  # the first op's stamp
        # (payload, stop, Nats-Msg-Id) per message: it holds ops messages[k-1].stop..stop.
        self.messages = messages
        self.limits = limits  # (max ops, max op bytes, max batch bytes) it was cut for

    def __len__(self) -> int:
        return len(self.ids)

    def hlc(self, index: int) -> HLC:
        """The HLC stamp of op ``index``."""
        n = len(self.ids)
        if not -n <= index < n:
            raise IndexError("op index out of range")
        first = self.first
        return HLC(first.wall_ms, first.logical + index % n, first.node)

    def stamps(self) -> _Stamps:
        """Each op's :class:`OpStamp` (id and HLC), as a lazy sequence."""
        return _Stamps(self)

    def ops(self) -> list[Op]:
        """The ops as :class:`Op` objects, decoded from the encoded messages."""
        return [decode_op(raw) for payload, _, _ in self.messages for raw in decode_batch(payload)]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __repr__(self) -> str:
        n, table, messages = len(self.ids), self.table, len(self.messages)
        return f"<OpBatch of {n} {self.kind.value} op(s) on {table!r} in {messages} message(s)>"


class _Stamps(Sequence[OpStamp]):
    __slots__ = ("_batch",)

    def __init__(self, batch: OpBatch) -> None:
        self._batch = batch

    def __len__(self) -> int:
        return len(self._batch.ids)

    @overload
    def __getitem__(self, index: int) -> OpStamp: ...

    @overload
    def __getitem__(self, index: slice) -> list[OpStamp]: ...

    def __getitem__(self, index: int | slice) -> OpStamp | list[OpStamp]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        batch = self._batch
        return OpStamp(batch.ids[index], batch.hlc(index))


def make_batch(
    table: str,
    kind: OpKind | str,
    rows: Iterable[tuple[Any, dict[str, Any] | None]],
    *,
    clock: HybridLogicalClock,
    max_ops: int,
    op_limit: int,
    batch_limit: int,
) -> OpBatch:
    """The :class:`OpBatch` of ``rows`` (see :meth:`Producer.make_ops`).

    Messages hold at most ``max_ops`` ops and ``batch_limit`` bytes of ops (each with
    its separator), and no op may exceed ``op_limit`` bytes: the producer's limits.
    """
    rows = rows if type(rows) is list else list(rows)
    n = len(rows)
    kind_value = kind.value if isinstance(kind, OpKind) else kind
    op_kind = _KINDS.get(kind_value) if type(kind_value) is str else None
    if op_kind is None or type(table) is not str or _bad_table(table):
        # Unusual: make_op's own path decides, and words the error (as of the first row).
        key, data = _pair(rows[0], 0) if n else ("k", None)
        try:
            op_kind = build_op("x", [0, 0, "n"], table, key, kind_value, data).kind
        except InvalidOp as e:
            raise InvalidOp(f"row 0: {e}" if n else str(e)) from None
    limits = (max_ops, op_limit, batch_limit)
    if n == 0:
        return OpBatch(table, op_kind, [], HLC(0, 0, clock.node), [], limits)
    first = clock.now_many(n)
    ids = new_op_ids(n)
    wall, logical, node = first
    messages: list[tuple[bytes, int, str]] = []
    buffer, count, nbytes = bytearray(BATCH_HEAD), 0, 0  # the message being filled
    run, i = 64, 0
    while i < n:
        stop = min(n, i + min(run, max_ops - count))
        wires = _wires(rows, i, stop, ids, (wall, logical, node), table, kind_value, op_limit)
        try:
            blob: bytes | None = _dumps(wires, option=_SORT_KEYS)
        except TypeError:
            blob = None
        size = len(blob) - 1 if blob is not None else 0  # the run's ops, one separator each
        if blob is not None and size <= op_limit:  # so each of its ops is within the limit
            if nbytes + size > batch_limit:
                messages.append(_message(buffer, ids, i - count, i))
                buffer, count, nbytes = bytearray(BATCH_HEAD), 0, 0
            with memoryview(blob) as view:
                buffer += view[1:-1]
            buffer.append(0x2C)
            count, nbytes = count + stop - i, nbytes + size
            run = max(1, min(MAX_RUN, op_limit // (2 * size // (stop - i) + 2)))
        else:  # too large to bound its ops' sizes, or something did not encode: op by op
            for j, wire in enumerate(wires, i):
                data = _encoded(wire, j, op_limit)
                size = len(data) + 1
                if nbytes + size > batch_limit:
                    messages.append(_message(buffer, ids, j - count, j))
                    buffer, count, nbytes = bytearray(BATCH_HEAD), 0, 0
                buffer += data
                buffer.append(0x2C)
                count, nbytes = count + 1, nbytes + size
            run = max(1, run // 4)
        i = stop
        if count >= max_ops:
            messages.append(_message(buffer, ids, i - count, i))
            buffer, count, nbytes = bytearray(BATCH_HEAD), 0, 0
    if count:
        messages.append(_message(buffer, ids, n - count, n))
    return OpBatch(table, op_kind, ids, first, messages, limits)


_PAIR_TYPES = frozenset({tuple, list})
_SCALAR_KEYS, _DICT, _NONE = frozenset({str, int}), {dict}, {type(None)}


def _pair(row: Any, index: int, earlier: Sequence[dict[str, Any]] = (), start: int = 0, op_limit: int = 0) -> Any:
    try:
        key, data = row
    except (TypeError, ValueError):
        _refuse_earlier(earlier, start, op_limit)
        raise InvalidOp(f"row {index}: a row is a (key, data) pair, not {row!r:.80}; nothing was published") from None
    return key, data


def _refuse_earlier(wires: Sequence[dict[str, Any]], start: int, op_limit: int) -> None:
    """Raise the error of the first of these rows (``start`` on) that will not encode,
    if any: the rows before a refused row are refused first, as ``publish_many`` would."""
    for row, wire in enumerate(wires, start):
        _encoded(wire, row, op_limit)


def _wires(
    rows: list[Any], start: int, stop: int, ids: list[str], first: HLC, table: str, kind: str, op_limit: int
) -> list[dict[str, Any]]:
    """The wire dicts of ``rows[start:stop]``, each checked as ``make_op`` checks it: the
    usual shapes here, anything else by ``make_op``'s own path (which words the error)."""
    wall, logical, node = first
    run = rows[start:stop]
    # The commonest run, checked a column at a time in C: (str or int key, dict) pairs,
    # or (key, None) pairs.
    if set(map(type, run)) <= _PAIR_TYPES:
        try:
            keys, datas = zip(*run, strict=True)
        except ValueError:  # rows of other lengths: the loop below words the error
            keys = datas = ()
        if keys and set(map(type, keys)) <= _SCALAR_KEYS:
            data_types = set(map(type, datas))
            stamps = range(logical + start, logical + stop)
            if data_types == _DICT:
                return [{"data": data, "hlc": [wall, stamp, node], "id": op_id, "key": (key,), "kind": kind,
                         "table": table} for key, data, stamp, op_id in zip(keys, datas, stamps, ids[start:stop], strict=True)]  # fmt: skip
            if data_types == _NONE:
                return [{"hlc": [wall, stamp, node], "id": op_id, "key": (key,), "kind": kind, "table": table}
                        for key, stamp, op_id in zip(keys, stamps, ids[start:stop], strict=True)]  # fmt: skip
    wires = []
    append = wires.append
    for i in range(start, stop):
        row = rows[i]
        if type(row) is tuple and len(row) == 2:
            key, data = row
        else:
            key, data = _pair(row, i, wires, start, op_limit)
        kt = type(key)
        if kt is str or kt is int:
            key = (key,)
            usual = True
        elif (kt is list or kt is tuple) and key:
            usual = True
            for part in key:
                if type(part) is not str and type(part) is not int:
                    usual = False
                    break
            if kt is tuple and usual and data is not None:
                # make_op validates a tuple key's op with pydantic, which also checks what
                # the list path leaves to the encoder: str keys in data, and its depth.
                usual = type(data) is dict and all(type(k) is str for k in data) and not json_too_deep(data)
        else:
            usual = False
        if usual and data is None:
            append({"hlc": [wall, logical + i, node], "id": ids[i], "key": key, "kind": kind, "table": table})
        elif usual and type(data) is dict:
            append({"data": data, "hlc": [wall, logical + i, node], "id": ids[i], "key": key, "kind": kind,
                    "table": table})  # fmt: skip
        else:
            try:
                op = build_op(ids[i], [wall, logical + i, node], table, key, kind, data)
            except InvalidOp as e:
                _refuse_earlier(wires, start, op_limit)
                raise InvalidOp(f"row {i}: {e}") from None
            wire = {"hlc": list(op.hlc), "id": op.id, "key": op.key, "kind": op.kind.value, "table": op.table}
            if op.data is not None:
                wire["data"] = op.data
            append(wire)
    return wires


def _message(buffer: bytearray, ids: list[str], start: int, stop: int) -> tuple[bytes, int, str]:
    buffer[-1:] = BATCH_TAIL  # over the last op's comma
    return bytes(buffer), stop, message_id(ids[start:stop])
