"""The peer service: one database's materializer, sealer and hash reports, wired.

This is the composition root: it is the only place that connects to NATS, picks a
backend and starts the sealer. Keep it thin; behaviour lives in the packages below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from epoch.sealer import Sealer
from materializer.agreement.divergence import DivergenceWatch, Repairer, verified_snapshot
from materializer.agreement.hashes import HashBoard
from materializer.agreement.verdict import Verdict
from materializer.backends.base import Backend
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotPolicy
from materializer.commit.loop import EpochReport, Materializer
from materializer.faults import FaultDir
from oplog.connection import NatsOptions
from oplog.connection import close as close_nats
from oplog.connection import connect as connect_nats
from oplog.nats_errors import CLUSTER_SETTLING, RetryPolicy
from oplog.stream import ensure_stream, publish_json
from oplog.topology import StreamLimits, Topology
from peer import logs, metrics
from peer.change_publisher import ChangePublisher, feed_source
from peer.claims import DataDirLock, claim_name
from peer.control import read_config
from peer.heartbeat import CatchUp, Pulse, now_ms
from peer.status import DOWN_AFTER_BEATS, DOWN_AFTER_MIN_S

# A peer holds an epoch's ops (100k+ objects) while it plans; the default GC
# thresholds rescan them thousands of times per epoch (measured: decode 2x slower).
# Every process that runs a peer sets them: the CLI, and the benchmark that measures one.
GC_THRESHOLDS = (50_000, 20, 100)


class PeerConfig(BaseModel):
    """Everything one peer needs; built by the CLI from flags and environment."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    db: str
    # How to reach NATS; ``nats_url="nats://..."`` is still accepted and becomes ``nats``.
    nats: NatsOptions = NatsOptions()
    data_dir: Path
    backend: Literal["doltlite", "dolt-server"] = "doltlite"
    dolt_host: str = "127.0.0.1"
    dolt_port: int = 3306
    dolt_user: str = "root"
    dolt_password: SecretStr = SecretStr("")
    seal: bool = True
    seal_tick_s: float = Field(0.05, gt=0)
    replicas: int = Field(1, ge=1, le=5)
    # Divergence: how often to compare hashes with the other peers, how many peers the
    # deployment has (a floor for majorities), and whether a peer in the minority
    # repairs itself from a snapshot or stops.
    check_interval_s: float = Field(1.0, gt=0)
    expected_peers: int = Field(1, ge=1)
    repair: bool = False
    # Snapshots for joining peers and for repair; None: this peer offers none.
    snapshots: SnapshotPolicy | None = None
    # Crash tests only: a directory whose files hold this peer at named commit points.
    fault_dir: Path | None = None
    # After a stop request, how long a peer may finish what it is doing before its
    # current step is abandoned (see run_peer).
    stop_grace_s: float = Field(3.0, gt=0)
    # How often the peer writes its heartbeat for `oplog status` (peer/heartbeat.py).
    heartbeat_s: float = Field(1.0, gt=0)
    # The Prometheus endpoint (peer/metrics.py); None: the metrics file only.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Publish each epoch's change sets to the stream OPLOG-CHANGES_<db> (peer/change_publisher.py).
    publish_changes: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nats_url(cls, data: object) -> object:
        # Callers from before NatsOptions pass a URL (credentials in it are kept).
        if isinstance(data, dict) and "nats_url" in data:
            data = dict(data)
            url = data.pop("nats_url")
            if "nats" in data:
                raise ValueError("give nats (NatsOptions) or nats_url, not both")
            data["nats"] = NatsOptions(url=url)
        return data

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
    return DoltServerBackend(
        host=config.dolt_host,
        port=config.dolt_port,
        user=config.dolt_user,
        password=config.dolt_password.get_secret_value(),
        database=config.db,
    )


async def connect(nats: str | NatsOptions, *, name: str) -> Client:
    """A NATS connection that keeps reconnecting (a cluster node may restart).

    ``nats`` is a URL (tests, tools) or the full :class:`~oplog.connection.NatsOptions`
    (credentials, TLS). A refused login raises :class:`~oplog.errors.NatsAuthError` at once."""
    return await connect_nats(NatsOptions.coerce(nats), name=name)


