"""Epochs planned and committed straight into a doltlite backend, with no stream or materializer.

Shared by the cherry, growth, soak and storage measurements.
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


def genesis_backend(path: Path, db: str, *, dedup_epochs: int | None = None) -> tuple[DoltliteBackend, DatabaseConfig]:
    """A doltlite backend with the genesis and an epoch-0 commit that creates ``users``
    (``dedup_epochs``: the op-id horizon of its config, if not the default)."""
    backend, cfg, _ = genesis_backend_and_artifact(path, db, dedup_epochs=dedup_epochs)
    return backend, cfg


def genesis_backend_and_artifact(
    path: Path, db: str, *, dedup_epochs: int | None = None
) -> tuple[DoltliteBackend, DatabaseConfig, bytes]:
    """:func:`genesis_backend`, and the genesis artifact (what a checkpoint re-roots on)."""
    backend = DoltliteBackend(path)
    backend.open()
    artifact = backend.create_genesis()
    cfg = demo_config(db)
    if dedup_epochs is not None:
        cfg = cfg.model_copy(update={"dedup_epochs": dedup_epochs})
    sealed = SealedEpoch(
        epoch=0, first_epoch=0, seal_seq=3, resume_seq=4, end_ms=ORIGIN_MS + EPOCH_MS, config=cfg, ops=(),
        rejected=(), controls=(Control(1, "config", cfg.model_dump(mode="json")),
                               Control(2, "schema", orjson.loads(USERS.model_dump_json()))),
    )  # fmt: skip
    backend.commit_epoch(plan_epoch(sealed, backend.tables(), backend))
    return backend, cfg, artifact


def sealed_epoch(cfg: DatabaseConfig, epoch: int, ops: list[Op], seq: int) -> SealedEpoch:
    """``ops`` sealed as epoch ``epoch``, their stream sequences starting at ``seq``."""
    return SealedEpoch(
        epoch=epoch, first_epoch=epoch, seal_seq=seq + len(ops), resume_seq=seq + len(ops) + 1,
        end_ms=ORIGIN_MS + (epoch + 1) * EPOCH_MS, config=cfg,
        ops=tuple(Accepted(seq + i, 0, op, epoch) for i, op in enumerate(ops)), rejected=(), controls=(),
    )  # fmt: skip


def epoch_commit(backend: DoltliteBackend, cfg: DatabaseConfig, epoch: int, ops: list[Op], seq: int) -> float:
    """Seconds to plan and commit ``ops`` as epoch ``epoch``."""
    sealed = sealed_epoch(cfg, epoch, ops, seq)
    t0 = time.perf_counter()
    plan = plan_epoch(sealed, backend.tables(), backend)
    backend.commit_epoch(plan)
    return time.perf_counter() - t0
