"""The rss measurement: peak RSS (VmHWM) of a peer subprocess materializing a prefilled stream.

The child is this package run as ``python -m devtools.bench _rss-peer URL DB DATA_DIR LAST_EPOCH
[traced]``; it prints one JSON line. ``ru_maxrss`` is not used: it inherits the parent's
RSS across fork.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from materializer.backends.doltlite import DoltliteBackend, child_env
from oplog.topology import Topology

from .options import REPO_ROOT, Sizes
from .streams import connected, prefill
from .timed_materializer import materialize_once

RSS_PEER_COMMAND = "_rss-peer"
CHILD_TIMEOUT_S = 600.0


def vm_kb(field_name: str) -> int | None:
    """A ``/proc/self/status`` figure in kB (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


async def _rss_child(url: str, db: str, data_dir: str, last_epoch: int, traced: bool) -> dict[str, Any]:
    before = vm_kb("VmHWM")
    trace: dict[str, Any] | None = None
    if traced:
        tracemalloc.start()
        trace = {}
    async with connected(url) as nc:
        backend = DoltliteBackend(Path(data_dir) / f"{db}.db")
        run = await materialize_once(nc.jetstream(), Topology(db=db), backend, last_epoch, trace=trace)
    return {
        "vmhwm_kb": vm_kb("VmHWM"),
        "vmhwm_before_kb": before,
        "seconds": run["seconds"],
        "trace": trace,
    }


def rss_peer_main(argv: list[str]) -> int:
    """The child: ``URL DB DATA_DIR LAST_EPOCH [traced]``; prints its figures as one JSON line."""
    url, db, data_dir, last = argv[:4]
    print(json.dumps(asyncio.run(_rss_child(url, db, data_dir, int(last), traced=argv[4:5] == ["traced"]))))
    return 0


async def _run_rss_child(url: str, db: str, data_dir: Path, last_epoch: int, traced: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", str(__package__), RSS_PEER_COMMAND, url, db, str(data_dir), str(last_epoch)]
    if traced:
        cmd.append("traced")
    env = child_env()  # without _DOLTLITE_BOOTSTRAPPED, or the child cannot open doltlite files
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"rss peer exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


async def measure_rss(url: str, s: Sizes, work: Path, rng: random.Random, trace: bool) -> dict[str, Any]:
    topology = Topology(db="rss")
    async with connected(url) as nc:
        await prefill(nc.jetstream(), topology, s.rss_ops * s.rss_epochs, s.rss_epochs, rng)
    child = await _run_rss_child(url, topology.db, work / "rss", s.rss_epochs - 1, False)
    traced = await _run_rss_child(url, topology.db, work / "rss-traced", s.rss_epochs - 1, True) if trace else None
    return {
        "ops_per_epoch": s.rss_ops,
        "epochs": s.rss_epochs,
        "peak_rss_mb": child["vmhwm_kb"] / 1024,
        "rss_after_imports_mb": (child["vmhwm_before_kb"] or 0) / 1024,
        "materialize_s": child["seconds"],
        "tracemalloc_after_plan": traced["trace"] if traced else None,
    }
