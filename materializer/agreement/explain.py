"""Why a peer's epoch commit differs from the recomputed one: which tables, which rows.

``oplog verify --explain`` (or ``verify(..., explain={...})``) calls :func:`explain_commit`
for each peer that differs, at the first verified epoch it differs in, comparing the
peer's own commit (the hash it reported) in its database with the recomputed commit in
the scratch database; both are read read-only (:mod:`materializer.agreement.commits`).

1. Both commits are looked up: a peer that reinstalled a snapshot since, or a location
   that is not its database, has no such commit, and the explanation says so.
2. Every table's content hash is compared (Dolt's hash of the table's data, which does not
   depend on history): equal hashes mean equal tables, so only the tables whose hashes
   differ, or that exist on one side only, are read.
3. The rows of those tables are compared by primary key (a user table's from its
   declaration at that commit, an internal table's from :data:`INTERNAL_KEYS`; a table
   neither knows is compared as whole rows). Each differing row gives its key, the
   columns that differ, and both rows (``None`` where one side has no such row). At most
   ``max_rows`` rows are kept per table, in key order; ``rows_differing`` counts them all.

When every table is equal the commits differ in history or metadata only: the parents
and messages in the explanation show how (a parent that is no epoch commit means someone
committed into the peer's database by hand).

Cost: the tables that differ are read whole, once on each side, at that commit.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from dataclasses import dataclass, field
from typing import Any

import orjson

from materializer.agreement.commits import INTERNAL_KEYS, CommitInfo, CommitReader, Location
from materializer.errors import BackendError
from oplog.schema import TableSchema

MAX_ROWS = 20
TEXT_VALUE_CHARS = 120  # longer values are cut in the text rendering (never in JSON)
SHORT = 10  # characters of a hash in text


@dataclass(frozen=True)
class RowDifference:
    """One row that differs; ``peer``/``expected`` are None where that side has no such row."""

    key: tuple[Any, ...]
    columns: tuple[str, ...]  # the columns whose values differ (every column of a one-sided row)
    peer: dict[str, Any] | None
    expected: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"key": [plain(k) for k in self.key], "columns": list(self.columns),
                "peer": _plain_row(self.peer), "expected": _plain_row(self.expected)}  # fmt: skip


@dataclass(frozen=True)
class TableDifference:
    """A table whose content differs; a hash is None where the table does not exist."""

    table: str
    peer_hash: str | None
    expected_hash: str | None
    rows: tuple[RowDifference, ...]  # the first ``max_rows``, in key order
    rows_differing: int

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "peer_hash": self.peer_hash, "expected_hash": self.expected_hash,
                "rows_differing": self.rows_differing, "rows": [r.to_json() for r in self.rows]}  # fmt: skip


@dataclass(frozen=True)
class Explanation:
    """How one peer's commit of one epoch differs from the recomputed commit."""

    peer: str
    epoch: int
    peer_commit: str
    expected_commit: str
    database: str  # where the peer's database was read ("" when no location was given)
    problem: str | None = None  # why nothing could be compared; None when compared
    peer_info: CommitInfo | None = None
    expected_info: CommitInfo | None = None
    tables: tuple[TableDifference, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer, "epoch": self.epoch, "database": self.database, "problem": self.problem,
            "peer_commit": _commit_json(self.peer_commit, self.peer_info),
            "expected_commit": _commit_json(self.expected_commit, self.expected_info),
            "tables": [t.to_json() for t in self.tables],
        }  # fmt: skip

    def lines(self) -> list[str]:
        """The explanation as text for a terminal, one item a line."""
        head = (f"{self.peer} at epoch {self.epoch}: commit {self.peer_commit[:SHORT]}, "
                f"recomputed {self.expected_commit[:SHORT]}")  # fmt: skip
        if self.problem is not None:
            return [f"{head}: {self.problem}"]
        lines = [f"{head} (read from {self.database})"]
        mine, ours = self.peer_info, self.expected_info
        if mine is not None and ours is not None:
            if mine.parent != ours.parent:
                lines.append(f"  parent {_commit_text(mine.parent, mine.parent_message)}, "
                             f"recomputed {_commit_text(ours.parent, ours.parent_message)}")  # fmt: skip
            if mine.message != ours.message:
                lines.append(f"  message {_first(mine.message)!r}, recomputed {_first(ours.message)!r}")
        if not self.tables:
            lines.append("  every table is identical: the commits differ in history or metadata only")
        for t in self.tables:
            lines.append(f"  table {t.table}: " + _table_text(self.peer, t))
            for row in t.rows:
                lines.append(f"    key {_value_text(list(row.key))}: " + _row_text(self.peer, row))
            if t.rows_differing > len(t.rows):
                lines.append(f"    … and {t.rows_differing - len(t.rows)} more rows")
        return lines


