"""Schema messages at an epoch boundary: the tables they leave, their DDL, the rows they rewrite.

The schema messages attached to an epoch's commit apply in stream order, before the
epoch's ops (:mod:`materializer.plan`). Each message is all-or-nothing: if any part of it
is refused, nothing of it applies, and it is recorded as a ``schema`` rejection.

A message first makes its explicit ``changes`` in order (:class:`~oplog.schema.DropTable`,
:class:`~oplog.schema.DropColumn`, :class:`~oplog.schema.RenameColumn`,
:class:`~oplog.schema.RetypeColumn`), then declares its ``tables``
(:func:`oplog.schema.evolve`). Refused, with the reason recorded:

* dropping, renaming or retyping a primary-key column (rows are found by their key, so
  the key can never change), naming a table or column that does not exist, renaming onto
  a name the table has (ignoring case, as both engines do);
* a retype with no conversion rule (:mod:`oplog.convert`), ``on_failure: null`` on a NOT
  NULL column, and, with ``on_failure: reject``, any stored value the rule does not take;
* what the table's strategy refuses (:meth:`~materializer.strategy.Strategy.check_change`).

Rows follow the change as each strategy says (:meth:`Strategy.migrate_meta`). Most
changes need no row read: a dropped or renamed column is the engine's ``ALTER TABLE``. A
retype converts every stored value in Python (never an engine ``CAST``, so every peer of
a backend writes the same bytes), so it reads the whole table and the DDL makes the table
anew from the new schema (``TableChange.rebuild``), with every row written again; so do a
drop or rename on a table whose strategy keeps per-column meta (field-lww), which writes
the rows whose meta changed. Those reads go through the plan's reader; nothing here does
I/O itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import ValidationError

from materializer.column_steps import Added, ColumnStep, Step, change_table, migrate_all, migrate_rows
from materializer.prepare import Key
from materializer.strategy import RowState, Strategy, get_strategy
from oplog.codec import canonical_json
from oplog.errors import SchemaError
from oplog.schema import (
    MAX_TABLES,
    DropColumn,
    DropTable,
    OnFailure,
    RenameColumn,
    RetypeColumn,
    SchemaMessage,
    TableSchema,
    evolve,
)

MAX_REPORTED_KEYS = 5  # keys named per change in a report, and in a refusal's detail


@dataclass(frozen=True)
class TableChange:
    """The DDL one schema message makes for one table.

    ``before`` is None when the table is created, ``after`` None when it is dropped.
    ``steps`` are the column changes in the order they apply (with the columns added
    between them); empty when the message only added columns, which are then those of
    ``after`` that ``before`` lacks. ``rebuild``: a column was retyped, so the table is
    made anew from ``after`` and the plan writes every row again.
    """

    before: TableSchema | None
    after: TableSchema | None
    steps: tuple[ColumnStep, ...] = ()
    rebuild: bool = False

    @property
    def name(self) -> str:
        table = self.after if self.after is not None else self.before
        assert table is not None
        return table.name


@dataclass(frozen=True)
class ChangeReport:
    """What one change of a schema message does to the stored rows (``oplog schema apply --dry-run``).

    ``rows`` is None when the change needs no row read (the engine's DDL keeps them).
    """

    table: str
    change: str  # create_table | add_column | drop_table | drop_column | rename_column | retype_column
    column: str | None = None
    detail: str = ""
    rows: int | None = None
    converted: int = 0  # values (not NULL) the rule converted
    not_converted: int = 0  # values the rule does not take
    examples: tuple[Key, ...] = ()  # the first keys (in key order) of those


class RowReader(Protocol):
    """The reads a schema change may need: rows by key, or every row and tombstone."""

    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        """Stored state of ``keys`` (rows or tombstones); absent keys are left out."""

    def scan_rows(self, table: TableSchema) -> dict[Key, RowState]:
        """Every stored row and tombstone of ``table``, read as ``table`` declares it."""


@dataclass(frozen=True)
class _Track:
    """One table's course through an epoch's schema messages, from its stored rows.

    ``base``: the table as stored at the last commit; None once no stored row can be
    left (created, or dropped, in this epoch). ``steps``: what rows read under ``base``
    go through. ``rows``/``stored``: every stored row and tombstone, migrated so far /
    as read, once a step needed them. ``rebuild``: the table is made anew by this commit.
    """

    base: TableSchema | None
    steps: tuple[Step, ...] = ()
    rows: dict[Key, RowState] | None = None
    stored: dict[Key, RowState] | None = None
    rebuild: bool = False


@dataclass
class _Entry:
    """One table's :class:`TableChange` while its message is applied."""

    before: TableSchema | None
    after: TableSchema | None
    steps: list[ColumnStep] = field(default_factory=list)
    rebuild: bool = False


class Migrations:
    """The schema messages of one epoch commit, and what they do to stored rows.

    ``stored`` are the tables at the last commit; ``reader`` reads their rows as stored.
    Apply each message with :meth:`apply`; then :meth:`stored_rows` gives the rows the
    epoch's ops fold onto (in the new shape), and :meth:`rewrite` adds the rows the
    changes themselves must write. ``reports``, if given, receives a
    :class:`ChangeReport` per change met, refused messages' included.
    """

    def __init__(
        self, stored: Mapping[str, TableSchema], reader: RowReader, reports: list[ChangeReport] | None = None
    ) -> None:
        self._stored = stored
        self._reader = reader
        self._tracks: dict[str, _Track] = {}
        self._reports = reports

    # -- applying messages -----------------------------------------------------------------

    def apply(self, tables: Mapping[str, TableSchema], body: Any) -> tuple[dict[str, TableSchema], list[TableChange]]:
        """Tables after one schema message, and its DDL; raises SchemaError/StrategyError
        if refused, and then nothing of it applies."""
        try:
            message = SchemaMessage.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SchemaError(f"invalid schema message at {where or 'top'}: {first['msg']}") from None
        result = dict(tables)
        tracks = dict(self._tracks)  # committed only if the whole message applies
        entries: list[_Entry] = []
        open_entries: dict[str, _Entry] = {}

        def entry(name: str, current: TableSchema) -> _Entry:
            found = open_entries.get(name)
            if found is None:
                found = open_entries[name] = _Entry(current, current)
                entries.append(found)
            return found

        for change in message.changes:
            name = change.table
            current = result.get(name)
            if current is None:
                raise SchemaError(f"{change.op}: there is no table {name!r}")
            if isinstance(change, DropTable):
                del result[name]
                entry(name, current).after = None
                del open_entries[name]  # declared again later in the message: a new table
                tracks[name] = _Track(None)
                self._report(ChangeReport(name, "drop_table", detail=f"{len(current.value_columns)} value columns"))
                continue
            strategy = get_strategy(current.strategy)
            after = change_table(current, change)
            strategy.check_change(current, change)
            track = tracks.get(name) or _Track(self._stored.get(name))
            tracks[name] = self._advance(
                track,
                strategy,
                Step(change, current.column(change.column), after.column(getattr(change, "to", change.column))),
            )
            made = entry(name, current)
            made.after = after
            made.steps.append(change)
            made.rebuild = made.rebuild or isinstance(change, RetypeColumn)
            result[name] = after

        for proposed in message.tables:
            get_strategy(proposed.strategy)
            name = proposed.name
            current = result.get(name)
            if current is None:
                # Both engines compare table names without regard to case (SQLite always,
                # MySQL/Dolt on common file systems): "Users" beside "users" would fail in DDL.
                taken = next((other for other in result if other.lower() == name.lower()), None)
                if taken is not None:
                    raise SchemaError(f"table {name!r} differs from the existing table {taken!r} only in case")
                if len(result) >= MAX_TABLES:
                    raise SchemaError(f"table {name!r}: a database holds at most {MAX_TABLES} tables")
            after = evolve(current, proposed)
            if after == current:
                continue
            if current is None:
                made = open_entries[name] = _Entry(None, after)
                entries.append(made)
                tracks[name] = _Track(None)
                self._report(ChangeReport(name, "create_table", detail=f"{len(after.columns)} columns"))
            else:
                made = entry(name, current)
                made.after = after
                track = tracks.get(name) or _Track(self._stored.get(name))
                known = {c.name for c in current.columns}
                for column in after.columns:
                    if column.name not in known:
                        made.steps.append(Added(column))
                        track = self._advance(track, get_strategy(after.strategy), Step(Added(column), None, column))
                        self._report(ChangeReport(name, "add_column", column.name, column.type.value))
                tracks[name] = track
            result[name] = after

        self._tracks = tracks
        changes = []
        for made in entries:
            if made.before is None and made.after is None:
                continue
            explicit = any(not isinstance(step, Added) for step in made.steps)
            # Columns only added keep the form older plans have: derived from before/after.
            changes.append(TableChange(made.before, made.after, tuple(made.steps) if explicit else (), made.rebuild))
        return result, changes

    def _advance(self, track: _Track, strategy: Strategy, step: Step) -> _Track:
        """``track`` after ``step``: reads the stored rows first if the step needs them."""
        change = step.step
        retype = isinstance(change, RetypeColumn)
        rebuild = track.rebuild or retype
        report = None if isinstance(change, Added) else _step_report(step)
        if track.base is None:  # no stored rows to follow
            if report is not None:
                self._report(replace(report, rows=0) if retype else report)
            return replace(track, steps=(*track.steps, step), rebuild=rebuild)
        rows, stored = track.rows, track.stored
        needs_rows = retype or (strategy.meta_names_columns and isinstance(change, (DropColumn, RenameColumn)))
        if rows is None and needs_rows:
            stored = self._reader.scan_rows(track.base)
            rows = {key: migrate_all(state, track.steps, strategy) for key, state in stored.items()}
        if rows is not None:
            rows, counted = migrate_rows(rows, step, strategy, MAX_REPORTED_KEYS)
            report = report if report is None else replace(report, **counted)
        if report is not None:
            self._report(report)
            if report.not_converted and isinstance(change, RetypeColumn) and change.on_failure is OnFailure.REJECT:
                shown = ", ".join(canonical_json(list(key)) for key in report.examples)
                more = ", …" if report.not_converted > len(report.examples) else ""
                raise SchemaError(
                    f"table {report.table!r}: column {change.column!r} cannot be retyped {report.detail}: "
                    f"{report.not_converted} of {report.rows} stored rows hold a value the rule does not take "
                    f"(keys {shown}{more}); fix those rows first, or publish the change with "
                    '"on_failure": "null" to store NULL for them'
                )
        return _Track(track.base, (*track.steps, step), rows, stored, rebuild)

    def _report(self, report: ChangeReport) -> None:
        if self._reports is not None:
            self._reports.append(report)

    # -- the epoch's rows ------------------------------------------------------------------

    def stored_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        """The stored state of ``keys`` of ``table`` (as this epoch's messages left it),
        in ``table``'s shape: what the epoch's ops fold onto."""
        track = self._tracks.get(table.name)
        if track is None:
            return self._reader.read_rows(table, keys)
        if track.base is None:
            return {}
        if track.rows is not None:
            rows = track.rows
            return {key: rows[key] for key in keys if key in rows}
        # Read as stored (the database has not changed yet), then brought to the new shape.
        strategy = get_strategy(table.strategy)
        read = self._reader.read_rows(track.base, keys)
        return {key: migrate_all(state, track.steps, strategy) for key, state in read.items()}

    def rewritten(self, tables: Mapping[str, TableSchema]) -> set[str]:
        """Tables of ``tables`` that :meth:`rewrite` may add rows to."""
        return {
            name for name, track in self._tracks.items()
            if track.rows is not None and track.base is not None and name in tables
        }  # fmt: skip

    def rewrite(self, upserts: list[tuple[Key, dict[str, Any], dict[str, Any]]],
                deletes: list[tuple[Key, dict[str, Any]]], table: TableSchema) -> None:  # fmt: skip
        """Add the rows the changes of ``table`` must write and the epoch's ops did not:
        every row of a rebuilt table, and rows and tombstones whose meta changed."""
        track = self._tracks.get(table.name)
        if track is None or track.rows is None or track.stored is None or track.base is None:
            return
        written = {key for key, *_ in upserts}
        written.update(key for key, _ in deletes)
        stored = track.stored
        for key in sorted(track.rows):
            if key in written:
                continue
            state = track.rows[key]
            if state.values is not None:
                if track.rebuild or state.meta != stored[key].meta:
                    upserts.append((key, state.values, state.meta))
            elif state.meta != stored[key].meta:
                deletes.append((key, state.meta))


def _step_report(step: Step) -> ChangeReport:
    change = step.step
    assert not isinstance(change, Added) and step.source is not None
    if isinstance(change, RenameColumn):
        return ChangeReport(change.table, change.op, change.column, f"to {change.to!r}")
    if isinstance(change, RetypeColumn):
        detail = f"from {step.source.type.value} to {change.type.value} (on_failure {change.on_failure.value})"
        return ChangeReport(change.table, change.op, change.column, detail)
    return ChangeReport(change.table, change.op, change.column, step.source.type.value)
