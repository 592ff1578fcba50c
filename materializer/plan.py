"""Planning one epoch commit: a pure function from a sealed epoch to the writes.

:func:`plan_epoch` takes the :class:`~epoch.assign.SealedEpoch`, the tables in force
and a :class:`Reader` for the stored state it needs (read in two bulk calls), and
returns an :class:`EpochPlan` that a backend writes as ONE Dolt commit. In order:

1. config and schema messages attached to the commit take effect (schema changes
   apply at the epoch boundary, before the epoch's ops);
2. duplicate op ids are dropped: the first copy in stream order wins; a later copy
   with different content is recorded as a conflict, an identical one only counted;
   ids already applied within the dedup horizon count as duplicates too;
3. the remaining ops are sorted by ``(wall_ms, logical, node, id)`` and folded row by
   row through their table's strategy; an op that does not fit is recorded as
   rejected, with a reason, and the epoch goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from epoch.assign import Accepted, SealedEpoch
from materializer.errors import OpRejected, StrategyError
from materializer.metadata import CommitMeta, commit_meta, ops_digest
from materializer.strategy import ABSENT, RowState, get_strategy
from oplog.codec import canonical_json, digest
from oplog.errors import SchemaError
from oplog.op import Op
from oplog.schema import ColumnType, SchemaMessage, TableSchema, evolve

Key = tuple[str | int, ...]
MAX_RECORDED_PAYLOAD = 65_536


class Reader(Protocol):
    """Bulk reads of stored state that planning needs."""

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        """Stored state of ``keys`` (rows or tombstones); absent keys are left out."""

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        """``id -> digest`` for those of ``ids`` applied within the dedup horizon."""


@dataclass(frozen=True)
class TableChange:
    """DDL for one table: created (``before is None``) or columns added."""

    before: TableSchema | None
    after: TableSchema


@dataclass
class TableWrites:
    table: TableSchema
    upserts: list[tuple[Key, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    deletes: list[tuple[Key, dict[str, Any]]] = field(default_factory=list)
    cleared_tombstones: list[Key] = field(default_factory=list)


@dataclass(frozen=True)
class RejectionRow:
    seq: int
    index: int
    op_id: str | None
    reason: str
    detail: str
    payload: str


@dataclass(frozen=True)
class EpochRow:
    """The progress row written inside the epoch's own commit (contract item 10)."""

    epoch: int
    first_epoch: int
    seal_seq: int
    resume_seq: int
    end_ms: int
    applied: int
    rejected: int
    duplicates: int
    late: int
    digest: str


@dataclass(frozen=True)
class EpochPlan:
    epoch: EpochRow
    table_changes: tuple[TableChange, ...]
    writes: tuple[TableWrites, ...]
    op_ids: tuple[tuple[str, str], ...]
    prune_op_ids_before: int
    rejections: tuple[RejectionRow, ...]
    config_rows: tuple[tuple[int, str], ...]
    commit: CommitMeta


def key_text(key: Key) -> str:
    """The canonical text of a primary key (tombstones and the rejection log)."""
    return canonical_json(list(key))


def _payload(op: Op) -> str:
    return canonical_json(op.to_wire())[:MAX_RECORDED_PAYLOAD]


def _check_key(table: TableSchema, op: Op) -> None:
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


def apply_schema(tables: Mapping[str, TableSchema], body: Any) -> tuple[dict[str, TableSchema], list[TableChange]]:
    """Tables after one schema message; raises SchemaError/StrategyError if refused.

    A message is all-or-nothing: if any table in it is refused, none changes.
    """
    try:
        message = SchemaMessage.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SchemaError(f"invalid schema message at {where or 'top'}: {first['msg']}") from None
    result = dict(tables)
    changes: list[TableChange] = []
    for proposed in message.tables:
        get_strategy(proposed.strategy)
        current = result.get(proposed.name)
        after = evolve(current, proposed)
        if after != current:
            changes.append(TableChange(current, after))
            result[proposed.name] = after
    return result, changes


