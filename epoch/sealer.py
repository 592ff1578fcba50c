"""The sealer: every peer proposes ``seal k`` once its clock passes ``end(k) + grace``.

Sealing is leaderless (contract item 4): each peer's sealer publishes with
``Nats-Msg-Id: seal-<db>-<k>``, the stream keeps one copy within its duplicate
window, and the assigner ignores any later copy. After a pause, only the newest
sealable epoch is proposed: one seal closes every epoch up to it.

The sealer runs as an APScheduler interval job; :meth:`Sealer.tick` is the whole
decision, with the clock injected, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from epoch.assign import NO_EPOCH
from epoch.config import Timeline
from oplog.hlc import system_clock_ms

# The timeline in force, the last sealed epoch, and the highest epoch a seal may name
# (epoch.config.seal_ceiling; None: no bound), as this peer has read them from the stream.
SealState = Callable[[], tuple[Timeline | None, int, int | None]]


class Sealer:
    """Proposes seals for one database.

    ``state`` returns the timeline in force, the last sealed epoch and the seal ceiling
    as this peer has read them from the stream; ``publish`` sends ``seal k``. A peer
    that was down longer than ``max_future_epochs`` catches up in steps of it, since
    the assigner rejects seals past the ceiling.
    """

    def __init__(
        self,
        state: SealState,
        publish: Callable[[int], Awaitable[None]],
        *,
        now_ms: Callable[[], int] = system_clock_ms,
        tick_s: float = 0.1,
        logger: logging.Logger | None = None,
    ) -> None:
        self._state = state
        self._publish = publish
        self._now_ms = now_ms
        self.tick_s = tick_s
        self._log = logger or logging.getLogger(__name__)
        self._proposed = NO_EPOCH
        self._failing = False  # logged once per change: NATS down, NATS back
        self._scheduler: AsyncIOScheduler | None = None

    async def tick(self) -> int | None:
        """Propose the newest due seal, if any; returns the epoch proposed."""
        timeline, last_sealed, ceiling = self._state()
        if timeline is None:
            return None
        due = timeline.last_sealable(self._now_ms())
        if ceiling is not None:
            due = min(due, ceiling)
        if due <= max(last_sealed, self._proposed):
            return None
        await self._publish(due)
        self._proposed = due
        return due

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except asyncio.CancelledError:
            return  # the peer is stopping: end this job quietly
        except Exception as e:  # a failed proposal is retried next tick; another peer may seal
            if not self._failing:
                self._log.warning("sealer: proposing a seal failed (%s); will keep trying", type(e).__name__)
                self._failing = True
        else:
            if self._failing:
                self._log.info("sealer: proposing seals again")
                self._failing = False

    def start(self) -> None:
        """Run :meth:`tick` every ``tick_s`` on the running event loop."""
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self._safe_tick, "interval", seconds=self.tick_s, max_instances=1, coalesce=True, misfire_grace_time=None
        )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
