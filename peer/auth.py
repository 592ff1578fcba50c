"""oplog's roles as NATS users with subject permissions; ``oplog auth config`` writes them.

Five roles (docs/security.md has the table and the reasons):

* ``producer`` publishes ops (``oplog.<db>.ops.<table>``: every table, or the named ones)
  and reads the stream (``oplog publish`` reads the config to name each op's epoch);
* ``peer`` (one user per peer name) publishes seals, reads the stream, writes only its own
  keys of the hash board, uses the genesis and snapshot buckets, and publishes the change
  feed (``serve --publish-changes``);
* ``admin`` publishes config and schema and may use the whole JetStream API;
* ``reader`` only reads the hash board (``oplog status``), nothing of the stream;
* ``consumer`` only reads the change feed's stream (and acknowledges what it read).

What is not allowed is denied: each user gets allow lists only. The server config is an
``authorization { users = [...] }`` block of NKEY users (default) or password users;
:func:`write_credentials` makes their seeds or passwords, one file per user, mode 0600,
and reuses the files already there, so adding a peer leaves everyone else's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oplog.errors import OplogError
from oplog.topology import Topology

API = "$JS.API"
INBOX = "_INBOX.>"  # nats-py's default inbox prefix: request replies and push-consumer deliveries
# The hash-board keys a peer writes about itself (materializer/agreement/hashes.py): reports
# e.<epoch>.<peer>, progress p.<peer>, divergence d.<peer>, heartbeat h.<peer>. Named one
# by one: a wildcard such as "*.<peer>" would also let it write e.<peer>, which readers
# parse as an epoch number. tests/test_auth.py checks every key HashBoard writes is here.
OWN_BOARD_KEYS = ("e.*.{peer}", "p.{peer}", "d.{peer}", "h.{peer}")


class Role(StrEnum):
    PRODUCER = "producer"
    PEER = "peer"
    ADMIN = "admin"
    READER = "reader"
    CONSUMER = "consumer"


class Permissions(BaseModel):
    """Subjects one user may publish to and subscribe to (everything else is denied)."""

    model_config = ConfigDict(frozen=True)

    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = (INBOX,)


class User(BaseModel):
    """One NATS user of the generated config. ``secret``: an NKEY seed or a password."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    role: Role
    permissions: Permissions
    nkey: str | None = None  # public key (U...), for nkey users
    password: str | None = None  # for password users


def _read(stream: str) -> list[str]:
    """Read a stream: info, message gets, and consumers to pull from.

    Consumers are created without a name in the subject (``CONSUMER.CREATE.<stream>``,
    the filter is in the request body), so a filter cannot be enforced by subject."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",  # flow-control replies of ordered consumers (KV watch, object get)
    ]


def _bucket(bucket: str, *, kv: bool, objects: bool) -> list[str]:
    """Open (create if missing), read and write a KV bucket and/or Object Store ``bucket``."""
    subjects: list[str] = []
    if kv:
        subjects += [f"{API}.STREAM.CREATE.KV_{bucket}", *_read(f"KV_{bucket}"), f"$KV.{bucket}.>"]
    if objects:
        # Replacing or deleting an object purges its old chunks.
        subjects += [f"{API}.STREAM.CREATE.OBJ_{bucket}", f"{API}.STREAM.PURGE.OBJ_{bucket}",
                     *_read(f"OBJ_{bucket}"), f"$O.{bucket}.>"]  # fmt: skip
    return subjects


def producer_permissions(topologies: list[Topology], tables: list[str] | None = None) -> Permissions:
    """Publish ops (of ``tables``, or of every table) and read the stream; no seals, config,
    schema, hash board or buckets."""
    publish: list[str] = []
    for t in topologies:
        publish += [t.ops_subject(table) for table in tables] if tables else [t.ops_subject(">")]
        publish += _read(t.stream)
    return Permissions(publish=_unique(publish))


def peer_permissions(topologies: list[Topology], peer: str) -> Permissions:
    """Seal, read the stream, report its own hashes, share genesis and snapshots, publish
    the change feed.

    A peer may create the stream (a peer started before ``oplog init`` waits for the
    config instead of failing) and the buckets it opens lazily, and purge the stream
    below the oldest kept snapshot (snapshot retention). It may not update or delete
    a stream, nor publish ops, config or schema, nor write another peer's keys."""
    publish: list[str] = []
    for t in topologies:
        hashes = t.hashes_bucket
        publish += [
            t.seal_subject,
            # Fetching an object (genesis, snapshot) looks its stream up by subject.
            f"{API}.STREAM.NAMES",
            f"{API}.STREAM.CREATE.{t.stream}",
            f"{API}.STREAM.PURGE.{t.stream}",
            *_read(t.stream),
            # The hash board: every key readable, only its own keys writable.
            f"{API}.STREAM.CREATE.KV_{hashes}",
            *_read(f"KV_{hashes}"),
            *(f"$KV.{hashes}.{key.format(peer=peer)}" for key in OWN_BOARD_KEYS),
            *_bucket(t.genesis_bucket, kv=True, objects=True),
            *_bucket(t.snapshots_bucket, kv=True, objects=True),
            # The change feed (peer/change_publisher.py): create its stream if missing, read
            # its last sequence and last message (where to go on), publish change sets. No
            # consumers: a publisher never reads the feed through one.
            t.changes_subject("*"),
            f"{API}.STREAM.CREATE.{t.changes_stream}",
            f"{API}.STREAM.INFO.{t.changes_stream}",
            f"{API}.STREAM.MSG.GET.{t.changes_stream}",
        ]
    return Permissions(publish=_unique(publish))


