"""Shared fixtures. doltlite must be imported before anything imports sqlite3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import doltlite  # noqa: F401
import pytest

from peer.natsd import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real JetStream server on a free loopback port, stopped even if the test fails."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
