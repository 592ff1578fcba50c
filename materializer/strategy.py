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

import threading
from abc import ABC, abstractmethod
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, NamedTuple

from materializer.errors import OpRejected, StrategyError
from oplog.errors import SchemaError
from oplog.op import Op, OpKind, OpRecord
from oplog.schema import MAX_INTEGER, Column, ColumnChange, ColumnType, TableSchema, normalize_value

ENTRY_POINT_GROUP = "oplog.strategies"

OpLike = Op | OpRecord
"""What a strategy is handed: both read alike (``id``, ``wall_ms``, ``logical``,
``node``, ``hlc``, ``table``, ``key``, ``kind``, ``data``)."""


class RowState(NamedTuple):
    """A row as a strategy sees it.

    ``values`` maps every non-key column to its canonical value, or is ``None`` when
    the row does not exist (never written, or deleted). ``meta`` is the strategy's
    own bookkeeping (winning HLCs, CRDT state), a JSON object stored beside the row —
    for a deleted row it is the tombstone. Immutable, and never mutated in place:
    ``meta`` defaults to one shared empty dict. (A tuple: planning makes one per op.)
    """

    values: dict[str, Any] | None = None
    meta: dict[str, Any] = {}

    @property
    def exists(self) -> bool:
        return self.values is not None


ABSENT = RowState()


class Strategy(ABC):
    """How concurrent ops on one row combine. Subclasses are stateless."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[OpKind]]

    @abstractmethod
    def apply(self, table: TableSchema, state: RowState, op: OpLike) -> RowState:
        """The row after ``op``; raises OpRejected if the op cannot apply.

        Must be deterministic and must not mutate ``state``.
        """

    def prepare(self, table: TableSchema, op: OpLike) -> Any:
        """The part of :meth:`apply` that depends on ``table`` and ``op`` alone.

        The materializer calls this as ops arrive, before their epoch is sealed, and at
        the seal hands the result to :meth:`apply_prepared` for the same table and op,
        so that only the state-dependent part of the fold is left for seal time. It
        raises :class:`OpRejected` exactly when :meth:`apply` would raise without
        looking at the state. The result must not be mutated by ``apply_prepared``.
        The default prepares nothing.
        """
        return None

    def apply_prepared(self, table: TableSchema, state: RowState, op: OpLike, prepared: Any) -> RowState:
        """:meth:`apply`, given ``prepared = self.prepare(table, op)``; must return
        (or raise) exactly what ``apply(table, state, op)`` does."""
        return self.apply(table, state, op)

    # Whether migrate_meta can change a row's meta when a column is dropped or renamed:
    # then such a change reads and rewrites every row of the table (materializer.schema_change).
    meta_names_columns: ClassVar[bool] = False

    def check_change(self, table: TableSchema, change: ColumnChange) -> None:
        """Raise :class:`~oplog.errors.SchemaError` (saying why) if rows of ``table`` kept
        by this strategy cannot follow ``change`` (a column dropped, renamed or retyped).

        Called before the change applies, with the table as it is then. Pure. The default
        allows every change the schema does.
        """
        return None

    def migrate_meta(self, change: ColumnChange, meta: dict[str, Any]) -> dict[str, Any]:
        """A row's (or a tombstone's) meta after ``change``; must not mutate ``meta``.

        Pure and canonical, like :meth:`apply`. The default keeps the meta, which is right
        for meta that names no column; a strategy whose meta does sets
        :attr:`meta_names_columns` and overrides this.
        """
        return meta

    def check_kind(self, op: OpLike) -> None:
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
    shape = _shape(table)
    if not shape.names.issuperset(data):
        for name in data:
            if table.column(name) is None:
                raise OpRejected("unknown_column", f"table {table.name!r} has no column {name!r}")
    values: dict[str, Any] = {}
    unchanged = True  # every value of data is its own canonical form
    try:
        # An exact str for a text column and an in-range int for an integer column are
        # already canonical; everything else (and every error) goes through
        # normalize_value, so results and messages are exactly its own.
        for name, fast, column in shape.value_columns:
            if name in data:
                value = data[name]
                if fast is str:
                    if type(value) is str:
                        values[name] = value
                        continue
                elif fast is int and type(value) is int and -MAX_INTEGER <= value <= MAX_INTEGER:
                    values[name] = value
                    continue
                normalized = values[name] = normalize_value(column, value)
                unchanged = unchanged and normalized is value
            elif not partial:
                values[name] = normalize_value(column, None)
                unchanged = False
    except SchemaError as e:
        raise OpRejected("bad_value", str(e)) from None
    # The usual upsert names exactly the value columns, already canonical: then the op's
    # own dict is the result (equal to ``values``; neither is ever mutated), and a peer
    # holds one dict per op instead of two.
    return data if unchanged and len(values) == len(data) else values


class _Shape(NamedTuple):
    table: TableSchema
    names: frozenset[str]
    value_columns: tuple[tuple[str, type | None, Column], ...]


_SHAPES: dict[int, _Shape] = {}
_SHAPES_LOCK = threading.Lock()
_FAST_TYPES = {ColumnType.TEXT: str, ColumnType.INTEGER: int}


def _shape(table: TableSchema) -> _Shape:
    """``table``'s column lookups, made once per schema object rather than per op."""
    shape = _SHAPES.get(id(table))
    if shape is not None and shape.table is table:
        return shape
    shape = _Shape(
        table,
        frozenset(c.name for c in table.columns),
        tuple((c.name, _FAST_TYPES.get(c.type), c) for c in table.value_columns),
    )
    with _SHAPES_LOCK:  # peers in one process plan in parallel threads
        if len(_SHAPES) >= 256:
            _SHAPES.clear()
        # Keyed by id(); the entry holds the schema itself, so the id cannot be reused.
        _SHAPES[id(table)] = shape
    return shape


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
