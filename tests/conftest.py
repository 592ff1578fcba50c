"""Shared fixtures. doltlite must be imported before anything imports sqlite3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import doltlite  # noqa: F401
import pytest

from devtools.natsd import NatsServer
from materializer.backends.dolt_server import DEFAULT_COMMITTER_DATE
from materializer.backends.dolt_server_launcher import DoltServer, DoltServerError
from tests.support import BackendFactory, DoltliteBackends, DoltServerBackends


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real JetStream server on a free loopback port, stopped even if the test fails."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_dolt_server(data_dir: Path | None = None) -> DoltServer:
    """A dolt sql-server as peers run it (pinned committer date); a missing dolt fails the test."""
    try:
        return DoltServer(data_dir, committer_date=DEFAULT_COMMITTER_DATE).start()
    except DoltServerError as e:
        pytest.fail(str(e))  # never a skip: the message says `bash scripts/install-dolt.sh`


@pytest.fixture(scope="module")
def dolt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoltServer]:
    """One dolt sql-server per test module; every test makes its own databases on it."""
    server = start_dolt_server(tmp_path_factory.mktemp("dolt"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["doltlite", pytest.param("dolt-server", marks=pytest.mark.doltserver)])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Every backend kind in turn: makes a test's databases by name."""
    if request.param == "doltlite":
        return DoltliteBackends(tmp_path)
    return DoltServerBackends(request.getfixturevalue("dolt_server"))
