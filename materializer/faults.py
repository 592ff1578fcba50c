"""Named fault points: where a test can hold a peer to kill it at an exact moment.

A crash test must not depend on how fast a machine commits ("kill 30 ms after the
seal, and hope the peer is committing then"). Instead the code passes named points,
and a test that armed a point holds the peer there until it has done what it
wanted (usually SIGKILL):

* the peer is started with ``--fault-dir DIR`` (a hidden flag of ``oplog serve``);
* the test creates ``DIR/hold-<point>``;
* the peer, on reaching ``<point>``, writes ``DIR/at-<point>`` (holding the epoch)
  and waits until ``hold-<point>`` is gone (or :data:`HOLD_LIMIT_S` passed);
* the test sees ``at-<point>``, kills the peer, removes the hold, restarts it.

Without a fault dir every point is a no-op: nothing is read, nothing waits. The
points, in commit order:

``commit.before-write``
    the epoch is planned; nothing of it is written yet.
``commit.before-dolt-commit``
    every row of the epoch is written inside the open transaction; the Dolt commit
    and the transaction's COMMIT have not happened.
``checkpoint.before-commit``
    a checkpoint (``Backend.checkpoint``) has copied the whole state into the new
    history; its commit, and the swap that makes it the database's history, have not
    happened. The epoch is the one the checkpoint comes before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

POINTS = ("commit.before-write", "commit.before-dolt-commit", "checkpoint.before-commit")
HOLD_LIMIT_S = 120.0  # a forgotten hold never wedges a peer for good
POLL_S = 0.01


class FaultPoints(Protocol):
    def reach(self, point: str, epoch: int) -> None:
        """Called by the commit path at ``point`` while committing ``epoch``; may block."""


class NoFaults:
    """Production: every point is free."""

    def reach(self, point: str, epoch: int) -> None:
        return None


class FaultDir:
    """Points armed by files in one directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def reach(self, point: str, epoch: int) -> None:
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        hold = self.directory / f"hold-{point}"
        if not hold.exists():
            return
        at = self.directory / f"at-{point}"
        at.write_text(str(epoch))
        deadline = time.monotonic() + HOLD_LIMIT_S
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        at.unlink(missing_ok=True)

    # -- the test's side ---------------------------------------------------------------

    def arm(self, point: str) -> None:
        """Hold the peer at ``point`` next time it gets there."""
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}")
        (self.directory / f"at-{point}").unlink(missing_ok=True)
        (self.directory / f"hold-{point}").touch()

    def held_at(self, point: str) -> int | None:
        """The epoch the peer is held in at ``point``, or None if it is not there (yet)."""
        try:
            return int((self.directory / f"at-{point}").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def release(self, point: str) -> None:
        (self.directory / f"hold-{point}").unlink(missing_ok=True)
        (self.directory / f"at-{point}").unlink(missing_ok=True)
