"""Where ``oplog verify`` recomputes: a scratch database of the deployment's own kind.

Hashes are a function of the engine (a doltlite commit and a Dolt sql-server commit of the
same epoch differ), and so are some decisions: what a backend can store as a key decides
which ops are rejected (``Backend.check_key``). So the recomputation runs on a backend of
the kind the peers run on, and the kind decides only how that backend is made and
removed; the verify steps (:mod:`materializer.agreement.verify`) are the same for both:

* :class:`DoltliteScratch`: a file in a directory of the caller's (a temporary one for the
  command), deleted afterwards.
* :class:`DoltServerScratch`: a new database ``oplog_verify_<db>_<random>`` on a dolt
  sql-server the operator names, dropped afterwards (also when verifying failed). The
  server must run with the peers' ``DOLT_COMMITTER_DATE`` (installing the genesis checks
  it) and must read the directory this process unpacks snapshots into (the system temp
  dir unless ``snapshot_dir`` says otherwise): a server on this host, as for a peer.
  Dolt keeps a dropped database under ``.dolt_dropped_databases`` (``dolt_undrop``) until
  ``CALL dolt_purge_dropped_databases()``, which would purge every dropped database of
  the server, so it is not called here.

A genesis or snapshot artifact says which kind made it (:func:`artifact_kind`); verify
refuses to install one into a scratch of the other kind, saying which options to pass.
"""

from __future__ import annotations

import logging
import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from materializer.agreement.commits import BackendKind, DoltliteFile, DoltServerDatabase, Location
from materializer.backends.base import Backend
from materializer.errors import BackendError, VerificationError

GZIP_MAGIC = b"\x1f\x8b"  # a Dolt sql-server artifact is a tar.gz of a Dolt backup
SCRATCH_PREFIX = "oplog_verify_"
KIND_NAMES: dict[BackendKind, str] = {"doltlite": "doltlite", "dolt-server": "Dolt sql-server"}

log = logging.getLogger("oplog.verify")


def artifact_kind(artifact: bytes) -> BackendKind:
    """The backend kind that made a genesis or snapshot artifact."""
    return "dolt-server" if artifact.startswith(GZIP_MAGIC) else "doltlite"


@dataclass
class ScratchDatabase:
    """One scratch database: the backend the recomputation writes, and where to read it."""

    backend: Backend
    location: Location
    description: str


class Scratch(ABC):
    """Makes and removes the scratch database of one verification."""

    kind: BackendKind

    @abstractmethod
    def create(self, db: str) -> ScratchDatabase:
        """A new, empty scratch database for database ``db``, its backend open.

        Raises :class:`VerificationError` when it cannot be made (a server that does not
        answer, refused credentials), saying what to change."""

    @abstractmethod
    def drop(self, scratch: ScratchDatabase) -> None:
        """Close and remove ``scratch``. Never raises: a failure is logged with what to do."""

    def mismatch(self, deployment: BackendKind) -> str:
        """What to pass when the deployment runs on ``deployment``, not on this kind."""
        if deployment == "dolt-server":
            return (
                "verify needs a scratch database on a dolt sql-server: pass --backend dolt-server and "
                "--dolt-host/--dolt-port of a server on this host that runs with the peers' DOLT_COMMITTER_DATE"
            )
        return "verify them with --backend doltlite (the default)"


class DoltliteScratch(Scratch):
    """A doltlite file in ``workdir``."""

    kind: BackendKind = "doltlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    def create(self, db: str) -> ScratchDatabase:
        from materializer.backends.doltlite import DoltliteBackend

        path = self.workdir / f"{db}-verify-{secrets.token_hex(4)}.db"
        backend = DoltliteBackend(path)
        try:
            backend.open()
        except (BackendError, OSError) as e:
            raise VerificationError(f"cannot make a scratch doltlite file in {self.workdir}: {e}") from None
        return ScratchDatabase(backend, DoltliteFile(path), f"scratch doltlite file {path}")

    def drop(self, scratch: ScratchDatabase) -> None:
        scratch.backend.close()
        assert isinstance(scratch.location, DoltliteFile)
        path = scratch.location.path
        for leftover in path.parent.glob(path.name + "*"):  # the file and any sidecar (journal, tmp)
            try:
                leftover.unlink()
            except OSError as e:
                log.warning("could not remove the scratch file %s (%s); delete it by hand", leftover, e)


class DoltServerScratch(Scratch):
    """A database on the dolt sql-server at ``host:port``."""

    kind: BackendKind = "dolt-server"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3306,
        *,
        user: str = "root",
        password: str = "",
        snapshot_dir: Path | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.user = host, port, user
        self._password = password
        self.snapshot_dir = snapshot_dir
        self.connect_timeout = connect_timeout

    def create(self, db: str) -> ScratchDatabase:
        from materializer.backends.dolt_server import DoltServerBackend

        name = SCRATCH_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", db) + "_" + secrets.token_hex(4)
        backend = DoltServerBackend(
            host=self.host, port=self.port, user=self.user, password=self._password, database=name,
            snapshot_dir=self.snapshot_dir, connect_timeout=self.connect_timeout,
        )  # fmt: skip
        try:
            backend.open()
        except BackendError as e:
            raise VerificationError(
                f"cannot use the dolt sql-server at {self.host}:{self.port} for verify's scratch database ({e}); "
                "start one, or pass --dolt-host/--dolt-port/--dolt-user of a running one"
            ) from None
        location = DoltServerDatabase(self.host, self.port, name, self.user, self._password)
        return ScratchDatabase(backend, location, f"scratch database {name} on dolt sql-server {self.host}:{self.port}")

    def drop(self, scratch: ScratchDatabase) -> None:
        from materializer.backends.dolt_server import DoltServerBackend

        backend = scratch.backend
        assert isinstance(backend, DoltServerBackend)
        backend.close()
        name = backend.database.replace("`", "``")
        try:
            conn = backend.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001  (reported, never raised over what verify found)
            log.warning(
                "could not drop the %s (%s): drop it by hand (DROP DATABASE `%s`)", scratch.description, e, name
            )


def describe_kind(kind: BackendKind) -> str:
    return KIND_NAMES[kind]
