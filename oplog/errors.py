"""Errors raised by the ``oplog`` package.

Hierarchy::

    OplogError
    ├── InvalidOp            an op (or batch) that can never be accepted; fix the input
    │   └── OversizeOp       an op or batch larger than the stream's limits
    ├── SchemaError          a table declaration or value that does not fit its schema
    ├── ClockError           the HLC refused to stamp or to accept a remote clock
    ├── CodecError           bytes that are not a valid oplog message
    ├── PublishError         the stream did not acknowledge a publish (retryable)
    └── NatsConnectError     no NATS server answered in time (retryable)
        └── NatsAuthError    NATS refused the credentials or certificate (not retryable)

Every error says what was wrong and what to do, and ``retryable`` tells whether the
same call can succeed later without changing its input.
"""

from __future__ import annotations


class OplogError(Exception):
    """Base class of every error this project raises."""

    retryable: bool = False


class InvalidOp(OplogError, ValueError):
    """An op that can never be accepted as it is."""


class OversizeOp(InvalidOp):
    """An op or batch larger than the configured limit."""


class SchemaError(OplogError, ValueError):
    """A table declaration, or a value that does not fit its declared column."""


class ClockError(OplogError):
    """The hybrid logical clock refused a timestamp (clock skew beyond the bound)."""


class CodecError(OplogError, ValueError):
    """Bytes that do not decode to a valid oplog message."""


class PublishError(OplogError):
    """JetStream did not acknowledge a publish in time; retry with the same ids."""

    retryable = True


class NatsConnectError(OplogError):
    """No NATS server of the URL could be reached in time; check the URL and the servers."""

    retryable = True


class NatsAuthError(NatsConnectError):
    """NATS refused this client's credentials or TLS certificate, or they could not be read.

    Retrying with the same credentials cannot succeed: fix the user/password, token,
    creds or nkey file, or the TLS files. The message never holds a password or token."""

    retryable = False