START_TIMEOUT_S = 60.0
STARTING = RetryPolicy(CLUSTER_SETTLING, deadline_s=START_TIMEOUT_S, first_pause_s=0.5, max_pause_s=0.5)


async def _settled(step: Callable[[], Awaitable[None]], what: str, log: logging.Logger) -> None:
    """Run a start-up ``step``, riding out a JetStream cluster that is still settling.

    Peers starting together on a fresh cluster create its stream and buckets at once;
    until those have leaders known to every node, requests time out or find nothing.
    Each start-up step is idempotent (ensure the stream; open, genesis or snapshot,
    position), so it is simply tried again, up to a deadline.
    """
    def settling(error: BaseException, attempt: int) -> None:
        log.warning("%s: the JetStream cluster is not ready (%s); trying again", what, type(error).__name__)

    await STARTING.run(step, settling)


@contextlib.asynccontextmanager
async def connected(nats: str | NatsOptions, *, name: str = "oplog") -> AsyncIterator[Client]:
    """:func:`connect`, closed on the way out."""
    nc = await connect(nats, name=name)
    try:
        yield nc
    finally:
        await nc.close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def trusted_snapshot(
    js: JetStreamContext, topology: Topology, board: HashBoard, materializer: Materializer, config: PeerConfig
) -> SnapshotInfo | None:
    """The snapshot a joining (or purged-past) peer may install: the newest one whose
    hash a majority of the roster reported. The roster is the one this peer has read,
    else the one the stream's config messages declare, else every peer on the board."""
    roster = materializer.roster()
    if roster is None:
        declared = (await read_config(js, topology)).roster
        roster = declared.peers if declared is not None else None
    return await verified_snapshot(
        materializer.snapshots, board, exclude_peer=config.name, roster=roster, expected_peers=config.expected_peers
    )


