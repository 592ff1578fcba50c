"""The chaos suite: faults injected into a real deployment, then an exact ledger.

Each scenario starts a real ``nats-server`` (a 3-node JetStream cluster where it
says so) and doltlite peers as ``oplog serve`` subprocesses, runs producers that
publish unique-key upserts, injects one kind of fault, waits until every peer has
committed past the last acknowledged op, stops everything, and reads every peer's
own database. The result row says:

* **ops acked** — distinct op ids the producers got a receipt for;
* **applied** / **rejected** — ``SUM(applied)`` / ``SUM(rejected)`` of the peer's
  ``oplog_epochs`` (the same on every peer, or the row fails);
* **epochs compared** / **disagreements** — epoch commits up to the lowest peer's
  last one, and those where a peer's hash differs or is missing.

A row passes only if, on every peer, acked == applied + rejected (nothing lost,
nothing applied twice), the rejections are the same rows everywhere, the ``users``
table holds exactly the acknowledged, non-rejected ops, and nothing disagrees.

The suite is bounded: every scenario runs under a wall-clock budget, every wait has
a deadline, and every process started is stopped (SIGTERM, then SIGKILL) on the way
out, failure or not. ``python -m devtools.chaos --out chaos-report.json`` runs them all.

This module holds the scenario table and the runner; the scenarios are in
:mod:`devtools.chaos_kills` and :mod:`devtools.chaos_stream`, the processes, load and
ledgers in :mod:`devtools.chaos_harness`, the pure result rows in :mod:`devtools.chaos_rows`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)
import orjson

from devtools.chaos_harness import ChaosError
from devtools.chaos_kills import nats_node_kill, paused_peer, peer_kills
from devtools.chaos_rows import COLUMNS, Outcome, ResultRow, build_row, failed_row, format_table
from devtools.chaos_stream import ack_timeout_retry, clock_skew, join_from_snapshot
from epoch.config import LatePolicy

Scenario = Callable[[Path, random.Random, dict[str, Any]], Awaitable[Outcome]]


@dataclass(frozen=True)
class Spec:
    name: str
    run: Scenario
    budget_s: float  # the scenario is cancelled (and everything stopped) past this
    injected: str


SCENARIOS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "peer-kills",
            peer_kills,
            150.0,
            "10x SIGKILL of a peer: 5x held inside its commit of an epoch of ~2,000 ops (at a named fault point), 5x 0-900 ms after a seal is published; restarted 0-500 ms later",
        ),
        Spec(
            "nats-node-kill",
            nats_node_kill,
            150.0,
            "SIGKILL of the R3 stream's leader node (3-node cluster) until 50 ops are acked without it, while 2 producers publish; restarted",
        ),
        Spec(
            "ack-timeout-retry",
            ack_timeout_retry,
            120.0,
            "producer ack timeout 0.3 s; nats-server SIGSTOPped 2x until an op has waited 3 ack timeouts: acks time out, batches re-sent, same Nats-Msg-Id",
        ),
        Spec(
            "clock-skew-carry",
            lambda root, rng, facts: clock_skew(root, rng, facts, LatePolicy.CARRY),
            120.0,
            "producers 10 min fast and 10 min slow (injected HLC wall clock); late policy carry, future bound 60 s, grace 1.5 s",
        ),
        Spec(
            "clock-skew-reject",
            lambda root, rng, facts: clock_skew(root, rng, facts, LatePolicy.REJECT),
            120.0,
            "producers 10 min fast and 10 min slow (injected HLC wall clock); late policy reject, future bound 60 s, grace 1.5 s",
        ),
        Spec(
            "paused-peer",
            paused_peer,
            120.0,
            "SIGSTOP of one peer until the others commit 60 epochs of 100 ms, then SIGCONT",
        ),
        Spec(
            "join-at-500",
            join_from_snapshot,
            150.0,
            "a new peer joins after epoch 500 (20 ms epochs, sealed every 5th) from a snapshot taken every 100 epochs, 2 kept; the stream is purged below the older one",
        ),
    )
}


async def run_scenario(name: str, root: Path, *, seed: int = 1) -> ResultRow:
    """Run one scenario in ``root`` under its budget and return its checked row; never raises
    for a scenario failure (the row says what went wrong)."""
    spec = SCENARIOS[name]
    rng = random.Random(f"{seed}-{name}")
    facts: dict[str, Any] = {"seed": seed}
    started = time.monotonic()
    try:
        async with asyncio.timeout(spec.budget_s):
            outcome = await spec.run(root, rng, facts)
    except Exception as e:  # a row per scenario, whatever broke; the processes are already stopped
        if isinstance(e, TimeoutError) and time.monotonic() - started >= spec.budget_s:
            e = ChaosError(f"scenario exceeded its budget of {spec.budget_s:.0f} s")
        return failed_row(name, time.monotonic() - started, spec.injected, e, facts)
    return build_row(
        name,
        acked=outcome.acked,
        ledgers=outcome.ledgers,
        seconds=time.monotonic() - started,
        injected=spec.injected,
        expect=outcome.expect,
        facts=outcome.facts,
        failures=outcome.failures,
    )


async def run_all(
    names: Sequence[str], root: Path, *, seed: int = 1, echo: Callable[[str], None] = print
) -> list[ResultRow]:
    rows = []
    for name in names:
        echo(f"--- {name}: {SCENARIOS[name].injected}")
        row = await run_scenario(name, root / name, seed=seed)
        echo(row.explain())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("chaos-report.json"), help="JSON report")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="keep every process's files here (default: a temporary dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = args.only or list(SCENARIOS)
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="oplog-chaos-"))
    started = time.monotonic()
    try:
        rows = asyncio.run(run_all(names, root, seed=args.seed))
    finally:
        if args.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "columns": list(COLUMNS),
        "table": format_table(rows).splitlines(),
        "rows": [r.to_json() for r in rows],
        "ok": all(r.ok for r in rows),
        "seconds": round(time.monotonic() - started, 1),
        "seed": args.seed,
    }
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print()
    print(format_table(rows))
    print(f"\n{len(rows)} scenarios in {report['seconds']} s; " + ("all passed" if report["ok"] else "FAILURES above"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
