"""Change records: the values a change feed is made of, and how they are rendered.

Pure: :class:`Change` (one changed row of one user table in one epoch commit, and its
canonical JSON envelope), :class:`EpochChanges` (everything one epoch commit changed),
the rendering of stored values by column type, and the rule that names the op that won a
row (:func:`winning_op`). :mod:`materializer.read.changes` reads them out of the epoch
commits; its docstring states the rules.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import orjson

from oplog.codec import canonical_json
from oplog.schema import Column, ColumnType, TableSchema

Kind = Literal["insert", "update", "delete"]


@dataclass(frozen=True)
class Change:
    """One changed row of one user table in one epoch commit."""

    epoch: int
    commit: str
    table: str
    key: tuple[Any, ...]
    kind: Kind
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    op_id: str | None

    def envelope(self) -> dict[str, Any]:
        """The change as a JSON object (see the module docstring)."""
        return {"epoch": self.epoch, "commit": self.commit, "table": self.table, "key": list(self.key),
                "kind": self.kind, "before": self.before, "after": self.after, "op_id": self.op_id}  # fmt: skip

    def to_json(self) -> str:
        """The envelope as canonical JSON (sorted keys, compact): one line of a feed."""
        return canonical_json(self.envelope())


@dataclass(frozen=True)
class EpochChanges:
    """Everything one epoch commit changed. ``epoch`` is the commit's epoch; it also holds the
    epochs from ``first_epoch`` on that were closed with it. ``end_ms`` is the commit's date
    (the epoch's end). Both are always set on what this module returns."""

    epoch: int
    commit_hash: str
    changes: tuple[Change, ...]
    first_epoch: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True)
class EpochCommit:
    epoch: int
    first_epoch: int
    end_ms: int
    commit: str


@lru_cache(maxsize=1024)
def schema_of(definition: str) -> TableSchema:
    return TableSchema.model_validate_json(definition)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def render_value(column: Column, value: Any) -> Any:
    """A stored value in its canonical JSON form (see the module docstring)."""
    if value is None:
        return None
    kind = column.type
    if kind is ColumnType.INTEGER or kind is ColumnType.BOOLEAN:
        return int(value)
    if kind is ColumnType.FLOAT:
        return float(value)  # doltlite's diff hands back a whole REAL as an integer
    if kind is ColumnType.BYTES:
        return base64.b64encode(bytes(value)).decode()
    return text(value)


def side(schema: TableSchema, raw: dict[str, Any], stored_as: TableSchema | None = None) -> dict[str, Any]:
    """Every column of ``schema``, rendered by its type in ``stored_as`` where it has one
    there (the parent's schema, for the old values of a column the commit retyped)."""
    if stored_as is None or stored_as is schema:
        return {c.name: render_value(c, raw.get(c.name)) for c in schema.columns}
    return {c.name: render_value(stored_as.column(c.name) or c, raw.get(c.name)) for c in schema.columns}


def meta_of(raw: Any) -> Any:
    return None if raw is None else orjson.loads(text(raw))


def _stamps(value: Any, found: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Every op stamp ``[wall_ms, logical, node, id]`` inside a strategy's meta."""
    if isinstance(value, list):
        if (len(value) == 4 and type(value[0]) is int and type(value[1]) is int
                and isinstance(value[2], str) and isinstance(value[3], str)):  # fmt: skip
            found.add(tuple(value))
        else:
            for item in value:
                _stamps(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _stamps(item, found)
    return found


def winning_op(before_meta: Any, after_meta: Any) -> str | None:
    """The id of the newest stamp in ``after_meta`` that ``before_meta`` lacks, or None."""
    new = _stamps(after_meta, set()) - _stamps(before_meta, set())
    return str(max(new)[3]) if new else None


def sort_key(change: Change) -> tuple[str, tuple[Any, ...]]:
    return change.table, change.key
