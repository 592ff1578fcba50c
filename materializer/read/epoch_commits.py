"""Finding epoch commits in a peer's history, by the first line of their messages.

An epoch's commit is the one whose message's first line is ``epoch <k>``
(:mod:`materializer.metadata`); ``dolt_log`` lists commits from the newest down, so
:class:`CommitIndex` keeps what a walk has read. History before the last checkpoint
(``checkpoint_epochs``, docs/operations.md "Bounded storage") is not kept: asking for an
epoch from then raises :class:`HistoryGone`, naming the first epoch still kept.
"""

from __future__ import annotations

import heapq

from materializer.errors import BackendError
from materializer.metadata import CHECKPOINT_MESSAGE_PREFIX, EPOCH_MESSAGE_PREFIX
from materializer.read.change_records import EpochCommit, text
from materializer.read.epochs import _Reader

COMMITS_PER_QUERY = 256  # epoch commits listed per round; each is then diffed and handed over alone
INDEX_SPAN = 65_536  # epochs of commit hashes kept from one read of dolt_log (CommitIndex)
_NO_LIMIT = 2**63 - 1


class HistoryGone(BackendError):
    """The epoch's commit came before the last checkpoint, which re-rooted the history."""

    def __init__(self, epoch: int, checkpoint: int) -> None:
        super().__init__(
            f"epoch {epoch} is older than the last checkpoint (the state after epoch {checkpoint}): its commit "
            f"is no longer kept (checkpoint_epochs); read from epoch {checkpoint + 1} on"
        )
        self.epoch, self.first_kept = epoch, checkpoint + 1


def _last_checkpoint(reader: _Reader) -> int | None:
    """The epoch whose state the history's checkpoint commit holds, if it has one."""
    _, rows = reader.query("SELECT message FROM dolt_log WHERE message LIKE ?", (f"{CHECKPOINT_MESSAGE_PREFIX}%",))
    for (message,) in rows:
        first = text(message).split("\n", 1)[0]
        try:
            return int(first[len(CHECKPOINT_MESSAGE_PREFIX) :])
        except ValueError:
            continue
    return None


def _message_epoch(message: str) -> int | None:
    first = message.split("\n", 1)[0]
    if not first.startswith(EPOCH_MESSAGE_PREFIX):
        return None
    try:
        return int(first[len(EPOCH_MESSAGE_PREFIX) :])
    except ValueError:
        return None


class CommitIndex:
    """``epoch -> commit hash`` of the epoch commits read from ``dolt_log`` so far.

    ``dolt_log`` is read from the newest commit down, so finding an old epoch reads every
    commit after it: what is read on the way is kept (at most :data:`INDEX_SPAN` epochs
    from the oldest one wanted), so walking a long history reads the log once per span,
    not once per batch. :meth:`forget_below` drops what a walk has passed."""

    def __init__(self) -> None:
        self._hashes: dict[int, str] = {}
        self._heap: list[int] = []

    def lookup(self, reader: _Reader, wanted: set[int], depth: int) -> dict[int, str]:
        """The hashes of ``wanted``; ``depth`` is how many epoch commits lie between HEAD
        and the oldest one wanted."""
        if not wanted <= self._hashes.keys():
            low, limit = min(wanted), depth + 8
            while True:
                _, rows = reader.query("SELECT commit_hash, message FROM dolt_log LIMIT ?", (limit,))
                for commit_hash, message in rows:
                    epoch = _message_epoch(text(message))
                    if epoch is not None and low <= epoch < low + INDEX_SPAN and epoch not in self._hashes:
                        self._hashes[epoch] = text(commit_hash)
                        heapq.heappush(self._heap, epoch)
                if wanted <= self._hashes.keys() or len(rows) < limit:
                    break
                limit *= 4  # commits were made since oplog_epochs was read
        return {epoch: self._hashes[epoch] for epoch in wanted if epoch in self._hashes}

    def forget_below(self, epoch: int) -> None:
        while self._heap and self._heap[0] < epoch:
            del self._hashes[heapq.heappop(self._heap)]


def epoch_commits(reader: _Reader, from_epoch: int, to_epoch: int | None = None, *,
                  limit: int = COMMITS_PER_QUERY, index: CommitIndex | None = None) -> list[EpochCommit]:  # fmt: skip
    """The first ``limit`` epoch commits holding an epoch of ``from_epoch``..``to_epoch``
    (a commit holds ``first_epoch``..``epoch``), in epoch order. Pass the same ``index``
    to calls that walk forward (see :class:`CommitIndex`)."""
    _, rows = reader.query(
        "SELECT epoch, first_epoch, end_ms FROM oplog_epochs WHERE epoch >= ? AND first_epoch <= ?"
        " ORDER BY epoch LIMIT ?",
        (from_epoch, _NO_LIMIT if to_epoch is None else to_epoch, min(limit, INDEX_SPAN)),
    )
    if not rows:
        return []
    _, ((depth,),) = reader.query("SELECT COUNT(*) FROM oplog_epochs WHERE epoch >= ?", (rows[0][0],))
    hashes = (index or CommitIndex()).lookup(reader, {int(r[0]) for r in rows}, int(depth))
    commits = []
    for epoch, first_epoch, end_ms in rows:
        if int(epoch) not in hashes:
            checkpoint = _last_checkpoint(reader)
            if checkpoint is not None and int(epoch) <= checkpoint:
                raise HistoryGone(int(epoch), checkpoint)
            raise BackendError(f"epoch {epoch} is in oplog_epochs but no commit's message names it")
        commits.append(EpochCommit(int(epoch), int(first_epoch), int(end_ms), hashes[int(epoch)]))
    return commits
