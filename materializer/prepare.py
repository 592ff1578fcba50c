"""Work on an op ahead of its epoch's seal, and the rules shared with planning at the seal.

:func:`prepare_op` does the per-op part of planning that depends only on the op and its
table's schema (key checks, the backend's storage limits, the strategy's ``prepare``) as
the op arrives; the :class:`Prepared` result rides on
:attr:`~epoch.assign.Accepted.prepared`. :func:`materializer.plan.plan_epoch` uses it only
if the op's table at the seal equals the one it was prepared against (:class:`Freshness`),
and otherwise does the same work itself, so a plan never depends on when (or whether) its
ops were prepared (``tests/test_plan.py`` holds both equal). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from materializer.errors import MaterializerError, OpRejected
from materializer.strategy import OpLike, get_strategy
from oplog.op import OpRecord
from oplog.schema import ColumnType, TableSchema

Key = tuple[str | int, ...]
UNEXPECTED = "unexpected_error"


class KeyChecker(Protocol):
    """The backend's storage limits for keys (``Backend.check_key``)."""

    def check_key(self, table: TableSchema, key: Key) -> None:
        """Raise ``OpRejected("bad_key")`` if the backend cannot store ``key`` in ``table``:
        a function of backend kind and schema only, so every peer decides alike."""


class Prepared(NamedTuple):
    """An op's planning work done ahead of the seal, against ``table``.

    Either the strategy's ``prepare`` result (``value``) or a rejection (``refused``);
    ``by_key`` says the table or key refused it, so it never reaches its row."""

    table: TableSchema
    value: Any = None
    refused: OpRejected | None = None
    by_key: bool = False


def check_key_shape(table: TableSchema, op: OpLike) -> None:
    """Raise ``OpRejected("bad_key")`` unless ``op``'s key has ``table``'s arity and part types."""
    if len(op.key) != len(table.primary_key):
        raise OpRejected(
            "bad_key", f"table {table.name!r} has primary key {list(table.primary_key)}; got {len(op.key)} key part(s)"
        )
    for name, part in zip(table.primary_key, op.key, strict=True):
        column = table.column(name)
        assert column is not None
        wanted = str if column.type is ColumnType.TEXT else int
        if not isinstance(part, wanted):
            raise OpRejected("bad_key", f"key column {name!r} is {column.type.value}; got {part!r}")


def key_fits(table: TableSchema) -> Callable[[Key], bool]:
    """A quick test that a key has ``table``'s shape (exact str/int parts); a key that
    fails it goes through :func:`check_key_shape`, which decides and words the rejection.
    (The key's part types are a cached property of the schema value itself.)"""
    types = table.key_types
    if len(types) == 1:
        only = types[0]
        return lambda key: len(key) == 1 and type(key[0]) is only
    return lambda key: len(key) == len(types) and all(type(p) is t for p, t in zip(key, types, strict=True))


def prepare_op(op: OpRecord, tables: Mapping[str, TableSchema], reader: KeyChecker | None = None) -> Prepared | None:
    """The planning work for ``op`` that depends on it and its table's schema alone.

    That is the key checks (``reader.check_key`` too, if the reader has one: the
    backend's storage limits) and the strategy's :meth:`~materializer.strategy.Strategy.prepare`.
    The result is meant for :attr:`Accepted.prepared`; None if ``op``'s table is not
    declared in ``tables`` (a schema message still to come may declare it), or if
    anything but a rejection went wrong (planning then meets it again, at the seal).
    """
    table = tables.get(op.table)
    if table is None:
        return None
    try:
        try:
            if not key_fits(table)(op.key):
                check_key_shape(table, op)
            if reader is not None:
                reader.check_key(table, op.key)
        except OpRejected as e:
            return Prepared(table, refused=e, by_key=True)
        try:
            return Prepared(table, get_strategy(table.strategy).prepare(table, op))
        except OpRejected as e:
            return Prepared(table, refused=e)
    except Exception:  # a broken plugin fails where it always did: planning
        return None


class Freshness:
    """Whether an op's preparation still holds: its table then equals the table now.

    Call it only when the two are not the same object (the usual case, checked inline
    by the callers); the verdict is kept per prepared-against schema object.
    """

    def __init__(self) -> None:
        # By id of a schema object: the ops holding their Prepared keep it alive for as
        # long as this (one plan's) object lives, so an id is never reused meanwhile.
        self._verdicts: dict[int, bool] = {}

    def __call__(self, then: TableSchema, now: TableSchema) -> bool:
        fresh = self._verdicts.get(id(then))
        if fresh is None:
            fresh = self._verdicts[id(then)] = then == now
        return fresh

    def holds(self, prepared: object, table: TableSchema) -> bool:
        """Whether ``prepared`` (an op's :attr:`Accepted.prepared`) may be used for ``table``."""
        return type(prepared) is Prepared and (prepared.table is table or self(prepared.table, table))



def refusal(error: Exception) -> OpRejected:
    """The rejection for an error met while planning one op.

    An :class:`OpRejected` is the op's own fault and says why. Any other error from a
    strategy or a check is a bug, but a bug about this op alone: the op is rejected,
    and the epoch commits (a peer must never crash-loop on one message). Its detail is
    the exception's class only: a message may hold addresses or wording that differ
    between peers, a class does not. Errors that are about the peer, not the op, stop
    the peer as before: running out of memory (another peer may not), a strategy that
    is not installed (a deployment error), a failing database.
    """
    if isinstance(error, OpRejected):
        return error
    if isinstance(error, (MemoryError, MaterializerError)):
        raise error
    return OpRejected(UNEXPECTED, f"{type(error).__name__} while planning this op")
