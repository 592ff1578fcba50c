"""Chaos scenarios about the stream and its clocks: acknowledgements that time out and are
re-sent, producers whose clocks are minutes off, a peer joining after retention purged the
stream's beginning.

Run by :mod:`devtools.chaos`; each returns an :class:`~devtools.chaos_rows.Outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)

from devtools.chaos_harness import TEN_MINUTES_MS, Deployment, Load, db_config, loading, until
from devtools.chaos_rows import Expectation, Outcome
from devtools.natsd import NatsServer
from epoch.config import LatePolicy
from materializer.bootstrap.snapshots import SnapshotStore
from oplog.hlc import system_clock_ms
from oplog.nats_errors import TRANSIENT
from oplog.producer import ProducerConfig
from oplog.stream import publish_json


async def ack_timeout_retry(root: Path, rng: random.Random, facts: dict[str, Any]) -> Outcome:
    """A producer with a 0.3 s ack timeout while the server is paused (SIGSTOP) twice
    for 1.5 s: its acks time out, it re-sends the same batches with the same
    Nats-Msg-Id, and nothing may be stored or applied twice."""
    async with Deployment(root, db_config(epoch_ms=500, grace_ms=200)) as dep:
        assert isinstance(dep.nats, NatsServer)
        server = dep.nats
        peers = [dep.add_peer(f"p{i}") for i in (1, 2, 3)]
        await dep.start_peers(peers)
        load = Load(dep.js, dep.topology, "retry")
        impatient = ProducerConfig(ack_timeout_s=0.3, retries=8, retry_backoff_s=0.05)
        load.add("impatient", config=impatient)
        pauses: list[float] = []

        # Paused until some op has waited three ack timeouts, not for a fixed time: then
        # an attempt has certainly timed out and been re-sent into the stopped server,
        # however slowly this machine runs the load.
        async def acks_timed_out() -> bool:
            return load.longest_wait() >= 3 * impatient.ack_timeout_s

        try:
            async with loading(load, {"impatient": 300.0}):
                for _ in range(2):
                    await asyncio.sleep(rng.uniform(1.5, 2.5))
                    server.pause()
                    paused_at = time.monotonic()
                    try:
                        await until(acks_timed_out, "an op to wait 3 ack timeouts on the paused server", 30.0)
                    finally:
                        server.resume()
                    pauses.append(round(time.monotonic() - paused_at, 2))
                await asyncio.sleep(1.5)
            await load.drain()
            await dep.settle()
        finally:
            server.resume()
            await load.abort()
    ledgers = dep.ledgers()
    facts.update(
        server_paused_s=pauses,
        duplicate_acks=load.duplicate_acks,
        ops_resent_in_new_batches=load.resent,
        duplicates_dropped_by_peers=ledgers[0].duplicates if ledgers else None,
    )
    failures = []
    if load.duplicate_acks == 0:
        failures.append("no re-sent batch was acknowledged as a duplicate: no ack timed out and was retried")
    return Outcome(load.acked, ledgers, Expectation(min_epochs=5), facts, failures)


async def clock_skew(root: Path, rng: random.Random, facts: dict[str, Any], policy: LatePolicy) -> Outcome:
    """Producers whose clocks are 10 minutes fast and 10 minutes slow beside an honest
    one. Fast ops lie beyond ``max_future_epochs`` (60 s) and are rejected as
    ``future``; slow ops land in long-sealed epochs and are carried or rejected as
    ``late``, by the database's late policy."""
    # A long grace, so that no honest op is ever late: only the slow clock's are.
    config = db_config(epoch_ms=500, grace_ms=1500, late_policy=policy, max_future_epochs=120)
    async with Deployment(root, config) as dep:
        peers = [dep.add_peer(f"p{i}") for i in (1, 2, 3)]
        await dep.start_peers(peers)
        # The future bound is measured from the last seal: publish only after one.
        await dep.wait_committed(dep.epoch_now())
        load = Load(dep.js, dep.topology, f"skew-{policy.value}")
        load.add("honest")
        load.add("fast", skew_ms=TEN_MINUTES_MS)
        load.add("slow", skew_ms=-TEN_MINUTES_MS)
        try:
            async with loading(load, {"honest": 100.0, "fast": 40.0, "slow": 40.0}):
                await asyncio.sleep(4.0)
            await load.drain()
            await dep.settle()
        finally:
            await load.abort()
    acked = load.acked
    expected = {op_id: "future" for op_id in load.by_producer["fast"] if op_id in acked}
    slow = [op_id for op_id in load.by_producer["slow"] if op_id in acked]
    if policy is LatePolicy.REJECT:
        expected.update({op_id: "late" for op_id in slow})
    facts.update(late_policy=policy.value, fast_ops=len(load.by_producer["fast"]), slow_ops=len(slow))
    expect = Expectation(rejections=expected, late=len(slow) if policy is LatePolicy.CARRY else 0, min_epochs=5)
    return Outcome(acked, dep.ledgers(), expect, facts)


