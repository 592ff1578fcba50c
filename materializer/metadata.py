"""Commit metadata: a pure function of the sealed epoch and the stream's config.

Author and email come from the database config, the date is the epoch's end (UTC,
milliseconds), and the message names the epoch, its op counts and a digest of the
applied op ids in apply order. Nothing names the peer or reads its clock
(contract item 8).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from oplog.schema import format_epoch_ms


@dataclass(frozen=True)
class CommitMeta:
    author_name: str
    author_email: str
    date: str  # ISO-8601 UTC with milliseconds
    message: str

    @property
    def author(self) -> str:
        return f"{self.author_name} <{self.author_email}>"


# The first line of every epoch commit's message is this plus the epoch: how a backend
# without a tag per epoch (doltlite) finds an epoch's commit.
EPOCH_MESSAGE_PREFIX = "epoch "


def ops_digest(op_ids: list[str]) -> str:
    """SHA-256 over the applied op ids, in apply order, one per line."""
    # The same bytes as hashing each id and its newline in turn, in one C-level pass.
    text = "\n".join(op_ids) + "\n" if op_ids else ""
    return hashlib.sha256(text.encode()).hexdigest()


def commit_meta(
    *,
    epoch: int,
    first_epoch: int,
    end_ms: int,
    author_name: str,
    author_email: str,
    applied: int,
    rejected: int,
    duplicates: int,
    digest: str,
) -> CommitMeta:
    span = f"{first_epoch}" if first_epoch == epoch else f"{first_epoch}-{epoch}"
    message = (
        f"{EPOCH_MESSAGE_PREFIX}{epoch}\n\n"
        f"epochs: {span}\n"
        f"ops: {applied}\n"
        f"rejected: {rejected}\n"
        f"duplicates: {duplicates}\n"
        f"digest: {digest}\n"
    )
    return CommitMeta(author_name, author_email, format_epoch_ms(end_ms), message)


# The first line of a checkpoint commit (materializer.backends.sql.SqlBackend.checkpoint):
# not an epoch commit, so epoch lists and change feeds pass over it.
CHECKPOINT_MESSAGE_PREFIX = "checkpoint "


def checkpoint_due(every_epochs: int | None, first_epoch: int, epoch: int) -> bool:
    """Whether the history is re-rooted before the commit of epochs ``first_epoch..epoch``:
    that commit closes a multiple of ``every_epochs`` (one commit may close several
    epochs, so testing ``epoch`` alone would skip checkpoints), and epoch 0 never does."""
    if every_epochs is None or epoch <= 0:
        return False
    return epoch // every_epochs * every_epochs >= max(first_epoch, 1)


def checkpoint_meta(*, epoch: int, end_ms: int, author_name: str, author_email: str) -> CommitMeta:
    """The checkpoint commit holding the state after epoch ``epoch``: dated at its end."""
    message = f"{CHECKPOINT_MESSAGE_PREFIX}{epoch}\n\nstate after epoch: {epoch}\n"
    return CommitMeta(author_name, author_email, format_epoch_ms(end_ms), message)
