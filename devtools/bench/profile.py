"""The profile measurement: pyinstrument on the publish and materialize paths.

Writes ``profile-{publish,publish-e2e,materialize}.{html,txt}`` next to the JSON result
and keeps the top frames by self time and by inclusive time in project code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from materializer.backends.doltlite import DoltliteBackend
from oplog.stream import ensure_stream
from oplog.topology import Topology

from .options import Sizes
from .publish import make_ops, producer_e2e, producer_run
from .streams import connected, prefill
from .timed_materializer import materialize_once

OWN_PACKAGES = ("oplog/", "epoch/", "materializer/", "peer/")
BENCH_DIR = str(__package__).replace(".", "/") + "/"  # devtools/bench/: the bench's own frames are not project code


def _top_frames(session: Any, limit: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Top functions by self time and by total (inclusive) time, as shares of the run."""
    root = session.root_frame()
    if root is None:
        return {"self": [], "total": []}
    total = root.time or 1e-9
    self_time: dict[str, float] = {}
    incl: dict[str, float] = {}

    def name(frame: Any) -> str:
        path = frame.file_path_short or frame.file_path or "?"
        where = f":{frame.line_no}" if frame.function.startswith("<") and frame.line_no else ""
        return f"{path}:{frame.function}{where}"

    def walk(frame: Any, parent: str, ancestors: frozenset[str]) -> None:
        ident = frame.identifier
        if ident.startswith("["):  # pyinstrument's synthetic frames: [self], [await], [out-of-context]
            label = parent if ident.startswith("[self]") else f"{ident.split(chr(0))[0]} in {parent}"
            self_time[label] = self_time.get(label, 0.0) + frame.time
            return
        key = name(frame)
        if not frame.children:
            self_time[key] = self_time.get(key, 0.0) + frame.time
        if key not in ancestors:
            incl[key] = incl.get(key, 0.0) + frame.time
        for child in frame.children:
            walk(child, key, ancestors | {key})

    walk(root, "<root>", frozenset())

    def ranked(table: dict[str, float]) -> list[dict[str, Any]]:
        items = sorted(table.items(), key=lambda kv: -kv[1])
        return [{"frame": k, "seconds": round(v, 4), "share": round(v / total, 4)} for k, v in items[:limit]]

    def ours(k: str) -> bool:
        return any(k.startswith(p) or f"/{p}" in k for p in OWN_PACKAGES)

    own_incl = {k: v for k, v in incl.items() if ours(k) and BENCH_DIR not in k}
    return {"self": ranked(self_time), "total_own_code": ranked(own_incl)}


@contextlib.contextmanager
def _profiled(out_dir: Path, name: str, result: dict[str, Any]) -> Iterator[None]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        html, text = out_dir / f"profile-{name}.html", out_dir / f"profile-{name}.txt"
        html.write_text(profiler.output_html())
        text.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        result[name] = {"html": str(html), "text": str(text), **_top_frames(profiler.last_session)}


async def measure_profile(url: str, s: Sizes, work: Path, out_dir: Path, rng: random.Random) -> dict[str, Any]:
    if importlib.util.find_spec("pyinstrument") is None:
        return {"skipped": "pyinstrument is not installed (pip install pyinstrument)"}
    result: dict[str, Any] = {"ops": s.profile_ops}
    n = s.profile_ops
    async with connected(url) as nc:
        js = nc.jetstream()
        ops = make_ops(n, node="prof")
        topology = Topology(db="profpub")
        await ensure_stream(js, topology)
        with _profiled(out_dir, "publish", result):  # the headline path: enqueue made ops, wait for acks
            await producer_run(js, topology, ops, s.batch_ops)
        del ops
        topology = Topology(db="profe2e")
        await ensure_stream(js, topology)
        with _profiled(out_dir, "publish-e2e", result):  # make_ops (rows, stamp, validate, encode) + publish_many + acks
            await producer_e2e(js, topology, n, s.batch_ops)
        topology = Topology(db="profmat")
        epochs = max(1, min(10, n // 10_000))
        await prefill(js, topology, n, epochs, rng)
        backend = DoltliteBackend(work / "profmat.db")
        with _profiled(out_dir, "materialize", result):
            # Commits run on the loop thread here, so the profile shows them too.
            await materialize_once(js, topology, backend, epochs - 1, inline=True)
    result["materialize_epochs"] = epochs
    return result
