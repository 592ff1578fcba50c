"""What one peer holds alone: its data directory (a file lock) and its name (a heartbeat).

Two peers on one data directory would write one database from two processes; two
peers under one name would overwrite each other's hash reports and heartbeats, and
count as one toward agreement. Either refuses to start with one line saying who holds
what.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from materializer.agreement.hashes import HashBoard
from oplog.errors import OplogError

LOCK_FILE = ".oplog-peer.lock"


class ClaimError(OplogError):
    """A data directory or a peer name is already in use."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/.oplog-peer.lock`` for the peer's life.

    The kernel drops it when the process dies, however it dies, so a SIGKILLed peer
    never leaves a stale lock behind."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._file: IO[str] | None = None
        self.instance = new_instance()  # this run of the peer, written in its heartbeats
        self.previous_instance = ""  # the last run on this data directory, if it said

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ClaimError(
                f"data directory {self.path.parent} is in use by another peer ({holder}); "
                "stop it, or give this peer its own --data-dir"
            ) from None
        file.seek(0)
        previous = file.read().split()
        if len(previous) == 4 and previous[2] == "instance":
            self.previous_instance = previous[3]
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} instance {self.instance}")
        file.flush()
        self._file = file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def new_instance() -> str:
    """A token naming one run of a peer (written in its heartbeats)."""
    return secrets.token_hex(8)


async def claim_name(
    board: HashBoard,
    peer: str,
    *,
    down_after_s: float,
    clock_ms: Callable[[], int],
    previous_instance: str = "",
    poll_s: float = 0.1,
) -> None:
    """Refuse to run as ``peer`` while another running peer uses that name.

    A heartbeat under the name younger than ``down_after_s`` may be a live peer or this
    peer's own previous run, killed a moment ago. If it is the previous run on this data
    directory (``previous_instance``, from the lock file), the name is free. Otherwise
    watch it for ``down_after_s``: if it is written again, someone else holds the name
    (raise :class:`ClaimError`); if not, its writer is gone and the name is free."""
    beats = await board.heartbeats([peer])
    beat = beats.get(peer)
    if beat is None or clock_ms() - beat.at_ms > down_after_s * 1000:
        return
    if previous_instance and beat.instance == previous_instance:
        return
    deadline = asyncio.get_running_loop().time() + down_after_s
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(poll_s)
        again = (await board.heartbeats([peer])).get(peer)
        if again is not None and again.at_ms != beat.at_ms:
            raise ClaimError(
                f"peer name {peer!r} is taken: a peer running under it (instance {again.instance or '?'}) "
                f"wrote a heartbeat {max(0, clock_ms() - again.at_ms) / 1000:.1f} s ago; stop it, or choose "
                "another --name"
            )
