"""A peer's Prometheus endpoint, scraped over HTTP and parsed as Prometheus would."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.natsd import NatsServer, free_ports
from oplog.op import Op
from oplog.topology import Topology
from peer import metrics
from peer.service import PeerConfig, run_peer
from tests.support import config, connected, publish_batch, publish_raw, seal, setup_db, wall

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``/metrics``, parsed with prometheus-client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_metrics_endpoint_counts_applied_rejected_and_commit_latencies(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    (port,) = free_ports(1)
    stop = asyncio.Event()
    peer = PeerConfig(name="a", db="t", nats_url=nats_server.url, data_dir=tmp_path / "a", seal=False,
                      metrics_port=port)  # fmt: skip
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config())
        good = [Op(id=f"g{i}", hlc=(wall(0, i), 0, "n"), table="users", key=(f"k{i}",), kind="upsert",
                   data={"name": "x", "score": i}) for i in range(5)]  # fmt: skip
        await publish_batch(js, topology, good)
        await publish_raw(js, topology, topology.ops_subject("users"), b"not json")
        bad_value = Op(id="bad", hlc=(wall(0, 9), 0, "n"), table="users", key=("b",), kind="upsert",
                       data={"score": "high"})  # fmt: skip
        await publish_batch(js, topology, [bad_value])
        await seal(js, topology, 0)
        await seal(js, topology, 1)
        task = asyncio.create_task(run_peer(peer, stop))
        try:
            deadline = time.monotonic() + 30
            samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            labels = (("db", "t"), ("peer", "a"))
            while samples.get(("oplog_peer_last_epoch", labels)) != 1:
                assert not task.done(), task.exception()
                assert time.monotonic() < deadline, "the peer did not commit epoch 1 within 30 s"
                await asyncio.sleep(0.1)
                try:
                    samples = await asyncio.to_thread(scrape, port)
                except OSError:
                    continue  # the endpoint is not up yet
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    assert samples[("oplog_ops_applied_total", labels)] == 5
    assert samples[("oplog_ops_rejected_total", (*labels, ("reason", "malformed")))] == 1
    assert samples[("oplog_ops_rejected_total", (*labels, ("reason", "bad_value")))] == 1
    assert samples[("oplog_epochs_committed_total", labels)] == 2
    assert samples[("oplog_epoch_commit_seconds_count", labels)] == 2
    assert samples[("oplog_seal_to_commit_seconds_count", labels)] == 2
    assert samples[("oplog_peer_diverged", labels)] == 0
    # The file beside the database says the same, and outlives the peer.
    on_file = metrics.read(tmp_path / "a" / metrics.METRICS_FILE)
    assert on_file["oplog_ops_applied_total"] == 5 and on_file["oplog_peer_last_epoch"] == 1
    # The endpoint stopped with the peer.
    with pytest.raises(OSError):
        scrape(port)