def admin_permissions(topologies: list[Topology]) -> Permissions:
    """Everything on the databases' subjects and buckets, and the whole JetStream API."""
    publish = [f"{API}.>", "$JS.ACK.>", "$JS.FC.>"]
    for t in topologies:
        publish += [t.all_subjects, t.changes_subjects]
        for bucket in (t.hashes_bucket, t.genesis_bucket, t.snapshots_bucket):
            publish += [f"$KV.{bucket}.>", f"$O.{bucket}.>"]
    return Permissions(publish=_unique(publish))


def reader_permissions(topologies: list[Topology]) -> Permissions:
    """Read the hash board (``oplog status``); nothing of the stream."""
    publish: list[str] = []
    for t in topologies:
        publish += _read(f"KV_{t.hashes_bucket}")
    return Permissions(publish=_unique(publish))


def consumer_permissions(topologies: list[Topology]) -> Permissions:
    """Read the change feed's stream, with consumers of its own (durable ones included) and
    acknowledgements; nothing else: no publishes, not the ops stream, not the hash board."""
    publish: list[str] = [f"{API}.STREAM.NAMES"]  # a client finds a stream by subject (nats-py does)
    for t in topologies:
        publish += [
            *_read(t.changes_stream),
            f"{API}.CONSUMER.DURABLE.CREATE.{t.changes_stream}.*",  # nats-py's durable consumers
            f"$JS.ACK.{t.changes_stream}.>",
        ]
    return Permissions(publish=_unique(publish))


def _unique(subjects: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


# ---- the server config ----


def render(users: list[User], *, header: str = "") -> str:
    """The nats-server ``authorization`` block of ``users``. Strings are JSON-quoted: the
    NATS config parser reads them as plain strings (no ``$variable`` expansion)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append("authorization {")
    lines.append("  users = [")
    for user in users:
        who = {"nkey": user.nkey} if user.nkey is not None else {"user": user.name, "password": user.password}
        lines.append(f"    # {user.role.value} {user.name}")
        lines.append("    {")
        for key, value in who.items():
            lines.append(f"      {key}: {json.dumps(value)}")
        lines.append("      permissions: {")
        for kind, subjects in (("publish", user.permissions.publish), ("subscribe", user.permissions.subscribe)):
            lines.append(f"        {kind}: {{ allow: [")
            lines.extend(f"          {json.dumps(subject)}" for subject in subjects)
            lines.append("        ] }")
        lines.append("      }")
        lines.append("    }")
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (created so: never briefly open)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


def new_nkey_seed() -> str:
    """A fresh NKEY user seed (``SU...``)."""
    import nkeys

    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)).decode()


def public_nkey(seed: str) -> str:
    """The public key (``U...``) of an NKEY seed."""
    import nkeys

    pair = nkeys.from_seed(bytearray(seed.strip().encode()))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def write_credentials(directory: Path, name: str, method: str) -> tuple[str | None, str | None, Path]:
    """``(public nkey, password, file)`` of user ``name``: ``<name>.nk`` (an NKEY seed) or
    ``<name>.password``, made (mode 0600) unless it exists, then reused."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if method == "nkey":
        path = directory / f"{name}.nk"
        if not path.exists():
            _write_private(path, new_nkey_seed() + "\n")
        return public_nkey(path.read_text()), None, path
    path = directory / f"{name}.password"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(24) + "\n")
    return None, path.read_text().strip(), path


