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
"""

from __future__ import annotations

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
