"""Log lines carry db, peer and epoch, in text or JSON; catch-up progress is logged sparingly."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging

import orjson

from oplog.logcontext import in_epoch, set_context
from peer import logs
from peer.heartbeat import CatchUp


def capture(json: bool) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter() if json else logging.Formatter(logs.TEXT_FORMAT))
    logger = logging.getLogger(f"oplog.test.{json}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream, handler


def test_json_lines_carry_db_peer_and_the_epoch_being_committed_across_threads() -> None:
    logger, stream, handler = capture(json=True)

    async def peer() -> None:
        set_context(db="shop", peer="a")
        logger.info("serving")
        with in_epoch(41):
            # The commit runs in a worker thread: the context goes with it.
            await asyncio.to_thread(logger.info, "epoch %d committed", 41)
        logger.warning("between epochs")

    try:
        contextvars.copy_context().run(asyncio.run, peer())
    finally:
        logger.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["msg"], line.get("db"), line.get("peer"), line.get("epoch")) for line in lines] == [
        ("serving", "shop", "a", None),
        ("epoch 41 committed", "shop", "a", 41),
        ("between epochs", "shop", "a", None),
    ]
    assert lines[2]["level"] == "WARNING" and lines[0]["logger"] == "oplog.test.True" and "ts" in lines[0]


def test_text_lines_show_the_same_context() -> None:
    logger, stream, handler = capture(json=False)

    def run() -> None:
        set_context(db="shop", peer="b")
        with in_epoch(7):
            logger.info("hello")

    try:
        contextvars.copy_context().run(run)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("oplog.test.False: db=shop peer=b epoch=7 hello")


def test_catch_up_logs_a_line_every_few_seconds_and_once_when_done() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("oplog.test.catchup")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    now = [0.0]
    catch_up = CatchUp(logger, behind=1000, every_s=5.0, clock_s=lambda: now[0])
    catch_up.observe(10, 1)  # current: nothing to say
    for second, lag in ((1, 50_000), (2, 45_000), (6, 30_000), (8, 20_000), (11, 5_000), (12, 0), (13, 0)):
        now[0] = float(second)
        catch_up.observe(lag, second)
    assert records == [
        "catching up: 50000 messages behind the stream's end, at epoch 1",
        "catching up: 30000 messages behind, at epoch 6, 4000 messages/s, about 8 s to go",
        "catching up: 5000 messages behind, at epoch 11, 5000 messages/s, about 1 s to go",
        "caught up at epoch 12",
    ]
