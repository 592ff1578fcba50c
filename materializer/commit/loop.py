"""One peer's materializer: stream in, one Dolt commit per sealed epoch out.

Start-up follows the resume rule of :mod:`epoch.assign`: with no epoch committed yet
the stream is read from sequence 1; otherwise from the last commit's ``resume_seq``,
with an assigner rebuilt from what the database holds, so nothing is lost and
nothing is applied twice. Commits run in a worker thread so the event loop (seal
proposals, heartbeats) never waits on the database.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from epoch.assign import NO_EPOCH, Assigner, SealedEpoch
from epoch.config import Timeline, seal_ceiling
from materializer.backends.base import Backend
from materializer.bootstrap.genesis import ensure_genesis, fetch_genesis
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotPolicy, SnapshotStore
from materializer.commit.readahead import ReadAhead
from materializer.commit.reader import StreamReader
from materializer.errors import GenesisError, RetentionGap
from materializer.faults import FaultPoints
from materializer.metadata import checkpoint_due, checkpoint_meta
from materializer.plan import plan_epoch
from materializer.prepare import prepare_op
from oplog.logcontext import in_epoch
from oplog.op import OpRecord
from oplog.schema import TableSchema
from oplog.topology import Topology

OnCommit = Callable[[int, str], Awaitable[None]]
ChooseSnapshot = Callable[[], Awaitable[SnapshotInfo | None]]
BetweenSteps = Callable[["Materializer"], Awaitable[None]]


@dataclass(frozen=True)
class Committed:
    epoch: int
    commit_hash: str
    ops: int
    rejected: int


@dataclass(frozen=True)
class EpochReport:
    """What one epoch commit did, for metrics (``Materializer(on_epoch=...)``)."""

    epoch: int
    commit_hash: str
    applied: int
    duplicates: int
    late: int
    rejections: dict[str, int]  # reason -> count
    seconds: float  # planning plus the Dolt commit
    due_ms: int  # when the epoch could be sealed at the earliest: its end plus grace


OnEpoch = Callable[[EpochReport], None]


class Materializer:
    """Reads one database's stream and commits its sealed epochs into ``backend``."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        backend: Backend,
        *,
        peer: str,
        on_commit: OnCommit | None = None,
        read_batch: int = 2000,
        snapshots: SnapshotPolicy | None = None,
        logger: logging.Logger | None = None,
        faults: FaultPoints | None = None,
        choose_snapshot: ChooseSnapshot | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> None:
        """``choose_snapshot`` picks the snapshot a new (or purged-past) peer installs;
        the peer service passes one that trusts only a snapshot whose hash a majority
        of the roster reported (materializer.agreement.divergence.verified_snapshot). Default:
        the newest in the store."""
        self._js = js
        self.topology = topology
        self.backend = backend
        self.peer = peer
        self._on_commit = on_commit
        self._read_batch = read_batch
        self._snapshot_policy = snapshots
        self._log = logger or logging.getLogger(f"oplog.materializer.{peer}")
        self.snapshots = SnapshotStore(js, topology, logger=self._log)
        self.assigner = Assigner()
        self.last: Committed | None = None
        self._reader: StreamReader | None = None
        self._tables: dict[str, TableSchema] = {}  # as of the last commit: what ops are prepared against
        self._read_ahead = ReadAhead(backend)
        self._genesis: bytes | None = None  # fetched when the first checkpoint is due
        if faults is not None:
            backend.faults = faults
        self._choose_snapshot = choose_snapshot or self.snapshots.latest
        self._on_epoch = on_epoch

    async def start(self) -> None:
        """Open the database (bootstrapping it if new) and position the reader."""
        await asyncio.to_thread(self.backend.open)
        if not await asyncio.to_thread(self.backend.is_initialized):
            latest = await self._choose_snapshot()
            if latest is not None:
                await self._install(latest)
            else:
                await ensure_genesis(self._js, self.topology, self.backend, self.peer, logger=self._log)
        await self._position()

    async def _install(self, info: SnapshotInfo) -> None:
        """Replace the database with the snapshot ``info`` and check it is what it claims."""
        artifact = await self.snapshots.fetch(info)
        await asyncio.to_thread(self.backend.install_snapshot, artifact)
        head = await asyncio.to_thread(self.backend.head)
        if head != info.commit_hash:
            raise GenesisError(
                f"snapshot {info.object} has HEAD {head}, but {info.peer} recorded {info.commit_hash}; "
                "delete it from the snapshot store and restart"
            )
        self._log.info("bootstrapped from the snapshot of epoch %d (%s) by %s", info.epoch, head, info.peer)

    async def _position(self) -> None:
        """Rebuild the assigner from the database and point the reader at resume_seq."""
        if self._reader is not None:
            await self._reader.close()
        row = await asyncio.to_thread(self.backend.last_epoch)
        self._tables = await asyncio.to_thread(self.backend.tables)
        self._read_ahead.clear()
        if row is None:
            start_seq = 1
            self.assigner = Assigner(prepare=self._prepare)
        else:
            start_seq = row.resume_seq
            config_log = await asyncio.to_thread(self.backend.config_log)
            sealed = await asyncio.to_thread(self.backend.sealed_before, start_seq)
            self.assigner = Assigner.resume(
                config_log,
                start_seq,
                NO_EPOCH if sealed is None else sealed,
                committed_through=row.epoch,
                prepare=self._prepare,
            )
            head = await asyncio.to_thread(self.backend.head)
            self.last = Committed(row.epoch, head, row.applied, row.rejected)
            self._log.info("resuming after epoch %d (seal seq %d) from seq %d", row.epoch, row.seal_seq, start_seq)
        self._reader = StreamReader(self._js, self.topology, start_seq, batch=self._read_batch, logger=self._log)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        await asyncio.to_thread(self.backend.close)

    @property
    def lag_messages(self) -> int:
        """Stream messages after the last one this peer read (0 when it is current)."""
        return self._reader.pending if self._reader is not None else 0

    def roster(self) -> tuple[str, ...] | None:
        """The peers an admin declared to count toward agreement, as read so far (None: none)."""
        declared = self.assigner.roster
        return declared.peers if declared is not None else None

    def seal_state(self) -> tuple[Timeline | None, int, int | None]:
        """The timeline, last sealed epoch and seal ceiling as read from the stream (for the sealer)."""
        assigner = self.assigner
        config, timeline, last = assigner.config, assigner.timeline, assigner.last_sealed
        if config is None or timeline is None:
            return timeline, last, None
        return timeline, last, seal_ceiling(config, timeline, None if last == NO_EPOCH else last)

    async def step(self) -> list[Committed]:
        """Read what the stream has (waiting briefly) and commit every epoch it seals."""
        assert self._reader is not None, "call start() first"
        done: list[Committed] = []
        batch = await self._reader.next_batch()
        batch.reverse()
        while batch:
            # Popped, so each payload is freed once fed rather than at the end of the step.
            sealed = self.assigner.feed(batch.pop())
            if sealed is not None:
                done.append(await self._commit(sealed))
                self._read_ahead.clear()
                self._tables = await asyncio.to_thread(self.backend.tables)
        if self._read_ahead.pending:
            # At the stream's head, while the epoch is open: the stored state its plan will
            # read (readahead.py). A peer catching up plans right away and reads then.
            await asyncio.to_thread(self._read_ahead.fill)
        return done

    def _prepare(self, op: OpRecord) -> Any:
        # Per-op planning work done as ops arrive, so the seal leaves less to do; the
        # plan redoes it for an op whose table changed before the seal (materializer.plan).
        if self._reader is not None and self._reader.caught_up:
            self._read_ahead.note(op, self._tables)
        return prepare_op(op, self._tables, self.backend)

    async def run(self, stop: asyncio.Event, *, between_steps: BetweenSteps | None = None) -> None:
        """Step until ``stop`` is set; re-bootstrap from a snapshot if retention
        removed messages this peer still needs.

        ``between_steps`` runs after every step, when no commit is in flight: the one
        safe moment to replace the database (divergence repair)."""
        while not stop.is_set():
            try:
                await self.step()
            except RetentionGap as gap:
                latest = await self._choose_snapshot()
                mine = self.last.epoch if self.last else NO_EPOCH
                if latest is None or latest.epoch <= mine:
                    raise
                self._log.warning("%s; re-bootstrapping from the snapshot of epoch %d", gap, latest.epoch)
                await self.reinstall(latest)
            if between_steps is not None:
                await between_steps(self)

    async def reinstall(self, info: SnapshotInfo) -> None:
        """Replace the database with snapshot ``info`` and resume reading from its epoch.

        Call only between steps (see :meth:`run`)."""
        await self._install(info)
        self.last = None
        await self._position()

    async def _commit(self, sealed: SealedEpoch) -> Committed:
        with in_epoch(sealed.epoch):
            return await self._commit_in_context(sealed)

    async def _commit_in_context(self, sealed: SealedEpoch) -> Committed:
        started = time.perf_counter()
        if checkpoint_due(sealed.config.checkpoint_epochs, sealed.first_epoch, sealed.epoch):
            await self._checkpoint(sealed)
        commit_hash, plan = await asyncio.to_thread(self._plan_and_commit, sealed)
        seconds = time.perf_counter() - started
        committed = Committed(sealed.epoch, commit_hash, plan.epoch.applied, plan.epoch.rejected)
        self.last = committed
        if self._on_epoch is not None:
            timeline = self.assigner.timeline
            self._on_epoch(
                EpochReport(
                    epoch=sealed.epoch,
                    commit_hash=commit_hash,
                    applied=plan.epoch.applied,
                    duplicates=plan.epoch.duplicates,
                    late=plan.epoch.late,
                    rejections=dict(collections.Counter(r.reason for r in plan.rejections)),
                    seconds=seconds,
                    due_ms=timeline.seal_due_ms(sealed.epoch) if timeline is not None else sealed.end_ms,
                )
            )
        self._log.info(
            "epoch %d committed %s: %d ops, %d rejected, %d duplicates",
            sealed.epoch,
            commit_hash,
            plan.epoch.applied,
            plan.epoch.rejected,
            plan.epoch.duplicates,
        )
        if self._on_commit is not None:
            await self._on_commit(sealed.epoch, commit_hash)
        policy = self._snapshot_policy
        if policy is not None and policy.due(sealed.first_epoch, sealed.epoch):
            await self._offer_snapshot(sealed, commit_hash, policy)
        return committed

    async def _checkpoint(self, sealed: SealedEpoch) -> None:
        """Re-root the history on the state before ``sealed`` (Backend.checkpoint): every
        peer does it before the same commit, so the commit on top agrees too."""
        last = await asyncio.to_thread(self.backend.last_epoch)
        if last is None:
            return  # nothing but the genesis yet
        if self._genesis is None:
            self._genesis = await fetch_genesis(self._js, self.topology)
            if self._genesis is None:
                raise GenesisError(f"no genesis of {self.topology.db!r} is published; a checkpoint needs it")
        meta = checkpoint_meta(epoch=last.epoch, end_ms=last.end_ms, author_name=sealed.config.author_name,
                               author_email=sealed.config.author_email)  # fmt: skip
        commit_hash = await asyncio.to_thread(self.backend.checkpoint, self._genesis, meta, before_epoch=sealed.epoch)
        self._log.info("checkpoint: history re-rooted on the state after epoch %d (%s)", last.epoch, commit_hash)

    async def _offer_snapshot(self, sealed: SealedEpoch, commit_hash: str, policy: SnapshotPolicy) -> None:
        info = SnapshotInfo(
            epoch=sealed.epoch,
            commit_hash=commit_hash,
            resume_seq=sealed.resume_seq,
            object=f"epoch-{sealed.epoch}",
            peer=self.peer,
        )
        try:
            artifact = await asyncio.to_thread(self.backend.export_snapshot)
            await self.snapshots.offer(self.peer, info, artifact, policy)
        except Exception as e:  # a failed snapshot must not stop materializing
            self._log.warning("snapshot of epoch %d failed: %s", sealed.epoch, e)

    def _plan_and_commit(self, sealed: SealedEpoch):  # type: ignore[no-untyped-def]
        plan = plan_epoch(sealed, self.backend.tables(), self._read_ahead.reader())
        self.backend.faults.reach("commit.before-write", sealed.epoch)
        return self.backend.commit_epoch(plan), plan
