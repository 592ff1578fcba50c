"""A running peer's heartbeat on the hash board, for ``oplog status``.

Written from its own task on the event loop, not between materializer steps, so a
peer committing one long epoch (catching up, say) still shows as up: the commit runs
in a worker thread and the loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from epoch.assign import Assigner
from materializer.agreement.hashes import HashBoard, Heartbeat
from materializer.commit.loop import EpochReport


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Pulse:
    """Counts what a peer commits and writes its :class:`Heartbeat` every ``interval_s``."""

    def __init__(
        self,
        board: HashBoard,
        peer: str,
        *,
        interval_s: float,
        lag: Callable[[], int],
        assigner: Callable[[], Assigner],
        logger: logging.Logger,
        instance: str = "",
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._board = board
        self._peer = peer
        self._interval_s = interval_s
        self._lag = lag
        self._assigner = assigner
        self.instance = instance
        self._log = logger
        self._clock_ms = clock_ms
        self._started_ms = clock_ms()
        self.epoch = -1
        self.commit_hash = ""
        self.committed_at_ms = 0
        self.applied = 0
        self.rejected = 0
        self._last_beat: tuple[int, int] | None = None  # (at_ms, applied) of the previous heartbeat
        self._failing = False

    def observe(self, report: EpochReport) -> None:
        """Count one epoch commit (the materializer's ``on_epoch``)."""
        self.epoch = report.epoch
        self.commit_hash = report.commit_hash
        self.committed_at_ms = self._clock_ms()
        self.applied += report.applied
        self.rejected += sum(report.rejections.values())

    def beat(self) -> Heartbeat:
        """The heartbeat to write now; the rate is over the time since the previous one."""
        at = self._clock_ms()
        rate = 0.0
        if self._last_beat is not None and at > self._last_beat[0]:
            rate = (self.applied - self._last_beat[1]) * 1000 / (at - self._last_beat[0])
        self._last_beat = (at, self.applied)
        assigner = self._assigner()
        timeline = assigner.timeline
        return Heartbeat(
            at_ms=at,
            interval_ms=round(self._interval_s * 1000),
            epoch=self.epoch,
            commit_hash=self.commit_hash,
            committed_at_ms=self.committed_at_ms,
            applied=self.applied,
            rejected=self.rejected,
            ops_per_s=round(rate, 1),
            lag_messages=self._lag(),
            started_ms=self._started_ms,
            config_seq=assigner.config_seq,
            config_rejected=assigner.config_rejected,
            segment=tuple(timeline.segments[-1]) if timeline is not None else None,
            instance=self.instance,
        )

    async def run(self) -> None:
        """Write a heartbeat every ``interval_s`` until cancelled; a failed write is
        logged once per change of state (NATS down, NATS back), never per try."""
        while True:
            try:
                await self._board.heartbeat(self._peer, self.beat())
                if self._failing:
                    self._log.info("heartbeat: writing to the hash board again")
                    self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the board is best effort; materializing goes on
                if not self._failing:
                    self._log.warning("heartbeat: cannot write to the hash board (%s); will keep trying",
                                      type(e).__name__)  # fmt: skip
                    self._failing = True
            await asyncio.sleep(self._interval_s)


class CatchUp:
    """Progress lines while a peer reads far behind the stream's end (a restart after a
    long stop, a new peer): one every ``every_s`` with the rate and an estimate, and one
    when it has caught up. Quiet while the peer is current."""

    def __init__(
        self, logger: logging.Logger, *, behind: int = 10_000, every_s: float = 5.0, clock_s: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._behind = behind
        self._every_s = every_s
        self._clock_s = clock_s
        self._last: tuple[float, int] | None = None  # (when, lag) of the last progress line

    def observe(self, lag_messages: int, epoch: int | None) -> None:
        now = self._clock_s()
        if self._last is None:
            if lag_messages >= self._behind:
                self._last = (now, lag_messages)
                self._log.info("catching up: %d messages behind the stream's end, at epoch %s", lag_messages, epoch)
            return
        if lag_messages == 0:
            self._log.info("caught up at epoch %s", epoch)
            self._last = None
            return
        when, lag = self._last
        if now - when >= self._every_s:
            rate = max(0.0, (lag - lag_messages) / (now - when))
            eta = f", about {lag_messages / rate:.0f} s to go" if rate > 0 else ""
            self._log.info("catching up: %d messages behind, at epoch %s, %.0f messages/s%s",
                           lag_messages, epoch, rate, eta)  # fmt: skip
            self._last = (now, lag_messages)