class Plan(BaseModel):
    """Who gets which role, for which databases."""

    model_config = ConfigDict(frozen=True)

    dbs: list[str] = Field(min_length=1)
    peers: list[str] = []
    producers: list[str] = []
    producer_tables: dict[str, list[str]] = {}  # producer -> tables (absent: every table)
    admins: list[str] = []
    readers: list[str] = []
    consumers: list[str] = []

    def members(self) -> list[tuple[str, Role]]:
        found = [(n, Role.PEER) for n in self.peers] + [(n, Role.PRODUCER) for n in self.producers]
        found += [(n, Role.ADMIN) for n in self.admins] + [(n, Role.READER) for n in self.readers]
        found += [(n, Role.CONSUMER) for n in self.consumers]
        names = [n for n, _ in found]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise OplogError(f"user names must be unique across roles; given twice: {', '.join(dupes)}")
        if unknown := sorted(set(self.producer_tables) - set(self.producers)):
            raise OplogError(f"--producer-tables names producers not in --producers: {', '.join(unknown)}")
        return found


def build_users(plan: Plan, credentials_dir: Path, method: str = "nkey") -> list[User]:
    """The users of ``plan``, with credentials from (or made in) ``credentials_dir``."""
    try:
        topologies = [Topology(db=db) for db in plan.dbs]
    except ValidationError as e:
        raise OplogError(f"--db: {e.errors()[0]['msg']}") from None
    users = []
    for name, role in plan.members():
        if role is Role.PEER:
            permissions = peer_permissions(topologies, name)
        elif role is Role.PRODUCER:
            permissions = producer_permissions(topologies, plan.producer_tables.get(name))
        elif role is Role.ADMIN:
            permissions = admin_permissions(topologies)
        elif role is Role.CONSUMER:
            permissions = consumer_permissions(topologies)
        else:
            permissions = reader_permissions(topologies)
        nkey, password, _ = write_credentials(credentials_dir, name, method)
        try:
            users.append(User(name=name, role=role, permissions=permissions, nkey=nkey, password=password))
        except ValidationError:
            raise OplogError(f"user name {name!r}: use letters, digits, '-' and '_' only") from None
    return users


# ---- the command line: oplog auth config ----


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _tables(values: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for value in values:
        producer, eq, tables = value.partition("=")
        if not eq or not producer or not _names(tables):
            raise OplogError(f"--producer-tables {value!r}: write PRODUCER=TABLE[,TABLE...]")
        found.setdefault(producer, []).extend(_names(tables))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``oplog auth`` subcommands."""
    sub = parser.add_subparsers(dest="auth_command", required=True)
    p = sub.add_parser("config", help="write a nats-server authorization block for oplog's roles")
    p.add_argument("--db", action="append", required=True, help="a database (repeat for several)")
    p.add_argument("--peers", type=_names, default=[], help="peer names, comma-separated (as in serve --name)")
    p.add_argument("--producers", type=_names, default=[], help="producer user names, comma-separated")
    p.add_argument("--producer-tables", action="append", default=[], metavar="PRODUCER=T1,T2",
                   help="limit a producer to these tables (repeat per producer; default: every table)")  # fmt: skip
    p.add_argument("--admins", type=_names, default=["admin"], help="admin user names (default: admin)")
    p.add_argument("--readers", type=_names, default=[], help="reader user names (oplog status only)")
    p.add_argument("--consumers", type=_names, default=[],
                   help="change-feed consumer user names (read the stream OPLOG-CHANGES_<db> only)")  # fmt: skip
    p.add_argument("--method", choices=["nkey", "password"], default="nkey",
                   help="nkey: users prove a seed file (default); password: plain passwords in the config")  # fmt: skip
    p.add_argument("--credentials-dir", type=Path, required=True,
                   help="where each user's seed (<name>.nk) or password (<name>.password) is made, mode 0600; "
                        "existing files are reused")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the block here (mode 0600) instead of stdout")


def run_auth(args: argparse.Namespace) -> int:
    """``oplog auth config``: write the block, report the credential files on stderr."""
    plan = Plan(
        dbs=args.db,
        peers=args.peers,
        producers=args.producers,
        producer_tables=_tables(args.producer_tables),
        admins=args.admins,
        readers=args.readers,
        consumers=args.consumers,
    )
    users = build_users(plan, args.credentials_dir, args.method)
    header = (
        f"oplog roles for database(s) {', '.join(plan.dbs)}; generated by `oplog auth config`.\n"
        "Include it from the server config: include ./oplog-auth.conf (docs/security.md)."
    )
    text = render(users, header=header)
    if args.out is not None:
        _write_private(args.out, text)
    else:
        sys.stdout.write(text)
    suffix = "nk" if args.method == "nkey" else "password"
    for user in users:
        print(f"{user.role.value} {user.name}: {args.credentials_dir / f'{user.name}.{suffix}'}", file=sys.stderr)
    return 0
