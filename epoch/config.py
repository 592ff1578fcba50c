"""Epoch configuration and the arithmetic of windows under a config history.

Epoch ``k`` of a segment is the window ``[start + (k - first)·L, start + (k - first + 1)·L)``.
A config change names the epoch from which it applies; its segment starts exactly at
the end of the previous epoch, so boundaries never jump, and the change must lie
beyond every epoch an op could already have been assigned to (see
:func:`check_change`), so no assignment is ever revised.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from epoch.errors import ConfigRejected
from oplog.schema import format_epoch_ms
from oplog.topology import DEFAULT_MAX_OP_BYTES

DEFAULT_EPOCH_MS = 1000
DEFAULT_GRACE_MS = 500
# How far past the last seal an op (or the next seal) may be: the clock skew producers
# may have, how long every sealer may be down while producers publish, and the lead a
# config change needs (docs/operations.md and decisions #34: the trade-off).
DEFAULT_MAX_FUTURE_EPOCHS = 600
DEFAULT_DEDUP_EPOCHS = 3600

# Documented ranges (docs/decisions.md): a config outside them is rejected and recorded
# like any bad message, so a typo or a forged message cannot make epochs that never end
# or commit dates past the year 9999.
MIN_EPOCH_MS, MAX_EPOCH_MS = 10, 86_400_000  # 10 ms to one day
MAX_GRACE_MS = 3_600_000  # one hour
MAX_MAX_FUTURE_EPOCHS = 1_000_000
MAX_DEDUP_EPOCHS = 100_000_000
MIN_CHECKPOINT_EPOCHS, MAX_CHECKPOINT_EPOCHS = 2, 100_000_000
MAX_OP_BYTES = 1024 * 1024  # the stream's own message limit
MAX_ORIGIN_MS = 253_402_300_799_999 // 2  # year ~5000: room for every epoch after it
# How far past the earliest allowed epoch a change may be scheduled.
MAX_CHANGE_LEAD_EPOCHS = 1_000_000


class LatePolicy(StrEnum):
    """What to do with an op whose epoch was already sealed when it reached the stream."""

    CARRY = "carry"  # apply it in the next epoch commit (its HLC still orders it)
    REJECT = "reject"  # record it as rejected


class DatabaseConfig(BaseModel):
    """The config a database is created with: the first ``init`` on its config subject.

    Everything that shapes a commit and is not in the ops lives here, so that every
    peer reads it from the same stream message.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["init"] = "init"
    db: str
    origin_ms: int = Field(ge=0, le=MAX_ORIGIN_MS)
    epoch_ms: int = Field(DEFAULT_EPOCH_MS, ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)
    grace_ms: int = Field(DEFAULT_GRACE_MS, ge=0, le=MAX_GRACE_MS)
    late_policy: LatePolicy = LatePolicy.CARRY
    max_future_epochs: int = Field(DEFAULT_MAX_FUTURE_EPOCHS, ge=1, le=MAX_MAX_FUTURE_EPOCHS)
    dedup_epochs: int = Field(DEFAULT_DEDUP_EPOCHS, ge=1, le=MAX_DEDUP_EPOCHS)
    max_op_bytes: int = Field(DEFAULT_MAX_OP_BYTES, gt=0, le=MAX_OP_BYTES)
    # The commit author is "name <email>": angle brackets or line breaks would break it.
    author_name: str = Field("oplog", min_length=1, max_length=200, pattern=r"^[^<>\x00-\x1f\x7f]+$")
    author_email: str = Field("oplog@localhost", min_length=3, max_length=200, pattern=r"^[^<>\s]+$")
    # Re-root every peer's history on a checkpoint commit before the commit that closes
    # each multiple of this many epochs (docs/operations.md, "Bounded storage"); None: never.
    checkpoint_epochs: int | None = Field(None, ge=MIN_CHECKPOINT_EPOCHS, le=MAX_CHECKPOINT_EPOCHS)


class ConfigChange(BaseModel):
    """A later change of epoch length and grace, from ``effective_epoch`` on."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["change"] = "change"
    effective_epoch: int
    epoch_ms: int = Field(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)
    grace_ms: int = Field(ge=0, le=MAX_GRACE_MS)


PEER_NAME = r"^[A-Za-z0-9_-]{1,64}$"
MAX_ROSTER = 100


class Roster(BaseModel):
    """The peers that count toward agreement, published by an admin on the config subject.

    Kept in the config history like any config message, so every peer reads the same
    roster at the same stream position. Names on the hash board that are not in it are
    reported and never counted toward a majority: a forged report cannot make honest
    peers look like a minority. Without a roster, every peer that ever reported counts.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["roster"] = "roster"
    peers: tuple[Annotated[str, Field(pattern=PEER_NAME)], ...] = Field(min_length=1, max_length=MAX_ROSTER)

    @field_validator("peers")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a roster names each peer once")
        return tuple(sorted(value))


