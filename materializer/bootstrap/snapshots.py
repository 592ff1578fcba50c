"""Snapshots: how a peer joins (or rejoins) without the stream from the beginning.

Every ``every_epochs`` epochs, each peer that commits such an epoch tries to claim it
(JetStream KV ``create`` on ``claim.<k>``); the winner uploads its database as object
``epoch-<k>`` to the Object Store ``OPLOG_<db>_SNAPSHOTS`` and points ``latest`` at
it. Any peer's database at epoch ``k`` is the same (that is the contract), so it does
not matter which peer wins.

Retention is tied to snapshots: only the newest ``keep`` snapshots are kept, and the
stream is purged below the ``resume_seq`` of the oldest kept one, so the stream does
not grow forever and a new peer can always start from the newest snapshot. A peer
that falls behind the purge point meets a :class:`~materializer.errors.RetentionGap` and re-bootstraps from
the newest snapshot.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ObjectNotFoundError,
)
from pydantic import BaseModel, ConfigDict, Field

from materializer.buckets import key_value, keys_matching, object_store
from oplog.topology import Topology

LATEST = "latest"


class SnapshotPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    every_epochs: int = Field(100, ge=1)
    keep: int = Field(2, ge=1)
    purge_stream: bool = True

    def due(self, first_epoch: int, epoch: int) -> bool:
        """Whether the commit of epochs ``first_epoch..epoch`` gets a snapshot: it closes a
        multiple of ``every_epochs``. (One commit can close several epochs, so testing
        ``epoch`` alone would skip snapshots whenever seals fall past the multiples.)"""
        return epoch // self.every_epochs * self.every_epochs >= first_epoch


class SnapshotInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    epoch: int
    commit_hash: str
    resume_seq: int
    object: str
    peer: str


class SnapshotStore:
    """One database's snapshots in JetStream."""

    def __init__(self, js: JetStreamContext, topology: Topology, *, logger: logging.Logger | None = None) -> None:
        self._js = js
        self.topology = topology
        self._log = logger or logging.getLogger(__name__)
        self._opened = None

    async def _buckets(self):  # type: ignore[no-untyped-def]
        # Opened once: opening looks the buckets up (and waits for their leaders), which a
        # peer would otherwise repeat on every snapshot offer and every bootstrap check.
        if self._opened is None:
            replicas = self.topology.limits.replicas
            kv = await key_value(self._js, self.topology.snapshots_bucket, replicas=replicas)
            store = await object_store(self._js, self.topology.snapshots_bucket, replicas=replicas)
            self._opened = (kv, store)
        return self._opened

    async def latest(self) -> SnapshotInfo | None:
        kv, _ = await self._buckets()
        try:
            entry = await kv.get(LATEST)
        except KeyNotFoundError:
            return None
        return SnapshotInfo.model_validate_json(entry.value or b"")

    async def infos(self) -> list[SnapshotInfo]:
        """Every kept snapshot, oldest first."""
        kv, _ = await self._buckets()
        return await self._infos(kv)

    async def _infos(self, kv) -> list[SnapshotInfo]:  # type: ignore[no-untyped-def]
        infos = []
        for key in await keys_matching(self._js, self.topology.snapshots_bucket, "info.>"):
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # retention deleted it
                continue
            infos.append(SnapshotInfo.model_validate_json(entry.value or b""))
        return sorted(infos, key=lambda i: i.epoch)

    async def fetch(self, info: SnapshotInfo) -> bytes:
        _, store = await self._buckets()
        result = await store.get(info.object)
        return bytes(result.data or b"")

    async def offer(self, peer: str, info: SnapshotInfo, artifact: bytes, policy: SnapshotPolicy) -> bool:
        """Upload ``artifact`` as the snapshot of ``info.epoch`` unless a peer already did."""
        kv, store = await self._buckets()
        try:
            await kv.create(f"claim.{info.epoch}", peer.encode())
        except KeyWrongLastSequenceError:
            return False
        await store.put(info.object, artifact)
        await kv.put(f"info.{info.epoch}", info.model_dump_json().encode())
        current = await self.latest()
        if current is None or current.epoch < info.epoch:
            await kv.put(LATEST, info.model_dump_json().encode())
        self._log.info("snapshot of epoch %d uploaded (%d bytes)", info.epoch, len(artifact))
        await self._retain(kv, store, policy)
        return True

    async def _retain(self, kv, store, policy: SnapshotPolicy) -> None:  # type: ignore[no-untyped-def]
        infos = await self._infos(kv)
        for old in infos[: -policy.keep]:
            try:
                await store.delete(old.object)
            except ObjectNotFoundError:
                pass
            await kv.delete(f"info.{old.epoch}")
        kept = infos[-policy.keep :]
        if policy.purge_stream and len(kept) == policy.keep:
            # Messages below the oldest kept snapshot's resume point are needed by nobody
            # who can still bootstrap; a peer further behind re-bootstraps.
            await self._js._jsm.purge_stream(self.topology.stream, seq=kept[0].resume_seq)
            self._log.info("stream purged below seq %d (snapshot of epoch %d)", kept[0].resume_seq, kept[0].epoch)
