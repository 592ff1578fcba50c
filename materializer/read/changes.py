"""Per-epoch change feeds: what each epoch commit changed, the same on every peer.

Every peer commits each epoch as one identical Dolt commit, so each epoch commit is also
a unit of change, the same everywhere and addressed by its epoch number. This module
turns epoch commits into change records with Dolt's own diffs (read-only SQL):

* :func:`read_changes` / :func:`iter_changes` — the change sets of the epoch commits in a
  range; :func:`follow_changes` — the same as an async iterator that then waits for new
  commits, so a consumer that stores the last epoch it handled and resumes from the next
  one sees every change exactly once.
* One :class:`EpochChanges` per epoch commit, in epoch order, empty ones included (so a
  consumer's position always advances). An epoch closed together with later ones (one
  seal for several epochs, decisions.md #1) has no commit of its own: its changes are in
  the commit that closed it (``first_epoch`` .. ``epoch``).
* One :class:`Change` per changed row of a user table (never the ``oplog_*`` tables):
  ``(epoch, table, key, kind, before, after, op_id)``, ordered by table name, then key.

How a commit's changes are found (the same algorithm on both engines):

1. The epoch's commit is the one whose message's first line is ``epoch <k>``
   (:mod:`materializer.metadata`), looked up in ``dolt_log`` from the newest commit down.
2. ``dolt_diff_summary('<commit>~1', '<commit>')`` names the tables whose data changed;
   those declared in ``oplog_tables`` at that commit are the user tables to diff.
3. Each table's row diff from the parent commit: the one place the engines differ
   (:func:`_diff_rows`): doltlite's ``dolt_diff_<t>`` system table filtered on
   ``to_commit`` and ``from_commit`` (its columns follow the table's current schema;
   doltlite has no ``dolt_diff()`` table function), Dolt sql-server's
   ``dolt_diff(from, to, t)`` table function (``dolt_diff_<t>`` cannot be filtered there
   when a user column is named ``commit``: its name collides with the diff's own
   ``to_commit``). The diff's columns are read by position, since a user column may
   collide with the diff's own names. Cost: doltlite finds the commit by walking its log
   from HEAD (about 3 µs a commit; with ``to_commit`` alone it walks the whole log), so
   following and recent epochs take milliseconds, while reading N epochs from far back
   takes about N × distance × 3 µs (3,000 epochs from the start of a 3,000-epoch history:
   28 s). On Dolt sql-server an epoch took about 4 ms wherever it was.
4. Values are rendered from the table's schema *at that commit*: ``before`` and
   ``after`` hold every declared column (key columns included, ``_oplog_meta`` never); a
   column added in that epoch is null on the ``before`` side. Renderings: integers and
   booleans as the stored integers (booleans are 0/1), floats as JSON numbers, decimals,
   text, json and timestamps as their stored canonical text, bytes as base64. A row whose
   values and metadata are unchanged (possible only around a schema change) is no change.
5. Around schema changes that remove or rename (docs/schema.md): a column retyped in a
   commit has its old values rendered by its old type on the ``before`` side; in the
   commit that renames a column, its ``before`` value is null (a diff cannot tell a
   rename), and every row shows as updated; a dropped table lists no rows. doltlite's
   diffs name the columns a table has *now*, so there a column dropped or renamed since
   reads as null in earlier commits (Dolt sql-server reads each commit with its own
   columns); a table dropped since is still read, with the columns it last had.

``op_id``: an op's *stamp* is ``[wall_ms, logical, node, id]``; the strategies that have a
winning op store stamps in the row's ``_oplog_meta`` (``lww``: ``{"v": stamp}``;
``field-lww``: ``cols``/``row``/``del`` stamps), and a delete leaves its stamp in the row's
tombstone (``oplog_tombstones``, diffed in the same commit). ``op_id`` is the id of the
newest stamp (in HLC order) present after the change and absent before it: for ``lww`` the
op that won the row; for ``field-lww`` the newest of the ops that changed it in that epoch.
Strategies whose meta holds no stamp have no winning op, and ``op_id`` is null: ``counter``
(a sum of deltas, meta ``{}``) and ``crdt`` (a merged document, meta holds its state).

The envelope of a change (:meth:`Change.envelope`, canonical JSON with sorted keys, so
two peers' feeds compare byte for byte; docs/reading.md "Change feeds" maps it to
Debezium's)::

    {"after": {...}|null, "before": {...}|null, "commit": "<hash>", "epoch": k,
     "key": [...], "kind": "insert|update|delete", "op_id": "..."|null, "table": "..."}

Targets: a :class:`~materializer.backends.base.Backend` (a connection of our own is opened), a
path of a doltlite database file (opened read-only), or a connection a reader already
has, as for :mod:`materializer.read.epochs` (a ``sqlite3`` connection to a doltlite file, a
pymysql connection in autocommit mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote as url_quote

from materializer.backends.base import META_COLUMN, Backend
from materializer.errors import BackendError, TransientBackendError
from materializer.plan import key_text
from materializer.read.change_records import (
    Change,
    EpochChanges,
    EpochCommit,
    Kind,
    meta_of,
    schema_of,
    side,
    sort_key,
    text,
    winning_op,
)
from materializer.read.epoch_commits import CommitIndex, epoch_commits
from materializer.read.epochs import _Reader, _reading
from oplog.op import TABLE_NAME
from oplog.schema import TableSchema

KINDS: dict[str, Kind] = {"added": "insert", "modified": "update", "removed": "delete"}
DEFAULT_POLL_S = 0.5
MAX_POLL_S = 60.0
INTERNAL_PREFIX = "oplog_"
TOMBSTONES = "oplog_tombstones"
_SCHEMA_RACE_ATTEMPTS = 3
T = TypeVar("T")


class EpochNotCommittedYet(BackendError):
    """The range asked for ends past this peer's newest epoch commit."""


