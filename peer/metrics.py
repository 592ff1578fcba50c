"""A peer's metrics: a Prometheus HTTP endpoint, and the same text in a file.

Every peer owns one :class:`PeerMetrics` (its own registry, so several peers in one
process keep their numbers apart). ``oplog serve --metrics-port P`` serves it at
``http://<--metrics-host>:P/metrics`` (prometheus-client's server, in a thread); the
peer also rewrites ``<data_dir>/oplog-peer.prom`` after every commit and agreement
check, for node_exporter's textfile collector and for after the peer stopped (a peer
that stopped on a divergence still says so there).

What is exported, all labelled ``db`` and ``peer``:

* ``oplog_ops_applied_total``, ``oplog_ops_duplicate_total``, ``oplog_ops_late_total``,
  ``oplog_ops_rejected_total{reason}`` — per committed op;
* ``oplog_epochs_committed_total``, ``oplog_peer_last_epoch``,
  ``oplog_peer_last_commit_timestamp_seconds``;
* ``oplog_epoch_commit_seconds`` (histogram): planning plus the Dolt commit;
* ``oplog_seal_to_commit_seconds`` (histogram): from the moment the epoch could be
  sealed (its end plus grace) to its commit on this peer — the delay a reader waits;
* ``oplog_peer_lag_messages``: stream messages after the last one this peer read;
* the agreement figures of :class:`~materializer.agreement.divergence.DivergenceStats`
  (``oplog_peer_divergences_total``, ``oplog_peer_diverged``, …).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from materializer.agreement.divergence import DivergenceStats
from materializer.commit.loop import EpochReport

METRICS_FILE = "oplog-peer.prom"
# Commits take milliseconds to seconds; sealing waits for grace (often 0.2-2 s).
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class PeerMetrics:
    """The metrics of one peer (see the module docstring)."""

    def __init__(self, db: str, peer: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"db": db, "peer": peer}
        names = ("db", "peer")
        r = self.registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*names, *extra), registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r)

        self.applied = counter("oplog_ops_applied", "Ops applied in committed epochs.")
        self.duplicates = counter("oplog_ops_duplicate", "Op copies dropped as duplicates.")
        self.late = counter("oplog_ops_late", "Applied ops carried past their own epoch.")
        self.rejected = counter("oplog_ops_rejected", "Ops and messages recorded as rejected.", ("reason",))
        self.epochs = counter("oplog_epochs_committed", "Epoch commits made by this peer.")
        self.last_epoch = gauge("oplog_peer_last_epoch", "Last epoch this peer committed.")
        self.last_commit = gauge("oplog_peer_last_commit_timestamp_seconds", "When the last commit was made (Unix).")
        self.lag = gauge("oplog_peer_lag_messages", "Stream messages after the last one this peer read.")
        self.commit_seconds = Histogram("oplog_epoch_commit_seconds", "Planning and committing one epoch.",
                                        names, buckets=COMMIT_BUCKETS, registry=r)  # fmt: skip
        self.seal_to_commit = Histogram("oplog_seal_to_commit_seconds",
                                        "From an epoch's end plus grace to its commit on this peer.",
                                        names, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.last_agreed = gauge("oplog_peer_last_agreed_epoch", "Last epoch a majority of peers confirmed.")
        self.agreed = gauge("oplog_peer_agreed_epochs_total", "Epochs a majority of peers confirmed.")
        self.divergences = gauge("oplog_peer_divergences_total", "Epochs where this peer was in the minority.")
        self.splits = gauge("oplog_peer_splits_total", "Epochs where no hash had a majority.")
        self.repairs = gauge("oplog_peer_repairs_total", "Snapshot reinstalls after a divergence.")
        self.diverged = gauge("oplog_peer_diverged", "1 while the last judged epoch was a divergence.")
        self.strangers = gauge("oplog_peer_board_strangers", "Names on the hash board the roster does not hold.")
        self.last_epoch.labels(**self._labels).set(-1)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def committed(self, report: EpochReport, now_s: float) -> None:
        """Count one epoch commit (called by the peer after each commit)."""
        labels = self._labels
        self.applied.labels(**labels).inc(report.applied)
        self.duplicates.labels(**labels).inc(report.duplicates)
        self.late.labels(**labels).inc(report.late)
        for reason, count in report.rejections.items():
            self.rejected.labels(**labels, reason=reason).inc(count)
        self.epochs.labels(**labels).inc()
        self.last_epoch.labels(**labels).set(report.epoch)
        self.last_commit.labels(**labels).set(now_s)
        self.commit_seconds.labels(**labels).observe(report.seconds)
        self.seal_to_commit.labels(**labels).observe(max(0.0, now_s - report.due_ms / 1000))

    def progress(self, lag_messages: int, stats: DivergenceStats) -> None:
        """Set the gauges that are read, not counted (called between steps)."""
        labels = self._labels
        self.lag.labels(**labels).set(lag_messages)
        self.last_agreed.labels(**labels).set(stats.last_agreed_epoch)
        self.agreed.labels(**labels).set(stats.agreed_epochs)
        self.divergences.labels(**labels).set(stats.divergences)
        self.splits.labels(**labels).set(stats.splits)
        self.repairs.labels(**labels).set(stats.repairs)
        self.diverged.labels(**labels).set(int(stats.diverged))
        self.strangers.labels(**labels).set(len(stats.strangers))

    def text(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free port); the port bound."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP server, if serving; idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a scraper never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse(text: str) -> dict[str, float]:
    """``metric name -> value`` of Prometheus text, for samples without labels other than
    ``db`` and ``peer`` (tests and ``oplog status``); labelled samples are summed by name."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, value = line.rsplit(" ", 1)
        name = sample.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
    return values


def read(path: Path) -> dict[str, float]:
    """:func:`parse` of a metrics file the peer wrote."""
    return parse(path.read_text())