class Segment(NamedTuple):
    """Epochs ``first_epoch, first_epoch + 1, …`` of length ``epoch_ms`` from ``start_ms``."""

    first_epoch: int
    start_ms: int
    epoch_ms: int
    grace_ms: int


class Timeline:
    """Epoch windows under a config history (an immutable value)."""

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        if not segments:
            raise ValueError("a timeline needs at least one segment")
        self.segments = segments

    @classmethod
    def from_config(cls, config: DatabaseConfig) -> Timeline:
        return cls((Segment(0, config.origin_ms, config.epoch_ms, config.grace_ms),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeline) and other.segments == self.segments

    def __repr__(self) -> str:
        return f"Timeline({self.segments!r})"

    def _segment_of_epoch(self, epoch: int) -> Segment:
        for segment in reversed(self.segments):
            if epoch >= segment.first_epoch:
                return segment
        return self.segments[0]  # epochs before the origin extend the first segment

    def epoch_of(self, wall_ms: int) -> int:
        """The epoch whose window holds ``wall_ms`` (negative before the origin)."""
        for segment in reversed(self.segments):
            if wall_ms >= segment.start_ms:
                break
        else:
            segment = self.segments[0]
        return segment.first_epoch + (wall_ms - segment.start_ms) // segment.epoch_ms

    def start_ms(self, epoch: int) -> int:
        segment = self._segment_of_epoch(epoch)
        return segment.start_ms + (epoch - segment.first_epoch) * segment.epoch_ms

    def end_ms(self, epoch: int) -> int:
        """Exclusive end of epoch ``epoch``'s window; also its commit date."""
        return self.start_ms(epoch + 1)

    def seal_due_ms(self, epoch: int) -> int:
        """When a sealer may propose ``seal epoch``: its end plus its grace."""
        return self.end_ms(epoch) + self._segment_of_epoch(epoch).grace_ms

    def last_sealable(self, now_ms: int) -> int:
        """The highest epoch whose seal, and every earlier epoch's, is due at ``now_ms``.

        A change that shortens the grace can make epoch ``k + 1`` due before ``k``;
        since ``seal k + 1`` also closes ``k``, it must wait for ``k``'s grace too.
        """
        epoch = self.epoch_of(now_ms)
        while True:
            while self.seal_due_ms(epoch) > now_ms:
                epoch -= 1
            # Within a segment seal times only grow, so only the last epoch before
            # each later segment can still be open below ``epoch``.
            blocked = [
                s.first_epoch - 1
                for s in self.segments[1:]
                if s.first_epoch <= epoch and self.seal_due_ms(s.first_epoch - 1) > now_ms
            ]
            if not blocked:
                return epoch
            epoch = min(blocked)

    def with_change(self, change: ConfigChange) -> Timeline:
        start = self.end_ms(change.effective_epoch - 1)
        kept = tuple(s for s in self.segments if s.first_epoch < change.effective_epoch)
        return Timeline(kept + (Segment(change.effective_epoch, start, change.epoch_ms, change.grace_ms),))

    def describe(self, epoch: int) -> str:
        return f"epoch {epoch} [{format_epoch_ms(self.start_ms(epoch))}, {format_epoch_ms(self.end_ms(epoch))})"


def check_change(change: ConfigChange, timeline: Timeline, last_sealed: int, config: DatabaseConfig) -> None:
    """Refuse a change that could revise an epoch already open to ops.

    Ops are accepted up to ``last_sealed + max_future_epochs``, and a later change must
    come after the last one.
    """
    earliest = last_sealed + config.max_future_epochs + 2
    if change.effective_epoch < earliest:
        raise ConfigRejected(
            f"config change effective at epoch {change.effective_epoch} is too soon: ops may "
            f"already be assigned up to epoch {earliest - 1}; choose epoch {earliest} or later"
        )
    if change.effective_epoch > earliest + MAX_CHANGE_LEAD_EPOCHS:
        raise ConfigRejected(
            f"config change effective at epoch {change.effective_epoch} is too far ahead: "
            f"schedule it at most {MAX_CHANGE_LEAD_EPOCHS} epochs after epoch {earliest}"
        )
    if change.effective_epoch <= timeline.segments[-1].first_epoch:
        raise ConfigRejected(
            f"config change effective at epoch {change.effective_epoch} does not come after the "
            f"previous change (epoch {timeline.segments[-1].first_epoch})"
        )


def seal_ceiling(config: DatabaseConfig, timeline: Timeline, last_sealed: int | None) -> int:
    """The highest epoch a seal may name now: ``max_future_epochs`` past the last
    sealed epoch, or past the origin's epoch before the first seal.

    Seals beyond it are rejected (epoch.assign), and sealers never propose one
    (epoch.sealer): after a long pause they catch up in steps of ``max_future_epochs``.
    So a forged seal far ahead can neither close epochs that are still open nor stall
    sealing until the clock reaches it.
    """
    base = timeline.epoch_of(config.origin_ms) if last_sealed is None else last_sealed
    return base + config.max_future_epochs
