"""Divergence: a peer that computes one epoch differently is caught, and repairs or stops."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from materializer.agreement.hashes import HashBoard
from materializer.errors import Divergence
from peer import metrics
from tests.running_peers import EPOCHS, FAULT_EPOCH, epoch_hashes, three_peers, wait_until

pytestmark = pytest.mark.integration


async def test_a_peer_in_the_minority_says_so_and_repairs_from_a_majority_snapshot(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with three_peers(nats_server.url, tmp_path, repair=True) as (board, tasks):

        async def repaired_and_agreeing() -> bool:
            path = tmp_path / "c" / metrics.METRICS_FILE
            if not path.exists() or metrics.read(path)["oplog_peer_repairs_total"] < 1:
                return False
            reports = await board.reports(EPOCHS - 1, ["a", "b", "c"])
            return len(reports) == 3 and len(set(reports.values())) == 1

        await wait_until(repaired_and_agreeing, "peer c to repair and agree on the last epoch", tasks)
        await wait_until(lambda: _no_divergence(board), "c's divergence record to be cleared", tasks)

    for task in tasks.values():
        assert task.exception() is None
    # Every peer's own database holds the same hash for every epoch, repaired peer included.
    a, b, c = (epoch_hashes(tmp_path, name) for name in "abc")
    assert a == b == c and [e for e, _ in a] == list(range(EPOCHS))
    diverged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "DIVERGED" in r.getMessage()]
    assert diverged and diverged[0].startswith("peer c DIVERGED at epoch ")
    c_metrics = metrics.read(tmp_path / "c" / metrics.METRICS_FILE)
    assert c_metrics["oplog_peer_divergences_total"] >= 1 and c_metrics["oplog_peer_diverged"] == 0
    # The healthy peers never judged themselves diverged.
    for name in "ab":
        assert metrics.read(tmp_path / name / metrics.METRICS_FILE)["oplog_peer_divergences_total"] == 0


async def _no_divergence(board: HashBoard) -> bool:
    return not await board.divergences()


async def test_without_repair_a_diverged_peer_stops_with_a_divergence_and_leaves_a_record(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with three_peers(nats_server.url, tmp_path, repair=False) as (board, tasks):

        async def c_stopped() -> bool:
            return tasks["c"].done()

        await wait_until(c_stopped, "peer c to stop on its divergence", tasks, allowed_to_end=("c",))
        with pytest.raises(Divergence, match=r"peer c DIVERGED at epoch \d+.*--repair"):
            tasks["c"].result()
        records = await board.divergences()
        assert set(records) == {"c"} and int(records["c"]["epoch"]) >= FAULT_EPOCH  # type: ignore[call-overload]
        assert records["c"]["majority_peers"] == ["a", "b"]
        c_metrics = metrics.read(tmp_path / "c" / metrics.METRICS_FILE)
        assert c_metrics["oplog_peer_diverged"] == 1 and c_metrics["oplog_peer_divergences_total"] == 1

        async def healthy_peers_done() -> bool:
            return len(await board.reports(EPOCHS - 1, ["a", "b"])) == 2

        await wait_until(healthy_peers_done, "peers a and b to commit every epoch", tasks, allowed_to_end=("c",))
    assert epoch_hashes(tmp_path, "a") == epoch_hashes(tmp_path, "b")
    # c kept its divergent commits for inspection: they differ from FAULT_EPOCH on.
    c_hashes = dict(epoch_hashes(tmp_path, "c"))
    a_hashes = dict(epoch_hashes(tmp_path, "a"))
    assert all(c_hashes[e] == a_hashes[e] for e in range(FAULT_EPOCH))
    assert c_hashes[FAULT_EPOCH] != a_hashes[FAULT_EPOCH]
