"""The contention workload: many ops on few hot keys, over four tables, one per strategy, and
its reference fold.

Four tables share the hot keys (``keys // 4`` each): ``hot_lww`` (``lww``: upserts, 10%
deletes), ``hot_fields`` (``field-lww``: patches of one column, 10% whole-row upserts, 5%
deletes), ``hot_counters`` (``counter``: ``incr`` of an integer and a decimal column) and
``hot_docs`` (``crdt``: each of 3 producers edits its own copy of the row's document, one
key per update, with :class:`~oplog.crdt_helper.DocumentWriter`). Each op picks its table and
its key uniformly at random. Ops are raw wire dicts, as a producer publishes them.

:func:`reference_fold` is what the result must be, computed the plainest way: every op
through its table's strategy (``Strategy.apply``), in HLC order, one row at a time, with no
planner, read-ahead, stream or backend. Its rows are what the raw-insert baseline inserts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from devtools.demo import EPOCH_MS, ORIGIN_MS
from materializer.errors import OpRejected
from materializer.strategy import ABSENT, RowState, get_strategy
from oplog.codec import canonical_json
from oplog.crdt_helper import DocumentWriter
from oplog.op import fast_record
from oplog.schema import SchemaMessage

_KEY = {"name": "id", "type": "text", "nullable": False}
HOT_SCHEMA = SchemaMessage.model_validate({"tables": [
    {"name": "hot_lww", "primary_key": ["id"], "strategy": "lww",
     "columns": [_KEY, {"name": "name", "type": "text"}, {"name": "score", "type": "integer"}]},
    {"name": "hot_fields", "primary_key": ["id"], "strategy": "field-lww",
     "columns": [_KEY, {"name": "a", "type": "text"}, {"name": "b", "type": "integer"}, {"name": "c", "type": "text"}]},
    {"name": "hot_counters", "primary_key": ["id"], "strategy": "counter",
     "columns": [_KEY, {"name": "hits", "type": "integer"}, {"name": "amount", "type": "decimal"}]},
    {"name": "hot_docs", "primary_key": ["id"], "strategy": "crdt", "columns": [_KEY, {"name": "doc", "type": "json"}]},
]})  # fmt: skip
HOT_TABLES = tuple(t.name for t in HOT_SCHEMA.tables)
NODES = ("p0", "p1", "p2")

Row = tuple[Any, ...]


@dataclass
class Folded:
    """The reference result: per table, its rows (as the backend stores them) and tombstones."""

    rows: dict[str, list[Row]]
    tombstones: dict[str, dict[str, str]]  # table -> canonical key text -> canonical meta
    applied: int
    rejected: int
    seconds_by_table: dict[str, float]  # time in Strategy.apply, per table: which strategy costs what


class _Generator:
    def __init__(self, keys: int, rng: random.Random) -> None:
        self.per_table = max(1, keys // len(HOT_TABLES))
        self.rng = rng
        self.writers: dict[tuple[int, str], DocumentWriter] = {}

    def data(self, table: str, key: int, node: str, i: int) -> tuple[str, dict[str, Any] | None]:
        r = self.rng.random()
        if table == "hot_lww":
            return ("delete", None) if r < 0.10 else ("upsert", {"name": f"{node}-{i}", "score": i})
        if table == "hot_fields":
            if r < 0.05:
                return "delete", None
            if r < 0.15:
                return "upsert", {"a": f"{node}-{i}", "b": i, "c": node}
            column = self.rng.choice(("a", "b", "c"))
            return "patch", {column: i if column == "b" else f"{node}-{i}"}
        if table == "hot_counters":
            return "incr", {"hits": self.rng.randrange(-3, 10), "amount": f"{self.rng.randrange(-500, 1000) / 100:.2f}"}
        # crdt: a writer per (row, producer), with a fixed client id so runs repeat byte for byte
        writer = self.writers.get((key, node))
        if writer is None:
            writer = self.writers[key, node] = DocumentWriter(client_id=1 + key * len(NODES) + NODES.index(node))
        return "crdt", DocumentWriter.data(writer.set(f"f{self.rng.randrange(8)}", i))


def hot_wires(ops: int, keys: int, epochs: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    """``ops`` wire ops over ``epochs`` epochs (a list per epoch, in HLC order) on ``keys`` hot keys."""
    gen = _Generator(keys, rng)
    per = ops // epochs
    out = []
    for epoch in range(epochs):
        n = per if epoch < epochs - 1 else ops - per * (epochs - 1)
        start = ORIGIN_MS + epoch * EPOCH_MS
        # Stamps first, then data in HLC order: a producer's CRDT updates are made in the
        # order they are stamped, as a real producer's are. Zero-padded ids sort as made.
        stamps = sorted((start + rng.randrange(EPOCH_MS), rng.randrange(4), rng.choice(NODES), i) for i in range(n))
        wires = []
        for wall, logical, node, i in stamps:
            table = rng.choice(HOT_TABLES)
            key = rng.randrange(gen.per_table)
            kind, data = gen.data(table, key, node, i)
            wire = {"id": f"h-{epoch:05d}-{i:07d}", "hlc": [wall, logical, node], "table": table,
                    "key": [f"h{key:05d}"], "kind": kind}  # fmt: skip
            if data is not None:
                wire["data"] = data
            wires.append(wire)
        out.append(wires)
    return out


def reference_fold(epochs: list[list[dict[str, Any]]]) -> Folded:
    """Every op through its table's strategy in HLC order; the rows and tombstones that leaves."""
    tables = {t.name: t for t in HOT_SCHEMA.tables}
    strategies = {t.name: get_strategy(t.strategy) for t in HOT_SCHEMA.tables}
    states: dict[str, dict[tuple[Any, ...], RowState]] = {name: {} for name in tables}
    records = [fast_record(w, "") for wires in epochs for w in wires]
    seconds = dict.fromkeys(tables, 0.0)
    applied = rejected = 0
    for r in sorted(records, key=lambda r: r.sort_key()):  # type: ignore[union-attr]
        assert r is not None
        table = tables[r.table]
        t0 = time.perf_counter()
        try:
            states[r.table][r.key] = strategies[r.table].apply(table, states[r.table].get(r.key, ABSENT), r)
            applied += 1
        except OpRejected:
            rejected += 1
        seconds[r.table] += time.perf_counter() - t0
    rows: dict[str, list[Row]] = {}
    tombstones: dict[str, dict[str, str]] = {}
    for name, by_key in states.items():
        value_cols = [c.name for c in tables[name].value_columns]
        # As the backend writes a row: key, value columns, the meta's canonical JSON.
        rows[name] = [(*key, *map(st.values.get, value_cols), canonical_json(st.meta))
                      for key, st in sorted(by_key.items()) if st.values is not None]  # fmt: skip
        tombstones[name] = {canonical_json(list(key)): canonical_json(st.meta)
                            for key, st in by_key.items() if st.values is None}  # fmt: skip
    return Folded(rows, tombstones, applied, rejected, seconds)
