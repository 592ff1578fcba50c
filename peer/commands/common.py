"""What every command that talks to NATS shares: connection flags, the database, errors."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError

from oplog.connection import DEFAULT_URL, NatsOptions
from oplog.connection import close as close_nats
from oplog.connection import connect as connect_nats
from oplog.errors import OplogError
from oplog.topology import StreamLimits, Topology

DEFAULT_DB = "demo"
# How long a command waits for a NATS server to answer before it gives up with one
# line; a peer waits longer by default, since its servers may be starting with it.
COMMAND_CONNECT_WAIT_S = 10.0
SERVE_CONNECT_WAIT_S = 60.0


def add_nats_options(parser: argparse.ArgumentParser, *, connect_wait_s: float = COMMAND_CONNECT_WAIT_S) -> None:
    """``--nats``, the authentication and TLS flags, ``--db`` and ``--replicas``."""
    # Defaults here are the built-in ones; the environment and a config file are applied
    # over them by peer.settings (OPLOG_NATS_URL, else NATS_URL, for --nats).
    parser.add_argument("--nats", default=DEFAULT_URL, help="NATS URL(s), comma-separated")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=connect_wait_s,
        metavar="S",
        help=f"give up when no NATS server answers within S seconds (default {connect_wait_s:.0f})",
    )
    # One way to authenticate (docs/security.md). Secrets are best given through the
    # environment: a command line is visible to every user of the host (ps).
    auth = parser.add_argument_group("NATS authentication and TLS")
    auth.add_argument("--user", help="NATS user")
    auth.add_argument("--password", help="its password (better given as OPLOG_NATS_PASSWORD)")
    auth.add_argument("--token", help="NATS token (better given as OPLOG_NATS_TOKEN)")
    auth.add_argument("--creds", type=Path, help="user .creds file, operator mode")
    auth.add_argument("--nkey", type=Path, help="NKEY seed file, e.g. from `oplog auth config`")
    auth.add_argument("--tls-ca", type=Path, help="CA of the server's certificate")
    auth.add_argument("--tls-cert", type=Path, help="client certificate")
    auth.add_argument("--tls-key", type=Path, help="client certificate's key")
    parser.add_argument("--db", default=DEFAULT_DB, help="database name")
    parser.add_argument("--replicas", type=int, default=1, help="stream replicas (3 on a JetStream cluster)")


def add_dolt_options(parser: argparse.ArgumentParser, *, backend_help: str | None, purpose: str) -> None:
    """``--backend`` and the ``--dolt-*`` options of a dolt sql-server (``serve``, ``verify``)."""
    parser.add_argument("--backend", choices=["doltlite", "dolt-server"], default="doltlite", help=backend_help)
    parser.add_argument("--dolt-host", default="127.0.0.1", help=f"dolt sql-server host ({purpose})")
    parser.add_argument("--dolt-port", type=int, default=3306, help=f"dolt sql-server port ({purpose})")
    parser.add_argument("--dolt-user", default="root", help=f"dolt sql-server user ({purpose})")
    parser.add_argument("--dolt-password", default="", help="its password (better given as OPLOG_DOLT_PASSWORD)")


def nats_options(args: argparse.Namespace) -> NatsOptions:
    """The NATS connection options of a command's flags (see :func:`add_nats_options`)."""
    fields = {"url": args.nats, "user": args.user, "password": args.password, "token": args.token,
              "creds": args.creds, "nkey": args.nkey, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
              "tls_key": args.tls_key, "start_wait_s": args.connect_timeout}  # fmt: skip
    try:
        return NatsOptions(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        # Only the messages: pydantic would echo the input, a password included.
        why = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise OplogError(f"NATS options: {why}") from None


def topology(args: argparse.Namespace) -> Topology:
    try:
        return Topology(db=args.db, limits=StreamLimits(replicas=args.replicas))
    except ValidationError as e:
        raise OplogError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None


@contextlib.asynccontextmanager
async def jetstream(args: argparse.Namespace, name: str) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A connection for one command, closed on the way out."""
    nc = await connect_nats(nats_options(args), name=name, reconnect=False)
    try:
        yield nc, nc.jetstream()
    finally:
        await close_nats(nc)


def say(message: str) -> None:
    """One line for the operator on stderr (errors and progress, not results)."""
    print(f"oplog: {message}", file=sys.stderr)
