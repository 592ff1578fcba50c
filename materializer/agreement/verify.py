"""``oplog verify``: recompute epochs from the stream in a scratch database and compare.

The recomputation is a real materializer run on a fresh scratch database of the
deployment's own kind (:mod:`materializer.agreement.scratch`: a doltlite file, or a
database on a dolt sql-server the operator names; the kind decides only how the scratch
is made and removed, never the steps below). It starts from the newest snapshot
*before* the first epoch to verify whose hash a majority of peers confirmed (or from
the shared genesis while the stream still starts at sequence 1), replays the stream
through the last epoch to verify, and compares each recomputed epoch hash with every
peer's report on the hash board. Nothing is written anywhere but the scratch database,
which is removed afterwards, whatever happened: it is safe against a live deployment.

With ``explain`` (peer name -> where its database is), each peer that differs is
explained at the first verified epoch it differs in: which tables and rows of its
commit differ from the recomputed one (:mod:`materializer.agreement.explain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext

from materializer.agreement.commits import Location
from materializer.agreement.explain import MAX_ROWS, Explanation, explain_commit
from materializer.agreement.hashes import HashBoard
from materializer.agreement.scratch import (
    DoltliteScratch,
    Scratch,
    ScratchDatabase,
    artifact_kind,
    describe_kind,
)
from materializer.agreement.verdict import majority
from materializer.bootstrap.genesis import fetch_genesis
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotStore
from materializer.commit.loop import Materializer
from materializer.errors import BackendError, RetentionGap, StreamDamaged, VerificationError
from oplog.topology import Topology

VERIFY_PEER = "verify"


@dataclass(frozen=True)
class EpochCheck:
    """One recomputed epoch against the peers' reports of it."""

    epoch: int
    recomputed: str
    reports: dict[str, str]

    @property
    def disagreeing(self) -> list[str]:
        return sorted(peer for peer, h in self.reports.items() if h != self.recomputed)


@dataclass(frozen=True)
class Verification:
    base: str  # where the recomputation started: the genesis or a snapshot
    checks: list[EpochCheck] = field(default_factory=list)
    scratch: str = ""  # where it ran (the scratch database, removed since)
    # One per differing peer when asked to explain (``verify(explain=...)``), else None.
    explanations: list[Explanation] | None = None

    @property
    def ok(self) -> bool:
        return not any(c.disagreeing for c in self.checks)

    @property
    def disagreeing_peers(self) -> list[str]:
        return sorted({p for c in self.checks for p in c.disagreeing})


async def verify(
    js: JetStreamContext,
    topology: Topology,
    scratch: Scratch | Path,
    *,
    through: int | None = None,
    since: int | None = None,
    timeout_s: float = 120.0,
    logger: logging.Logger | None = None,
    explain: Mapping[str, Location] | None = None,
    explain_rows: int = MAX_ROWS,
) -> Verification:
    """Recompute epochs ``since..through`` (default: the newest epoch any peer reported,
    alone) in a scratch database and compare them with the hash board.

    ``scratch`` makes that database (a directory: a doltlite file in it). ``explain``
    maps peer names to their databases: each peer that differs is then explained (a peer
    missing from it gets an explanation saying so); at most ``explain_rows`` rows per table."""
    log = logger or logging.getLogger("oplog.verify")
    if isinstance(scratch, Path):
        scratch = DoltliteScratch(scratch)
    board = HashBoard(js, topology)
    peers = await board.peers()
    if through is None:
        progress = await board.progress(peers)
        if not progress:
            raise VerificationError(f"no peer of database {topology.db!r} has reported an epoch yet; nothing to verify")
        through = max(progress.values())
    since = through if since is None else since
    if since > through:
        raise VerificationError(f"--from-epoch {since} is after --epoch {through}")

    database = await asyncio.to_thread(scratch.create, topology.db)
    try:
        base, recomputed = await _recompute(
            js, topology, board, peers, scratch, database, since, through, timeout_s, log
        )
        checks = [EpochCheck(epoch, h, await board.reports(epoch, peers)) for epoch, h in recomputed]
        explanations = None
        if explain is not None:
            explanations = await asyncio.to_thread(_explain, checks, explain, database, explain_rows)
    finally:
        await asyncio.to_thread(scratch.drop, database)
    return Verification(base, checks, database.description, explanations)


