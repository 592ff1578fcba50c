"""What every log record of an oplog process carries: db, peer, epoch.

A context variable, so it follows asyncio tasks and ``asyncio.to_thread`` (both copy
the context): the peer service sets db and peer once, the materializer sets the epoch
while it commits, and every record logged meanwhile carries them. Formatting is the
entry point's (``peer/logs.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

# Each set() stores a new dict; None until a peer sets one (a shared mutable default
# would be one dict for every context).
LOG_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("oplog_log_context", default=None)


def current() -> dict[str, Any]:
    """The fields every record logged now carries."""
    return LOG_CONTEXT.get() or {}


def set_context(**fields: Any) -> None:
    """Add ``fields`` (db, peer, …) to every record logged from this context on."""
    LOG_CONTEXT.set({**current(), **fields})


@contextlib.contextmanager
def in_epoch(epoch: int) -> Iterator[None]:
    """Records logged inside carry ``epoch``."""
    token = LOG_CONTEXT.set({**current(), "epoch": epoch})
    try:
        yield
    finally:
        LOG_CONTEXT.reset(token)