def explain_commit(
    peer: str,
    epoch: int,
    peer_location: Location,
    peer_commit: str,
    expected_location: Location,
    expected_commit: str,
    *,
    max_rows: int = MAX_ROWS,
) -> Explanation:
    """Compare ``peer_commit`` in ``peer_location`` with ``expected_commit`` in ``expected_location``.

    A database that cannot be read, or lacks the commit, gives an explanation whose
    ``problem`` says so; nothing is raised for it."""
    where = peer_location.describe()
    base = {"peer": peer, "epoch": epoch, "peer_commit": peer_commit, "expected_commit": expected_commit,
            "database": where}  # fmt: skip
    try:
        with peer_location.open() as theirs, expected_location.open() as ours:
            mine_info, ours_info = theirs.commit(peer_commit), ours.commit(expected_commit)
            if mine_info is None:
                return Explanation(**base, problem=(
                    f"{where} has no commit {peer_commit} (the peer reinstalled a snapshot or was repaired since "
                    "it reported, or this is not its database)"))  # fmt: skip
            if ours_info is None:
                problem = f"the recomputed commit {expected_commit} is not in the scratch database"
                return Explanation(**base, problem=problem)
            tables = _differing_tables(theirs, peer_commit, ours, expected_commit, max_rows)
    except (BackendError, ValueError) as e:  # ValueError: a table declaration that does not parse
        return Explanation(**base, problem=f"cannot read it: {e}")
    return Explanation(**base, peer_info=mine_info, expected_info=ours_info, tables=tuple(tables))


def _differing_tables(
    theirs: CommitReader, peer_commit: str, ours: CommitReader, expected_commit: str, max_rows: int
) -> list[TableDifference]:
    their_hashes, our_hashes = theirs.tables(peer_commit), ours.tables(expected_commit)
    names = sorted(their_hashes.keys() | our_hashes.keys(), key=lambda n: (n.startswith("oplog_"), n))
    schemas = {**theirs.schemas(peer_commit), **ours.schemas(expected_commit)}  # ours wins: the expected declaration
    found = []
    for name in names:
        mine, expected = their_hashes.get(name), our_hashes.get(name)
        if mine == expected:
            continue
        key = _key_columns(name, schemas.get(name))
        their_rows = theirs.rows(peer_commit, name) if mine is not None else []
        our_rows = ours.rows(expected_commit, name) if expected is not None else []
        rows = compare_rows(their_rows, our_rows, key)
        found.append(TableDifference(name, mine, expected, tuple(rows[:max_rows]), len(rows)))
    return found


def _key_columns(table: str, schema: TableSchema | None) -> tuple[str, ...] | None:
    if schema is not None:
        return tuple(schema.primary_key)
    return INTERNAL_KEYS.get(table)


def compare_rows(
    peer_rows: list[dict[str, Any]], expected_rows: list[dict[str, Any]], key: tuple[str, ...] | None
) -> list[RowDifference]:
    """The rows that differ between two versions of one table, in key order.

    ``key`` names the primary-key columns; None compares whole rows (a row on one side
    only is a difference)."""

    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        if key is None:
            return {tuple(sorted(row.items(), key=lambda item: item[0])): row for row in rows}
        return {tuple(row.get(c) for c in key): row for row in rows}

    mine, expected = keyed(peer_rows), keyed(expected_rows)
    found = []
    for k in mine.keys() | expected.keys():
        a, b = mine.get(k), expected.get(k)
        if a == b:
            continue
        if a is not None and b is not None:
            columns = tuple(c for c in sorted(a.keys() | b.keys()) if a.get(c) != b.get(c))
        else:
            columns = tuple(sorted((a or b or {}).keys()))
        shown_key = k if key is not None else tuple(v for _, v in k)
        found.append(RowDifference(shown_key, columns, a, b))
    return sorted(found, key=lambda r: _sort_key(r.key))


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    # Keys of one table have one type per column; None and mixed types sort by text.
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)) for v in key)


# -- rendering ---------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A stored value as JSON can hold it: bytes as base64 (as change feeds render them)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def _plain_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {c: plain(v) for c, v in row.items()}


def _commit_json(commit: str, info: CommitInfo | None) -> dict[str, Any]:
    if info is None:
        return {"hash": commit}
    return {"hash": commit, "parent": info.parent, "message": info.message, "parent_message": info.parent_message}


def _first(message: str | None) -> str:
    return (message or "").split("\n", 1)[0]


def _commit_text(commit: str | None, message: str | None) -> str:
    return "none" if commit is None else f"{commit[:SHORT]} {_first(message)!r}"


def _value_text(value: Any) -> str:
    text = orjson.dumps(value, default=plain).decode()
    return text if len(text) <= TEXT_VALUE_CHARS else text[:TEXT_VALUE_CHARS] + f"… ({len(text)} characters)"


def _table_text(peer: str, t: TableDifference) -> str:
    if t.peer_hash is None:
        return f"missing on {peer}, {t.rows_differing} rows expected"
    if t.expected_hash is None:
        return f"only on {peer} ({t.rows_differing} rows), not in the recomputation"
    rows = "1 row differs" if t.rows_differing == 1 else f"{t.rows_differing} rows differ"
    return f"{rows} (hash {t.peer_hash[:SHORT]}, recomputed {t.expected_hash[:SHORT]})"


def _row_text(peer: str, row: RowDifference) -> str:
    if row.expected is None:
        return f"only on {peer}: {_value_text(_plain_row(row.peer))}"
    if row.peer is None:
        return f"missing on {peer}, expected {_value_text(_plain_row(row.expected))}"
    return "; ".join(
        f"{c} {_value_text(plain(row.peer.get(c)))}, expected {_value_text(plain(row.expected.get(c)))}"
        for c in row.columns
    )
