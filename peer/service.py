"""The peer service: one database's materializer, sealer and hash reports, wired.

This is the composition root: it is the only place that connects to NATS, picks a
backend and starts the sealer. Keep it thin; behaviour lives in the packages below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Literal

import nats
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field

from epoch.sealer import Sealer
from materializer.backend import Backend
from materializer.hashes import HashBoard
from materializer.materializer import Materializer
from oplog.stream import ensure_stream, publish_json
from oplog.topology import StreamLimits, Topology

CONNECT_TIMEOUT_S = 5.0


class PeerConfig(BaseModel):
    """Everything one peer needs; built by the CLI from flags and environment."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    db: str
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: Path
    backend: Literal["doltlite", "dolt-server"] = "doltlite"
    dolt_host: str = "127.0.0.1"
    dolt_port: int = 3306
    dolt_user: str = "root"
    seal: bool = True
    seal_tick_s: float = Field(0.05, gt=0)
    replicas: int = Field(1, ge=1, le=5)

    @property
    def topology(self) -> Topology:
        return Topology(db=self.db, limits=StreamLimits(replicas=self.replicas))


def make_backend(config: PeerConfig) -> Backend:
    if config.backend == "doltlite":
        from materializer.backends.doltlite import DoltliteBackend

        return DoltliteBackend(config.data_dir / f"{config.db}.db")
    from materializer.backends.dolt_server import DoltServerBackend

    # The server must run with the DOLT_COMMITTER_DATE every peer uses; the backend refuses
    # one that does not (docs/dolt-server.md).
    return DoltServerBackend(host=config.dolt_host, port=config.dolt_port, user=config.dolt_user, database=config.db)


async def connect(url: str, *, name: str) -> Client:
    """A NATS connection that keeps reconnecting (a cluster node may restart)."""
    return await nats.connect(
        servers=url.split(","),
        name=name,
        connect_timeout=CONNECT_TIMEOUT_S,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )


async def run_peer(config: PeerConfig, stop: asyncio.Event, *, logger: logging.Logger | None = None) -> None:
    """Run one peer until ``stop`` is set; every resource is released on the way out."""
    log = logger or logging.getLogger(f"oplog.peer.{config.name}")
    topology = config.topology
    async with contextlib.AsyncExitStack() as stack:
        nc = await connect(config.nats_url, name=f"oplog-peer-{config.name}")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await ensure_stream(js, topology)
        board = HashBoard(js, topology)

        async def on_commit(epoch: int, commit_hash: str) -> None:
            try:
                await board.report(config.name, epoch, commit_hash)
            except Exception as e:  # verification must not stop materializing
                log.warning("could not report epoch %d: %s", epoch, e)

        materializer = Materializer(
            js, topology, make_backend(config), peer=config.name, on_commit=on_commit, logger=log
        )
        stack.push_async_callback(materializer.close)
        await materializer.start()

        if config.seal:

            async def publish_seal(epoch: int) -> None:
                await publish_json(
                    js, topology, topology.seal_subject, {"epoch": epoch}, msg_id=topology.seal_msg_id(epoch)
                )

            sealer = Sealer(materializer.seal_state, publish_seal, tick_s=config.seal_tick_s, logger=log)
            sealer.start()
            stack.callback(sealer.stop)
        log.info("peer %s serving database %s from %s", config.name, config.db, config.nats_url)
        await materializer.run(stop)
