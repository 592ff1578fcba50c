"""Logging for oplog processes: text or JSON lines, each carrying db, peer and epoch.

The peer service sets db and peer when it starts, and the materializer's commit sets
the epoch (:mod:`oplog.logcontext`), so every record logged on a peer's behalf carries
them, whichever module logs it. ``--log-format json`` prints one JSON
object per line (``ts``, ``level``, ``logger``, ``msg``, ``db``, ``peer``, ``epoch``,
``exc`` when there is a traceback) for log shippers.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from oplog.logcontext import current, set_context

__all__ = ["ContextFilter", "JsonFormatter", "configure", "set_context"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s:%(oplog_context)s %(message)s"


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record (``record.oplog_context`` for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current()
        record.oplog = context
        record.oplog_context = "".join(f" {k}={v}" for k, v in context.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "oplog", {}),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(*, level: int, json: bool) -> None:
    """Set up the root logger for an oplog process (the CLI's entry point calls it)."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
