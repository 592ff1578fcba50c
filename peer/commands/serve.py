"""``oplog serve``: run one peer until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from materializer.bootstrap.snapshots import SnapshotPolicy
from peer.commands.common import SERVE_CONNECT_WAIT_S, add_dolt_options, add_nats_options, nats_options
from peer.service import PeerConfig, run_peer

log = logging.getLogger("oplog.serve")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run one peer (materializer + sealer) until SIGINT/SIGTERM")
    add_nats_options(p, connect_wait_s=SERVE_CONNECT_WAIT_S)
    p.add_argument("--name", required=True, help="this peer's name (unique among peers)")
    p.add_argument("--data-dir", type=Path, required=True)
    add_dolt_options(p, backend_help=None, purpose="backend dolt-server")
    p.add_argument("--no-seal", action="store_true", help="do not propose seals (another peer does)")
    p.add_argument(
        "--snapshot-every", type=int, metavar="N", help="offer a snapshot of every N-th epoch to joining peers"
    )
    p.add_argument(
        "--snapshot-keep", type=int, default=2, metavar="K", help="keep K snapshots; purge the stream below the oldest"
    )
    p.add_argument(
        "--expected-peers",
        type=int,
        default=1,
        metavar="N",
        help="peers in this deployment: a hash needs a majority of at least N peers to judge a divergence",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="on divergence, reinstall the newest snapshot a majority confirmed (default: stop with exit 3)",
    )
    p.add_argument("--check-interval", type=float, default=1.0, help="seconds between hash comparisons")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="S", help="seconds between heartbeats")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint")
    p.add_argument(
        "--publish-changes", action="store_true",
        help="publish each epoch's changed rows to the stream OPLOG-CHANGES_<db> (docs/reading.md, On NATS)",
    )  # fmt: skip
    p.add_argument(
        "--stop-grace", type=float, default=3.0, metavar="S",
        help="after SIGTERM, seconds to finish the current commit before abandoning it (it rolls back)",
    )  # fmt: skip
    # Crash tests hold a peer at named commit points through files here (materializer/faults.py).
    p.add_argument("--fault-dir", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_serve)


async def cmd_serve(args: argparse.Namespace) -> int:
    config = PeerConfig(
        name=args.name,
        db=args.db,
        nats=nats_options(args),
        data_dir=args.data_dir,
        backend=args.backend,
        dolt_host=args.dolt_host,
        dolt_port=args.dolt_port,
        dolt_user=args.dolt_user,
        dolt_password=args.dolt_password,
        seal=not args.no_seal,
        replicas=args.replicas,
        snapshots=SnapshotPolicy(every_epochs=args.snapshot_every, keep=args.snapshot_keep)
        if args.snapshot_every
        else None,
        expected_peers=args.expected_peers,
        repair=args.repair,
        check_interval_s=args.check_interval,
        heartbeat_s=args.heartbeat,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        publish_changes=args.publish_changes,
        stop_grace_s=args.stop_grace,
        fault_dir=args.fault_dir,
    )
    stop = asyncio.Event()
    peer = asyncio.create_task(run_peer(config, stop), name=f"oplog-peer-{args.name}")
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping now", sig.name)
            peer.cancel()
            return
        log.info("%s: peer %s stopping (at most %.1f s more)", sig.name, args.name, args.stop_grace)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    # From here a signal stops the peer cleanly, even while it still waits for NATS.
    log.info("peer %s starting: connecting to NATS at %s", args.name, config.nats.display_url)
    try:
        await peer
    except asyncio.CancelledError:
        log.info("peer %s stopped; its unfinished step was abandoned and will be redone on restart", args.name)
        return 0
    log.info("peer %s stopped", args.name)
    return 0
