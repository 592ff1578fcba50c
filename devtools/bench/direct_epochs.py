"""Epochs planned and committed straight into a doltlite backend, with no stream or materializer.

Shared by the cherry and growth measurements.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from devtools.demo import EPOCH_MS, ORIGIN_MS, USERS, demo_config
from epoch.assign import Accepted, Control, SealedEpoch
from epoch.config import DatabaseConfig
from materializer.backends.doltlite import DoltliteBackend
from materializer.plan import plan_epoch
from oplog.op import Op


def genesis_backend(path: Path, db: str) -> tuple[DoltliteBackend, DatabaseConfig]:
    """A doltlite backend with the genesis and an epoch-0 commit that creates ``users``."""
    backend = DoltliteBackend(path)
    backend.open()
    backend.create_genesis()
    cfg = demo_config(db)
    sealed = SealedEpoch(
        epoch=0, first_epoch=0, seal_seq=3, resume_seq=4, end_ms=ORIGIN_MS + EPOCH_MS, config=cfg, ops=(),
        rejected=(), controls=(Control(1, "config", cfg.model_dump(mode="json")),
                               Control(2, "schema", orjson.loads(USERS.model_dump_json()))),
    )  # fmt: skip
    backend.commit_epoch(plan_epoch(sealed, backend.tables(), backend))
    return backend, cfg


def epoch_commit(backend: DoltliteBackend, cfg: DatabaseConfig, epoch: int, ops: list[Op], seq: int) -> float:
    """Seconds to plan and commit ``ops`` as epoch ``epoch``."""
    sealed = SealedEpoch(
        epoch=epoch, first_epoch=epoch, seal_seq=seq + len(ops), resume_seq=seq + len(ops) + 1,
        end_ms=ORIGIN_MS + (epoch + 1) * EPOCH_MS, config=cfg,
        ops=tuple(Accepted(seq + i, 0, op, epoch) for i, op in enumerate(ops)), rejected=(), controls=(),
    )  # fmt: skip
    t0 = time.perf_counter()
    plan = plan_epoch(sealed, backend.tables(), backend)
    backend.commit_epoch(plan)
    return time.perf_counter() - t0
