"""Operations and batches: the values producers publish.

An op names one row (``table`` + primary ``key``) and says what to do to it
(``kind`` + ``data``). Its ``id`` is chosen by the producer and is unique forever:
retrying a publish reuses it (so the op applies once), a deliberate re-publish of the
same change must not. Decoding tolerates unknown fields (newer producers) and is
strict about known ones.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oplog.hlc import HLC

MAX_ID_LENGTH = 200
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
RESERVED_TABLE_PREFIX = "oplog_"
# Prefixes the engines keep for themselves: SQLite (doltlite) refuses ``sqlite_*``, Dolt
# ``dolt_*``. Both are refused whatever the backend, so every peer (and ``oplog verify``,
# which recomputes in doltlite) decides alike. Compared case-insensitively, as both engines do.
ENGINE_RESERVED_PREFIXES = ("sqlite_", "dolt_")
# The deepest JSON an op's data may hold, counting the data object as level 1. orjson
# (canonical JSON, digests) encodes at most 254 nested containers, and an op is one more
# level around its data. Peers check it by encoding each op once (epoch.assign), which
# they do anyway for its size; the model checks it here, for producers.
MAX_JSON_DEPTH = 253

KeyValue = str | int


class OpKind(StrEnum):
    """What an op does to its row; each table's strategy accepts some of these."""

    UPSERT = "upsert"
    DELETE = "delete"
    PATCH = "patch"
    INCR = "incr"
    CRDT = "crdt"


def check_table_name(name: str) -> str:
    if not TABLE_NAME.match(name):
        raise ValueError(
            f"table name {name!r} must start with a letter and hold only letters, digits "
            "and underscores (at most 63 characters)"
        )
    lowered = name.lower()
    for prefix in (RESERVED_TABLE_PREFIX, *ENGINE_RESERVED_PREFIXES):
        if lowered.startswith(prefix):
            raise ValueError(f"table name {name!r} uses the reserved prefix {prefix!r}")
    return name


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests containers more than ``limit`` levels deep (itself is level 1).

    Iterative, so a hostile document cannot exhaust the interpreter's stack, and cheap
    for the usual flat object: scalars are skipped without a push."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


