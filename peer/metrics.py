"""A peer's metrics as a Prometheus text file (the node_exporter textfile format).

The peer rewrites ``<data_dir>/oplog-peer.prom`` after every commit and every
agreement check; node_exporter's textfile collector (or anything that reads the
format) scrapes it. A file instead of an HTTP endpoint keeps the peer free of a
listening socket, and it survives the peer: after a peer stopped on a divergence
the file still says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from materializer.divergence import DivergenceStats

METRICS_FILE = "oplog-peer.prom"


def render(peer: str, db: str, last_epoch: int, stats: DivergenceStats) -> str:
    labels = f'peer="{peer}",db="{db}"'
    rows = [
        ("oplog_peer_last_epoch", "gauge", "Last epoch this peer committed.", last_epoch),
        ("oplog_peer_last_agreed_epoch", "gauge", "Last epoch a majority of peers confirmed.",
         stats.last_agreed_epoch),
        ("oplog_peer_agreed_epochs_total", "counter", "Epochs a majority of peers confirmed.", stats.agreed_epochs),
        ("oplog_peer_divergences_total", "counter", "Epochs where this peer was in the minority.", stats.divergences),
        ("oplog_peer_splits_total", "counter", "Epochs where no hash had a majority.", stats.splits),
        ("oplog_peer_repairs_total", "counter", "Snapshot reinstalls after a divergence.", stats.repairs),
        ("oplog_peer_diverged", "gauge", "1 while the last judged epoch was a divergence.", int(stats.diverged)),
    ]  # fmt: skip
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {value}"]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a scraper never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read(path: Path) -> dict[str, float]:
    """``metric name -> value`` of a file :func:`render` wrote (for tests and ``oplog status``)."""
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{", 1)[0]] = float(value)
    return values
