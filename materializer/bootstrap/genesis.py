"""The shared genesis: every peer's history starts from the same first commit.

doltlite (and ``CREATE DATABASE`` on Dolt sql-server) stamp the initial commit with
the current time, so peers that each made their own would never share a hash. The
first peer to win a JetStream KV ``create`` on ``owner`` builds the genesis and
publishes the backend's artifact to the database's Object Store; every other peer
downloads and installs it (contract item 9).

If the owner dies between winning and publishing, the others wait until
``timeout_s`` and fail with a :class:`GenesisError` that says how to clear the claim.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, ObjectNotFoundError

from materializer.backends.base import Backend
from materializer.buckets import key_value, object_store
from materializer.errors import GenesisError
from oplog.topology import Topology

GENESIS_OBJECT = "genesis"
OWNER_KEY = "owner"


async def ensure_genesis(
    js: JetStreamContext,
    topology: Topology,
    backend: Backend,
    peer: str,
    *,
    timeout_s: float = 30.0,
    logger: logging.Logger | None = None,
) -> None:
    """Give ``backend`` the shared genesis unless it already has one."""
    log = logger or logging.getLogger(__name__)
    if await asyncio.to_thread(backend.is_initialized):
        return
    replicas = topology.limits.replicas
    store = await object_store(js, topology.genesis_bucket, replicas=replicas)
    artifact = await _fetch(store)
    if artifact is None:
        claims = await key_value(js, topology.genesis_bucket, replicas=replicas)
        try:
            await claims.create(OWNER_KEY, peer.encode())
        except KeyWrongLastSequenceError:
            log.info("genesis: another peer owns it; waiting for it to be published")
        else:
            log.info("genesis: %s creates it", peer)
            artifact = await asyncio.to_thread(backend.create_genesis)
            await store.put(GENESIS_OBJECT, artifact)
            return
        deadline = time.monotonic() + timeout_s
        while artifact is None:
            if time.monotonic() > deadline:
                owner = (await claims.get(OWNER_KEY)).value or b"?"
                raise GenesisError(
                    f"peer {owner.decode()!r} claimed the genesis of {topology.db!r} but did not publish it "
                    f"within {timeout_s:.0f} s; if it died, delete key {OWNER_KEY!r} in KV bucket "
                    f"{topology.genesis_bucket!r} and restart the peers"
                )
            await asyncio.sleep(0.1)
            artifact = await _fetch(store)
    await asyncio.to_thread(backend.install_snapshot, artifact)
    log.info("genesis: %s installed the shared genesis", peer)


async def fetch_genesis(js: JetStreamContext, topology: Topology) -> bytes | None:
    """The published genesis artifact of ``topology``'s database, or None if there is none yet."""
    return await _fetch(await object_store(js, topology.genesis_bucket, replicas=topology.limits.replicas))


async def _fetch(store: object) -> bytes | None:
    try:
        result = await store.get(GENESIS_OBJECT)  # type: ignore[attr-defined]
    except ObjectNotFoundError:
        return None
    return bytes(result.data) if result.data is not None else None