class Op(BaseModel):
    """One operation on one row."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    hlc: HLC
    table: str
    key: tuple[KeyValue, ...] = Field(min_length=1)
    kind: OpKind
    data: dict[str, Any] | None = None

    @field_validator("hlc", mode="before")
    @classmethod
    def _hlc(cls, value: Any) -> HLC:
        if isinstance(value, HLC):
            return value
        if (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and type(value[0]) is int
            and type(value[1]) is int
            and isinstance(value[2], str)
            and value[0] >= 0
            and value[1] >= 0
            and value[2]
        ):
            return HLC(value[0], value[1], value[2])
        raise ValueError("hlc must be [wall_ms >= 0, logical >= 0, node (non-empty string)]")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_table_name(value)

    @field_validator("data")
    @classmethod
    def _data(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and json_too_deep(value):
            raise ValueError(f"data nests deeper than {MAX_JSON_DEPTH} levels")
        return value

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        # A single-column key may be given bare; bools are not keys (True == 1 in Python).
        parts = list(value) if isinstance(value, (list, tuple)) else [value]
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, (str, int)):
                raise ValueError("key parts must be strings or integers")
        return tuple(parts)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> OpKind:
        try:
            return OpKind(value)
        except ValueError:
            kinds = ", ".join(k.value for k in OpKind)
            raise ValueError(f"kind {value!r} is not one of {kinds}") from None

    # The HLC parts as attributes, as on :class:`OpRecord`: strategies read both alike.
    @property
    def wall_ms(self) -> int:
        return self.hlc.wall_ms

    @property
    def logical(self) -> int:
        return self.hlc.logical

    @property
    def node(self) -> str:
        return self.hlc.node

    def sort_key(self) -> tuple[int, int, str, str]:
        """The total order inside an epoch: (wall_ms, logical, node, id)."""
        return (self.hlc.wall_ms, self.hlc.logical, self.hlc.node, self.id)

    def to_wire(self) -> dict[str, Any]:
        return wire_dict(self.id, self.hlc.to_wire(), self.table, self.key, self.kind, self.data)


class OpRecord(NamedTuple):
    """A validated op as the materializer carries it: an immutable tuple, not a model.

    A peer holds every op of an open epoch in memory, and a pydantic :class:`Op` costs
    several times the memory and construction time of a tuple. Both validate alike
    (:func:`fast_record` accepts exactly what :class:`Op` accepts) and read alike:
    ``id``, ``hlc``, ``wall_ms``, ``logical``, ``node``, ``table``, ``key``, ``kind``,
    ``data``, :meth:`sort_key` and :meth:`to_wire`.

    The fields start with the epoch's total order ``(wall_ms, logical, node, id)``, so
    records of distinct ids sort in apply order as they are. ``digest`` is the SHA-256
    (hex) of the op's canonical wire JSON: what dedup compares and ``oplog_op_ids``
    stores. It is a function of the other fields, so equality is unaffected by it.
    """

    wall_ms: int
    logical: int
    node: str
    id: str
    table: str
    key: tuple[KeyValue, ...]
    kind: OpKind
    data: dict[str, Any] | None
    digest: str

    @property
    def hlc(self) -> HLC:
        return HLC(self.wall_ms, self.logical, self.node)

    def sort_key(self) -> tuple[int, int, str, str]:
        """The total order inside an epoch: (wall_ms, logical, node, id)."""
        return (self.wall_ms, self.logical, self.node, self.id)

    def to_wire(self) -> dict[str, Any]:
        """The same dict as :meth:`Op.to_wire` of the equal :class:`Op`."""
        return wire_dict(self.id, [self.wall_ms, self.logical, self.node], self.table, self.key, self.kind, self.data)

    def to_op(self) -> Op:
        """The pydantic :class:`Op` with the same content."""
        return Op(id=self.id, hlc=self.hlc, table=self.table, key=self.key, kind=self.kind, data=self.data)


_KINDS = {kind.value: kind for kind in OpKind}
# Interned names: a peer holds many ops of few tables and nodes, so sharing one string
# per name saves memory; both caches are bounded against a stream of junk names.
_VALID_TABLES: dict[str, str | None] = {}
_NODES: dict[str, str] = {}
_CACHE_LIMIT = 10_000
_FIELDS_SET = frozenset({"id", "hlc", "table", "key", "kind", "data"})


def _table_name(name: Any) -> str | None:
    """``name`` (interned) if it is a valid table name, else None."""
    if type(name) is not str:
        return None
    try:
        return _VALID_TABLES[name]
    except KeyError:
        pass
    try:
        check_table_name(name)
        valid: str | None = name
    except ValueError:
        valid = None
    if len(_VALID_TABLES) < _CACHE_LIMIT:
        _VALID_TABLES[name] = valid
    return valid


def _fast_fields(raw: Any) -> tuple[int, int, str, str, str, tuple[KeyValue, ...], OpKind, Any] | None:
    """The fields of a well-formed wire op, checked as :class:`Op`'s validators check
    them, or None for anything unusual (the caller then asks pydantic, which also
    words the error). ``tests/test_codec.py`` holds the two paths equal."""
    if type(raw) is not dict:
        return None
    op_id, hlc, key, kind = raw.get("id"), raw.get("hlc"), raw.get("key"), raw.get("kind")
    if type(op_id) is not str or not 0 < len(op_id) <= MAX_ID_LENGTH:
        return None
    if type(hlc) is not list or len(hlc) != 3:
        return None
    wall, logical, node = hlc
    if (
        type(wall) is not int
        or type(logical) is not int
        or type(node) is not str
        or wall < 0
        or logical < 0
        or not node
    ):
        return None
    table = _table_name(raw.get("table"))
    if table is None:
        return None
    if type(key) is list:
        if not key:
            return None
        for part in key:
            if type(part) is not str and type(part) is not int:
                return None
        key = tuple(key)
    elif type(key) is str or type(key) is int:
        key = (key,)
    else:
        return None
    op_kind = _KINDS.get(kind) if type(kind) is str else None
    data = raw.get("data")
    if op_kind is None or (data is not None and type(data) is not dict):
        return None
    interned = _NODES.get(node)
    if interned is None:
        interned = node
        if len(_NODES) < _CACHE_LIMIT:
            _NODES[node] = node
    return wall, logical, interned, op_id, table, key, op_kind, data


def fast_op(raw: Any) -> Op | None:
    """Build an :class:`Op` from a well-formed wire dict without pydantic's validator.

    Pydantic validation plus construction is most of the cost of decoding an op. This
    checks exactly what the model's validators check and builds the instance directly;
    on anything unusual it returns None and the caller falls back to
    :meth:`Op.model_validate`, which also words the error.
    """
    fields = _fast_fields(raw)
    if fields is None:
        return None
    wall, logical, node, op_id, table, key, op_kind, data = fields
    op = object.__new__(Op)
    values = {"id": op_id, "hlc": HLC(wall, logical, node), "table": table, "key": key, "kind": op_kind, "data": data}
    object.__setattr__(op, "__dict__", values)
    object.__setattr__(
        op, "__pydantic_fields_set__", _FIELDS_SET if data is not None or "data" in raw else _FIELDS_SET - {"data"}
    )
    object.__setattr__(op, "__pydantic_extra__", None)
    object.__setattr__(op, "__pydantic_private__", None)
    return op


def fast_record(raw: Any, digest: str) -> OpRecord | None:
    """An :class:`OpRecord` of a well-formed wire dict, or None (see :func:`fast_op`).

    ``digest`` is taken as given: :func:`oplog.codec.decode_record` computes it.
    """
    fields = _fast_fields(raw)
    if fields is None:
        return None
    return _tuple_new(OpRecord, (*fields, digest))


_tuple_new = tuple.__new__  # skips NamedTuple's Python-level __new__ (one record per op)


def wire_dict(op_id: str, hlc: list[Any], table: str, key: tuple[Any, ...], kind: OpKind, data: Any) -> dict[str, Any]:
    """An op's wire form (``data`` left out when None): what its digest and size are taken of."""
    wire: dict[str, Any] = {"id": op_id, "hlc": hlc, "table": table, "key": list(key), "kind": kind.value}
    if data is not None:
        wire["data"] = data
    return wire


