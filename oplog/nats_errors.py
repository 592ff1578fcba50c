"""NATS and JetStream errors, judged in one place: retrying can help, or it cannot.

Every module that talks to NATS asks here instead of keeping its own tuple of
"transient" errors (there were four, and the producer retried every ``APIError``,
including permanent ones such as a message over the stream's size limit).

* :data:`TRANSIENT`: the request may succeed if sent again unchanged — a timeout, no
  responder (a stream or consumer being placed), a server or JetStream briefly
  unavailable (503, 500: a leader election), a publish nobody acknowledged, a client
  with too many unacknowledged publishes.
* :data:`CLUSTER_SETTLING`: :data:`TRANSIENT`, plus "not found" — on a cluster that is
  starting, a stream just created can still be unknown to the node asked. Only for
  idempotent start-up steps with a deadline (finding or creating a bucket or stream).
* Everything else is permanent: a bad request (400), an object or key that does not
  exist outside start-up, a refused login (``oplog.connection`` maps those).

:class:`RetryPolicy` is how a step is tried again: on which errors, with what pauses,
for how many attempts or how long. The producer's publishes, the opening of buckets
and a peer's start-up steps each run under one, so "transient" and "how patient" are
decided here and by the caller's settings, not by a loop of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import (
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
    TooManyStalledMsgsError,
)

TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ServerError,
    TooManyStalledMsgsError,
    ConnectionClosedError,
)
CLUSTER_SETTLING: tuple[type[BaseException], ...] = (*TRANSIENT, NotFoundError)


def is_transient(error: BaseException) -> bool:
    """Whether sending the same request again may succeed."""
    return isinstance(error, TRANSIENT)


T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Try a step again while it fails with one of ``retry_on``: up to ``attempts`` tries
    and/or until ``deadline_s`` after the first, pausing ``first_pause_s`` and then
    twice as long each time, up to ``max_pause_s``. Any other error, or the last
    failure, is raised as it is: the caller words it for its operator."""

    retry_on: tuple[type[BaseException], ...] = TRANSIENT
    attempts: int | None = None
    deadline_s: float | None = None
    first_pause_s: float = 0.1
    max_pause_s: float = 5.0

    async def run(
        self, step: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException, int], None] | None = None
    ) -> T:
        """``await step()`` until it succeeds or the policy gives up; ``on_retry(error,
        attempt)`` is called before each pause (to log it)."""
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        pause = self.first_pause_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await step()
            except self.retry_on as error:
                out_of_attempts = self.attempts is not None and attempt >= self.attempts
                if out_of_attempts or (deadline is not None and time.monotonic() >= deadline):
                    raise
                if on_retry is not None:
                    on_retry(error, attempt)
            await asyncio.sleep(pause)
            pause = min(2 * pause, self.max_pause_s)
