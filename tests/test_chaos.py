"""The chaos suite (``devtools/chaos*.py``): one test per scenario, and the bugs it found.

Each scenario runs real nats-server (a 3-node cluster where it says so) and doltlite
peers as ``oplog serve`` subprocesses, injects its fault, and checks every peer's own
database: acked == applied + rejected, the same hash for every epoch, and exactly the
expected rows. A scenario has its own wall-clock budget (it is cancelled and every
process stopped past it); pytest-timeout is a backstop above that budget.

The result-row helpers are pure and tested first, without servers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from devtools.chaos import SCENARIOS, run_scenario
from devtools.chaos_rows import Expectation, PeerLedger, ResultRow, build_row, compare_hashes, format_table
from devtools.natsd import NatsCluster, NatsServer
from materializer.backends.doltlite import DoltliteBackend, child_env
from materializer.bootstrap.snapshots import SnapshotPolicy
from materializer.buckets import key_value
from materializer.commit.loop import Materializer
from materializer.commit.reader import StreamReader
from oplog.errors import PublishError
from oplog.hlc import HybridLogicalClock
from oplog.op import Op
from oplog.producer import Producer, ProducerConfig
from oplog.stream import ensure_stream
from oplog.topology import StreamLimits, Topology
from peer.service import connect
from tests.support import config, connected, publish_batch, seal, setup_db, wall

# -- pure helpers ---------------------------------------------------------------------------------


def ledger(name: str, hashes: dict[int, str], **fields: object) -> PeerLedger:
    values: dict[str, object] = {
        "applied": 2,
        "rejected": 0,
        "rejection_rows": 0,
        "duplicates": 0,
        "late": 0,
        "rejections": {},
        "rows": {"a": ("w", 0), "b": ("w", 1)},
    }
    values.update(fields)
    return PeerLedger(name=name, hashes=hashes, **values)  # type: ignore[arg-type]


ACKED = {"a": ("w", 0), "b": ("w", 1)}


def test_hashes_are_compared_up_to_the_slowest_peer_and_a_skipped_epoch_disagrees() -> None:
    # p2 is behind: epoch 3 is not compared; p2 lacks epoch 1 although it has 2: a divergence.
    result = compare_hashes({"p1": {0: "x", 1: "y", 2: "z", 3: "w"}, "p2": {0: "x", 2: "z"}})
    assert (result.compared, result.disagreeing) == (3, (1,))
    # Different hashes for one epoch.
    assert compare_hashes({"p1": {0: "x", 1: "y"}, "p2": {0: "x", 1: "q"}}).disagreeing == (1,)
    # A peer with no commit at all: nothing can be compared.
    assert compare_hashes({"p1": {0: "x"}, "p2": {}}).compared == 0


def test_a_row_passes_only_when_every_peer_accounts_for_every_acked_op() -> None:
    good = [ledger("p1", {0: "h0", 1: "h1"}), ledger("p2", {0: "h0", 1: "h1"})]
    row = build_row("s", acked=ACKED, ledgers=good, seconds=1.0, injected="nothing")
    assert row.ok, row.explain()
    assert (row.ops_acked, row.ops_applied, row.ops_rejected, row.epochs_compared, row.disagreements) == (2, 2, 0, 2, 0)

    # An op applied twice (or never acked), a lost row, a diverged epoch: each is named.
    bad = [
        ledger("p1", {0: "h0", 1: "h1"}, applied=3),
        ledger("p2", {0: "h0", 1: "other"}, rows={"a": ("w", 0)}),
    ]
    row = build_row("s", acked=ACKED, ledgers=bad, seconds=1.0, injected="nothing")
    assert not row.ok
    text = "\n".join(row.failures)
    assert "peer p1: acked 2 != applied 3 + rejected 0 (+1)" in text
    assert "peer p2: users rows differ from the acked ops: missing ['b']" in text
    assert "peers disagree on epochs [1]" in text
    assert row.disagreements == 1


def test_rejections_must_be_exactly_the_expected_ones_on_every_peer() -> None:
    rejected = ledger(
        "p1", {0: "h"}, applied=1, rejected=1, rejection_rows=1, rejections={"b": "future"}, rows={"a": ("w", 0)}
    )
    expect = Expectation(rejections={"b": "future"})
    assert build_row("s", acked=ACKED, ledgers=[rejected], seconds=0, injected="", expect=expect).ok
    wrong = Expectation(rejections={"b": "late"})
    row = build_row("s", acked=ACKED, ledgers=[rejected], seconds=0, injected="", expect=wrong)
    assert row.failures == ("peer p1: rejections (op, got, expected) differ: [('b', 'future', 'late')] (1 in all)",)


def test_the_table_has_one_aligned_line_per_scenario() -> None:
    rows = [
        ResultRow("peer-kills", 24046, 24046, 0, 15, 0, 15.8, ""),
        ResultRow("clock-skew-reject", 716, 398, 318, 12, 0, 6.6, "", failures=("x",)),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split(" | ")[0].strip() == "scenario"
    assert [c.strip() for c in lines[2].split("|")] == ["peer-kills", "24046", "24046", "0", "15", "0", "15.8", "yes"]
    assert lines[3].rstrip().endswith("NO")
    assert len({len(line) for line in lines}) == 1


# -- the scenarios ----------------------------------------------------------------------------------
# Budgets are the scenarios' own (typical runs take a fifth of them on 2 shared cores);
# pytest-timeout only backs them up.


async def check_scenario(name: str, tmp_path: Path) -> ResultRow:
    row = await run_scenario(name, tmp_path)
    print(row.explain())
    assert row.ok, row.explain()
    assert row.disagreements == 0 and row.ops_acked > 0
    assert row.ops_acked == row.ops_applied + row.ops_rejected
    assert row.seconds < SCENARIOS[name].budget_s
    return row


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["peer-kills"].budget_s + 30)
async def test_peers_killed_mid_commit_and_restarted_lose_and_double_nothing(tmp_path: Path) -> None:
    row = await check_scenario("peer-kills", tmp_path)
    # Half the kills are aimed at a held commit (materializer.faults): every one must land inside it.
    assert row.facts["mid_commit_kills"] == 5


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["nats-node-kill"].budget_s + 30)
async def test_killing_one_of_three_nats_nodes_loses_no_acked_op_and_publishing_goes_on(tmp_path: Path) -> None:
    row = await check_scenario("nats-node-kill", tmp_path)
    assert row.facts["was_stream_leader"] is True
    assert row.facts["acked_while_node_down"] > 0


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["ack-timeout-retry"].budget_s + 30)
async def test_a_producer_whose_acks_time_out_retries_and_nothing_is_doubled(tmp_path: Path) -> None:
    row = await check_scenario("ack-timeout-retry", tmp_path)
    assert row.facts["duplicate_acks"] > 0


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["clock-skew-carry"].budget_s + 30)
async def test_skewed_producer_clocks_with_late_ops_carried(tmp_path: Path) -> None:
    row = await check_scenario("clock-skew-carry", tmp_path)
    # Every fast op is rejected as future; every slow one applied, late.
    assert row.ops_rejected == row.facts["fast_ops"] > 0
    assert all(counts["late"] == row.facts["slow_ops"] > 0 for counts in row.peers.values())


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["clock-skew-reject"].budget_s + 30)
async def test_skewed_producer_clocks_with_late_ops_rejected(tmp_path: Path) -> None:
    row = await check_scenario("clock-skew-reject", tmp_path)
    assert row.ops_rejected == row.facts["fast_ops"] + row.facts["slow_ops"]


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["paused-peer"].budget_s + 30)
async def test_a_peer_paused_for_sixty_epochs_catches_up_to_the_same_hashes(tmp_path: Path) -> None:
    row = await check_scenario("paused-peer", tmp_path)
    assert row.facts["epochs_sealed_while_paused"] >= 40


@pytest.mark.integration
@pytest.mark.timeout(SCENARIOS["join-at-500"].budget_s + 30)
async def test_a_peer_joins_at_epoch_500_from_a_snapshot(tmp_path: Path) -> None:
    row = await check_scenario("join-at-500", tmp_path)
    assert row.facts["joined_at_epoch"] >= 500 and row.facts["stream_first_seq_at_join"] > 1


# -- oplog dev --cluster --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_oplog_dev_on_a_cluster_exits_0_with_every_peer_agreeing(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "peer.cli", "dev", "--cluster", "--peers", "3", "--seconds", "4", "--rate", "200",
         "--report", str(report), "--data-dir", str(tmp_path / "dev")],
        env=child_env(), capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["agree"] is True and result["settled"] is True
    assert result["epochs_compared"] >= 3
    assert sum(e["ops"] for e in result["epochs"]) == result["published"]
    complete = [e for e in result["epochs"] if len(e["hashes"]) == 3]
    assert len(complete) == result["epochs_compared"]
    assert all(len(set(e["hashes"].values())) == 1 for e in complete)
    # Only epochs after the last complete one can be partial: committed by some peers as
    # they were being stopped.
    last = complete[-1]["epoch"]
    assert all(e["epoch"] > last for e in result["epochs"] if len(e["hashes"]) < 3)


# -- bugs the suite found: failing reproductions (strict xfail: remove the mark with the fix) -----


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_clients_opening_a_new_r3_bucket_together_can_all_read_it(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "cluster") as cluster:

        async def open_and_read(url: str) -> str:
            async with connected(url) as nc:
                kv = await key_value(nc.jetstream(), "B", replicas=3)
                try:
                    await kv.get("latest")
                except KeyNotFoundError:
                    return "empty"
                return "found"

        # Three peers, one per node, open the same new bucket at once (materializer.buckets),
        # as peers starting together do: each must read it (empty). All but its creator
        # used to time out after 5 s, reading before the bucket's stream had a leader.
        results = await asyncio.gather(*(open_and_read(url) for url in cluster.urls), return_exceptions=True)
        assert results == ["empty"] * 3


@pytest.mark.integration
@pytest.mark.timeout(60)
# At 09f8585 this failed every time (ServiceUnavailableError: the peer exited).
async def test_a_stream_reader_rides_out_the_death_of_its_consumers_node(tmp_path: Path) -> None:
    topology = Topology(db="t", limits=StreamLimits(replicas=3))
    with NatsCluster(tmp_path / "cluster") as cluster:
        nc = await connect(cluster.url, name="reader-test")  # reconnects to the surviving nodes
        try:
            js = nc.jetstream()
            await ensure_stream(js, topology)
            for epoch in range(5):
                await seal(js, topology, epoch)
            # A reader whose (R1) consumer sits on the stream leader's node: the placement is
            # random, so make readers until one does.
            leader = (await js.stream_info(topology.stream)).cluster.leader  # type: ignore[union-attr]
            for _ in range(30):
                reader = StreamReader(js, topology, 1)
                assert [m.seq for m in await reader.next_batch()] == [1, 2, 3, 4, 5]
                info = await js.consumer_info(topology.stream, reader._consumer or "")
                if info.cluster is not None and info.cluster.leader == leader:
                    break
                await reader.close()
            else:
                pytest.fail(f"no consumer was placed on the stream leader {leader} in 30 tries")
            try:
                cluster.kill(cluster.index_of(leader or ""))
                # Reads may come back empty while a new leader is elected and the consumer
                # re-made, but must not raise, and the next message still arrives in order.
                deadline = time.monotonic() + 30
                got: list[int] = []
                while not got:
                    assert time.monotonic() < deadline, "no message after the node died"
                    got = [m.seq for m in await reader.next_batch()]
                    if not got:
                        try:
                            await seal(js, topology, 5)
                        except Exception:  # the stream may be electing a leader
                            await asyncio.sleep(0.2)
                assert got[0] == 6
            finally:
                await reader.close()
        finally:
            await nc.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_publish_the_stream_does_not_answer_fails_its_receipts_instead_of_hanging(
    nats_server: NatsServer,
) -> None:
    # While an R3 stream elects a leader JetStream answers "no response from stream"; at
    # 09f8585 Producer._publish did not catch NoStreamResponseError, its task died and the
    # receipts never resolved (the nats-node-kill scenario hung). A database without a
    # stream gets the same answer, every time.
    async with connected(nats_server.url) as nc:
        producer = Producer(
            nc.jetstream(),
            Topology(db="nostream"),
            clock=HybridLogicalClock("n"),
            config=ProducerConfig(ack_timeout_s=0.5, retries=1, retry_backoff_s=0.05),
        )
        op = producer.make_op("users", "k", "upsert", {"name": "x"})
        with pytest.raises(PublishError, match="retrying them with the same ids is safe"):
            await asyncio.wait_for(producer.submit(op), 15)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_snapshot_is_taken_when_a_commit_closes_a_multiple_of_n(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        peer = Materializer(
            js, topology, DoltliteBackend(tmp_path / "p.db"), peer="p", snapshots=SnapshotPolicy(every_epochs=2, keep=5)
        )
        await peer.start()
        try:
            # Every seal closes two epochs (1 closes 0-1, 3 closes 2-3, ...), as a sealer whose
            # tick is longer than an epoch does: epochs 2, 4 and 6 are closed, never committed alone.
            for epoch in (1, 3, 5, 7):
                op = Op(id=f"o{epoch}", hlc=(wall(epoch, 1), 0, "n"), table="users", key=(f"k{epoch}",),
                        kind="upsert", data={"name": "x", "score": epoch})  # fmt: skip
                await publish_batch(js, topology, [op])
                await seal(js, topology, epoch)
            deadline = time.monotonic() + 20
            while peer.last is None or peer.last.epoch < 7:
                assert time.monotonic() < deadline
                await peer.step()
            # Each commit closed a multiple of 2, so each one has a snapshot, named by its epoch.
            assert [i.epoch for i in await peer.snapshots.infos()] == [1, 3, 5, 7]
        finally:
            await peer.close()


def test_a_doltlite_file_grows_by_about_the_same_per_commit_as_epochs_accumulate(tmp_path: Path) -> None:
    # What DoltliteBackend.commit_epoch does per epoch, minus the rows: one commit and no
    # tag. (With a tag per epoch the file grew quadratically: ~45 KB per commit at 300
    # epochs against ~2.6 KB at 20; decisions #28.)
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        conn.execute("SELECT dolt_commit('-A', '-m', 'genesis')")

        def bytes_per_commit(first: int, last: int) -> float:
            before = (tmp_path / "g.db").stat().st_size
            for epoch in range(first, last):
                conn.execute("BEGIN")
                # The same row changes each time, so the data does not grow: only history does.
                conn.execute("INSERT OR REPLACE INTO t VALUES (1, ?)", (f"x{epoch}",))
                conn.execute("SELECT dolt_commit('-A', '-m', ?)", (f"epoch {epoch}",))
                conn.execute("COMMIT")
            return ((tmp_path / "g.db").stat().st_size - before) / (last - first)

        early = bytes_per_commit(0, 20)
        bytes_per_commit(20, 300)
        late = bytes_per_commit(300, 320)
    finally:
        conn.close()
    assert late < 2 * early, f"{early:.0f} bytes per commit at 20 epochs, {late:.0f} at 300"