_ID_RUN = 256
_ID_PACKER = struct.Struct(">" + "12sI" * _ID_RUN)  # _ID_RUN ids: 12 prefix bytes, a 32-bit counter


class _OpIds:
    """Unique op ids, 32 hex characters like ``uuid4().hex``, about 10x cheaper.

    An id is a random 96-bit prefix and a 32-bit counter. The prefix is redrawn when the
    counter wraps and in a forked child (which would otherwise repeat its parent's ids).
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(12).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        n = next(self._counter)
        if n > 0xFFFFFFFF:
            self._reseed()
            n = next(self._counter)
        return f"{self._prefix}{n:08x}"

    def next_many(self, n: int) -> list[str]:
        """``n`` new ids, as ``n`` calls of :meth:`next` would give, in under half the time.

        The counter values are taken in one C call (no other thread takes one between
        them). The ids are made 256 at a time: ``struct`` packs prefix and counter
        bytes, and ``bytes.hex`` writes them with a space after every id's 16 bytes."""
        if n <= 0:
            return []
        prefix, last = self._prefix, next(itertools.islice(self._counter, n - 1, None))
        if last > 0xFFFFFFFF:
            return [self.next() for _ in range(n)]  # the counter wraps inside: one at a time
        raw, ids, first = bytes.fromhex(prefix), [], last - n + 1
        values = [raw] * (2 * _ID_RUN)
        for start in range(first, last + 1, _ID_RUN):
            m = min(_ID_RUN, last + 1 - start)
            values[1 : 2 * m : 2] = range(start, start + m)
            packer = _ID_PACKER if m == _ID_RUN else struct.Struct(">" + "12sI" * m)
            ids += packer.pack(*values[: 2 * m]).hex(" ", 16).split(" ")
        return ids


_op_ids = _OpIds()


def new_op_id() -> str:
    """A new unique op id (32 hex characters)."""
    return _op_ids.next()


def new_op_ids(n: int) -> list[str]:
    """``n`` new unique op ids (as :func:`new_op_id` gives, made in one go)."""
    return _op_ids.next_many(n)
