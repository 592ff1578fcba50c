"""Start and stop a private ``dolt sql-server`` on 127.0.0.1 (tests and local peers).

The server never reads the user's global Dolt config: ``DOLT_ROOT_PATH`` points at a scratch
directory whose config disables metrics (else dolt commands spawn a detached
``dolt send-metrics`` child as they exit). Pass server environment in ``env``, and the committer
date every commit of the server is stamped with as ``committer_date`` (``DOLT_COMMITTER_DATE``): peers
that must produce identical commit hashes need the same value (docs/dolt-server.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql
from pymysql.connections import Connection

DOLT_BIN_ENV = "OPLOG_DOLT_BIN"
INSTALL_HINT = "run `bash scripts/install-dolt.sh`"
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
_REPO_DOLT = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "dolt"
_LOG_TAIL_CHARS = 4000
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and dolt binding it
COMMITTER_DATE_ENV = "DOLT_COMMITTER_DATE"
# What dolt logs, and then uses the clock, when it cannot parse DOLT_COMMITTER_DATE (hashing fact 8).
_UNPARSED_DATE = f"Unable to parse value for {COMMITTER_DATE_ENV}"


class DoltServerError(RuntimeError):
    """The dolt binary is missing, or the server failed to start or to answer."""


def find_dolt() -> Path:
    """Return the dolt binary: ``$OPLOG_DOLT_BIN``, else the repo's ``.tools/bin/dolt``, else PATH.

    Raises:
        DoltServerError: no binary found; the message says how to install one.
    """
    explicit = os.environ.get(DOLT_BIN_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise DoltServerError(f"${DOLT_BIN_ENV}={explicit} is not executable; {INSTALL_HINT}")
        return Path(explicit)
    if os.access(_REPO_DOLT, os.X_OK):
        return _REPO_DOLT
    on_path = shutil.which("dolt")
    if on_path:
        return Path(on_path)
    raise DoltServerError(f"dolt binary not found (${DOLT_BIN_ENV}, {_REPO_DOLT}, PATH); {INSTALL_HINT}")


def scratch_root(path: Path) -> dict[str, str]:
    """Make ``path`` a dolt root dir with metrics off; return the env entries that select it.

    Any dolt command run with these (``dolt log`` in a data dir, say) reads no global config
    and spawns no detached ``dolt send-metrics``."""
    (path / ".dolt").mkdir(parents=True, exist_ok=True)
    (path / ".dolt" / "config_global.json").write_text(json.dumps({"metrics.disabled": "true"}))
    return {"DOLT_ROOT_PATH": str(path), "HOME": str(path), "DOLT_DISABLE_EVENT_FLUSH": "1"}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _cleanup(procs: list[subprocess.Popen[bytes]], scratch: Path) -> None:
    # Also runs at interpreter exit (weakref.finalize) if the owner forgot stop().
    while procs:
        _reap(procs.pop(), timeout=0)
    shutil.rmtree(scratch, ignore_errors=True)


class DoltServer:
    """One ``dolt sql-server`` process serving every database under ``data_dir``.

    ``start()`` returns once a MySQL connection succeeds; ``stop()`` sends SIGTERM,
    then SIGKILL after ``stop_timeout``, reaps, and removes the scratch directory
    (config, log, and ``data_dir`` if none was given). Both are idempotent; a stopped
    server cannot be restarted: make a new ``DoltServer`` on the same ``data_dir``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        dolt_bin: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        committer_date: str | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.dolt_bin = Path(dolt_bin) if dolt_bin is not None else find_dolt()
        self.host, self.port = host, 0
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self._scratch = Path(tempfile.mkdtemp(prefix="oplog-dolt-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._procs, self._scratch)
        self.data_dir = Path(data_dir) if data_dir is not None else self._scratch / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._scratch / "server.log"
        root = scratch_root(self._scratch / "root")
        root.pop("HOME")  # the server itself keeps the caller's HOME, as before
        self.env = {**os.environ, **root, **(env or {})}
        self.committer_date = committer_date
        if committer_date is not None:
            self.env[COMMITTER_DATE_ENV] = committer_date

    def init_database(self, name: str, *, date: str, user_name: str, user_email: str) -> None:
        """Create database ``name`` in ``data_dir`` with a deterministic init commit (before ``start()``).

        ``dolt init --date`` sets only the author date, so the committer date is pinned to ``date`` too
        (``DOLT_COMMITTER_DATE``): equal arguments give equal hashes. Raises ``DoltServerError`` on failure."""
        repo = self.data_dir / name
        repo.mkdir(parents=True)
        args = [str(self.dolt_bin), "init", "--name", user_name, "--email", user_email, "--date", date]
        env = {**self.env, "DOLT_COMMITTER_DATE": date}
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise DoltServerError(f"dolt init {name} failed ({done.returncode}): {done.stderr.decode()}")

    def start(self) -> DoltServer:
        """Start the server; return once it accepts a connection.

        Raises ``DoltServerError`` (with the server's log tail, process killed) if it
        exits or does not answer within ``start_timeout`` seconds."""
        if self._procs:
            return self
        if not self._finalizer.alive:
            raise DoltServerError("this DoltServer was stopped; create a new one on the same data_dir")
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self.port = _free_port(self.host)
                self._procs.append(self._spawn())
                try:
                    self._wait_ready(self._procs[0])
                except DoltServerError as e:  # dolt says "Port N already in use."
                    if attempt == _PORT_ATTEMPTS or f"Port {self.port} already in use" not in str(e):
                        raise
                    _reap(self._procs.pop(), timeout=0)
                    continue
                # dolt falls back to the clock on a date it cannot parse, and only logs it:
                # a peer started that way would diverge silently, so refuse to run it.
                if self.committer_date is not None and _UNPARSED_DATE in self.log_tail():
                    raise DoltServerError(
                        f"dolt could not parse committer_date={self.committer_date!r} and would use the clock "
                        f"(use YYYY-MM-DDTHH:MM:SS[.fff]Z):\n{self.log_tail()}"
                    )
                return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [str(self.dolt_bin), "sql-server", "--host", self.host, "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        with open(self._log_path, "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen(
                cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> DoltServer:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                raise DoltServerError(f"dolt sql-server exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                # read_timeout too: a non-dolt listener on the port would stall the handshake forever.
                self.connect(connect_timeout=1, read_timeout=1, write_timeout=1).close()
                return self
            except pymysql.err.OperationalError as e:
                if time.monotonic() >= deadline:
                    msg = f"dolt sql-server on {self.host}:{self.port} did not answer within {self.start_timeout:g}s"
                    raise DoltServerError(f"{msg} ({e}):\n{self.log_tail()}") from e
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate and reap the server (SIGTERM, then SIGKILL), then remove scratch files."""
        while self._procs:
            _reap(self._procs.pop(), self.stop_timeout)
        self._finalizer()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._procs[0].pid if self._procs else None

    def log_tail(self) -> str:
        """The end of the server's combined stdout and stderr (empty before ``start()``)."""
        return self._log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:] if self._log_path.exists() else ""

    def connect(self, database: str | None = None, **options: Any) -> Connection:
        """A new connection as dolt's default user (root, no password); the caller closes it.

        ``options`` go to ``pymysql.connect``; defaults: ``autocommit=True``, ``connect_timeout=10``."""
        options = {"autocommit": True, "connect_timeout": 10, **options}
        return pymysql.connect(host=self.host, port=self.port, user="root", database=database, **options)

    def __enter__(self) -> DoltServer:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
