"""``oplog wait`` and ``oplog sql``: for readers of the peers' databases.

``oplog wait --epoch K`` returns once a peer has committed epoch K (its commit, or a
later one that closed it too), as the peers report it on the hash board (their
progress key and heartbeat). ``oplog wait --receipt JSON`` first finds the commit that
holds a published op, by the rule of decisions.md #16: the first commit whose seal
comes after the op in the stream and whose epoch is at least the receipt's. It finds
it by reading the stream's config and seal messages through the same
``epoch.assign.Assigner`` the peers run, so a late op (carried into a later commit) is
waited for in the commit that really holds it.

``oplog sql`` runs one read-only query against a doltlite peer's database file
``<data-dir>/<db>.db``. The file is opened read-only (``mode=ro``, ``query_only``) and
an authorizer allows reading only, so neither a write nor ``ATTACH`` nor ``VACUUM
INTO`` can change the peer's data or make files; statements other than ``SELECT``,
``WITH`` and ``VALUES`` are refused before they reach the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
import time
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (must precede sqlite3)
import orjson

from epoch.assign import Assigner
from materializer.agreement.hashes import HashBoard
from materializer.commit.reader import StreamReader
from oplog.errors import OplogError
from oplog.topology import Topology
from peer.commands.common import DEFAULT_DB, add_nats_options, jetstream, topology

EXIT_TIMEOUT = 1
DEFAULT_WAIT_S = 60.0
POLL_S = 0.1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "wait",
        help="wait until a peer has committed an epoch, or the commit holding a published op; exit 1 on timeout",
    )
    add_nats_options(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--epoch", type=int, help="the epoch to wait for")
    what.add_argument("--receipt", metavar="JSON",
                      help="one receipt line of `oplog publish --receipts` ('-': the first line of stdin)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S, metavar="S",
                   help=f"give up after S seconds with exit status 1 (default {DEFAULT_WAIT_S:g})")  # fmt: skip
    p.add_argument("--peer", help="wait for this peer (default: any peer)")
    p.set_defaults(handler=cmd_wait)

    p = sub.add_parser("sql", help="run one read-only query against a doltlite peer's database file")
    p.add_argument("query", nargs="?", help="a SELECT (or WITH ... SELECT) statement")
    p.add_argument("--file", type=Path, help="read the statement from this file instead")
    p.add_argument("--data-dir", type=Path, required=True, help="the peer's --data-dir")
    p.add_argument("--db", default=DEFAULT_DB, help="database name; the file is <data-dir>/<db>.db")
    p.add_argument("--json", action="store_true", help="one JSON object per row (bytes as base64)")
    p.set_defaults(handler=cmd_sql)


# -- oplog wait ----------------------------------------------------------------------


class _Progress:
    """What the wait has learned so far, for the line printed on a timeout."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.newest: tuple[str, int] | None = None  # (peer, epoch) furthest along


def parse_receipt(text: str) -> tuple[int, int | None]:
    """``(stream_seq, epoch)`` of one receipt line of ``oplog publish --receipts``."""
    try:
        receipt = orjson.loads(text)
        seq, epoch = receipt["stream_seq"], receipt.get("epoch")
        if type(seq) is not int or seq < 1 or (epoch is not None and type(epoch) is not int):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise OplogError(
            'a receipt is one JSON line of `oplog publish --receipts`: {"stream_seq": <int>, "epoch": <int or null>, ...}'
        ) from None
    return seq, epoch


async def commit_holding(js: Any, t: Topology, stream_seq: int, epoch: int | None) -> int:
    """The epoch of the commit that holds the op at ``stream_seq`` (decisions.md #16):
    the first seal after it in the stream that closes epochs, with an epoch of at least
    ``epoch``. Reads the stream's config and seal messages from its start, through the
    peers' own :class:`~epoch.assign.Assigner`; waits for that seal if it is not there yet."""
    info = await js.stream_info(t.stream)
    if stream_seq > info.state.last_seq:
        raise OplogError(f"stream {t.stream} ends at seq {info.state.last_seq}: the receipt's stream_seq "
                         f"{stream_seq} is not in it (is --db the database it was published to?)")  # fmt: skip
    assigner = Assigner()
    reader = StreamReader(js, t, 1, subject=f"{t.prefix}.*", wait_s=0.5)
    try:
        while True:
            for message in await reader.next_batch():
                sealed = assigner.feed(message)
                if sealed is not None and message.seq > stream_seq and (epoch is None or sealed.epoch >= epoch):
                    return sealed.epoch
            if reader.caught_up and assigner.config is None:
                first = info.state.first_seq
                why = f"(its messages before seq {first} were purged)" if first > 1 else "(no `oplog init` yet)"
                raise OplogError(f"stream {t.stream} holds no config of database {t.db} {why}, so no seal can be judged")
    finally:
        await reader.close()


