"""The roster: only the peers an admin declared count toward agreement.

Four fake names on the hash board, all reporting one forged hash, once made every
honest peer judge itself in the minority and stop. With a roster they are reported
and never counted; without one, the board's names count (the old rule, shown here so
the test can fail if the roster stops mattering).
"""

from __future__ import annotations

import logging

import orjson
import pytest

from devtools.natsd import NatsServer
from epoch.assign import Assigner, StreamMessage
from epoch.config import Roster
from materializer.agreement.divergence import DivergenceWatch, verified_snapshot
from materializer.agreement.hashes import HashBoard
from materializer.agreement.verdict import Verdict, judge
from materializer.bootstrap.snapshots import SnapshotInfo, SnapshotPolicy, SnapshotStore
from oplog.stream import ensure_stream
from oplog.topology import Topology
from peer.control import init_database, publish_roster, read_config
from tests.support import config, connected

HONEST, FORGED = "h" * 40, "f" * 40
FAKES = ("x1", "x2", "x3", "x4")


def test_reports_outside_the_roster_change_no_verdict() -> None:
    reports = {"a": HONEST, "b": HONEST, **dict.fromkeys(FAKES, FORGED)}
    roster = frozenset({"a", "b", "c"})
    assert judge(7, "a", reports, 3, counted=roster).verdict is Verdict.AGREED
    # The same reports without a roster: the fakes outvote the honest peers.
    assert judge(7, "a", reports, 6).verdict is Verdict.MINORITY


def test_a_peer_outside_the_roster_is_judged_by_the_roster_without_counting_itself() -> None:
    # Its own hash is no vote: one roster member agreeing with it is no majority of 3.
    assert judge(7, "z", {"z": FORGED, "a": FORGED}, 3, counted=frozenset("abc")).verdict is Verdict.PENDING
    assert judge(7, "z", {"z": FORGED, "a": HONEST, "b": HONEST}, 3, counted=frozenset("abc")).verdict is (
        Verdict.MINORITY
    )


def feed(assigner: Assigner, seq: int, body: object) -> None:
    assigner.feed(StreamMessage(seq, "config", orjson.dumps(body)))


def test_a_roster_is_part_of_the_config_history_and_survives_a_resume() -> None:
    assigner = Assigner()
    feed(assigner, 1, {"type": "roster", "peers": ["a"]})  # before init: rejected
    feed(assigner, 2, config().model_dump(mode="json"))
    feed(assigner, 3, {"type": "roster", "peers": ["c", "a", "b"]})
    feed(assigner, 4, {"type": "roster", "peers": ["a", "a"]})  # a name twice: rejected
    feed(assigner, 5, {"type": "roster", "peers": ["a b"]})  # not a peer name: rejected
    assert assigner.roster == Roster(peers=("a", "b", "c"))
    sealed = assigner.feed(StreamMessage(6, "seal", b'{"epoch": 0}'))
    assert sealed is not None
    assert [(r.seq, r.reason) for r in sealed.rejected] == [(1, "bad_config"), (4, "bad_config"), (5, "bad_config")]
    # What the commit stores as its config log brings the roster back after a restart.
    log = [(c.seq, c.body) for c in sealed.controls if c.kind == "config"]
    assert log[1] == (3, {"type": "roster", "peers": ["a", "b", "c"]})
    resumed = Assigner.resume(log, 7, 0, committed_through=0)
    assert resumed.roster == assigner.roster


@pytest.mark.integration
async def test_fake_peers_on_the_board_change_no_verdict_and_are_reported(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    topology = Topology(db="r")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        board = HashBoard(js, topology)
        for epoch in range(3):
            for peer in ("b", "c"):
                await board.report(peer, epoch, HONEST)
            for fake in FAKES:
                await board.report(fake, epoch, FORGED)
        # An admin declares the roster on the stream; a peer reads it from there.
        await init_database(js, topology, config("r"))
        await publish_roster(js, topology, Roster(peers=("a", "b", "c")))
        declared = (await read_config(js, topology)).roster
        assert declared is not None

        with caplog.at_level(logging.WARNING):
            watch = DivergenceWatch(board, "a", roster=lambda: declared.peers)
            watch.committed(2, HONEST)
            judgement = await watch.check()
        assert judgement is not None and judgement.verdict is Verdict.AGREED
        assert judgement.majority_peers == ("a", "b", "c")
        assert watch.stats.strangers == FAKES
        assert any("x1, x2, x3, x4, which the roster does not name, are ignored" in r.getMessage() for r in caplog.records)

        # Without the roster the same board makes the honest peer a minority.
        unguarded = DivergenceWatch(board, "a")
        unguarded.committed(2, HONEST)
        minority = await unguarded.check()
        assert minority is not None and minority.verdict is Verdict.MINORITY


@pytest.mark.integration
async def test_a_joining_peer_installs_only_a_snapshot_the_roster_confirms(nats_server: NatsServer) -> None:
    topology = Topology(db="r")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await ensure_stream(js, topology)
        board = HashBoard(js, topology)
        store = SnapshotStore(js, topology)
        policy = SnapshotPolicy(every_epochs=1, keep=5)
        # A fake peer uploads a newer snapshot and four fakes vouch for its hash.
        honest = SnapshotInfo(epoch=4, commit_hash=HONEST, resume_seq=10, object="epoch-4", peer="b")
        forged = SnapshotInfo(epoch=5, commit_hash=FORGED, resume_seq=12, object="epoch-5", peer="x1")
        await store.offer("b", honest, b"honest", policy)
        await store.offer("x1", forged, b"forged", policy)
        for peer in ("b", "c"):
            await board.report(peer, 4, HONEST)
        for fake in FAKES:
            await board.report(fake, 5, FORGED)
        roster = ("a", "b", "c")
        chosen = await verified_snapshot(store, board, exclude_peer="a", roster=roster)
        assert chosen is not None and (chosen.epoch, chosen.peer) == (4, "b")
        # Without a roster, the board's majority is the fakes'.
        unguarded = await verified_snapshot(store, board, exclude_peer="a")
        assert unguarded is not None and unguarded.peer == "x1"
