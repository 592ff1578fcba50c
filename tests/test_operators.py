"""What an operator does to running peers, against real nats-server and `oplog serve` processes.

Changing the epoch length under load, watching a peer die in `oplog status`, stopping
a peer whose NATS is gone, a wrong URL for every command, and the claims a peer makes
on its data directory and its name.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.chaos_harness import Deployment, Load, db_config, loading
from devtools.natsd import NatsServer, free_ports
from devtools.processes import PeerProcess
from materializer.backends.doltlite import DoltliteBackend, child_env
from peer.control import read_timeline

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60.0


def oplog(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer.cli", *args], capture_output=True, text=True, env=child_env(), timeout=timeout
    )


async def oplog_async(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(oplog, *args, timeout=timeout)


def hashes(db_path: Path) -> dict[int, str]:
    with DoltliteBackend(db_path) as backend:
        return dict(backend.epoch_hashes())


# -- epoch length at runtime ------------------------------------------------------------------


async def wait_past(dep: Deployment, epoch: int, timeout: float = 60.0) -> None:
    await dep.wait_committed(epoch, timeout=timeout)


@pytest.mark.timeout(300)
async def test_config_set_changes_epoch_length_under_load_with_identical_hashes(tmp_path: Path) -> None:
    # max_future_epochs 4: a change can apply a few epochs after the newest seal.
    async with Deployment(tmp_path, db_config(epoch_ms=1000, grace_ms=200, max_future_epochs=4)) as dep:
        peers = [dep.add_peer(f"p{i}", ["--heartbeat", "0.2"]) for i in (1, 2, 3)]
        await dep.start_peers(peers)
        load = Load(dep.js, dep.topology, "config")
        load.add("w1")
        took: list[dict[str, Any]] = []
        try:
            async with loading(load, {"w1": 300.0}):
                for epoch_ms, grace_ms in ((250, 100), (1000, 200)):
                    # The operator's command: it waits until a peer took the change.
                    asked = time.monotonic()
                    done = await oplog_async("config", "set", "--nats", dep.nats.url, "--db", dep.config.db,
                                             "--epoch-ms", str(epoch_ms), "--grace-ms", str(grace_ms))  # fmt: skip
                    assert done.returncode == 0, done.stdout + done.stderr
                    effective = int(done.stdout.split(" from epoch ")[1].split()[0])
                    assert "accepted it" in done.stdout
                    # Every peer commits past the boundary in the new rhythm.
                    await wait_past(dep, effective + 3)
                    took.append({"epoch_ms": epoch_ms, "effective": effective,
                                 "seconds": round(time.monotonic() - asked, 1)})  # fmt: skip
            await load.drain()
            # Settle on the real timeline (two changes later), then stop everything.
            timeline = await read_timeline(dep.js, dep.topology)
            assert timeline is not None and [s.epoch_ms for s in timeline.segments] == [1000, 250, 1000]
            now = timeline.epoch_of(time.time_ns() // 1_000_000)
            await dep.wait_committed(now + 1)
        finally:
            await load.abort()
    print("config changes took effect:", took)
    ledgers = dep.ledgers()
    # Nothing lost, nothing doubled, every epoch the same on every peer.
    for ledger in ledgers:
        assert ledger.applied == len(load.acked) and ledger.rejected == 0, ledger
    all_hashes = [hashes(p.db_path) for p in peers]
    common = set.intersection(*(set(h) for h in all_hashes))
    assert {took[0]["effective"], took[1]["effective"]} <= common
    for epoch in common:
        assert len({h[epoch] for h in all_hashes}) == 1, epoch


async def test_config_set_refuses_an_epoch_too_soon_and_values_out_of_range(tmp_path: Path) -> None:
    async with Deployment(tmp_path, db_config(epoch_ms=1000, grace_ms=200, max_future_epochs=4)) as dep:
        peer = dep.add_peer("p1")
        await dep.start_peers([peer])
        url, db = dep.nats.url, dep.config.db
        too_soon = await oplog_async("config", "set", "--nats", url, "--db", db, "--epoch-ms", "500",
                                     "--grace-ms", "0", "--at-epoch", "0")  # fmt: skip
        assert too_soon.returncode == 2 and "is too soon" in too_soon.stderr and "choose epoch" in too_soon.stderr
        huge = await oplog_async("config", "set", "--nats", url, "--db", db, "--epoch-ms", str(10**12),
                                 "--grace-ms", "0")  # fmt: skip
        assert huge.returncode == 2 and "epoch_ms" in huge.stderr and "Traceback" not in huge.stderr
        # init with other values fails, naming them; the same values pass.
        other = await oplog_async("init", "--nats", url, "--db", db, "--epoch-ms", "250", "--grace-ms", "200",
                                  "--max-future-epochs", "4")  # fmt: skip
        assert other.returncode == 2 and "epoch_ms is 1000, not 250" in other.stderr
        same = await oplog_async("init", "--nats", url, "--db", db, "--epoch-ms", "1000", "--grace-ms", "200",
                                 "--max-future-epochs", "4")  # fmt: skip
        assert same.returncode == 0 and "already initialized with this config" in same.stdout


# -- status -------------------------------------------------------------------------------------


async def status_json(url: str, db: str) -> tuple[int, dict[str, Any]]:
    done = await oplog_async("status", "--nats", url, "--db", db, "--json")
    return done.returncode, orjson.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


@pytest.mark.timeout(180)
async def test_status_shows_a_killed_peer_down_and_says_degraded(tmp_path: Path) -> None:
    async with Deployment(tmp_path, db_config(epoch_ms=500, grace_ms=100)) as dep:
        peers = [dep.add_peer(f"p{i}", ["--heartbeat", "0.2", "--expected-peers", "3"]) for i in (1, 2, 3)]
        await dep.start_peers(peers)
        url, db = dep.nats.url, dep.config.db
        deadline = time.monotonic() + 30
        while (found := await status_json(url, db))[0] != 0:
            assert time.monotonic() < deadline, found
        code, report = found
        assert report["verdict"] == "agree" and [p["up"] for p in report["peers"]] == [True] * 3

        peers[1].kill()
        killed = time.monotonic()
        # Degraded, first perhaps for its lag (it stops committing at once), then down too
        # (its heartbeat ages past three intervals): wait for the verdict naming it down.
        while True:
            code, report = await status_json(url, db)
            by_name = {p["name"]: p for p in report.get("peers", [])}
            if code == 3 and "p2" in by_name and not by_name["p2"]["up"]:
                break
            assert code in (0, 3) and time.monotonic() - killed < 30, report
        print(f"p2 reported down, verdict degraded, {time.monotonic() - killed:.1f} s after the SIGKILL")
        assert report["verdict"] == "degraded" and by_name["p1"]["up"] and by_name["p3"]["up"]
        assert any(r.startswith("peer p2: down") for r in report["reasons"])

        # An unknown database is an error, with one line.
        unknown = await oplog_async("status", "--nats", url, "--db", "nosuch")
        assert unknown.returncode == 2 and unknown.stderr.startswith("oplog: no database 'nosuch'")
        assert len(unknown.stderr.strip().splitlines()) == 1


# -- fail fast, stop always ---------------------------------------------------------------------


COMMANDS: list[tuple[str, ...]] = [
    ("init",),
    ("status",),
    ("verify",),
    ("roster", "--peers", "a"),
    ("config", "set", "--epoch-ms", "500", "--grace-ms", "0"),
    ("publish", "--schema", "schema.json"),
    ("serve", "--name", "a", "--data-dir", "DATA"),
    ("schema", "apply", "SCHEMA"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_gives_up_on_an_unreachable_nats_with_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    (tmp_path / "schema.json").write_text('{"changes": [{"op": "drop_table", "table": "x"}]}')
    args = [a.replace("DATA", str(tmp_path / "data")).replace("SCHEMA", str(tmp_path / "schema.json")) for a in command]
    started = time.monotonic()
    done = oplog(*args, "--nats", f"nats://u:secret@127.0.0.1:{port}", "--connect-timeout", "2", "--db", "t")
    took = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("oplog:")]
    assert lines and lines[-1].startswith(f"oplog: no NATS server at nats://u:***@127.0.0.1:{port} answered within 2 s")
    assert "Traceback" not in done.stderr and "secret" not in done.stderr + done.stdout
    print(f"{' '.join(command[:2])}: exit 2 after {took:.1f} s")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until ``proc`` exits; TimeoutExpired past ``timeout`` (the test's bound)."""
    started = time.monotonic()
    proc.wait(timeout)
    return time.monotonic() - started


