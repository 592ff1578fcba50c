"""The soak, storage-by-table and contention measurements of ``oplog bench``, at tiny sizes.

These check the shape and sanity of what they report (block counts, a file that only grows,
parts that add up, a contention result equal to the reference fold), never a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import pytest

from devtools.bench.contention import measure_contention
from devtools.bench.contention_ops import HOT_TABLES, hot_wires, reference_fold
from devtools.bench.options import QUICK, add_arguments, sizes_from
from devtools.bench.report import render, rows_of
from devtools.bench.soak import measure_soak
from devtools.bench.storage import measure_storage
from devtools.natsd import NatsServer

TINY = dataclasses.replace(QUICK, soak_epochs=50, soak_ops=5, soak_rows=200, soak_block=20, storage_epochs=20,
                           contention_ops=1200, contention_keys=40, contention_epochs=3)  # fmt: skip


def _rendered(name: str, result: dict[str, object]) -> str:
    json.dumps(result)  # the JSON document holds it as it is
    return render(rows_of({name: result}))


async def test_soak_reports_every_block_of_a_growing_file(tmp_path: Path) -> None:
    r = await measure_soak(TINY, tmp_path, seed=3)

    blocks = r["blocks"]
    assert [b["epochs"] for b in blocks] == [20, 20, 10]  # the last block holds the rest
    assert [b["last_epoch"] for b in blocks] == [21, 41, 51]  # epoch 1 is the fill
    sizes = [r["after_fill_bytes"]] + [b["file_bytes"] for b in blocks]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # history only grows
    for b in blocks:
        assert b["epoch_list_len"] == b["last_epoch"] + 1  # epochs 0 .. last, each once
        assert b["bytes_per_epoch"] > 0 and b["rss_mb"] > 0
        assert 0 < b["commit_ms_median"] <= b["commit_ms_p99"]
    assert 0 < r["after_gc_bytes"] <= r["before_gc_bytes"] == blocks[-1]["file_bytes"]
    assert "soak: file growth per epoch" in _rendered("soak", r)


async def test_soak_with_checkpoints_keeps_the_file_below_the_soak_without(tmp_path: Path) -> None:
    plain = await measure_soak(TINY, tmp_path / "plain", seed=3)
    bounded = await measure_soak(dataclasses.replace(TINY, soak_checkpoint_epochs=10), tmp_path / "bounded", seed=3)

    blocks = bounded["blocks"]
    assert [b["checkpoints"] for b in blocks] == [2, 2, 1]  # before epochs 10, 20, ..., 50
    # The history holds the epochs since the last checkpoint, and the file stays smaller.
    assert [b["epoch_list_len"] for b in blocks] == [2, 2, 2]  # epochs 20-21, 40-41, 50-51
    assert bounded["before_gc_bytes"] < plain["before_gc_bytes"]
    assert max(b["file_bytes"] for b in blocks) < plain["blocks"][-1]["file_bytes"]


def test_storage_parts_come_from_files_that_left_them_out(tmp_path: Path) -> None:
    r = measure_storage(TINY, tmp_path, seed=3)

    v = r["variants"]
    assert set(v) == {"full", "no_upserts", "no_deletes", "no_op_ids", "no_rejections", "bare"}
    assert r["full_bytes_per_epoch"] == v["full"]["bytes_per_epoch"]
    # Each file that leaves a part out grows less than the full one, and more than the bare one.
    for name in ("no_upserts", "no_deletes", "no_op_ids", "no_rejections"):
        assert v["bare"]["bytes_per_epoch"] < v[name]["bytes_per_epoch"] < v["full"]["bytes_per_epoch"], name
    parts = r["parts"]
    assert set(parts) >= {"users upserts", "oplog_op_ids", "oplog_rejections", "deletes", "commit"}
    assert sum(p["bytes_per_epoch"] for p in parts.values()) == pytest.approx(r["full_bytes_per_epoch"])
    assert len(set(r["heads"].values())) == len(v)  # six different histories
    loc = r["by_locality"]
    assert list(loc) == ["random row", "adjacent rows", "random rows"]
    assert [x["upserts"] for x in loc.values()] == [1, 5, 5]
    # The same upserts cost less history when they share leaves.
    assert 0 < loc["adjacent rows"]["bytes_per_epoch"] < loc["random rows"]["bytes_per_epoch"]
    assert "  users upserts" in _rendered("storage", r)


def test_the_reference_fold_is_deterministic_and_covers_every_strategy() -> None:
    wires = hot_wires(400, 8, 2, random.Random(5))
    again = hot_wires(400, 8, 2, random.Random(5))
    assert wires == again  # CRDT writers have fixed client ids: the same bytes every run
    assert {w["table"] for ws in wires for w in ws} == set(HOT_TABLES)
    assert {w["kind"] for ws in wires for w in ws} == {"upsert", "delete", "patch", "incr", "crdt"}
    folded = reference_fold(wires)
    assert folded.applied + folded.rejected == 400
    assert all(len(rows) <= 2 for rows in folded.rows.values())  # 8 keys over 4 tables


async def test_contention_run_equals_the_reference_fold(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        r = await measure_contention(server.url, TINY, tmp_path, random.Random(7))
    finally:
        server.stop()

    assert r["matches_reference"] is True
    assert r["table_hashes"] == r["reference_hashes"]  # dolt_hashof_table of every table
    assert sum(r["ops_by_table"].values()) == r["ops"] == r["applied"] + r["rejected"] == 1200
    assert set(r["ops_by_table"]) == set(HOT_TABLES)
    assert 0 < r["final_rows"] <= 40
    assert r["seconds"] > 0 and r["raw_insert_s"] > 0 and r["fold_s"] > 0
    assert "reference fold alone" in _rendered("contention", r)


def test_sizes_and_flags_of_the_new_measurements() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    full = sizes_from(parser.parse_args([]))
    assert (full.soak_epochs, full.soak_ops, full.soak_rows, full.soak_block) == (20_000, 10, 5_000, 1_000)
    assert (full.contention_ops, full.contention_keys) == (100_000, 1_000)
    quick = sizes_from(parser.parse_args(["--quick", "--soak-epochs", "300", "--deployed-sizes", "1000",
                                          "--deployed-epochs", "4"]))  # fmt: skip
    assert (quick.soak_epochs, quick.soak_block, quick.deployed) == (300, 200, {1000: 4})
    only = parser.parse_args([]).only.split(",")
    assert "contention" in only and not {"soak", "storage", "deployed"} & set(only)  # long runs: only when named
