"""The backend interface: where epoch commits are written.

A backend owns one Dolt database. Contract, for every implementation (checked by
one contract suite in ``tests/test_backend_contract.py`` run against each):

* ``commit_epoch(plan)`` writes everything in the plan and makes exactly ONE Dolt
  commit with the plan's author, date and message (whose first line ``epoch <k>``
  names the epoch; it is found by that message, on every backend, and not tagged). It is
  all-or-nothing: after a crash the database is at the previous commit or at this
  one, never in between (the epochs row is inside the commit, so "applied" and
  "recorded as applied" cannot disagree).
* Two backends holding the same genesis, given the same sequence of plans, produce
  the same commit hashes, whatever their clocks, whenever they run.
* Reads see the last commit; nothing reads uncommitted state.
* Driver errors are mapped to :class:`~materializer.errors.BackendError` at the
  backend's edge (``TransientBackendError`` when retrying can help).
* A key the backend cannot store (an integer beyond 64 bits, a text part longer than
  :meth:`Backend.text_key_limit`) fails :meth:`Backend.check_key` with ``OpRejected
  ("bad_key")``, so planning can reject its op like any other bad key; ``commit_epoch``
  refuses a plan holding one before it writes anything, never half-way.

Internal tables (prefix ``oplog_``, reserved for producers): ``oplog_epochs`` (one
row per commit: progress), ``oplog_rejections``, ``oplog_op_ids`` (the dedup
horizon), ``oplog_tables`` (declared schemas), ``oplog_config`` (the config log),
``oplog_tombstones`` (strategy meta of deleted rows). Every user table has one extra
column, ``_oplog_meta``: the strategy's canonical JSON bookkeeping for that row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from materializer.errors import BackendError, OpRejected
from materializer.faults import FaultPoints, NoFaults
from materializer.metadata import CommitMeta
from materializer.plan import EpochPlan, EpochRow, Key
from materializer.strategy import RowState
from oplog.schema import TableSchema

META_COLUMN = "_oplog_meta"
MAX_KEY_INTEGER = 2**63 - 1  # integer keys are signed 64-bit (SQLite INTEGER, MySQL BIGINT)


class Backend(ABC):
    """One peer's Dolt database."""

    name: str
    # Named points in the commit path where a crash test may hold this peer (materializer.faults).
    faults: FaultPoints = NoFaults()

    @abstractmethod
    def open(self) -> None:
        """Connect; the database may not exist yet (see :meth:`is_initialized`)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; idempotent."""

    def interrupt(self) -> None:
        """Abort a statement another thread is running (a peer stopping in the middle of a
        commit): the commit fails and rolls back, so the database stays at its previous
        commit. Safe to call from any thread, at any time; default: nothing to abort."""
        return None

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- genesis -----------------------------------------------------------------------

    @abstractmethod
    def is_initialized(self) -> bool:
        """Whether this database already holds a genesis."""

    @abstractmethod
    def create_genesis(self) -> bytes:
        """Create the genesis here (internal tables, one commit) and return it as a
        snapshot artifact, from which :meth:`install_snapshot` makes an identical one."""

    @abstractmethod
    def export_snapshot(self) -> bytes:
        """The database at its last commit, as an artifact for :meth:`install_snapshot`.

        Called between commits, from the thread that commits."""

    @abstractmethod
    def install_snapshot(self, artifact: bytes) -> None:
        """Replace this database with the one in ``artifact`` (genesis or a later
        snapshot); its HEAD, history and epochs table come with it."""

    # -- reads ---------------------------------------------------------------------------

    @abstractmethod
    def head(self) -> str:
        """The hash of the current commit."""

    @abstractmethod
    def last_epoch(self) -> EpochRow | None:
        """The progress row of the last epoch commit, or None right after genesis."""

    @abstractmethod
    def sealed_before(self, seq: int) -> int | None:
        """The highest committed epoch whose seal has stream sequence < ``seq``."""

    @abstractmethod
    def config_log(self) -> list[tuple[int, Any]]:
        """Every config message applied so far, as ``(seq, body)``."""

    @abstractmethod
    def tables(self) -> dict[str, TableSchema]:
        """The declared tables at the last commit."""

    @abstractmethod
    def read_rows(self, table: TableSchema, keys: list[Key]) -> dict[Key, RowState]:
        """Stored rows and tombstones of ``keys``; keys never written are left out."""

    @abstractmethod
    def scan_rows(self, table: TableSchema) -> dict[Key, RowState]:
        """Every stored row and tombstone of ``table``, read with ``table``'s columns (a
        schema change that rewrites the table reads it whole: materializer.schema_change)."""

    @abstractmethod
    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        """``id -> digest`` for the ids among ``ids`` inside the dedup horizon."""

    @abstractmethod
    def table_hash(self, table: str) -> str:
        """Dolt's content hash of ``table`` at the last commit (history-independent)."""

    @abstractmethod
    def epoch_hashes(self, since_epoch: int | None = None) -> list[tuple[int, str]]:
        """``(epoch, commit hash)`` of every epoch commit (from ``since_epoch`` on)."""

    def text_key_limit(self, table: TableSchema) -> int | None:
        """The most characters a text primary-key part of ``table`` can hold (None: no limit)."""
        return None

    def check_key(self, table: TableSchema, key: Key) -> None:
        """Raise ``OpRejected("bad_key")`` if ``key`` cannot be stored as a primary key of ``table``.

        Pure: depends on the backend kind and the schema only, so every peer decides alike."""
        problem = _key_problem(table, key, self.text_key_limit(table), self.name)
        if problem is not None:
            raise OpRejected("bad_key", problem)

    def refuse_unstorable_keys(self, plan: EpochPlan) -> None:
        """Raise BackendError if ``plan`` writes a key :meth:`check_key` refuses; call before writing."""
        for writes in plan.writes:
            limit = self.text_key_limit(writes.table)
            keys = [k for k, *_ in writes.upserts] + [k for k, _ in writes.deletes] + list(writes.cleared_tombstones)
            for key in keys:
                problem = _key_problem(writes.table, key, limit, self.name)
                if problem is not None:
                    raise BackendError(
                        f"{self.name}: epoch {plan.epoch.epoch} writes a key of {writes.table.name!r} that cannot be "
                        f"stored ({problem}); nothing was written. Planning must reject such ops (Backend.check_key)"
                    )

    # -- write ---------------------------------------------------------------------------

    @abstractmethod
    def commit_epoch(self, plan: EpochPlan) -> str:
        """Write ``plan`` as one Dolt commit and return its hash (see module contract)."""

    @abstractmethod
    def checkpoint(self, genesis: bytes, meta: CommitMeta, *, before_epoch: int) -> str:
        """Re-root the history: replace it by the genesis (``genesis``, the artifact every
        peer installed) and ONE commit, with ``meta``, holding the current state, and
        return that commit's hash (made before committing ``before_epoch``). The same
        state, genesis and meta give the same hash on every peer, so epochs committed on
        top agree too. All or nothing: after a crash
        the database is the old history or the new one. What came before is gone (time
        travel, diffs and change feeds reach back to the checkpoint)."""


def _key_problem(table: TableSchema, key: Key, limit: int | None, backend: str) -> str | None:
    for name, part in zip(table.primary_key, key, strict=False):
        if isinstance(part, int):
            if not -MAX_KEY_INTEGER - 1 <= part <= MAX_KEY_INTEGER:
                return f"key column {name!r}: {part} is outside the signed 64-bit range"
        elif limit is not None and len(part) > limit:
            return f"key column {name!r}: {len(part)} characters; the {backend} backend stores at most {limit}"
    return None
