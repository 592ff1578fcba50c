"""Errors raised by the ``materializer`` package.

Hierarchy::

    OplogError (oplog.errors)
    └── MaterializerError
        ├── OpRejected         one op cannot be applied; recorded, never raised past an epoch
        ├── StrategyError      a strategy name that is not registered, or a broken plugin
        ├── BackendError       the database failed (driver errors mapped at the backend edge)
        │   └── TransientBackendError   worth retrying (lost connection, lock timeout)
        ├── StreamGap          the consumer saw a sequence gap it could not repair
        │   ├── RetentionGap   retention removed messages this peer needs: bootstrap from a snapshot
        │   └── StreamDamaged  re-reading does not close the gap: the stream itself is wrong
        ├── GenesisError       the shared genesis could not be created or fetched
        ├── BucketNotReady     a KV or object bucket's stream elected no leader in time
        ├── Divergence         this peer's hash for an epoch differs from other peers'
        └── VerificationError  ``oplog verify`` could not recompute the epochs asked for
"""

from __future__ import annotations

from oplog.errors import OplogError


class MaterializerError(OplogError):
    """Base class of the materializer's errors."""


class OpRejected(MaterializerError):
    """An op that cannot be applied; carries a stable reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StrategyError(MaterializerError, LookupError):
    """A strategy that is not registered, or a plugin that does not load."""


class BackendError(MaterializerError):
    """The database failed; ``retryable`` says whether the same call may succeed."""


class TransientBackendError(BackendError):
    retryable = True


class StreamGap(MaterializerError):
    """Stream sequences were not contiguous and re-reading did not repair it."""


class RetentionGap(StreamGap):
    """The stream no longer holds messages this peer needs (retention purged them).

    Recoverable without the stream: install a snapshot past the gap and resume there."""

    retryable = True


class StreamDamaged(StreamGap):
    """Messages this peer needs are missing although retention did not remove them, and
    re-reading did not bring them back. Not recoverable by this peer: an operator must look."""

    retryable = False


class GenesisError(MaterializerError):
    """The shared genesis database could not be created or fetched."""

    retryable = True


class BucketNotReady(MaterializerError):
    """A just-created KV or object bucket has no stream leader yet (a cluster still electing)."""

    retryable = True


class Divergence(MaterializerError):
    """Peers disagree on an epoch's commit hash: the determinism contract broke."""


class VerificationError(MaterializerError):
    """The epochs to verify cannot be recomputed (not sealed yet, or no longer in the stream)."""
