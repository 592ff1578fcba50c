"""A materializer that times its plan and commit work, run once from a stream's start to an epoch.

Shared by the materialize, rss and profile measurements.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

from nats.js import JetStreamContext

from epoch.assign import SealedEpoch
from materializer.backends.base import Backend
from materializer.commit.loop import Committed, Materializer
from materializer.plan import EpochPlan, plan_epoch
from oplog.topology import Topology

from .options import REPO_ROOT

MATERIALIZE_TIMEOUT_S = 900.0  # one whole run: a hung backend fails the measurement instead of the bench hanging
CLOSE_TIMEOUT_S = 60.0


class TimedMaterializer(Materializer):
    """Materializer that adds up plan and commit time (and can commit on the loop thread)."""

    def __init__(self, *args: Any, inline: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan_s = 0.0
        self.commit_s = 0.0
        self._inline = inline
        self.trace: dict[str, Any] | None = None  # set to {} to snapshot tracemalloc after each plan

    def _plan_and_commit(self, sealed: SealedEpoch) -> tuple[str, EpochPlan]:
        t0 = time.perf_counter()
        plan = plan_epoch(sealed, self.backend.tables(), self.backend)
        if self.trace is not None:
            self._snapshot()
        t1 = time.perf_counter()
        commit_hash = self.backend.commit_epoch(plan)
        self.plan_s += t1 - t0
        self.commit_s += time.perf_counter() - t1
        return commit_hash, plan

    def _snapshot(self) -> None:
        """Keep the top allocation sites at the fullest moment seen (just after planning)."""
        assert self.trace is not None
        current, _ = tracemalloc.get_traced_memory()
        if current <= self.trace.get("traced_mb", 0) * 2**20:
            return
        stats = tracemalloc.take_snapshot().statistics("lineno")
        self.trace["traced_mb"] = current / 2**20
        self.trace["top"] = [
            {
                "site": f"{s.traceback[0].filename.split('site-packages/')[-1].replace(str(REPO_ROOT) + '/', '')}"
                f":{s.traceback[0].lineno}",
                "mb": round(s.size / 2**20, 1),
                "blocks": s.count,
            }
            for s in stats[:10]
        ]

    async def _commit(self, sealed: SealedEpoch) -> Committed:
        if not self._inline:
            return await super()._commit(sealed)
        # Same work on the event-loop thread, so a profiler started there sees it.
        commit_hash, plan = self._plan_and_commit(sealed)
        self.last = Committed(sealed.epoch, commit_hash, plan.epoch.applied, plan.epoch.rejected)
        return self.last


async def materialize_once(
    js: JetStreamContext,
    topology: Topology,
    backend: Backend,
    last_epoch: int,
    *,
    inline: bool = False,
    trace: dict[str, Any] | None = None,
    timeout_s: float = MATERIALIZE_TIMEOUT_S,
) -> dict[str, Any]:
    """Materialize ``topology``'s stream into the fresh ``backend`` up to ``last_epoch``; the
    seconds from ``start()`` (genesis included) and how they split."""
    m = TimedMaterializer(js, topology, backend, peer="bench", inline=inline)
    m.trace = trace
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await m.start()
            started = time.perf_counter()
            while m.last is None or m.last.epoch < last_epoch:
                await m.step()
            done = time.perf_counter()
    except TimeoutError as e:
        reached = m.last.epoch if m.last else None
        raise TimeoutError(f"{backend.name}: epoch {last_epoch} not committed within {timeout_s:g} s "
                           f"(reached {reached})") from e  # fmt: skip
    finally:
        await asyncio.wait_for(m.close(), CLOSE_TIMEOUT_S)
    return {
        "seconds": done - t0,
        "start_s": started - t0,
        "plan_s": m.plan_s,
        "commit_s": m.commit_s,
        "read_decode_s": (done - started) - m.plan_s - m.commit_s,
    }
