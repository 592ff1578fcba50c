"""``oplog verify``: recompute epochs from the stream and name the peer that differs.

Runs the real CLI in a subprocess against three real peers, one of which (``c``)
miscomputes an epoch and, without ``--repair``, stops on its divergence.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from devtools.natsd import NatsServer
from materializer.backends.doltlite import child_env
from tests.running_peers import EPOCHS, FAULT_EPOCH, three_peers, wait_until

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 90.0


def oplog_verify(url: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "peer.cli", "verify", "--nats", url, "--db", "t", *args],
        capture_output=True, text=True, env=child_env(), timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


async def test_verify_recomputes_epochs_and_names_the_peer_that_differs(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with three_peers(nats_server.url, tmp_path, repair=False) as (board, tasks):

        async def all_reported() -> bool:
            return len(await board.reports(EPOCHS - 1, ["a", "b", "c"])) == 3

        # c reports every epoch before its watch stops it (it judges the newest one).
        await wait_until(all_reported, "every peer to report the last epoch", tasks, allowed_to_end=("c",))

    # From a snapshot the healthy majority confirmed (a and b snapshot every 2 epochs).
    # --explain reads c's own file: its commit of the first epoch it differs in lacks one upsert.
    code, out, err = await asyncio.to_thread(
        oplog_verify, nats_server.url, "--from-epoch", str(FAULT_EPOCH), "--epoch", str(EPOCHS - 1), "--json",
        "--explain", "--peer-db", f"c={tmp_path / 'c' / 't.db'}",
    )  # fmt: skip
    assert code == 1, err
    result = orjson.loads(out)
    assert result["base"].startswith(f"the snapshot of epoch {FAULT_EPOCH - 1} by ")
    assert [c["epoch"] for c in result["checks"]] == list(range(FAULT_EPOCH, EPOCHS))
    for check in result["checks"]:
        assert check["disagreeing"] == ["c"]
        assert check["reports"]["a"] == check["reports"]["b"] == check["recomputed"]
    (explanation,) = result["explanations"]
    assert explanation["peer"] == "c" and explanation["epoch"] == FAULT_EPOCH, explanation
    (table,) = explanation["tables"]
    assert table["table"] == "users" and table["rows_differing"] == 1, table
    (row,) = table["rows"]  # the dropped upsert: c kept the epoch before's values
    assert row["key"] == ["k0"] and "name" in row["columns"], row
    assert row["peer"]["name"] == f"e{FAULT_EPOCH - 1}" and row["expected"]["name"] == f"e{FAULT_EPOCH}", row

    # From the genesis, before the fault: everyone agrees, exit 0, a table on stdout.
    code, out, err = await asyncio.to_thread(oplog_verify, nats_server.url, "--from-epoch", "0", "--epoch", "2")
    assert code == 0, err
    assert out.startswith("recomputed from the genesis") and "every report matches the recomputation" in out

    # oplog status lists c's own divergence record, and fails.
    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "peer.cli", "status", "--nats", nats_server.url, "--db", "t", "--json"],
        capture_output=True, text=True, env=child_env(), timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    report = orjson.loads(status.stdout)
    assert status.returncode == 1 and report["verdict"] == "diverged", status.stdout
    assert {p["name"] for p in report["peers"] if p["diverged"]} == {"c"}

    # An epoch nobody sealed: a clear error and exit 2, after the timeout given.
    code, out, err = await asyncio.to_thread(oplog_verify, nats_server.url, "--epoch", "99", "--timeout", "2")
    assert code == 2 and "epoch 99 was not recomputed within 2 s" in err and "not be sealed yet" in err
