"""The ``oplog`` command line.

Runtime commands live in :mod:`peer.commands` (one module per group); the tooling
commands (``dev``, ``bench``, ``auth``) are imported only when run. Every error an
operator can cause ends in one line on stderr and a non-zero exit status:

* 0 — done (``status``: every peer up and agreeing);
* 1 — ``status``/``verify``: peers disagree; ``config set``: the change was refused;
* 2 — the command could not do its work (unreachable NATS, refused credentials, an
  unknown database, bad input);
* 3 — ``serve``: this peer diverged and stopped; ``status``: degraded (a peer down
  or lagging).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

import doltlite  # noqa: F401  (must be imported before anything imports sqlite3)

from materializer.errors import Divergence
from oplog.errors import OplogError
from oplog.version import version
from peer import logs, settings
from peer.commands import changes, database, inspect, publish, reader, schema, serve
from peer.service import GC_THRESHOLDS

COMMANDS_GROUP = "oplog.commands"
EXIT_DIVERGED = 3
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oplog", description="Operations on NATS JetStream, materialized as one identical Dolt commit per epoch.")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file of options (env OPLOG_CONFIG; see docs/cli.md)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text or as one JSON object each",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (database, serve, publish, schema, inspect, reader, changes):
        module.register(sub)

    # Tooling commands (`oplog dev`, `oplog bench`) live above the runtime, in devtools/;
    # they reach the CLI through entry points, so the runtime never imports them.
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)

    from peer.auth import add_arguments as add_auth_arguments

    p = sub.add_parser("auth", help="generate NATS users and permissions for oplog's roles (docs/security.md)")
    add_auth_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        # Environment and config file become the options' defaults; flags still win.
        settings.configure(parser, argv)
    except OplogError as e:
        print(f"oplog: {e}", file=sys.stderr)
        return EXIT_ERROR
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)
    logs.configure(level=logging.DEBUG if args.verbose else logging.INFO, json=args.log_format == "json")
    # The sealer's job runs every tick; a tick waiting on NATS makes APScheduler log each
    # skipped run. The sealer logs what matters itself, once per change of state.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    if hasattr(args, "run"):  # a tooling command: synchronous, its own event loops
        return int(args.run(args))
    try:
        if args.command == "auth":
            from peer.auth import run_auth

            return run_auth(args)
        return asyncio.run(args.handler(args))
    except Divergence as e:
        # Its own status, so a supervisor can tell "this peer's data is wrong" from a crash.
        print(f"oplog: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except OplogError as e:
        print(f"oplog: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