async def wait_for_commit(js: Any, t: Topology, epoch: int, peer: str | None, progress: _Progress) -> tuple[str, int]:
    """Wait until a peer (``peer``, or any) reports a commit of ``epoch`` or later on the
    hash board; ``(peer, its epoch)``."""
    board = HashBoard(js, t)
    while True:
        peers = [peer] if peer else await board.peers()
        reached = dict(await board.progress(peers))
        for name, beat in (await board.heartbeats(peers)).items():
            reached[name] = max(reached.get(name, beat.epoch), beat.epoch)
        if reached:
            best = max(reached.items(), key=lambda item: (item[1], item[0]))
            progress.newest = best
            if best[1] >= epoch:
                return best
        await asyncio.sleep(POLL_S)


async def cmd_wait(args: argparse.Namespace) -> int:
    t = topology(args)
    progress = _Progress()
    receipt = None
    if args.receipt is not None:
        receipt = parse_receipt(sys.stdin.readline() if args.receipt == "-" else args.receipt)
    started = time.monotonic()
    async with jetstream(args, "oplog-wait") as (_, js):
        try:
            async with asyncio.timeout(args.timeout):
                if receipt is not None:
                    progress.target = await commit_holding(js, t, *receipt)
                else:
                    progress.target = args.epoch
                name, at = await wait_for_commit(js, t, progress.target, args.peer, progress)
        except TimeoutError:
            print(f"oplog: {_timeout_line(args, receipt, progress)}", file=sys.stderr)
            return EXIT_TIMEOUT
    print(f"epoch {progress.target} committed: peer {name} is at epoch {at} ({time.monotonic() - started:.2f} s)")
    return 0


def _timeout_line(args: argparse.Namespace, receipt: tuple[int, int | None] | None, progress: _Progress) -> str:
    waited = f"timed out after {args.timeout:g} s"
    if progress.target is None and receipt is not None:
        seq, epoch = receipt
        return f"{waited}: no seal has closed the op at stream seq {seq} (epoch {epoch}) yet; are the peers running?"
    if progress.newest is None:
        newest = f"peer {args.peer} has not reported" if args.peer else "no peer has reported"
    else:
        newest = f"peer {progress.newest[0]} is at epoch {progress.newest[1]}"
    return f"{waited} waiting for epoch {progress.target}: {newest}"


# -- oplog sql -----------------------------------------------------------------------

_READ_STATEMENT = re.compile(r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(SELECT|WITH|VALUES)\b", re.IGNORECASE | re.DOTALL)
# Pragmas that only describe the schema, as the table-valued functions pragma_<name>(...).
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}


def _authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    import sqlite3

    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def open_read_only(path: Path) -> Any:
    """A connection to a doltlite file that can only read (see the module docstring)."""
    import sqlite3
    from urllib.parse import quote

    if not path.is_file():
        raise OplogError(f"no database file {path} (is --data-dir the peer's data directory and --db its database?)")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fails here if it is no database
    except sqlite3.Error as e:
        raise OplogError(f"cannot read {path} as a doltlite database: {e}") from None
    conn.set_authorizer(_authorizer)
    return conn


def run_query(path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of one read-only statement."""
    import sqlite3

    if not _READ_STATEMENT.match(sql):
        raise OplogError("oplog sql runs read-only queries: the statement must start with SELECT, WITH or VALUES")
    conn = open_read_only(path)
    try:
        cursor = conn.execute(sql.strip().rstrip(";"))
        return [d[0] for d in cursor.description or ()], cursor.fetchall()
    except sqlite3.Error as e:
        denied = "not authorized" in str(e) or "authorization denied" in str(e)
        why = "it would write or reach outside the database, and oplog sql only reads" if denied else str(e)
        raise OplogError(f"query failed: {why}") from None
    except (sqlite3.Warning, ValueError) as e:  # e.g. "You can only execute one statement at a time."
        raise OplogError(f"query failed: {e}") from None
    finally:
        conn.close()


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def render_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """Rows as an aligned text table, with a count line."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]  # fmt: skip
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else value


async def cmd_sql(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.file is None):
        raise OplogError("give the query as an argument or with --file PATH (one of them)")
    if args.file is not None:
        try:
            sql = args.file.read_text()
        except OSError as e:
            raise OplogError(f"cannot read {args.file}: {e.strerror}") from None
    else:
        sql = args.query
    columns, rows = run_query(args.data_dir / f"{args.db}.db", sql)
    out = sys.stdout
    if args.json:
        for row in rows:
            out.write(orjson.dumps({c: _json_value(v) for c, v in zip(columns, row, strict=True)}).decode() + "\n")
    else:
        out.write(render_table(columns, rows) + "\n")
    return 0
