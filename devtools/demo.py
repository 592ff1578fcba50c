"""The demo database: one ``users`` table, the timeline ops are stamped on, and upserts of it.

``oplog dev``, ``oplog bench`` and the integration tests all write this table; its schema
is declared here only. Ops are raw wire dicts (what a producer publishes), so a stream can
be filled without stamping and validating every op first.
"""

from __future__ import annotations

import random
from typing import Any

from epoch.config import DatabaseConfig
from oplog.schema import SchemaMessage, TableSchema

TABLE = "users"
ORIGIN_MS = 1_700_000_000_000  # epoch 0 of the demo timeline starts here
EPOCH_MS = 1000

_USERS_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "id", "type": "text", "nullable": False},
    {"name": "name", "type": "text"},
    {"name": "score", "type": "integer"},
)


def users_schema(*extra_columns: dict[str, Any]) -> SchemaMessage:
    """The ``users`` table (key ``id``, strategy ``lww``), with ``extra_columns`` after its own."""
    table = {"name": TABLE, "columns": [*_USERS_COLUMNS, *extra_columns], "primary_key": ["id"], "strategy": "lww"}
    return SchemaMessage.model_validate({"tables": [table]})


USERS = users_schema()
USERS_TABLE: TableSchema = USERS.tables[0]
DEMO_SCHEMA = users_schema({"name": "balance", "type": "decimal"})  # what ``oplog dev`` declares


def demo_config(db: str) -> DatabaseConfig:
    """Database ``db`` on the demo timeline, without grace."""
    return DatabaseConfig(db=db, origin_ms=ORIGIN_MS, epoch_ms=EPOCH_MS, grace_ms=0)


def wire_upsert(i: int, epoch: int, rng: random.Random, *, prefix: str = "op") -> dict[str, Any]:
    """A raw upsert of row ``k<i>`` by one of 3 nodes, stamped at a random time inside ``epoch``."""
    node = f"p{i % 3}"
    return {
        "id": f"{prefix}-{epoch}-{i}",
        "hlc": [ORIGIN_MS + epoch * EPOCH_MS + rng.randrange(EPOCH_MS), rng.randrange(4), node],
        "table": TABLE,
        "key": [f"k{i:08d}"],
        "kind": "upsert",
        "data": {"name": f"{node}-{i}", "score": i},
    }
