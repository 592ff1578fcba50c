"""Hybrid logical clock (Kulkarni et al., 2014).

A timestamp is ``(wall_ms, logical, node)``. Ordering is lexicographic, and the
materializer breaks the remaining ties by op id. The clock reads physical time
through an injected function, so tests advance it by hand.

Send rule: ``wall = max(last.wall, now)``; ``logical`` counts up while ``wall`` stands.
Receive rule: ``wall = max(last.wall, remote.wall, now)`` with the logical part
chosen so that the new stamp exceeds both. A remote stamp more than ``max_offset_ms``
ahead of our physical clock is refused rather than adopted: adopting it would drag
every later op of this producer into the future.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from oplog.errors import ClockError

DEFAULT_MAX_OFFSET_MS = 60_000
MAX_LOGICAL = 2**31 - 1


def system_clock_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class HLC(NamedTuple):
    """One hybrid logical timestamp; compares as a tuple."""

    wall_ms: int
    logical: int
    node: str

    def to_wire(self) -> list[int | str]:
        return [self.wall_ms, self.logical, self.node]


class HybridLogicalClock:
    """A thread-safe HLC for one node.

    ``now_ms`` is injected (default: system clock). ``max_offset_ms`` bounds how far
    ahead of the physical clock this clock may be pushed by :meth:`receive`, and how
    far ahead an explicit stamp given to :meth:`observe` may be.
    """

    def __init__(
        self,
        node: str,
        *,
        now_ms: Callable[[], int] = system_clock_ms,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
    ) -> None:
        if not node:
            raise ClockError("an HLC needs a non-empty node name; give each producer its own")
        self.node = node
        self._now_ms = now_ms
        self.max_offset_ms = max_offset_ms
        self._wall = 0
        self._logical = 0
        self._lock = threading.Lock()

    @property
    def last(self) -> HLC:
        return HLC(self._wall, self._logical, self.node)

    def now(self) -> HLC:
        """Stamp a local event (the send rule)."""
        with self._lock:
            physical = self._now_ms()
            if physical > self._wall:
                self._wall, self._logical = physical, 0
            else:
                self._bump_logical()
            return HLC(self._wall, self._logical, self.node)

    def now_many(self, n: int) -> HLC:
        """Stamp ``n`` local events at once, under one lock; the first of their stamps.

        The stamps are ``(wall_ms, first.logical + i, node)`` for ``i`` in ``range(n)``:
        exactly what ``n`` calls of :meth:`now` return while the physical clock stands
        still, and the clock is left where those calls leave it. Raises
        :class:`ClockError` (the clock unchanged) if the logical part would overflow.
        """
        if n < 1:
            raise ValueError(f"now_many stamps at least one event, not {n}")
        with self._lock:
            physical = self._now_ms()
            if physical > self._wall:
                wall, first = physical, 0
            else:
                wall, first = self._wall, self._logical + 1
            if first + n - 1 > MAX_LOGICAL:
                raise ClockError("HLC logical counter overflow; the wall clock is not advancing")
            self._wall, self._logical = wall, first + n - 1
            return HLC(wall, first, self.node)

    def receive(self, remote: HLC | tuple[int, int, str]) -> HLC:
        """Merge a timestamp seen from another node (the receive rule).

        Raises :class:`ClockError` when ``remote`` is more than ``max_offset_ms``
        ahead of the physical clock; the clock is left unchanged.
        """
        r_wall, r_logical = int(remote[0]), int(remote[1])
        with self._lock:
            physical = self._now_ms()
            if r_wall - physical > self.max_offset_ms:
                raise ClockError(
                    f"remote clock {r_wall} is {r_wall - physical} ms ahead of this node's "
                    f"clock (max offset {self.max_offset_ms} ms); check NTP on the remote node"
                )
            wall = max(self._wall, r_wall, physical)
            if wall == self._wall == r_wall:
                logical = max(self._logical, r_logical) + 1
            elif wall == self._wall:
                logical = self._logical + 1
            elif wall == r_wall:
                logical = r_logical + 1
            else:
                logical = 0
            if logical > MAX_LOGICAL:
                raise ClockError("HLC logical counter overflow; the wall clock is not advancing")
            self._wall, self._logical = wall, logical
            return HLC(self._wall, self._logical, self.node)

    def check_stamp(self, stamp: HLC | tuple[int, int, str]) -> None:
        """Refuse an explicit stamp too far ahead of this node's physical clock."""
        ahead = int(stamp[0]) - self._now_ms()
        if ahead > self.max_offset_ms:
            raise ClockError(
                f"timestamp {stamp[0]} is {ahead} ms ahead of this node's clock "
                f"(max offset {self.max_offset_ms} ms); fix the clock or the explicit hlc"
            )

    def _bump_logical(self) -> None:
        if self._logical >= MAX_LOGICAL:
            raise ClockError("HLC logical counter overflow; the wall clock is not advancing")
        self._logical += 1
