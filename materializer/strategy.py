"""The commit-strategy interface and its registry.

A strategy decides how the ops on ONE row combine. It is a pure fold: given the
row's stored state and the next op (ops arrive in HLC order), return the new state,
or raise :class:`~materializer.errors.OpRejected`. It must not read clocks, randomness
or anything but its arguments, and its result must be canonical (the same logical
state is always the same values and meta), because both are written into Dolt.

Strategies are found through the ``oplog.strategies`` entry-point group, so a package
can add one without touching the materializer::

    [project.entry-points."oplog.strategies"]
    my-strategy = "my_package.module:MyStrategy"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

from materializer.errors import OpRejected, StrategyError
from oplog.errors import SchemaError
from oplog.op import Op, OpKind
from oplog.schema import TableSchema, normalize_value

ENTRY_POINT_GROUP = "oplog.strategies"


@dataclass(frozen=True)
class RowState:
    """A row as a strategy sees it.

    ``values`` maps every non-key column to its canonical value, or is ``None`` when
    the row does not exist (never written, or deleted). ``meta`` is the strategy's
    own bookkeeping (winning HLCs, CRDT state), a JSON object stored beside the row —
    for a deleted row it is the tombstone.
    """

    values: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.values is not None


ABSENT = RowState()


class Strategy(ABC):
    """How concurrent ops on one row combine. Subclasses are stateless."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[OpKind]]

    @abstractmethod
    def apply(self, table: TableSchema, state: RowState, op: Op) -> RowState:
        """The row after ``op``; raises OpRejected if the op cannot apply.

        Must be deterministic and must not mutate ``state``.
        """

    def check_kind(self, op: Op) -> None:
        if op.kind not in self.kinds:
            allowed = ", ".join(sorted(k.value for k in self.kinds))
            raise OpRejected(
                "kind_not_allowed",
                f"table uses strategy {self.name!r}, which takes {allowed}; got {op.kind.value!r}",
            )


def row_values(table: TableSchema, data: dict[str, Any] | None, *, partial: bool) -> dict[str, Any]:
    """Validate and normalize ``data`` against ``table``'s non-key columns.

    With ``partial=False`` every value column is set (missing ones to NULL, which a
    NOT NULL column refuses). Key columns may be repeated in ``data`` and are ignored
    (the op's ``key`` is the key). Raises OpRejected naming the first problem.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OpRejected("bad_data", "data must be a JSON object")
    values: dict[str, Any] = {}
    for name in data:
        if table.column(name) is None:
            raise OpRejected("unknown_column", f"table {table.name!r} has no column {name!r}")
    try:
        for column in table.value_columns:
            if column.name in data:
                values[column.name] = normalize_value(column, data[column.name])
            elif not partial:
                values[column.name] = normalize_value(column, None)
    except SchemaError as e:
        raise OpRejected("bad_value", str(e)) from None
    return values


@cache
def _registered() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must name itself
            raise StrategyError(f"strategy plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise StrategyError(f"entry point {ep.name!r} ({ep.value}) is not a Strategy subclass")
        found[ep.name] = cls
    return found


def strategy_names() -> list[str]:
    return sorted(_registered())


@cache
def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; StrategyError if there is none."""
    cls = _registered().get(name)
    if cls is None:
        raise StrategyError(
            f"unknown strategy {name!r}; registered: {', '.join(strategy_names()) or 'none'} "
            f"(plugins register under the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    return cls()