def wait_for_log(peer: PeerProcess, text: str, timeout: float) -> None:
    """Wait until ``peer`` has logged ``text`` (while it runs), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while text not in peer.log_tail(200):
        assert peer.running, peer.log_tail()
        assert time.monotonic() < deadline, f"no {text!r} within {timeout:.0f} s:\n{peer.log_tail()}"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_a_peer_whose_nats_is_gone_stops_on_sigterm_within_seconds(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    peer = PeerProcess("a", "t", server.url, tmp_path / "a", extra=["--stop-grace", "2"])
    try:
        init = oplog("init", "--nats", server.url, "--db", "t", "--epoch-ms", "200", "--grace-ms", "0")
        assert init.returncode == 0, init.stderr
        peer.start()
        deadline = time.monotonic() + 30
        while "committed" not in peer.log_tail(50):
            assert peer.running and time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.1)
        # NATS goes away; the peer keeps trying to reconnect...
        server.stop()
        wait_for_log(peer, "lost the connection to NATS", 30)
        # ...and a SIGTERM still stops it, with a log line saying so.
        assert peer.proc is not None
        peer.proc.send_signal(signal.SIGTERM)
        took = wait_exit(peer.proc, 30)
        print(f"stopped {took:.1f} s after SIGTERM with NATS gone")
        assert peer.proc.returncode == 0, peer.log_tail()
        assert "SIGTERM: peer a stopping" in peer.log_tail(30)
    finally:
        peer.stop()
        server.stop()


@pytest.mark.timeout(120)
def test_a_peer_still_connecting_stops_on_sigterm(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    peer = PeerProcess("a", "t", f"nats://127.0.0.1:{port}", tmp_path / "a", extra=["--stop-grace", "1"])
    try:
        peer.start()
        # Connecting (it would wait 60 s for a server), with its signal handlers installed.
        wait_for_log(peer, "starting: connecting to NATS", 60)
        assert peer.running and peer.proc is not None
        peer.proc.send_signal(signal.SIGTERM)
        took = wait_exit(peer.proc, 30)
        print(f"stopped {took:.1f} s after SIGTERM while connecting")
        assert peer.proc.returncode == 0, peer.log_tail()
    finally:
        peer.stop()


# -- claims -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_data_dir_and_a_peer_name_are_held_by_one_peer(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    first = PeerProcess("a", "t", server.url, tmp_path / "a", extra=["--heartbeat", "0.2"])
    try:
        assert oplog("init", "--nats", server.url, "--db", "t", "--epoch-ms", "200").returncode == 0
        first.start()
        deadline = time.monotonic() + 30
        while "committed" not in first.log_tail(50):
            assert first.running and time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
        # Another peer on the same data directory: refused, one line, the first unharmed.
        same_dir = oplog("serve", "--nats", server.url, "--db", "t", "--name", "b", "--data-dir", str(tmp_path / "a"))
        assert same_dir.returncode == 2 and f"data directory {tmp_path / 'a'} is in use by another peer (pid " in (
            same_dir.stderr
        )
        # Another peer under the same name, elsewhere: refused once it sees the heartbeat go on.
        same_name = oplog("serve", "--nats", server.url, "--db", "t", "--name", "a", "--data-dir", str(tmp_path / "x"))
        assert same_name.returncode == 2 and "peer name 'a' is taken" in same_name.stderr, same_name.stderr
        assert first.running
        # The first peer, SIGKILLed and restarted on its own directory, is recognized at once.
        first.kill()
        first.start()
        deadline = time.monotonic() + 30
        while first.log_tail(50).count("serving database") < 2:
            assert first.running and time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
    finally:
        first.stop()
        server.stop()


@pytest.mark.timeout(120)
def test_a_peer_stopped_inside_a_commit_abandons_it_and_resumes_it_on_restart(tmp_path: Path) -> None:
    from devtools.chaos_harness import last_committed_epoch
    from materializer.faults import FaultDir

    server = NatsServer(tmp_path / "nats")
    server.start()
    faults = FaultDir(tmp_path / "faults")
    peer = PeerProcess("a", "t", server.url, tmp_path / "a",
                       extra=["--stop-grace", "1", "--fault-dir", str(tmp_path / "faults")])  # fmt: skip
    try:
        assert oplog("init", "--nats", server.url, "--db", "t", "--epoch-ms", "200", "--grace-ms", "0").returncode == 0
        peer.start()
        # Held inside its commit: every row of the epoch written, the Dolt commit not made.
        faults.arm("commit.before-dolt-commit")
        deadline = time.monotonic() + 30
        while (held := faults.held_at("commit.before-dolt-commit")) is None:
            assert peer.running and time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.05)
        assert peer.proc is not None
        peer.proc.send_signal(signal.SIGTERM)
        # Past --stop-grace the peer abandons the commit it is in; only then is the hold
        # lifted, and the held thread finds its connection closed (rolled back).
        deadline = time.monotonic() + 30
        while "abandoning the current step" not in peer.log_tail(20):
            assert time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.05)
        faults.release("commit.before-dolt-commit")
        took = wait_exit(peer.proc, 30)
        assert peer.proc.returncode == 0, peer.log_tail()
        assert "abandoned" in peer.log_tail(20)
        # Nothing of the held epoch landed; a restart commits it, once.
        committed = last_committed_epoch(peer.db_path)
        assert committed is None or committed < held
        print(f"stopped {took:.1f} s after the hold was released; held in epoch {held}, committed {committed}")
        peer.start()
        deadline = time.monotonic() + 30
        while (last_committed_epoch(peer.db_path) or -1) < held:
            assert peer.running and time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.1)
    finally:
        faults.release("commit.before-dolt-commit")
        peer.stop()
        server.stop()
