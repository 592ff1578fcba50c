"""What ``oplog bench`` measures and how much: its options, and the quick and full sizes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

MEASUREMENTS = ("publish", "materialize", "contention", "latency", "cherry", "growth", "rss", "profile")
# Long runs, only with --only: a default run stays within minutes.
EXTRA_MEASUREMENTS = ("soak", "storage", "deployed", "sustain")
ALL_MEASUREMENTS = MEASUREMENTS + EXTRA_MEASUREMENTS
AUTHOR = "bench <bench@localhost>"  # of the commits the bench makes without a materializer
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Sizes:
    publish_ops: int
    batch_ops: int
    materialize_ops: int
    materialize_epochs: int
    latency: dict[int, int]  # ops per epoch -> epochs measured
    cherry_m: list[int]
    table_sizes: list[int]
    growth_repeats: int
    rss_ops: int
    rss_epochs: int
    profile_ops: int
    contention_ops: int = 100_000
    contention_keys: int = 1_000
    contention_epochs: int = 10
    soak_epochs: int = 20_000
    soak_ops: int = 10
    soak_rows: int = 5_000
    soak_block: int = 1_000
    soak_checkpoint_epochs: int = 0  # 0: no checkpoints (the history grows without bound)
    storage_epochs: int = 1_000
    deployed: dict[int, int] = field(default_factory=lambda: {1_000: 20, 10_000: 10, 100_000: 3})  # ops/epoch -> epochs
    sustain_epoch_ms: list[int] = field(default_factory=lambda: [1000, 500, 250, 100])  # run longest first
    sustain_seconds: float = 20.0  # of publishing, per epoch length
    sustain_rate: int = 10_000  # ops/s
    sustain_grace_ms: int = 500  # the default of `oplog init`, whatever the epoch length


FULL = Sizes(
    publish_ops=200_000,
    batch_ops=1000,
    materialize_ops=100_000,
    materialize_epochs=10,
    latency={1_000: 20, 10_000: 10, 100_000: 3},
    cherry_m=[10, 100, 1000],
    table_sizes=[10_000, 1_000_000],
    growth_repeats=5,
    rss_ops=100_000,
    rss_epochs=2,
    profile_ops=100_000,
)
QUICK = Sizes(
    publish_ops=50_000,
    batch_ops=1000,
    materialize_ops=20_000,
    materialize_epochs=4,
    latency={1_000: 10, 10_000: 5},
    cherry_m=[10, 100, 1000],
    table_sizes=[10_000, 100_000],
    growth_repeats=3,
    rss_ops=100_000,
    rss_epochs=1,
    profile_ops=20_000,
    contention_ops=20_000,
    contention_epochs=4,
    soak_epochs=2_000,
    soak_block=200,
    storage_epochs=300,
    deployed={1_000: 10, 10_000: 5},
    sustain_epoch_ms=[500, 100],
    sustain_seconds=8.0,
)


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oplog bench``."""
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute (default: full, < 10 min)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"), help="JSON result file")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}; and, run only when named here: "
        f"{', '.join(EXTRA_MEASUREMENTS)}",
    )  # fmt: skip
    parser.add_argument("--publish-ops", type=int, help="ops published by each publish run")
    parser.add_argument("--batch-ops", type=int, help="producer max_batch_ops (default 1000)")
    parser.add_argument("--materialize-ops", type=int, help="ops in the materialize stream")
    parser.add_argument("--materialize-epochs", type=int, help="epochs those ops span")
    parser.add_argument("--latency-sizes", type=_ints, help="ops per epoch for the latency runs, e.g. 1000,10000")
    parser.add_argument("--latency-epochs", type=int, help="epochs measured per latency size (default by size)")
    parser.add_argument("--cherry-m", type=_ints, help="M values of the cherry-pick baseline, e.g. 10,100,1000")
    parser.add_argument("--table-sizes", type=_ints, help="table sizes for the commit-growth run")
    parser.add_argument("--rss-ops", type=int, help="ops per epoch for the RSS run")
    parser.add_argument("--profile-ops", type=int, help="ops for the profiled runs")
    parser.add_argument("--contention-ops", type=int, help="ops of the contention workload (4 strategies, hot keys)")
    parser.add_argument("--contention-keys", type=int, help="hot keys those ops share, across the 4 tables")
    parser.add_argument("--soak-epochs", type=int, help="epochs committed by the soak run")
    parser.add_argument("--soak-ops", type=int, help="upserts per epoch of the soak and storage runs")
    parser.add_argument("--soak-rows", type=int, help="rows of the table of the soak and storage runs")
    parser.add_argument("--soak-block", type=int, help="epochs per reported soak block")
    parser.add_argument("--soak-checkpoint-epochs", type=int,
                        help="re-root the soak's history every N epochs, as peers with checkpoint_epochs do")  # fmt: skip
    parser.add_argument("--storage-epochs", type=int, help="measured epochs of the storage-by-table run")
    parser.add_argument("--deployed-sizes", type=_ints, help="ops per epoch for the 3-process latency, e.g. 1000,10000")
    parser.add_argument("--deployed-epochs", type=int, help="epochs measured per size of the 3-process latency")
    parser.add_argument("--sustain-epoch-ms", type=_ints, help="epoch lengths (ms) of the sustain runs, e.g. 1000,500")
    parser.add_argument("--sustain-seconds", type=float, help="seconds of publishing per sustain run")
    parser.add_argument("--sustain-rate", type=int, help="ops/s the sustain runs publish (default 10000)")
    parser.add_argument("--sustain-grace-ms", type=int, help="grace of the sustain databases (default 500)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (path is printed)")
    parser.add_argument("--seed", type=int, default=1)


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    s = Sizes(**{k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                 for k, v in vars(base).items()})  # fmt: skip
    for name in ("publish_ops", "batch_ops", "materialize_ops", "materialize_epochs", "cherry_m", "table_sizes",
                 "rss_ops", "profile_ops", "contention_ops", "contention_keys", "soak_epochs", "soak_ops", "soak_rows",
                 "soak_block", "soak_checkpoint_epochs", "storage_epochs", "sustain_epoch_ms", "sustain_seconds",
                 "sustain_rate", "sustain_grace_ms"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            setattr(s, name, value)
    if getattr(args, "latency_sizes", None):
        s.latency = {n: s.latency.get(n, 10 if n <= 10_000 else 3) for n in args.latency_sizes}
    if getattr(args, "latency_epochs", None):
        s.latency = dict.fromkeys(s.latency, args.latency_epochs)
    if getattr(args, "deployed_sizes", None):
        s.deployed = {n: s.deployed.get(n, 10 if n <= 10_000 else 3) for n in args.deployed_sizes}
    if getattr(args, "deployed_epochs", None):
        s.deployed = dict.fromkeys(s.deployed, args.deployed_epochs)
    return s