def plan_epoch(sealed: SealedEpoch, tables: Mapping[str, TableSchema], reader: Reader) -> EpochPlan:
    """Everything epoch ``sealed.epoch`` writes; see the module docstring for the order."""
    rejections = [RejectionRow(r.seq, r.index, r.op_id, r.reason, r.detail, r.payload) for r in sealed.rejected]
    current = dict(tables)
    changes: list[TableChange] = []
    config_rows: list[tuple[int, str]] = []
    for control in sealed.controls:
        if control.kind == "config":
            config_rows.append((control.seq, canonical_json(control.body)))
            continue
        try:
            current, made = apply_schema(current, control.body)
        except (SchemaError, StrategyError) as e:
            rejections.append(
                RejectionRow(
                    control.seq, -1, None, "schema", str(e), canonical_json(control.body)[:MAX_RECORDED_PAYLOAD]
                )
            )
            continue
        changes.extend(made)

    # Dedup: first copy in stream order wins.
    by_stream = sorted(sealed.ops, key=lambda a: (a.seq, a.index))
    first_copy: dict[str, tuple[Accepted, str]] = {}
    duplicates = 0
    for acc in by_stream:
        op_digest = digest(acc.op.to_wire())
        seen = first_copy.get(acc.op.id)
        if seen is None:
            first_copy[acc.op.id] = (acc, op_digest)
        elif seen[1] == op_digest:
            duplicates += 1
        else:
            rejections.append(_conflict(acc))
    known = reader.known_op_ids(sorted(first_copy)) if first_copy else {}
    survivors: list[tuple[Accepted, str]] = []
    for op_id, (acc, op_digest) in first_copy.items():
        stored = known.get(op_id)
        if stored is None:
            survivors.append((acc, op_digest))
        elif stored == op_digest:
            duplicates += 1
        else:
            rejections.append(_conflict(acc))
    survivors.sort(key=lambda pair: pair[0].op.sort_key())

    # Validate table and key, then group by row in apply order.
    rows: dict[str, dict[Key, list[Accepted]]] = {}
    check_storable = getattr(reader, "check_key", None)
    for acc, _ in survivors:
        op = acc.op
        table = current.get(op.table)
        try:
            if table is None:
                raise OpRejected("unknown_table", f"no table {op.table!r} is declared; publish its schema first")
            _check_key(table, op)
            # Storage limits of the backend (e.g. VARCHAR length on dolt-server) are a
            # function of backend kind and schema only, so every peer rejects alike.
            if check_storable is not None:
                check_storable(table, op.key)
        except OpRejected as e:
            rejections.append(RejectionRow(acc.seq, acc.index, op.id, e.reason, e.detail, _payload(op)))
            continue
        rows.setdefault(op.table, {}).setdefault(op.key, []).append(acc)

    created = {change.after.name for change in changes if change.before is None}
    applied_ids: set[str] = set()
    writes: list[TableWrites] = []
    for name in sorted(rows):
        table = current[name]
        strategy = get_strategy(table.strategy)
        # A table created by this very commit has nothing stored yet.
        stored = {} if name in created else reader.read_rows(table, sorted(rows[name], key=key_text))
        out = TableWrites(table)
        for key in sorted(rows[name], key=key_text):
            before = stored.get(key, ABSENT)
            state = before
            for acc in rows[name][key]:
                try:
                    state = strategy.apply(table, state, acc.op)
                except OpRejected as e:
                    rejections.append(RejectionRow(acc.seq, acc.index, acc.op.id, e.reason, e.detail, _payload(acc.op)))
                    continue
                applied_ids.add(acc.op.id)
            _record(out, key, before, state)
        if out.upserts or out.deletes or out.cleared_tombstones:
            writes.append(out)

    applied = [acc for acc, _ in survivors if acc.op.id in applied_ids]
    # Every op that reached its strategy is remembered, applied or not, so that a
    # retry of it later is a duplicate rather than a second application or rejection.
    op_ids = tuple(sorted((acc.op.id, d) for acc, d in survivors))
    applied_digest = ops_digest([acc.op.id for acc in applied])
    rejections.sort(key=lambda r: (r.seq, r.index, r.op_id or ""))
    row = EpochRow(
        epoch=sealed.epoch,
        first_epoch=sealed.first_epoch,
        seal_seq=sealed.seal_seq,
        resume_seq=sealed.resume_seq,
        end_ms=sealed.end_ms,
        applied=len(applied),
        rejected=len(rejections),
        duplicates=duplicates,
        late=sum(1 for acc in applied if acc.late),
        digest=applied_digest,
    )
    meta = commit_meta(
        epoch=sealed.epoch,
        first_epoch=sealed.first_epoch,
        end_ms=sealed.end_ms,
        author_name=sealed.config.author_name,
        author_email=sealed.config.author_email,
        applied=row.applied,
        rejected=row.rejected,
        duplicates=duplicates,
        digest=applied_digest,
    )
    return EpochPlan(
        epoch=row,
        table_changes=tuple(changes),
        writes=tuple(writes),
        op_ids=op_ids,
        prune_op_ids_before=sealed.epoch - sealed.config.dedup_epochs,
        rejections=tuple(rejections),
        config_rows=tuple(config_rows),
        commit=meta,
    )


def _conflict(acc: Accepted) -> RejectionRow:
    return RejectionRow(
        acc.seq,
        acc.index,
        acc.op.id,
        "duplicate_id_conflict",
        f"op id {acc.op.id!r} was already used for a different op; give each new op a new id",
        _payload(acc.op),
    )


def _record(out: TableWrites, key: Key, before: RowState, after: RowState) -> None:
    if after == before:
        return
    if after.values is not None:
        out.upserts.append((key, after.values, after.meta))
        if before.values is None and before.meta:
            out.cleared_tombstones.append(key)
    elif before.values is not None or after.meta != before.meta:
        out.deletes.append((key, after.meta))
