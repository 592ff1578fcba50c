"""Operations and batches: the values producers publish.

An op names one row (``table`` + primary ``key``) and says what to do to it
(``kind`` + ``data``). Its ``id`` is chosen by the producer and is unique forever:
retrying a publish reuses it (so the op applies once), a deliberate re-publish of the
same change must not. Decoding tolerates unknown fields (newer producers) and is
strict about known ones.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oplog.hlc import HLC

MAX_ID_LENGTH = 200
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
RESERVED_TABLE_PREFIX = "oplog_"

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
    if name.lower().startswith(RESERVED_TABLE_PREFIX):
        raise ValueError(f"table name {name!r} uses the reserved prefix {RESERVED_TABLE_PREFIX!r}")
    return name


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

    def sort_key(self) -> tuple[int, int, str, str]:
        """The total order inside an epoch: (wall_ms, logical, node, id)."""
        return (self.hlc.wall_ms, self.hlc.logical, self.hlc.node, self.id)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "hlc": self.hlc.to_wire(),
            "table": self.table,
            "key": list(self.key),
            "kind": self.kind.value,
        }
        if self.data is not None:
            wire["data"] = self.data
        return wire
