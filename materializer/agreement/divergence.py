"""Divergence detection and repair: a peer checks its hashes against the others'.

After each commit the peer remembers ``(epoch, hash)``; :meth:`DivergenceWatch.check`
(called between materializer steps) reads the other peers' reports from the
:class:`~materializer.agreement.hashes.HashBoard` and judges them (:mod:`materializer.agreement.verdict`).

A peer in the minority says so loudly (an ERROR log, a ``d.<peer>`` record on the
board, the ``oplog_peer_diverged`` metric) and then either stops with
:class:`~materializer.errors.Divergence` or, with ``repair`` on, reinstalls the newest
snapshot whose hash a majority of peers reported for its epoch and replays from it.
A repair that does not get the peer back into agreement (the same epoch diverges
again: this peer computes differently from the same ops, e.g. another version) stops
the peer rather than looping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from materializer.agreement.hashes import HashBoard
from materializer.agreement.verdict import Judgement, Verdict, judge, majority
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotStore
from materializer.errors import Divergence


@dataclass
class DivergenceStats:
    """What the watch has seen; exported as metrics by the peer."""

    agreed_epochs: int = 0
    last_agreed_epoch: int = -1
    divergences: int = 0
    splits: int = 0
    repairs: int = 0
    diverged: bool = False
    last: Judgement | None = None
    strangers: tuple[str, ...] = ()  # names on the board that the roster does not hold


@dataclass
class DivergenceWatch:
    """One peer's recent commits and the verdicts on them.

    A Dolt commit hash covers its parents, so peers that agree on epoch ``k`` agree on
    every epoch before it, and a peer that diverged at ``k`` differs on every epoch
    after it. So each :meth:`check` judges one epoch, the newest this peer committed
    that a majority of peers has reached, and that settles every epoch up to it: a few
    KV reads per check, however short the epochs. ``expected_peers`` (the deployment's
    size, if known) is a floor for the number of peers a majority is counted against,
    so a verdict cannot be reached before enough peers have reported at all.

    ``roster`` returns the peers declared by an admin (epoch.config.Roster), as this
    peer has read them from the stream, or None if none was declared. With a roster,
    only its members count, however many names the board holds; other names are
    reported once each and otherwise ignored, so forged reports change no verdict.
    """

    board: HashBoard
    peer: str
    expected_peers: int = 1
    roster: Callable[[], tuple[str, ...] | None] = lambda: None
    remember: int = 4096
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("oplog.divergence"))
    stats: DivergenceStats = field(default_factory=DivergenceStats)
    _mine: dict[int, str] = field(default_factory=dict)
    _judged_through: int = -1

    def committed(self, epoch: int, commit_hash: str) -> None:
        """Remember an epoch this peer committed (and reported) for checking."""
        self._mine[epoch] = commit_hash
        if len(self._mine) > self.remember:  # insertion order is epoch order
            del self._mine[next(iter(self._mine))]

    def forget(self) -> None:
        """Drop what this peer committed (after a repair replaced the database)."""
        self._mine.clear()
        self._judged_through = -1

    async def check(self) -> Judgement | None:
        """Judge the newest judgeable epoch, if there is one not judged yet."""
        if not self._mine:
            return None
        peers = await self.board.peers()
        roster = self.roster()
        if roster is None:
            others = [p for p in peers if p != self.peer]
            known = max(self.expected_peers, len(others) + 1)
            member = True
        else:
            self._note_strangers(sorted(set(peers) - set(roster) - {self.peer}))
            others = [p for p in roster if p != self.peer]
            known = len(roster)
            member = self.peer in roster
        progress = await self.board.progress(others)

        def reached(epoch: int) -> int:
            return sum(1 for v in progress.values() if v >= epoch)

        candidates = [e for e in self._mine if e > self._judged_through and 2 * (member + reached(e)) > known]
        if not candidates:
            return None
        epoch = max(candidates)
        reports = await self.board.reports(epoch, others)
        # Use what this peer committed: its own report may not have landed (best effort).
        reports[self.peer] = self._mine[epoch]
        judgement = judge(epoch, self.peer, reports, known, counted=None if roster is None else frozenset(roster))
        if judgement.verdict is Verdict.PENDING:
            return None
        settled = sum(1 for e in self._mine if self._judged_through < e <= epoch)
        self._judged_through = epoch
        self._record(judgement, settled)
        return judgement

    def _note_strangers(self, strangers: list[str]) -> None:
        new = [name for name in strangers if name not in self.stats.strangers]
        if new:
            self.logger.warning(
                "hash reports from %s, which the roster does not name, are ignored (check who can write "
                "the hash board: docs/security.md)",
                ", ".join(new),
            )
        self.stats.strangers = tuple(strangers)

    def _record(self, judgement: Judgement, epochs: int) -> None:
        stats = self.stats
        stats.last = judgement
        if judgement.verdict is Verdict.AGREED:
            stats.agreed_epochs += epochs
            stats.last_agreed_epoch = max(stats.last_agreed_epoch, judgement.epoch)
            stats.diverged = False
            if judgement.dissenters:
                self.logger.warning(
                    "epoch %d: %s disagree with the majority this peer is in",
                    judgement.epoch,
                    ", ".join(judgement.dissenters),
                )
        elif judgement.verdict is Verdict.MINORITY:
            stats.divergences += 1
            stats.diverged = True
            self.logger.error(judgement.describe(self.peer))
        elif judgement.verdict is Verdict.SPLIT:
            stats.splits += 1
            self.logger.error(judgement.describe(self.peer) + "; no peer can tell which hash is right")

    async def flag(self, judgement: Judgement) -> None:
        await self.board.flag_divergence(
            self.peer,
            {
                "epoch": judgement.epoch,
                "mine": judgement.mine,
                "majority": judgement.majority_hash,
                "majority_peers": list(judgement.majority_peers),
            },
        )


async def verified_snapshot(
    store: SnapshotStore,
    board: HashBoard,
    *,
    exclude_peer: str,
    roster: tuple[str, ...] | None = None,
    expected_peers: int = 1,
) -> SnapshotInfo | None:
    """The newest snapshot whose hash a strict majority of peers reported for its epoch.

    The peers are the ``roster`` if one was declared, else every peer on the board
    (at least ``expected_peers`` of them count). A snapshot uploaded by
    ``exclude_peer`` (the diverged or joining peer itself) is never used.
    """
    peers = list(roster) if roster is not None else await board.peers()
    known = len(peers) if roster is not None else max(len(peers), expected_peers)
    for info in reversed(await store.infos()):
        if info.peer == exclude_peer:
            continue
        won = majority(await board.reports(info.epoch, peers), known)
        if won is not None and won[0] == info.commit_hash:
            return info
    return None


class Repairer:
    """Decides, per divergence, whether to repair from a snapshot or to stop."""

    def __init__(
        self,
        store: SnapshotStore,
        board: HashBoard,
        peer: str,
        *,
        repair: bool,
        roster: Callable[[], tuple[str, ...] | None] = lambda: None,
    ) -> None:
        self._store = store
        self._board = board
        self._peer = peer
        self._repair = repair
        self._roster = roster
        self._repaired_epochs: set[int] = set()

    async def choose(self, judgement: Judgement) -> SnapshotInfo:
        """The snapshot to reinstall for ``judgement``, or raise :class:`Divergence`."""
        reason = judgement.describe(self._peer)
        if not self._repair:
            raise Divergence(f"{reason}; stopping (run with --repair to reinstall a majority snapshot)")
        if judgement.epoch in self._repaired_epochs:
            raise Divergence(
                f"{reason} again after a repair: this peer computes a different commit from the same ops "
                "(check that every peer runs the same oplog, strategy plugins and backend versions); stopping"
            )
        info = await verified_snapshot(self._store, self._board, exclude_peer=self._peer, roster=self._roster())
        if info is None:
            raise Divergence(
                f"{reason}; no snapshot is confirmed by a majority of peers yet, so it cannot repair. "
                "Restart it with an empty data directory once a snapshot exists, or stop it"
            )
        self._repaired_epochs.add(judgement.epoch)
        return info