# -- opening a target ------------------------------------------------------------------


@contextlib.contextmanager
def _open(target: Backend | str | os.PathLike[str] | Any) -> Iterator[_Reader]:
    """A reader on ``target``; a path is a doltlite file, opened read-only."""
    if not isinstance(target, (str, os.PathLike)):
        with _reading(target) as reader:
            yield reader
        return
    path = Path(target)
    if not path.is_file():
        raise BackendError(f"no database file {path}")
    import sqlite3

    import doltlite  # noqa: F401  (before sqlite3, as everywhere)

    try:
        conn = sqlite3.connect(f"file:{url_quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as e:
        raise BackendError(f"cannot read {path} as a doltlite database: {e}") from None
    try:
        yield _Reader(conn, "doltlite")
    finally:
        conn.close()


def _check_table(reader: _Reader, table: str) -> None:
    if not TABLE_NAME.match(table) or table.lower().startswith(INTERNAL_PREFIX):
        raise ValueError(f"not a user table name: {table!r}")
    _, rows = reader.query("SELECT 1 FROM oplog_tables WHERE name = ?", (table,))
    if not rows:
        raise BackendError(f"no table {table!r} is declared in this database")


def _newest_epoch(reader: _Reader) -> int | None:
    _, rows = reader.query("SELECT MAX(epoch) FROM oplog_epochs")
    return None if rows[0][0] is None else int(rows[0][0])


# -- the diff of one commit: the engines' one difference ---------------------------------------


def _diff_sides(names: list[str]) -> tuple[list[str], list[str]]:
    """Column names of the two sides of a ``dolt_diff`` result, by position:
    ``to_<c>…, to_commit, to_commit_date, from_<c>…, from_commit, from_commit_date, diff_type``."""
    split = next((i for i, n in enumerate(names) if n.startswith("from_")), -1)
    if (
        split < 2
        or names[split - 2 : split] != ["to_commit", "to_commit_date"]
        or names[-3:] != ["from_commit", "from_commit_date", "diff_type"]
    ):
        raise BackendError(f"unexpected columns of a Dolt diff: {names}")
    return [n[3:] for n in names[: split - 2]], [n[5:] for n in names[split:-3]]


def _diff_rows(reader: _Reader, table: str, commit: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(diff_type, before, after)`` of every row of ``table`` that ``commit`` changed
    against its parent, with the raw values by column name."""
    for _ in range(_SCHEMA_RACE_ATTEMPTS):
        if reader.dialect == "doltlite":
            # Its columns follow the table's current schema, by position (a user column named
            # like the diff's own, e.g. `commit`, is renamed there): read the schema around it.
            now = _columns_now(reader, table)
            # Both ends: with to_commit alone doltlite walks the whole history; with both it
            # stops at the commit, so a diff costs its distance from HEAD (~3 µs a commit).
            names, rows = reader.query(f"SELECT * FROM dolt_diff_{table} WHERE to_commit = ? AND from_commit = ?",
                                       (commit, _parent(reader, commit)))  # fmt: skip
            # None: dropped since (materializer.schema_change); the diff keeps its last columns.
            current = now if now is not None else [name[3:] for name in names[: (len(names) - 5) // 2]]
            after_cols = before_cols = current
            if _columns_now(reader, table) != now or len(names) != 2 * len(current) + 5:
                continue  # a column was added meanwhile: read again
        else:
            names, rows = reader.query("SELECT * FROM dolt_diff(?, ?, ?)", (f"{commit}~1", commit, table))
            after_cols, before_cols = _diff_sides(names)
        width = len(after_cols)
        found = []
        for row in rows:
            after = dict(zip(after_cols, row[:width], strict=True))
            before = dict(zip(before_cols, row[width + 2 : width + 2 + len(before_cols)], strict=True))
            found.append((str(row[-1]), before, after))
        return found
    raise TransientBackendError(f"the schema of {table!r} kept changing while its diff was read; retry")


def _columns_now(reader: _Reader, table: str) -> list[str] | None:
    """The columns ``table`` has now (doltlite), or None if it has been dropped since."""
    try:
        columns, _ = reader.query(f'SELECT * FROM "{table}" LIMIT 0')
    except BackendError:
        if reader.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))[1]:
            raise
        return None
    return columns


def _parent(reader: _Reader, commit: str) -> str:
    """The first parent of ``commit`` (doltlite)."""
    _, rows = reader.query(
        "SELECT parent_hash FROM dolt_commit_ancestors WHERE commit_hash = ? AND parent_index = 0", (commit,)
    )
    if not rows or rows[0][0] is None:
        raise BackendError(f"commit {commit} has no parent")
    return text(rows[0][0])


def _tables_at(reader: _Reader, commit: str) -> dict[str, TableSchema]:
    """The declared tables at ``commit``."""
    if reader.dialect == "doltlite":
        _, rows = reader.query("SELECT name, definition FROM dolt_at_oplog_tables(?)", (commit,))
    else:
        _, rows = reader.query("SELECT name, definition FROM oplog_tables AS OF ?", (commit,))
    return {str(name): schema_of(text(definition)) for name, definition in rows}


def commit_changes(reader: _Reader, commit: EpochCommit, table: str | None = None) -> EpochChanges:
    """What ``commit`` changed in the user tables (only ``table``, if given)."""
    _, summary = reader.query(
        "SELECT to_table_name, data_change, schema_change FROM dolt_diff_summary(?, ?)",
        (f"{commit.commit}~1", commit.commit),
    )
    names = {text(name) for name, data_change, _ in summary if name and data_change}
    names = {n for n in names if not n.lower().startswith(INTERNAL_PREFIX) and (table is None or n == table)}
    reshaped = {text(name) for name, _, schema_change in summary if name and schema_change}
    changes: list[Change] = []
    if names:
        declared = _tables_at(reader, commit.commit)
        # A table whose schema this commit changed (materializer.schema_change): the old
        # values of its before side are rendered by the types the parent declared.
        earlier = _tables_at(reader, _parent(reader, commit.commit)) if names & reshaped else {}
        tombstones: dict[tuple[str, str], Any] | None = None
        for name in sorted(n for n in names if n in declared):
            schema = declared[name]
            stored_as = earlier.get(name)
            for diff_type, raw_before, raw_after in _diff_rows(reader, name, commit.commit):
                kind = KINDS[diff_type]
                before = None if kind == "insert" else side(schema, raw_before, stored_as)
                after = None if kind == "delete" else side(schema, raw_after)
                before_meta = None if kind == "insert" else meta_of(raw_before.get(META_COLUMN))
                if kind == "delete":
                    assert before is not None
                    key = tuple(before[c] for c in schema.primary_key)
                    if tombstones is None:
                        tombstones = _tombstones(reader, commit.commit)
                    after_meta = tombstones.get((name, key_text(key)))
                else:
                    assert after is not None
                    key = tuple(after[c] for c in schema.primary_key)
                    after_meta = meta_of(raw_after.get(META_COLUMN))
                    if kind == "update" and before == after and before_meta == after_meta:
                        continue  # nothing of the row changed (a column added around it)
                changes.append(Change(commit.epoch, commit.commit, name, key, kind, before, after,
                                      winning_op(before_meta, after_meta)))  # fmt: skip
    changes.sort(key=sort_key)
    return EpochChanges(commit.epoch, commit.commit, tuple(changes), commit.first_epoch, commit.end_ms)


def _tombstones(reader: _Reader, commit: str) -> dict[tuple[str, str], Any]:
    """``(table, key text) -> meta`` of the tombstones ``commit`` wrote: a delete's stamp."""
    return {
        (text(after["tbl"]), text(after["pk"])): meta_of(after["meta"])
        for diff_type, _, after in _diff_rows(reader, TOMBSTONES, commit)
        if diff_type != "removed"
    }


# -- ranges and following ----------------------------------------------------------------------


def _walk(reader: _Reader, from_epoch: int, to_epoch: int | None, table: str | None) -> Iterator[EpochChanges]:
    after, index = from_epoch, CommitIndex()
    while True:
        commits = epoch_commits(reader, after, to_epoch, index=index)
        if not commits:
            return
        for commit in commits:
            yield commit_changes(reader, commit, table)
            after = commit.epoch + 1
        index.forget_below(after)


def iter_changes(
    target: Backend | str | os.PathLike[str] | Any,
    from_epoch: int,
    to_epoch: int | None = None,
    *,
    table: str | None = None,
) -> Iterator[EpochChanges]:
    """The change set of every epoch commit holding an epoch of ``from_epoch``..``to_epoch``
    (default: up to the newest commit when the iteration starts), one at a time.

    Raises :class:`EpochNotCommittedYet` if ``to_epoch`` is past the newest commit."""
    if to_epoch is not None and to_epoch < from_epoch:
        raise ValueError(f"the range ends (epoch {to_epoch}) before it starts (epoch {from_epoch})")
    with _open(target) as reader:
        if table is not None:
            _check_table(reader, table)
        newest = _newest_epoch(reader)
        if to_epoch is not None and (newest is None or newest < to_epoch):
            at = "has no epoch commit yet" if newest is None else f"is at epoch {newest}"
            raise EpochNotCommittedYet(f"epoch {to_epoch} is not committed yet: this peer {at}")
        if newest is None:
            return
        yield from _walk(reader, from_epoch, newest if to_epoch is None else to_epoch, table)


def read_changes(
    target: Backend | str | os.PathLike[str] | Any,
    from_epoch: int,
    to_epoch: int | None = None,
    *,
    table: str | None = None,
) -> list[EpochChanges]:
    """:func:`iter_changes` as a list."""
    return list(iter_changes(target, from_epoch, to_epoch, table=table))


async def follow_changes(
    target: Backend | str | os.PathLike[str] | Any,
    *,
    from_epoch: int,
    table: str | None = None,
    poll_s: float = DEFAULT_POLL_S,
) -> AsyncIterator[EpochChanges]:
    """Every epoch commit's change set from ``from_epoch`` on, in order, then each new one
    as the peer commits it (polling every ``poll_s`` seconds, at most :data:`MAX_POLL_S`).

    Runs until cancelled (or closed: use ``contextlib.aclosing`` when breaking out early).
    Resuming from ``last.epoch + 1`` after :class:`EpochChanges` ``last`` gives every change
    exactly once. Queries run in a worker thread of their own, so the event loop never
    waits on the database; a ``sqlite3`` connection passed in is used on the loop's thread
    instead (it belongs to the thread that made it). Locked or lost connections are waited
    out; any other error ends the iteration."""
    if not 0 < poll_s <= MAX_POLL_S:
        raise ValueError(f"poll_s must be more than 0 and at most {MAX_POLL_S:g} seconds, not {poll_s!r}")
    loop = asyncio.get_running_loop()
    inline = type(target).__module__ == "sqlite3"
    executor = None if inline else ThreadPoolExecutor(1, thread_name_prefix="oplog-changes")

    async def run(call: Callable[..., T], *args: Any) -> T:
        return call(*args) if executor is None else await loop.run_in_executor(executor, call, *args)

    # A peer may replace its database file (a snapshot installed to repair it): a path is
    # opened again when the file under it is another one.
    path = Path(target) if isinstance(target, (str, os.PathLike)) else None
    opened = _open(target)
    try:
        reader = await run(opened.__enter__)
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False)
        raise
    try:
        identity = _identity(path)
        if table is not None:
            await run(_check_table, reader, table)
        after, index = from_epoch, CommitIndex()
        while True:
            try:
                commits = await run(partial(epoch_commits, reader, after, index=index))
                for commit in commits:
                    epoch_changes = await run(commit_changes, reader, commit, table)
                    yield epoch_changes
                    after = commit.epoch + 1
                index.forget_below(after)
            except TransientBackendError:
                commits = []
            if commits:
                continue
            await asyncio.sleep(poll_s)
            if path is not None and _identity(path) not in (identity, None):
                fresh = _open(target)
                fresh_reader = await run(fresh.__enter__)  # if it fails, the old one is still open
                await run(opened.__exit__, None, None, None)
                opened, reader, identity = fresh, fresh_reader, _identity(path)
    finally:
        if executor is None:
            opened.__exit__(None, None, None)
        else:
            # A query may still run in the worker (we were cancelled while awaiting it):
            # stop it, and close the connection after it, on the same thread.
            if type(reader.conn).__module__ == "sqlite3":
                reader.conn.interrupt()
            executor.submit(opened.__exit__, None, None, None)
            executor.shutdown(wait=False)


def _identity(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
