"""``oplog bench``: throughput, latency and the cherry-pick baseline, measured in one run.

Everything runs on this machine: a real ``nats-server`` on loopback (``devtools.natsd``),
real doltlite files in a temporary directory and, for one materialize row, a private
``dolt sql-server``; all are stopped and removed at the end (even on error; ``--keep``
keeps the files). Every ratio compares two figures measured in the *same* run, so the
ratios hold across machines better than the absolute numbers do. One module per
measurement, each can be picked with ``--only``:

``publish``      one producer process: :class:`oplog.producer.Producer` (batches of
                 ``--batch-ops``) vs raw ``js.publish_async`` of one op per message.
``materialize``  one fresh in-process :class:`Materializer` reading a prefilled stream
                 (ops over several epochs, seals included) vs a raw insert of the same
                 final rows + one Dolt commit; on doltlite, and on Dolt sql-server
                 (``materialize_dolt_server``).
``contention``   the same on a hot-key workload (100k ops on 1,000 keys, four tables, one
                 per strategy) vs a raw insert of its final rows and a reference fold,
                 whose tables the peer's must hash-equal.
``latency``      seal-to-identical-commit latency on 3 in-process peers: from the
                 seal's publish ack until all 3 committed that epoch with one hash.
``deployed``     the same on 3 ``oplog serve`` processes (only with ``--only``).
``cherry``       the DoltSwarm baseline: M one-row commits on M branches replayed by
                 HLC-ordered ``dolt_cherry_pick`` + ``dolt_commit('--amend')`` vs ONE
                 epoch commit (``plan_epoch`` + ``commit_epoch``) of the same M ops.
``growth``       one changed row committed as an epoch into tables of growing size.
``rss``          peak RSS (VmHWM) of a peer subprocess materializing 100k-op epochs.
``soak``         thousands of small epochs into one doltlite file, reported per block:
                 commit time, file size, RSS, reading the epoch list (only with ``--only``).
``storage``      history bytes per epoch by table, by ablation (only with ``--only``).
``profile``      pyinstrument profiles of the publish and materialize paths (HTML +
                 text under the results directory) and their top frames by share.

The rest: ``options`` (flags and sizes), ``cli`` (the run), ``report`` (table, targets,
JSON), ``streams`` (filling a stream), ``raw_insert`` (the materialize baselines),
``timed_materializer`` and ``direct_epochs`` (shared by several measurements), ``stats``,
``contention_ops`` (the hot-key workload and its reference fold).

Not a test: nothing here asserts timing. ``python -m devtools.bench --quick`` runs it
without the CLI.
"""

from __future__ import annotations

import argparse

import doltlite  # noqa: F401  (must precede anything that imports sqlite3)

# isort: split
from .cli import main, run_bench
from .options import add_arguments

__all__ = ["add_arguments", "main", "run_bench"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``oplog bench`` (through the ``oplog.commands`` entry point)."""
    p = sub.add_parser("bench", help="measure throughput and latency against baselines (writes JSON)")
    add_arguments(p)
    p.set_defaults(run=run_bench)
