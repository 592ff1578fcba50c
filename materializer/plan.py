"""Planning one epoch commit: a pure function from a sealed epoch to the writes.

:func:`plan_epoch` takes the :class:`~epoch.assign.SealedEpoch`, the tables in force
and a :class:`Reader` for the stored state it needs (read in two bulk calls), and
returns an :class:`EpochPlan` that a backend writes as ONE Dolt commit. In order:

1. config and schema messages attached to the commit take effect (schema changes
   apply at the epoch boundary, before the epoch's ops: :mod:`materializer.schema_change`,
   which also says which stored rows they rewrite);
2. duplicate op ids are dropped: the first copy in stream order wins; a later copy
   with different content is recorded as a conflict, an identical one only counted;
   ids already applied within the dedup horizon count as duplicates too;
3. the remaining ops are sorted by ``(wall_ms, logical, node, id)`` and folded row by
   row through their table's strategy; an op that does not fit is recorded as
   rejected, with a reason, and the epoch goes on.

Work ahead of the seal is :mod:`materializer.prepare`'s: ``plan_epoch`` uses an op's
:class:`~materializer.prepare.Prepared` result only while it still holds, so a plan
never depends on when (or whether) its ops were prepared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from epoch.assign import Accepted, SealedEpoch, recordable
from materializer.errors import MaterializerError, OpRejected, StrategyError
from materializer.metadata import CommitMeta, commit_meta, ops_digest
from materializer.prepare import UNEXPECTED, Freshness, Key, KeyChecker, check_key_shape, key_fits, refusal
from materializer.schema_change import ChangeReport, Migrations, RowReader, TableChange
from materializer.strategy import ABSENT, OpLike, RowState, get_strategy
from oplog.codec import canonical_json, record_of
from oplog.errors import SchemaError
from oplog.op import OpRecord
from oplog.schema import TableSchema

__all__ = ["EpochPlan", "EpochRow", "Key", "Reader", "RejectionRow", "TableChange", "TableWrites", "plan_epoch"]

MAX_RECORDED_PAYLOAD = 65_536


class Reader(RowReader, KeyChecker, Protocol):
    """Bulk reads of stored state that planning needs, and the backend's key limits
    (``scan_rows`` only for a schema change that rewrites a table)."""

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        """``id -> digest`` for those of ``ids`` applied within the dedup horizon."""



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


def _payload(op: OpLike) -> str:
    return canonical_json(op.to_wire())[:MAX_RECORDED_PAYLOAD]


def plan_epoch(
    sealed: SealedEpoch, tables: Mapping[str, TableSchema], reader: Reader, *, report: list[ChangeReport] | None = None
) -> EpochPlan:
    """Everything epoch ``sealed.epoch`` writes; see the module docstring for the order.

    ``report``, if given, receives what each schema change does to the stored rows."""
    rejections = [RejectionRow(r.seq, r.index, r.op_id, r.reason, r.detail, r.payload) for r in sealed.rejected]
    migrations = Migrations(tables, reader, report)
    current, changes, config_rows = _apply_controls(sealed, tables, migrations, rejections)

    # Dedup: first copy in stream order wins; the digest says whether a later copy is
    # the same op (a retry) or another op reusing the id.
    first_copy, duplicates = _first_copies(_records(sealed.ops), rejections)
    ids = sorted(first_copy)
    known = reader.known_op_ids(ids) if ids else {}
    if known:
        for op_id in ids:
            stored = known.get(op_id)
            if stored is not None:
                acc = first_copy.pop(op_id)
                if stored == acc.op.digest:
                    duplicates += 1
                else:
                    rejections.append(_conflict(acc))
        ids = [op_id for op_id in ids if op_id in first_copy]
    # Every op that reaches its strategy is remembered, applied or not, so that a retry
    # of it later is a duplicate rather than a second application or rejection.
    op_ids = tuple((op_id, first_copy[op_id].op.digest) for op_id in ids)
    # Records start with (wall_ms, logical, node, id) and ids are unique here, so the
    # records themselves sort in the epoch's total order.
    survivors = sorted(first_copy.values(), key=_op_of)

    not_applied: set[str] = set()
    freshness = Freshness()
    rows = _rows_by_table(survivors, current, reader, rejections, not_applied, freshness)
    writes: list[TableWrites] = []
    for name in sorted(rows.keys() | migrations.rewritten(current)):
        table, by_key = rows.get(name) or (current[name], {})
        # Stored rows in the shape this epoch's schema messages left (none for a table
        # they created); the rows a change rewrites come after the ops' own writes.
        keys = sorted(by_key)
        stored = migrations.stored_rows(table, keys) if keys else {}
        out = _fold_table(table, keys, by_key, stored, rejections, not_applied, freshness)
        migrations.rewrite(out.upserts, out.deletes, table)
        if out.upserts or out.deletes or out.cleared_tombstones:
            writes.append(out)

    applied = [acc for acc in survivors if acc.op.id not in not_applied] if not_applied else survivors
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
        late=sum(map(_late_of, applied)),
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


_op_of = itemgetter(2)
_late_of = itemgetter(4)
_stream_position = itemgetter(0, 1)


def _apply_controls(
    sealed: SealedEpoch, tables: Mapping[str, TableSchema], migrations: Migrations, rejections: list[RejectionRow]
) -> tuple[dict[str, TableSchema], list[TableChange], list[tuple[int, str]]]:
    """Config and schema messages attached to the commit, which take effect first."""
    current = dict(tables)
    changes: list[TableChange] = []
    config_rows: list[tuple[int, str]] = []
    for control in sealed.controls:
        if control.kind == "config":
            config_rows.append((control.seq, canonical_json(control.body)))
            continue
        try:
            current, made = migrations.apply(current, control.body)
        except (SchemaError, StrategyError) as e:
            # An unknown strategy name is the message's fault (a peer missing an installed
            # plugin would show as a divergence, loudly).
            rejections.append(RejectionRow(control.seq, -1, None, "schema", str(e), recordable(control.body)))
            continue
        except (MemoryError, MaterializerError):
            raise
        except Exception as e:  # see materializer.prepare.refusal: a bug about this message alone
            detail = f"{type(e).__name__} while applying this schema message"
            rejections.append(RejectionRow(control.seq, -1, None, UNEXPECTED, detail, recordable(control.body)))
            continue
        changes.extend(made)
    return current, changes, config_rows


def _records(accepted: Sequence[Accepted]) -> Sequence[Accepted]:
    """``accepted`` with every op an :class:`OpRecord` (hand-built epochs hold pydantic Ops)."""
    if all(type(acc.op) is OpRecord for acc in accepted):
        return accepted
    return [acc._replace(op=record_of(acc.op)) for acc in accepted]


def _first_copies(accepted: Sequence[Accepted], rejections: list[RejectionRow]) -> tuple[dict[str, Accepted], int]:
    """The first copy of each op id in stream order, and how many later copies were
    identical; a later copy with other content is recorded as a conflict."""
    unique = {acc.op.id: acc for acc in accepted}
    if len(unique) == len(accepted):
        return unique, 0  # no id twice: stream order decides nothing
    by_stream = sorted(accepted, key=_stream_position)
    first_copy: dict[str, Accepted] = {}
    duplicates = 0
    keep = first_copy.setdefault
    for acc in by_stream:
        seen = keep(acc.op.id, acc)
        if seen is not acc:
            if seen.op.digest == acc.op.digest:
                duplicates += 1
            else:
                rejections.append(_conflict(acc))
    return first_copy, duplicates


def _rows_by_table(
    survivors: list[Accepted],
    current: Mapping[str, TableSchema],
    reader: Reader,
    rejections: list[RejectionRow],
    not_applied: set[str],
    freshness: Freshness,
) -> dict[str, tuple[TableSchema, dict[Key, Accepted | list[Accepted]]]]:
    """Survivors that name a declared table and fit its key, by table and row, in apply
    order. A row touched once holds its op; a row touched again holds a list."""
    check_storable = reader.check_key
    holds = freshness.holds
    tables: dict[str, tuple[TableSchema, Callable[[Key], bool], dict[Key, Any]] | None] = {}
    for acc in survivors:
        op = acc.op
        name = op.table
        try:
            entry = tables[name]
        except KeyError:
            table = current.get(name)
            entry = tables[name] = None if table is None else (table, key_fits(table), {})
        key = op.key
        try:
            if entry is None:
                raise OpRejected("unknown_table", f"no table {name!r} is declared; publish its schema first")
            table, fits, by_key = entry
            prepared = acc.prepared
            if not holds(prepared, table):
                if not fits(key):
                    check_key_shape(table, op)
                # Storage limits of the backend (e.g. VARCHAR length on dolt-server) are a
                # function of backend kind and schema only, so every peer rejects alike.
                check_storable(table, key)
            elif prepared.by_key:
                raise prepared.refused
        except Exception as e:
            refused = refusal(e)
            rejections.append(RejectionRow(acc.seq, acc.index, op.id, refused.reason, refused.detail, _payload(op)))
            not_applied.add(op.id)
            continue
        seen = by_key.get(key)
        if seen is None:
            by_key[key] = acc
        elif type(seen) is list:
            seen.append(acc)
        else:
            by_key[key] = [seen, acc]
    return {name: (entry[0], entry[2]) for name, entry in tables.items() if entry is not None and entry[2]}


def _fold_table(
    table: TableSchema,
    keys: list[Key],
    by_key: dict[Key, Accepted | list[Accepted]],
    stored: Mapping[Key, RowState],
    rejections: list[RejectionRow],
    not_applied: set[str],
    freshness: Freshness,
) -> TableWrites:
    """Each row's ops folded through the table's strategy, from its stored state."""
    strategy = get_strategy(table.strategy)
    apply, apply_prepared = strategy.apply, strategy.apply_prepared
    holds = freshness.holds
    out = TableWrites(table)
    upserts = out.upserts
    for key in keys:
        before = stored.get(key, ABSENT)
        state = before
        ops = by_key[key]
        for acc in ops if type(ops) is list else (ops,):
            try:
                prepared = acc.prepared
                if not holds(prepared, table):
                    state = apply(table, state, acc.op)
                elif prepared.refused is not None:
                    raise prepared.refused
                else:
                    state = apply_prepared(table, state, acc.op, prepared.value)
            except Exception as e:
                refused = refusal(e)
                rejections.append(
                    RejectionRow(acc.seq, acc.index, acc.op.id, refused.reason, refused.detail, _payload(acc.op))
                )
                not_applied.add(acc.op.id)
        # What changed, as _record says, with its two usual cases first: a new row, and
        # a stored row overwritten (the fold made a new state, its meta differs).
        if state is before:
            continue
        if state.values is not None:
            if before is ABSENT or (before.values is not None and state.meta != before.meta):
                upserts.append((key, state.values, state.meta))
                continue
        _record(out, key, before, state)
    return out


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
