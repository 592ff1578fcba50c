"""The code blocks of the project's Markdown, and the world they run in (tests/test_docs.py).

A fenced block's info string is its language, then optional ``key=value`` attributes
(GitHub shows only the language)::

    ```bash                          run in the document's world
    ```json file=schema.json         checked as JSON, and written to the world's directory
    ```bash norun="why not"          not run; the reason is printed with the test's results
    ```sql peer=a db=shop            each statement run against that peer's database
    ```bash needs=shop               run after the world has database shop and peer a
    ```bash cwd=repo                 run in the repository (scripts/…), not the scratch dir

Checked languages: ``bash``/``sh`` (run with ``bash -e -o pipefail``), ``python`` (run
in one namespace per document, top-level ``await`` allowed), ``sql``, ``json`` (each
line, or the whole block), ``toml``. Anything else (``text``, ``console``, none) is
output shown to the reader, not a program.

The world of one document: a real nats-server, a scratch directory as the working
directory, ``oplog`` and ``nats-server`` on ``PATH``. So that blocks read as a user
would type them, a few literal values are replaced before running: the default NATS
URL ``nats://127.0.0.1:4222`` by the world's server, and ``/var/lib/oplog`` and
``/var/lib/nats`` by directories in the world. Processes a block leaves running in
the background (``oplog serve … &``) are stopped when the document is done.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (before sqlite3 is used)
import orjson

from devtools.natsd import NatsServer
from materializer.backends.doltlite import child_env

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")), "compose/README.md")
CHECKED = {"bash", "sh", "python", "sql", "json", "toml"}
BLOCK_TIMEOUT_S = 180.0
FENCE = re.compile(r"^```(\S*)(.*)$")


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    attributes: dict[str, str]
    code: str

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def norun(self) -> str | None:
        return self.attributes.get("norun")


def blocks(document: str) -> list[Block]:
    """Every fenced block of ``document`` (a path relative to the repository)."""
    path = ROOT / document
    if not path.exists():
        return []
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start, language, rest = i + 1, match.group(1), match.group(2)
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        attributes = {k: v for k, v in (_attribute(a) for a in shlex.split(rest))}
        found.append(Block(document, start, language, attributes, "\n".join(body) + "\n"))
    return found


def _attribute(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


@dataclass
class World:
    """Where one document's blocks run (see the module docstring)."""

    root: Path
    server: NatsServer | None = None
    namespace: dict[str, Any] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    def start(self) -> World:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.server = NatsServer(self.root / "nats")
        self.server.start()
        self.loop = asyncio.new_event_loop()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def substitute(self, code: str) -> str:
        code = code.replace("nats://127.0.0.1:4222", self.url)
        code = code.replace("/var/lib/oplog", str(self.root / "oplog"))
        return code.replace("/var/lib/nats", str(self.root / "nats-own"))

    def env(self) -> dict[str, str]:
        env = child_env()
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["OPLOG_NATS_URL"] = self.url
        env["OPLOG_NATS_CONNECT_TIMEOUT"] = "20"
        return env

    def stop(self) -> None:
        for group in self.groups:
            _kill_group(group)
        if self.loop is not None:
            self.loop.run_until_complete(_cancel_all(self.loop))
            self.loop.close()
        if self.server is not None:
            self.server.stop()

    # -- runners -----------------------------------------------------------------------

    def prepare_shop(self) -> None:
        """Database ``shop`` with the README's ``users`` table, a running peer ``a`` (data in
        ``/var/lib/oplog/a``) and a committed epoch holding two users: what a block marked
        ``needs=shop`` expects, as the README's own steps would leave it."""
        if self.namespace.get("__shop__"):
            return
        (self.cwd / "docs-schema.json").write_bytes(orjson.dumps({"tables": [USERS_TABLE]}))
        (self.cwd / "docs-ops.jsonl").write_text(
            '{"table": "users", "key": "u1", "kind": "upsert", "data": {"name": "Ann", "score": 3}}\n'
            '{"table": "users", "key": "u2", "kind": "upsert", "data": {"name": "Bo", "score": 5}}\n'
        )
        data = self.root / "oplog" / "a"
        script = f"""
oplog init --db shop --epoch-ms 200 --grace-ms 50
oplog publish --db shop --schema docs-schema.json
oplog serve --db shop --name a --data-dir {data} > {self.root}/peer-a.log 2>&1 &
oplog publish --db shop docs-ops.jsonl > /dev/null
"""
        self.bash(Block("docs world", 0, "bash", {}, script))
        deadline = time.monotonic() + 60
        while not _users(data / "shop.db"):
            if time.monotonic() > deadline:
                log = (self.root / "peer-a.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"docs world: peer a did not commit the users within 60 s:\n{log}")
            time.sleep(0.2)
        self.namespace["__shop__"] = True

    def declare_files(self, document: str) -> None:
        """Write every ``file=`` block of ``document`` first: a page may name a file
        (``oplog publish ops.jsonl``) before it shows it."""
        for block in blocks(document):
            if "file" in block.attributes and not block.norun:
                (self.cwd / block.attributes["file"]).write_text(block.code)

    def run(self, block: Block) -> str:
        """Run ``block``; raise AssertionError saying what failed."""
        if block.attributes.get("needs") == "shop":
            self.prepare_shop()
        runner = {"bash": self.bash, "sh": self.bash, "python": self.python, "sql": self.sql,
                  "json": self.json, "toml": self.toml}[block.language]  # fmt: skip
        return runner(block)

    def bash(self, block: Block) -> str:
        # Output goes to a file, not a pipe: a block that leaves a peer running in the
        # background (`oplog serve … &`) would keep a pipe open, and the block never end.
        log = self.root / f"block-{block.line}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", self.substitute(block.code)],
                cwd=ROOT if block.attributes.get("cwd") == "repo" else self.cwd, env=self.env(),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.groups.append(proc.pid)  # its background children share its process group
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise AssertionError(f"{block.name}: still running after {BLOCK_TIMEOUT_S:.0f} s:\n{log.read_text()}") from None
        output = log.read_text(errors="replace")
        assert proc.returncode == 0, f"{block.name}: exit {proc.returncode}:\n{output}"
        return output

    def python(self, block: Block) -> str:
        assert self.loop is not None
        code = self.substitute(block.code)
        compiled = compile(code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        self.namespace.setdefault("__name__", "__docs__")
        os.environ["OPLOG_NATS_URL"] = self.url  # what the blocks' code may read, like a user's shell
        # In the world's directory, as a reader's shell would be: files a block writes
        # (a consumer's position, say) must not land in the repository.
        before = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = eval(compiled, self.namespace)  # noqa: S307 (our own documentation)
            if asyncio.iscoroutine(result):
                self.loop.run_until_complete(asyncio.wait_for(result, BLOCK_TIMEOUT_S))
        finally:
            os.chdir(before)
        return ""

    def sql(self, block: Block) -> str:
        peer, db = block.attributes.get("peer", "a"), block.attributes.get("db", "shop")
        path = self.root / "oplog" / peer / f"{db}.db"
        assert path.exists(), f"{block.name}: no database {path}: an earlier block must run peer {peer!r}"
        out = []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for statement in _statements(self.substitute(block.code)):
                try:
                    rows = conn.execute(statement).fetchall()
                except sqlite3.Error as e:
                    raise AssertionError(f"{block.name}: {statement!r} failed: {e}") from None
                out.append(f"{statement}: {len(rows)} rows")
        finally:
            conn.close()
        return "\n".join(out)

    def json(self, block: Block) -> str:
        try:
            orjson.loads(block.code)
        except orjson.JSONDecodeError:
            for number, line in enumerate(block.code.splitlines(), block.line + 1):
                if line.strip():
                    try:
                        orjson.loads(line)
                    except orjson.JSONDecodeError as e:
                        raise AssertionError(f"{block.document}:{number}: not JSON: {e}") from None
        if "file" in block.attributes:
            (self.cwd / block.attributes["file"]).write_text(block.code)
        return ""

    def toml(self, block: Block) -> str:
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as e:
            raise AssertionError(f"{block.name}: not TOML: {e}") from None
        if "file" in block.attributes:
            (self.cwd / block.attributes["file"]).write_text(block.code)
        return ""


USERS_TABLE = {
    "name": "users", "primary_key": ["id"], "strategy": "lww",
    "columns": [{"name": "id", "type": "text", "nullable": False}, {"name": "name", "type": "text"},
                {"name": "score", "type": "integer"}],
}  # fmt: skip


def _users(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # no users table yet


def _statements(code: str) -> list[str]:
    text = "\n".join(line.split("--", 1)[0] for line in code.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if sig is signal.SIGTERM:
            for _ in range(100):  # up to 10 s for a peer to stop cleanly
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)


async def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task(loop)]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
