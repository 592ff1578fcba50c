"""Peer processes for ``oplog dev`` and the tests: start, stop, kill, always reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from materializer.backends.doltlite import child_env

STOP_TIMEOUT_S = 10.0


class PeerProcess:
    """``oplog serve`` in a child process, logging to ``<data_dir>/peer.log``.

    ``extra``: more ``oplog serve`` flags (``--nkey FILE``, ``--creds FILE``, ``--tls-ca ...``).
    ``env``: more environment for the child; pass secrets here (``OPLOG_NATS_PASSWORD``),
    not in ``extra``, where any user of the host could read them (ps)."""

    def __init__(
        self,
        name: str,
        db: str,
        nats_url: str,
        data_dir: Path,
        *,
        extra: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.db = db
        self.nats_url = nats_url
        self.data_dir = Path(data_dir)
        self.extra = extra or []
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / f"{self.db}.db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "peer.log"

    def start(self) -> PeerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "peer.cli", "serve", "--name", self.name, "--db", self.db,
                "--nats", self.nats_url, "--data-dir", str(self.data_dir), *self.extra]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            # doltlite's bootstrap marker must not leak into the child (DESIGN: known hazards).
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**child_env(), **self.env}, cwd=os.getcwd(),
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps (a paused peer too)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            # A stopped process only acts on SIGTERM once continued (chaos tests pause peers).
            self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL now (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: the peer freezes mid-whatever, its connections left open (chaos tests)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def stop_all(peers: Iterable[PeerProcess], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop many peers at once: SIGTERM (and SIGCONT, for paused ones) to all, then reap
    each, SIGKILLing whoever is still up at the deadline. Never raises for a dead peer."""
    live = [p for p in peers if p.running]
    for peer in live:
        assert peer.proc is not None
        peer.proc.send_signal(signal.SIGTERM)
        peer.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + timeout
    for peer in live:
        assert peer.proc is not None
        try:
            peer.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            peer.kill()
