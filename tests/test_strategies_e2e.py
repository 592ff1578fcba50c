"""Every built-in strategy through the whole pipeline: real NATS, two doltlite peers,
concurrent producers, a late op, and bad input per strategy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.natsd import NatsServer
from oplog.crdt_helper import DocumentWriter
from oplog.op import Op
from oplog.schema import SchemaMessage
from oplog.topology import Topology
from tests.support import InProcessPeer, config, connected, publish_batch, seal, setup_db, wall

pytestmark = pytest.mark.integration

SCHEMA = SchemaMessage.model_validate(
    {
        "tables": [
            {"name": "profiles", "strategy": "field-lww", "primary_key": ["id"],
             "columns": [{"name": "id", "type": "text", "nullable": False},
                         {"name": "email", "type": "text"}, {"name": "city", "type": "text"}]},
            {"name": "stock", "strategy": "counter", "primary_key": ["sku"],
             "columns": [{"name": "sku", "type": "text", "nullable": False},
                         {"name": "qty", "type": "integer"}, {"name": "value", "type": "decimal"}]},
            {"name": "docs", "strategy": "crdt", "primary_key": ["id"],
             "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "body", "type": "json"}]},
        ]
    }
)  # fmt: skip


def op(op_id: str, epoch: int, ms: int, table: str, key: str, kind: str, data: dict | None, node: str = "n") -> Op:  # type: ignore[type-arg]
    return Op(id=op_id, hlc=(wall(epoch, ms), 0, node), table=table, key=(key,), kind=kind, data=data)


async def test_each_strategy_combines_concurrent_ops_identically_on_every_peer(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    topology = Topology(db="t")
    writers = [DocumentWriter(client_id=i + 1) for i in range(3)]
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await setup_db(js, topology, config(), SCHEMA)
        await publish_batch(
            js,
            topology,
            [
                # field-lww: two producers edit different columns of one row concurrently.
                op("p1", 0, 10, "profiles", "u1", "patch", {"email": "a@x"}, "a"),
                op("p2", 0, 11, "profiles", "u1", "patch", {"city": "Oslo"}, "b"),
                op("p3", 0, 12, "profiles", "u1", "patch", {"qty": 1}, "b"),  # unknown column
            ],
        )
        await publish_batch(
            js,
            topology,
            [
                # counter: signed integer and decimal deltas from three producers.
                op("s1", 0, 20, "stock", "sku1", "incr", {"qty": 5, "value": "10.50"}, "a"),
                op("s2", 0, 21, "stock", "sku1", "incr", {"qty": -2, "value": "-0.25"}, "b"),
                op("s3", 0, 22, "stock", "sku1", "incr", {"qty": "lots"}, "c"),  # non-numeric delta
                op("s4", 0, 23, "stock", "sku1", "patch", {"qty": 1}, "c"),  # wrong kind for a counter
            ],
        )
        # crdt: three producers edit one document concurrently.
        updates = [
            writers[0].set("title", "hello"),
            writers[1].set("tags", ["x"]),
            writers[2].set("meta", {"n": 1}),
        ]
        await publish_batch(
            js,
            topology,
            [
                op(f"d{i}", 0, 30 + i, "docs", "doc1", "crdt", DocumentWriter.data(u), f"w{i}")
                for i, u in enumerate(updates)
            ]
            + [op("d9", 0, 40, "docs", "doc1", "crdt", {"update": "bm90IHlqcw=="}, "w9")],
        )  # not an update
        await seal(js, topology, 0)
        # Late for epoch 0 (carried into 1): an older email edit loses to the committed one.
        await publish_batch(js, topology, [op("p0", 0, 5, "profiles", "u1", "patch", {"email": "old@x"}, "c")])
        await seal(js, topology, 1)

        peers = [await InProcessPeer(js, topology, tmp_path / f"p{i}.db", f"p{i}").start() for i in range(2)]
        try:
            for peer in peers:
                await peer.run_until(1)
            assert peers[0].hashes() == peers[1].hashes()
            for peer in peers:
                assert [r[:3] for r in peer.rows("profiles")] == [("u1", "a@x", "Oslo")]
                assert [r[:3] for r in peer.rows("stock")] == [("sku1", 3, "10.25")]
                (doc,) = peer.rows("docs")
                assert json.loads(doc[1]) == {"title": "hello", "tags": ["x"], "meta": {"n": 1}}
                assert [(r[1], r[2]) for r in peer.rejections()] == [
                    ("p3", "unknown_column"),
                    ("s3", "bad_delta"),
                    ("s4", "kind_not_allowed"),
                    ("d9", "bad_crdt_update"),
                ]
        finally:
            for peer in peers:
                await peer.close()
