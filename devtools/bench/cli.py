"""Running ``oplog bench``: parse the flags, start NATS, run the chosen measurements, report."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.natsd import NatsServer
from peer.service import GC_THRESHOLDS

from .cherry import measure_cherry
from .contention import measure_contention
from .deployed import measure_deployed
from .growth import measure_growth
from .latency import measure_latency
from .materialize import measure_materialize
from .options import ALL_MEASUREMENTS, add_arguments, sizes_from
from .profile import measure_profile
from .publish import measure_publish
from .report import failed, print_blocks, print_profiles, render, rows_of, write_document
from .rss import RSS_PEER_COMMAND, measure_rss, rss_peer_main
from .soak import SOAK_PEER_COMMAND, measure_soak, soak_peer_main
from .storage import measure_storage
from .sustain import measure_sustain

DESCRIPTION = "``oplog bench``: throughput, latency and the cherry-pick baseline, measured in one run."


async def _run(args: argparse.Namespace) -> int:
    s = sizes_from(args)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(ALL_MEASUREMENTS)
    if unknown:
        print(f"oplog bench: unknown measurement(s) {sorted(unknown)}; choose from {', '.join(ALL_MEASUREMENTS)}")
        return 2
    out_path: Path = args.out
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="oplog-bench-"))
    results: dict[str, Any] = {}
    elapsed: dict[str, float] = {}
    started = time.time()
    server = NatsServer(work / "nats")
    mode = "quick" if args.quick else "full"
    print(f"oplog bench ({mode}): work dir {work}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    try:
        server.start()
        steps: dict[str, Callable[[], Any]] = {
            "publish": lambda: measure_publish(server.url, s),
            "materialize": lambda: measure_materialize(server.url, s, work, rng),
            # Own generators: the ops of the measurements that were here before stay the same.
            "contention": lambda: measure_contention(server.url, s, work, random.Random(args.seed)),
            "latency": lambda: measure_latency(server.url, s, work, rng),
            "cherry": lambda: asyncio.to_thread(measure_cherry, s, work, rng),
            "growth": lambda: asyncio.to_thread(measure_growth, s, work, rng),
            "rss": lambda: measure_rss(server.url, s, work, rng, trace=not args.quick),
            "profile": lambda: measure_profile(server.url, s, work, out_dir, rng),
            "soak": lambda: measure_soak(s, work, args.seed),
            "storage": lambda: asyncio.to_thread(measure_storage, s, work, args.seed),
            "deployed": lambda: measure_deployed(server.url, s, work, random.Random(args.seed)),
            "sustain": lambda: measure_sustain(server.url, s, work, random.Random(args.seed)),
        }
        for name in ALL_MEASUREMENTS:
            if name not in only:
                continue
            t0 = time.perf_counter()
            print(f"  {name} ...", end="", flush=True)
            gc.collect()
            try:
                results[name] = await steps[name]()
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            elapsed[name] = time.perf_counter() - t0
            print(f" {time.perf_counter() - t0:.1f} s" + (" (ERROR)" if failed({name: results[name]}) else ""))
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = rows_of(results)
    table = render(rows)
    argv = getattr(args, "_argv", None)
    command = "python -m devtools.bench " + " ".join(argv) if argv is not None else "oplog " + " ".join(sys.argv[1:])
    write_document(out_path, command=command, mode=mode, started=started, sizes=s, elapsed=elapsed,
                   results=results, rows=rows, table=table)  # fmt: skip
    print()
    print(table)
    print_profiles(results)
    print_blocks(results)
    print(f"\nresults: {out_path}  ({time.time() - started:.0f} s)")
    return 1 if failed(results) else 0


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of ``oplog bench``; returns the exit status (1 if a measurement failed)."""
    return asyncio.run(_run(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.bench [options]``, or a measurement's child (``_rss-peer …``, ``_soak-peer …``)."""
    argv = sys.argv[1:] if argv is None else argv
    gc.set_threshold(*GC_THRESHOLDS)  # as `oplog serve` runs a peer (and the RSS child)
    if argv[:1] == [RSS_PEER_COMMAND]:
        return rss_peer_main(argv[1:])
    if argv[:1] == [SOAK_PEER_COMMAND]:
        return soak_peer_main(argv[1:])
    parser = argparse.ArgumentParser(prog="oplog bench", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args._argv = argv
    return run_bench(args)
