"""A strategy from a separate distribution (tests/plugin_strategy, installed by
scripts/install.sh) works end to end through the ``oplog.strategies`` entry point."""

from __future__ import annotations

import pytest

from devtools.natsd import NatsServer
from materializer.strategy import get_strategy, strategy_names
from oplog.op import Op
from oplog.schema import SchemaMessage
from oplog.topology import Topology
from tests.support import BackendFactory, InProcessPeer, config, connected, publish_batch, seal, setup_db, wall

pytestmark = pytest.mark.integration

SCHEMA = SchemaMessage.model_validate(
    {
        "tables": [
            {
                "name": "claims",
                "columns": [
                    {"name": "slot", "type": "text", "nullable": False},
                    {"name": "owner", "type": "text"},
                ],
                "primary_key": ["slot"],
                "strategy": "fww",
            }
        ]
    }
)


def test_the_plugin_is_discovered_through_its_entry_point() -> None:
    assert "fww" in strategy_names(), "run scripts/install.sh: it installs tests/plugin_strategy"
    assert type(get_strategy("fww")).__module__ == "oplog_fww"


async def test_a_plugin_strategy_decides_rows_on_every_peer(nats_server: NatsServer, backends: BackendFactory) -> None:
    topology = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(), SCHEMA)
        # Three producers claim the same slot; the earliest HLC must keep it, whatever
        # order the claims reach the stream in.
        claims = [
            Op(id=f"c{i}", hlc=(wall(0, ms), 0, f"n{i}"), table="claims", key=("s1",), kind="upsert",
               data={"owner": f"n{i}"})
            for i, ms in enumerate([700, 100, 400])
        ]  # fmt: skip
        await publish_batch(js, topology, claims)
        await seal(js, topology, 0)
        peers = [await InProcessPeer(js, topology, backends, f"p{i}").start() for i in range(2)]
        try:
            for peer in peers:
                await peer.run_until(0)
            assert peers[0].hashes() == peers[1].hashes()
            for peer in peers:
                assert peer.rows("claims") == [("s1", "n1", '{"v":[1700000000100,0,"n1","c1"]}')]
        finally:
            for peer in peers:
                await peer.close()
