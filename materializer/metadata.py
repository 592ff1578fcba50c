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
    h = hashlib.sha256()
    for op_id in op_ids:
        h.update(op_id.encode())
        h.update(b"\n")
    return h.hexdigest()


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