JOIN_EPOCH = 500
SEAL_STEP = 5  # the join scenario's sealer closes every 5th epoch (100 ms of 20 ms epochs)


async def seal_every(dep: Deployment, step: int) -> None:
    """Publish ``seal k`` for every k that is a multiple of ``step``, once its grace is over,
    as a peer's sealer would (same subject and Nats-Msg-Id); runs until cancelled."""
    k = (dep.epoch_now() // step) * step
    while True:
        now = system_clock_ms()
        due = dep.timeline.last_sealable(now)
        if due >= k:
            k = (due // step) * step  # fallen behind: the newest one only, as a sealer does
            with contextlib.suppress(*TRANSIENT):
                await publish_json(
                    dep.js, dep.topology, dep.topology.seal_subject, {"epoch": k}, msg_id=dep.topology.seal_msg_id(k)
                )
                k += step
                continue
        await asyncio.sleep(max(0.005, (dep.timeline.seal_due_ms(k) - now) / 1000))


async def join_from_snapshot(root: Path, rng: random.Random, facts: dict[str, Any]) -> Outcome:
    """With 20 ms epochs and a snapshot every 100 epochs (two kept, the stream purged
    below the older), a new peer joins once epoch 500 has passed: it must start from a
    snapshot, since the stream no longer starts at sequence 1.

    Seals come from one sealer that closes every 5th epoch, not from the peers: peers'
    sealers close whatever is due at their tick, so commit epochs are not predictable,
    and a snapshot is only taken at a commit whose epoch is a multiple of the policy's
    N (a limitation reported with the suite)."""
    snapshot_args = ["--no-seal", "--snapshot-every", "100", "--snapshot-keep", "2"]
    async with Deployment(root, db_config(epoch_ms=20, grace_ms=10)) as dep:
        sealer = asyncio.create_task(seal_every(dep, SEAL_STEP))
        early = [dep.add_peer(f"p{i}", snapshot_args) for i in (1, 2)]
        load = Load(dep.js, dep.topology, "join")
        load.add("w1")
        store = SnapshotStore(dep.js, dep.topology)
        try:
            await dep.start_peers(early)
            async with loading(load, {"w1": 100.0}):
                await dep.wait_committed(JOIN_EPOCH, early, timeout=60.0)

                async def purged() -> bool:
                    info = await dep.js.stream_info(dep.topology.stream)
                    return info.state.first_seq > 1

                await until(purged, "retention to purge the stream's beginning", 30.0)
                latest = await store.latest()
                info = await dep.js.stream_info(dep.topology.stream)
                facts.update(
                    joined_at_epoch=dep.epoch_now(),
                    stream_first_seq_at_join=info.state.first_seq,
                    newest_snapshot_epoch=latest.epoch if latest else None,
                )
                joiner = dep.add_peer("joiner", snapshot_args)
                joiner.start()
                await dep.wait_committed(dep.epoch_now(), [joiner], timeout=60.0)
                await asyncio.sleep(1.0)
            await load.drain()
            await dep.settle()
        finally:
            sealer.cancel()
            await asyncio.gather(sealer, return_exceptions=True)
            await load.abort()
    log = joiner.log_path.read_text(errors="replace")
    bootstrapped = [line for line in log.splitlines() if "bootstrapped from the snapshot of epoch" in line]
    resumed = re.search(r"resuming after epoch (\d+) \(seal seq \d+\) from seq (\d+)", log)
    facts["joiner_bootstraps"] = len(bootstrapped)
    facts["joiner_first_read_seq"] = int(resumed.group(2)) if resumed else None
    failures = []
    if not bootstrapped:
        failures.append("the joiner did not bootstrap from a snapshot")
    if resumed is None or int(resumed.group(2)) <= 1:
        failures.append("the joiner did not start reading the stream past its beginning")
    if facts["joined_at_epoch"] < JOIN_EPOCH:
        failures.append(f"joined at epoch {facts['joined_at_epoch']} < {JOIN_EPOCH}")
    return Outcome(load.acked, dep.ledgers(), Expectation(min_epochs=JOIN_EPOCH // SEAL_STEP), facts, failures)
