"""Stream topology: one JetStream stream per database holds every message of it.

Putting ops, seals, config and schema messages in ONE stream is what gives every
peer one total order (contract item 1). Subjects::

    oplog.<db>.ops.<table>   batches of ops (one table per batch message)
    oplog.<db>.seal          seal proposals, Nats-Msg-Id seal-<db>-<k>
    oplog.<db>.config        the database's config and later changes
    oplog.<db>.schema        table declarations

The change feed (``oplog serve --publish-changes``, peer/change_publisher.py) is kept
apart, in stream ``OPLOG-CHANGES_<db>`` on ``oplog-changes.<db>.<table>``: JetStream
refuses two streams whose subjects overlap, so its subjects cannot be under
``oplog.<db>.>``, and its retention is its consumers' business, not the ops'. The ``-``
keeps the name apart from every ``OPLOG_<db>``: a database may be called ``CHANGES_x``.

Limits are stream settings: the duplicate window must exceed epoch + grace + the
longest producer retry, or a late retry could be stored twice (the materializer's
op-id dedup still catches it, but only across its own horizon).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

DB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")

DEFAULT_DUPLICATE_WINDOW_S = 120.0
DEFAULT_MAX_MSG_BYTES = 1024 * 1024
DEFAULT_MAX_OP_BYTES = 64 * 1024


class StreamLimits(BaseModel):
    """Sizes and windows of one database's stream."""

    model_config = ConfigDict(frozen=True)

    duplicate_window_s: float = Field(DEFAULT_DUPLICATE_WINDOW_S, gt=0)
    max_msg_bytes: int = Field(DEFAULT_MAX_MSG_BYTES, gt=0)
    max_op_bytes: int = Field(DEFAULT_MAX_OP_BYTES, gt=0)
    replicas: int = Field(1, ge=1, le=5)


class Topology(BaseModel):
    """Names of one database's stream, subjects and buckets."""

    model_config = ConfigDict(frozen=True)

    db: str
    limits: StreamLimits = StreamLimits()

    @field_validator("db")
    @classmethod
    def _db(cls, value: str) -> str:
        if not DB_NAME.match(value):
            raise ValueError(
                f"database name {value!r} must start with a letter and hold only letters, "
                "digits, '-' and '_' (at most 63 characters)"
            )
        return value

    @property
    def stream(self) -> str:
        return "OPLOG_" + self.db.replace("-", "_")

    @property
    def prefix(self) -> str:
        return f"oplog.{self.db}"

    @property
    def all_subjects(self) -> str:
        return f"{self.prefix}.>"

    def ops_subject(self, table: str) -> str:
        return f"{self.prefix}.ops.{table}"

    @property
    def seal_subject(self) -> str:
        return f"{self.prefix}.seal"

    @property
    def config_subject(self) -> str:
        return f"{self.prefix}.config"

    @property
    def schema_subject(self) -> str:
        return f"{self.prefix}.schema"

    def seal_msg_id(self, epoch: int) -> str:
        return f"seal-{self.db}-{epoch}"

    def message_kind(self, subject: str) -> str:
        """``ops``, ``seal``, ``config``, ``schema``, or ``unknown``."""
        rest = subject[len(self.prefix) + 1 :] if subject.startswith(self.prefix + ".") else ""
        head = rest.split(".", 1)[0]
        return head if head in ("ops", "seal", "config", "schema") else "unknown"

    def subject_table(self, subject: str) -> str | None:
        """The table an ops subject names (everything after ``<prefix>.ops.``), else None.

        Producers may be allowed to publish to some tables' subjects only, so an op is
        bound to its subject: one whose body names another table is rejected."""
        head = f"{self.prefix}.ops"
        if subject == head:
            return ""  # an ops subject naming no table: no op can match it
        return subject[len(head) + 1 :] if subject.startswith(head + ".") else None

    # The change feed's stream (see the module docstring).
    @property
    def changes_stream(self) -> str:
        return "OPLOG-CHANGES_" + self.stream[6:]

    @property
    def changes_prefix(self) -> str:
        return f"oplog-changes.{self.db}"

    @property
    def changes_subjects(self) -> str:
        return f"{self.changes_prefix}.>"

    def changes_subject(self, table: str) -> str:
        return f"{self.changes_prefix}.{table}"

    def changes_msg_id(self, table: str, epoch: int, part: int) -> str:
        """One id per change-set message, the same on every peer (table names hold no ``-``)."""
        return f"changes-{self.db}-{table}-{epoch}-{part}"

    # Buckets beside the stream: peers' (epoch, hash) reports and the shared genesis.
    @property
    def hashes_bucket(self) -> str:
        return f"OPLOG_{self.stream[6:]}_HASHES"

    @property
    def genesis_bucket(self) -> str:
        return f"OPLOG_{self.stream[6:]}_GENESIS"

    @property
    def snapshots_bucket(self) -> str:
        return f"OPLOG_{self.stream[6:]}_SNAPSHOTS"
