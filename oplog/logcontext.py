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

LOG_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("oplog_log_context", default={})


def set_context(**fields: Any) -> None:
    """Add ``fields`` (db, peer, …) to every record logged from this context on."""
    LOG_CONTEXT.set({**LOG_CONTEXT.get(), **fields})


@contextlib.contextmanager
def in_epoch(epoch: int) -> Iterator[None]:
    """Records logged inside carry ``epoch``."""
    token = LOG_CONTEXT.set({**LOG_CONTEXT.get(), "epoch": epoch})
    try:
        yield
    finally:
        LOG_CONTEXT.reset(token)