async def run_peer(
    config: PeerConfig,
    stop: asyncio.Event,
    *,
    backend: Backend | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Run one peer until ``stop`` is set; every resource is released on the way out.

    Raises :class:`~materializer.errors.Divergence` when this peer's commits disagree
    with a majority of peers and it may not (or cannot) repair itself. ``backend``
    replaces the one ``config`` names (tests use it to inject faults)."""
    log = logger or logging.getLogger(f"oplog.peer.{config.name}")
    logs.set_context(db=config.db, peer=config.name)
    topology = config.topology
    peer_task = asyncio.current_task()
    assert peer_task is not None
    busy: list[Materializer] = []  # the materializer, once there is one to interrupt

    async def watchdog() -> None:
        # A stop is honoured between steps. A peer that is still connecting, waiting for
        # a cluster or inside a long commit when it comes gets stop_grace_s more, then
        # its commit is interrupted (rolled back: the database stays at its previous
        # commit, and a restart resumes there) and the peer is cancelled.
        await stop.wait()
        await asyncio.sleep(config.stop_grace_s)
        log.warning("still busy %.1f s after the stop request: abandoning the current step", config.stop_grace_s)
        for materializer in busy:
            materializer.backend.interrupt()
        peer_task.cancel()

    async with contextlib.AsyncExitStack() as stack:
        lock = stack.enter_context(DataDirLock(config.data_dir))
        stack.push_async_callback(_cancelled, asyncio.create_task(watchdog(), name=f"oplog-stop-{config.name}"))
        nc = await connect_nats(config.nats, name=f"oplog-peer-{config.name}", logger=log)
        stack.push_async_callback(close_nats, nc)
        js = nc.jetstream()
        await _settled(lambda: ensure_stream(js, topology), "stream", log)
        board = HashBoard(js, topology)
        down_after_s = max(DOWN_AFTER_MIN_S, DOWN_AFTER_BEATS * config.heartbeat_s)
        await claim_name(
            board, config.name, down_after_s=down_after_s, clock_ms=now_ms, previous_instance=lock.previous_instance
        )
        metrics_path = config.data_dir / metrics.METRICS_FILE
        config.data_dir.mkdir(parents=True, exist_ok=True)

        peer_metrics = metrics.PeerMetrics(config.db, config.name)
        if config.metrics_port is not None:
            port = peer_metrics.serve(config.metrics_host, config.metrics_port)
            stack.callback(peer_metrics.stop)
            log.info("metrics at http://%s:%d/metrics", config.metrics_host, port)

        catch_up = CatchUp(log)
        store = backend or make_backend(config)
        publisher = ChangePublisher(js, topology, feed_source(store), logger=log) if config.publish_changes else None

        def write_metrics(materializer: Materializer) -> None:
            catch_up.observe(materializer.lag_messages, materializer.last.epoch if materializer.last else None)
            peer_metrics.progress(materializer.lag_messages, watch.stats)
            metrics.write(metrics_path, peer_metrics.text())

        async def on_commit(epoch: int, commit_hash: str) -> None:
            watch.committed(epoch, commit_hash)
            if publisher is not None:
                publisher.committed(epoch)
            try:
                await board.report(config.name, epoch, commit_hash)
            except Exception as e:  # verification must not stop materializing
                log.warning("could not report epoch %d: %s", epoch, e)

        def on_epoch(report: EpochReport) -> None:
            peer_metrics.committed(report, time.time())
            pulse.observe(report)

        # Created before the materializer, whose commits it hears of; reads its roster.
        watch = DivergenceWatch(
            board, config.name, expected_peers=config.expected_peers, roster=lambda: materializer.roster(), logger=log
        )
        materializer = Materializer(
            js,
            topology,
            store,
            peer=config.name,
            on_commit=on_commit,
            snapshots=config.snapshots,
            logger=log,
            faults=FaultDir(config.fault_dir) if config.fault_dir is not None else None,
            choose_snapshot=lambda: trusted_snapshot(js, topology, board, materializer, config),
            on_epoch=on_epoch,
        )
        pulse = Pulse(
            board,
            config.name,
            interval_s=config.heartbeat_s,
            lag=lambda: materializer.lag_messages,
            assigner=lambda: materializer.assigner,
            logger=log,
            instance=lock.instance,
        )
        stack.push_async_callback(materializer.close)
        busy.append(materializer)
        await _settled(materializer.start, "start-up", log)
        if publisher is not None:
            # Runs beside the commit loop; stopped first on the way out, before NATS closes.
            publisher.start(materializer.last.epoch if materializer.last else None)
            stack.push_async_callback(publisher.stop)
        repairer = Repairer(
            materializer.snapshots, board, config.name, repair=config.repair, roster=materializer.roster
        )
        next_check = 0.0

        async def between_steps(m: Materializer) -> None:
            nonlocal next_check
            now = asyncio.get_running_loop().time()
            if now < next_check:
                return
            next_check = now + config.check_interval_s
            try:
                judgement = await watch.check()
            except Exception as e:  # the board is best effort; materializing goes on
                log.warning("could not compare hashes with the other peers: %s", e)
                judgement = None
            if judgement is not None and judgement.verdict is Verdict.MINORITY:
                await watch.flag(judgement)
                write_metrics(m)
                info = await repairer.choose(judgement)  # raises Divergence: stop loudly
                log.warning("repairing: reinstalling the snapshot of epoch %d by %s", info.epoch, info.peer)
                await m.reinstall(info)
                watch.forget()
                watch.stats.repairs += 1
                watch.stats.diverged = False
                await board.clear_divergence(config.name)
            write_metrics(m)

        if config.seal:

            async def publish_seal(epoch: int) -> None:
                await publish_json(
                    js, topology, topology.seal_subject, {"epoch": epoch}, msg_id=topology.seal_msg_id(epoch)
                )

            sealer = Sealer(materializer.seal_state, publish_seal, tick_s=config.seal_tick_s, logger=log)
            sealer.start()
            stack.callback(sealer.stop)
        # display_url: a password or token given in the URL must not reach the log.
        log.info("peer %s serving database %s from %s", config.name, config.db, config.nats.display_url)
        write_metrics(materializer)
        heartbeat = asyncio.create_task(pulse.run(), name=f"oplog-heartbeat-{config.name}")
        stack.push_async_callback(_cancelled, heartbeat)
        await materializer.run(stop, between_steps=between_steps)