async def _recompute(
    js: JetStreamContext,
    topology: Topology,
    board: HashBoard,
    peers: list[str],
    scratch: Scratch,
    database: ScratchDatabase,
    since: int,
    through: int,
    timeout_s: float,
    log: logging.Logger,
) -> tuple[str, list[tuple[int, str]]]:
    """Materialize ``since..through`` into ``database``; return its base and ``(epoch, hash)`` pairs."""
    backend = database.backend
    try:
        base = await _install_base(js, topology, board, peers, scratch, database, since)
        materializer = Materializer(js, topology, backend, peer=VERIFY_PEER, logger=log)
        await materializer.start()
        try:
            deadline = time.monotonic() + timeout_s
            while materializer.last is None or materializer.last.epoch < through:
                if time.monotonic() > deadline:
                    got = materializer.last.epoch if materializer.last else "none"
                    raise VerificationError(
                        f"epoch {through} was not recomputed within {timeout_s:.0f} s (got to {got}): "
                        "it may not be sealed yet; pass an earlier --epoch or a longer --timeout"
                    )
                await materializer.step()
            recomputed = [(e, h) for e, h in await asyncio.to_thread(backend.epoch_hashes, since) if e <= through]
        except RetentionGap as gap:
            raise VerificationError(
                f"the stream no longer holds the ops after {base}: {gap}. Verify later epochs "
                "(--from-epoch after the oldest kept snapshot)"
            ) from None
        except StreamDamaged as damaged:
            raise VerificationError(f"the stream cannot be read without gaps after {base}: {damaged}") from None
        finally:
            await materializer.close()  # closes the backend too
    finally:
        await asyncio.to_thread(backend.close)
    return base, recomputed


def _explain(
    checks: list[EpochCheck], locations: Mapping[str, Location], database: ScratchDatabase, max_rows: int
) -> list[Explanation]:
    """An explanation of each differing peer, at the first checked epoch it differs in."""
    first: dict[str, EpochCheck] = {}
    for check in checks:
        for peer in check.disagreeing:
            first.setdefault(peer, check)
    explanations = []
    for peer, check in sorted(first.items()):
        commit = check.reports[peer]
        location = locations.get(peer)
        if location is None:
            explanations.append(Explanation(
                peer, check.epoch, commit, check.recomputed, "",
                problem=f"no database given for {peer}: pass --peer-db {peer}=LOCATION to compare its tables",
            ))  # fmt: skip
            continue
        explanations.append(
            explain_commit(peer, check.epoch, location, commit, database.location, check.recomputed, max_rows=max_rows)
        )
    return explanations


async def _install_base(
    js: JetStreamContext,
    topology: Topology,
    board: HashBoard,
    peers: list[str],
    scratch: Scratch,
    database: ScratchDatabase,
    since: int,
) -> str:
    """Install the newest confirmed snapshot before ``since``, else the genesis; say which."""
    store = SnapshotStore(js, topology)
    chosen: SnapshotInfo | None = None
    for info in reversed(await store.infos()):
        if info.epoch >= since:
            continue
        won = majority(await board.reports(info.epoch, peers), len(peers))
        if won is not None and won[0] == info.commit_hash:
            chosen = info
            break
    if chosen is not None:
        artifact = await store.fetch(chosen)
        description = f"the snapshot of epoch {chosen.epoch} by {chosen.peer}"
    else:
        stream = await js.stream_info(topology.stream)
        if stream.state.first_seq > 1:
            raise VerificationError(
                f"the stream of {topology.db!r} starts at seq {stream.state.first_seq} and no snapshot "
                f"before epoch {since} is confirmed by a majority; verify a later epoch"
            )
        artifact = await fetch_genesis(js, topology)
        if artifact is None:
            raise VerificationError(f"database {topology.db!r} has no genesis yet; start a peer first")
        description = "the genesis"
    kind = artifact_kind(artifact)
    if kind != scratch.kind:
        raise VerificationError(
            f"the peers of {topology.db!r} run on {describe_kind(kind)} ({description} was made there), "
            f"not on {describe_kind(scratch.kind)}: {scratch.mismatch(kind)}"
        )
    backend = database.backend
    try:
        await asyncio.to_thread(backend.install_snapshot, artifact)
        head = await asyncio.to_thread(backend.head)
    except BackendError as e:
        raise VerificationError(f"could not install {description} into the {database.description}: {e}") from None
    if chosen is not None and head != chosen.commit_hash:
        raise VerificationError(f"{description} has HEAD {head}, not the {chosen.commit_hash} it claims")
    return description
