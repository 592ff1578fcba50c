"""Chaos scenarios that kill or stop processes: peers killed inside and around their
commits, the stream leader's NATS node killed, a peer paused for many epochs.

Run by :mod:`devtools.chaos`; each returns an :class:`~devtools.chaos_rows.Outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)
import orjson
from nats.aio.client import Client

from devtools.chaos_harness import ChaosError, Deployment, Load, db_config, last_committed_epoch, loading, until
from devtools.chaos_rows import Expectation, Outcome
from devtools.natsd import NatsCluster, NatsServer
from materializer.faults import FaultDir
from oplog.producer import ProducerConfig
from oplog.topology import Topology


class SealWatch:
    """Sees every seal proposal the moment a sealer publishes it (a core NATS subscription
    on the seal subject), so a kill can be timed against the commit that follows."""

    def __init__(self) -> None:
        self.epoch = -(2**62)
        self.changed = asyncio.Event()

    async def start(self, nc: Client, topology: Topology) -> None:
        async def seen(msg: Any) -> None:
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                epoch = int(orjson.loads(msg.data)["epoch"])
                if epoch > self.epoch:
                    self.epoch = epoch
                    self.changed.set()

        await nc.subscribe(topology.seal_subject, cb=seen)

    async def next(self, timeout: float) -> int:
        """The epoch of the next new seal, as soon as it is published."""
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            raise ChaosError(f"no new seal within {timeout:.0f} s (last {self.epoch})") from None
        return self.epoch


HELD_POINTS = ("commit.before-dolt-commit", "commit.before-write")


async def held(faults: FaultDir, point: str, timeout: float) -> int:
    """Wait until the peer owning ``faults`` is held at ``point``; the epoch it holds."""
    deadline = time.monotonic() + timeout
    while (epoch := faults.held_at(point)) is None:
        if time.monotonic() > deadline:
            raise ChaosError(f"no peer reached {point} within {timeout:.0f} s")
        await asyncio.sleep(0.01)
    return epoch


async def peer_kills(root: Path, rng: random.Random, facts: dict[str, Any]) -> Outcome:
    """SIGKILL peers while they commit an epoch of ~2,000 ops and at random moments
    after a seal, restart them, and require exact results.

    Every other kill is aimed, not timed: the victim is held at a named point of its
    commit (materializer.faults) and killed there, so a kill inside a commit happens on
    every run, however fast the machine commits. The rest fall anywhere in the epoch."""
    kills = 10
    async with Deployment(root, db_config(epoch_ms=1000, grace_ms=200)) as dep:
        peers = [dep.add_peer(f"p{i}", ["--fault-dir", str(root / f"p{i}" / "faults")]) for i in (1, 2, 3)]
        faults = {p.name: FaultDir(root / p.name / "faults") for p in peers}
        await dep.start_peers(peers)
        seals = SealWatch()
        await seals.start(dep.nc, dep.topology)
        load = Load(dep.js, dep.topology, "kill")
        load.add("w1")
        load.add("w2")
        records: list[dict[str, Any]] = []
        facts["kills"] = records
        try:
            async with loading(load, {"w1": 1000.0, "w2": 1000.0}):
                for i in range(kills):
                    sealed = await seals.next(10.0)
                    progress = await dep.progress()
                    warm = [p for p in peers if progress.get(p.name, -(2**62)) >= sealed - 1]
                    victim = rng.choice(warm or peers)
                    point = HELD_POINTS[(i // 2) % 2] if i % 2 == 0 else None
                    if point is not None:
                        faults[victim.name].arm(point)
                        holding = await held(faults[victim.name], point, 20.0)
                        delay = None
                    else:
                        delay = rng.uniform(0.0, 0.9)
                        await asyncio.sleep(delay)
                    dep.check_alive()
                    latest = seals.epoch
                    victim.kill()
                    if point is not None:
                        faults[victim.name].release(point)
                    committed = await asyncio.to_thread(last_committed_epoch, victim.db_path)
                    records.append(
                        {
                            "peer": victim.name,
                            "point": point,
                            "ms_after_seal": None if delay is None else round(delay * 1000),
                            "sealed": latest,
                            "committed": committed,
                            # A seal it had not committed yet: it was reading, planning or committing.
                            "mid_epoch": committed is None or committed < latest,
                            # Held inside the commit of an epoch, which must not have landed.
                            "in_commit": point is not None and (committed is None or committed < holding),
                        }
                    )
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    victim.start()
            await load.drain()
            await dep.settle()
        finally:
            await load.abort()
    facts["mid_epoch_kills"] = sum(1 for r in records if r["mid_epoch"])
    facts["mid_commit_kills"] = sum(1 for r in records if r["in_commit"])
    facts["restarts_resumed"] = sum(p.log_path.read_text(errors="replace").count("resuming after epoch") for p in peers)
    failures = []
    aimed = sum(1 for r in records if r["point"] is not None)
    if facts["mid_commit_kills"] != aimed:
        failures.append(f"{aimed - facts['mid_commit_kills']} of {aimed} aimed kills found their epoch committed")
    return Outcome(load.acked, dep.ledgers(), Expectation(min_epochs=5), facts, failures)


ACKS_WHILE_DOWN = 50  # acks the two surviving nodes must give before the victim returns
FAILOVER_LIMIT_S = 45.0  # inside the load's re-send budget, so no op is given up meanwhile


def acked_since(load: Load, moment: float) -> int:
    return sum(1 for t in load.ack_times if t > moment)


async def nats_node_kill(root: Path, rng: random.Random, facts: dict[str, Any]) -> Outcome:
    """SIGKILL the stream leader of an R3 stream on a 3-node cluster while producers
    publish; publishing must go on through the other two; then restart the node."""
    async with Deployment(root, db_config(epoch_ms=500, grace_ms=200), cluster=True, supervise=True) as dep:
        assert isinstance(dep.nats, NatsCluster)
        cluster = dep.nats
        peers = [dep.add_peer(f"p{i}") for i in (1, 2, 3)]
        await dep.start_peers(peers)
        load = Load(dep.js, dep.topology, "node")
        patient = ProducerConfig(ack_timeout_s=2.0, retries=4, retry_backoff_s=0.2)
        load.add("w1", config=patient)
        load.add("w2", config=patient)
        try:
            async with loading(load, {"w1": 150.0, "w2": 150.0}):
                await asyncio.sleep(3.0)
                info = await dep.js.stream_info(dep.topology.stream)
                leader = info.cluster.leader if info.cluster else None
                victim = cluster.index_of(leader) if leader else rng.randrange(3)
                facts["killed_node"] = cluster.servers[victim].server_name
                facts["was_stream_leader"] = leader is not None
                acked_before = len(load.receipts)
                killed_at = time.monotonic()
                cluster.kill(victim)

                # Kept down until publishing has visibly gone on without it, not for a
                # fixed time: a new stream leader takes one raft election (4-9 s by
                # default, longer on a loaded machine), so a timer would race it.
                async def published_without_it() -> bool:
                    return acked_since(load, killed_at) >= ACKS_WHILE_DOWN

                with contextlib.suppress(ChaosError):  # reported below, with what was acked
                    await until(published_without_it, f"{ACKS_WHILE_DOWN} acks with the node down", FAILOVER_LIMIT_S)
                facts["acked_while_node_down"] = acked_since(load, killed_at)
                facts["acked_before_kill"] = acked_before
                await dep.blocking(cluster.restart, victim)
                facts["node_down_s"] = round(time.monotonic() - killed_at, 1)
                await asyncio.sleep(2.0)
            await load.drain()
            await dep.settle()
            # The restarted node's own replica catches up with the stream.
            last_seq = (await dep.js.stream_info(dep.topology.stream)).state.last_seq
            restarted = cluster.servers[victim]
            await until(
                lambda: _replica_has(restarted, dep.topology.stream, last_seq),
                f"{restarted.server_name} to hold the stream up to seq {last_seq}",
                30.0,
            )
            facts["stream_last_seq"] = last_seq
        finally:
            await load.abort()
    # A peer that exits when a node dies is restarted (as systemd or compose would) so the
    # ledger can still be checked; each exit is listed, since a peer should ride it out.
    facts["peer_exits"] = dep.crashes
    failures = []
    if facts["acked_while_node_down"] < ACKS_WHILE_DOWN:
        failures.append(
            f"only {facts['acked_while_node_down']} op(s) acknowledged in the {FAILOVER_LIMIT_S:.0f} s "
            "the node was down: publishing did not continue"
        )
    return Outcome(load.acked, dep.ledgers(), Expectation(min_epochs=5), facts, failures)


async def _replica_has(server: NatsServer, stream: str, last_seq: int) -> bool:
    jsz = await asyncio.to_thread(server.monitor, "/jsz?streams=true")
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                return int(detail["state"]["last_seq"]) >= last_seq
    return False


PAUSED_EPOCHS = 60


async def paused_peer(root: Path, rng: random.Random, facts: dict[str, Any]) -> Outcome:
    """SIGSTOP one peer for ~60 epochs of 100 ms while the others seal and commit, then
    SIGCONT it: it must catch up to the same hashes."""
    async with Deployment(root, db_config(epoch_ms=100, grace_ms=50)) as dep:
        peers = [dep.add_peer(f"p{i}") for i in (1, 2, 3)]
        await dep.start_peers(peers)
        load = Load(dep.js, dep.topology, "pause")
        load.add("w1")
        sleeper = peers[2]
        awake = peers[0].name
        try:
            async with loading(load, {"w1": 200.0}):
                await asyncio.sleep(1.5)
                before = await dep.progress()
                sleeper.pause()

                # Paused for a number of epochs the others commit, not for a fixed time,
                # which a slow machine would fill with fewer epochs.
                async def others_moved_on() -> bool:
                    return (await dep.progress()).get(awake, 0) - before.get(awake, 0) >= PAUSED_EPOCHS

                try:
                    with contextlib.suppress(ChaosError):  # reported below, with the count
                        await until(others_moved_on, f"{PAUSED_EPOCHS} epochs committed by {awake}", 60.0)
                    during = await dep.progress()
                finally:
                    sleeper.resume()
                await asyncio.sleep(1.5)
            await load.drain()
            await dep.settle()
        finally:
            sleeper.resume()
            await load.abort()
    facts.update(
        paused_peer=sleeper.name,
        epochs_sealed_while_paused=during.get(awake, 0) - before.get(awake, 0),
        paused_peer_progress_while_paused=during.get(sleeper.name, 0) - before.get(sleeper.name, 0),
    )
    failures = []
    if facts["epochs_sealed_while_paused"] < PAUSED_EPOCHS:
        failures.append(f"only {facts['epochs_sealed_while_paused']} epochs passed while the peer was paused")
    if facts["paused_peer_progress_while_paused"] != 0:
        failures.append("the paused peer reported commits while it was stopped")
    return Outcome(load.acked, dep.ledgers(), Expectation(min_epochs=40), facts, failures)


