"""``oplog verify``: recompute epochs from the stream in a scratch database and compare.

The recomputation is a real materializer run on a fresh doltlite file: it starts from
the newest snapshot *before* the first epoch to verify whose hash a majority of peers
confirmed (or from the shared genesis while the stream still starts at sequence 1),
replays the stream through the last epoch to verify, and compares each recomputed
epoch hash with every peer's report on the hash board. Nothing is written anywhere but
the scratch file, so it is safe against a live deployment.

A database whose peers run on Dolt sql-server has a sql-server genesis, which a
doltlite scratch file cannot install; verifying those is not supported yet and fails
with a message saying so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext

from materializer.agreement.verdict import majority
from materializer.backends.doltlite import DoltliteBackend
from materializer.errors import RetentionGap, StreamDamaged, VerificationError
from materializer.bootstrap.genesis import fetch_genesis
from materializer.agreement.hashes import HashBoard
from materializer.commit.loop import Materializer
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotStore
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

    @property
    def ok(self) -> bool:
        return not any(c.disagreeing for c in self.checks)

    @property
    def disagreeing_peers(self) -> list[str]:
        return sorted({p for c in self.checks for p in c.disagreeing})


async def verify(
    js: JetStreamContext,
    topology: Topology,
    workdir: Path,
    *,
    through: int | None = None,
    since: int | None = None,
    timeout_s: float = 120.0,
    logger: logging.Logger | None = None,
) -> Verification:
    """Recompute epochs ``since..through`` (default: the newest epoch any peer reported,
    alone) into ``workdir`` and compare them with the hash board."""
    log = logger or logging.getLogger("oplog.verify")
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

    backend = DoltliteBackend(workdir / f"{topology.db}-verify.db")
    await asyncio.to_thread(backend.open)
    try:
        base = await _install_base(js, topology, board, peers, backend, since)
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
    checks = [EpochCheck(epoch, h, await board.reports(epoch, peers)) for epoch, h in recomputed]
    return Verification(base, checks)


async def _install_base(
    js: JetStreamContext,
    topology: Topology,
    board: HashBoard,
    peers: list[str],
    backend: DoltliteBackend,
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
    try:
        await asyncio.to_thread(backend.install_snapshot, artifact)
        head = await asyncio.to_thread(backend.head)
    except Exception as e:  # any failure here means the artifact is not a doltlite database
        raise VerificationError(
            f"could not install {description} into a doltlite scratch file ({e}); "
            "verify supports doltlite deployments only"
        ) from None
    if chosen is not None and head != chosen.commit_hash:
        raise VerificationError(f"{description} has HEAD {head}, not the {chosen.commit_hash} it claims")
    return description
