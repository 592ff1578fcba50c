"""The Dolt sql-server launcher, and the commit-hash facts the Dolt backend relies on.

Every test runs the real pinned dolt (scripts/install-dolt.sh). Hash facts are
checked the hard way: two independent servers, doing the same thing seconds apart.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pymysql
import pytest

from materializer.backends import dolt_server_launcher as launcher
from materializer.backends.dolt_server_launcher import INSTALL_HINT, DoltServer, DoltServerError, find_dolt

pytestmark = pytest.mark.doltserver

GENESIS_DATE = "2026-01-01T00:00:00Z"
EPOCH_DATE = "2026-01-01T00:00:10.250Z"  # epoch end times carry milliseconds
COMMITTER_DATE = "2026-01-01T00:00:00Z"
AUTHOR = "oplog <oplog@example.invalid>"
APART_S = 2.0  # long enough for any wall-clock timestamp to differ


@pytest.fixture
def dolt_bin() -> Path:
    # A missing dolt is a failure, never a skip.
    try:
        return find_dolt()
    except DoltServerError as e:
        pytest.fail(str(e))


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def _pids_with_env(key: str, value: str) -> list[int]:
    """Processes whose environment holds key=value: the server and anything it spawned."""
    wanted = f"{key}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _query(conn: pymysql.connections.Connection, sql: str, *args: object) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall())


def _head(server: DoltServer, db: str = "d") -> str:
    with server.connect(db) as conn:
        return str(_query(conn, "SELECT HASHOF('HEAD')")[0][0])


def _commit_epoch(server: DoltServer, db: str = "d") -> str:
    """The same table, rows and commit metadata, as an epoch commit would write them."""
    with server.connect(db) as conn:
        _query(conn, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
        _query(conn, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        rows = _query(conn, "CALL DOLT_COMMIT('-A', '--author', %s, '--date', %s, '-m', 'epoch 1')", AUTHOR, EPOCH_DATE)
        return str(rows[0][0])


def _peer_from_genesis(stack: ExitStack, dolt_bin: Path, data_dir: Path, env: dict[str, str]) -> DoltServer:
    server = DoltServer(data_dir, dolt_bin=dolt_bin, env=env)
    stack.callback(server.stop)
    server.init_database("d", date=GENESIS_DATE, user_name="oplog", user_email="oplog@example.invalid")
    return server.start()


# --- the launcher ---------------------------------------------------------------


def test_starts_answers_select_1_and_stops_leaving_no_process(dolt_bin: Path) -> None:
    # Start a server on a temporary data dir and query it.
    server = DoltServer(dolt_bin=dolt_bin)
    root = server.env["DOLT_ROOT_PATH"]
    with server:
        assert server.host == "127.0.0.1" and server.port > 0
        with server.connect() as conn:
            assert _query(conn, "SELECT 1") == [(1,)]
        assert _pids_with_env("DOLT_ROOT_PATH", root) == [server.pid]
        data_dir = server.data_dir
    # After stop: no server, no detached `dolt send-metrics` child, no scratch files.
    # (A process being reaped may linger a moment in /proc: wait for it, with a deadline.)
    deadline = time.monotonic() + 30
    while _pids_with_env("DOLT_ROOT_PATH", root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with_env("DOLT_ROOT_PATH", root) == []
    assert server.pid is None
    assert not data_dir.exists() and not Path(root).exists()


def test_keeps_a_given_data_dir_and_serves_it_again(dolt_bin: Path, tmp_path: Path) -> None:
    # A database created through one server is served by the next one on the same dir.
    with DoltServer(tmp_path, dolt_bin=dolt_bin) as first, first.connect() as conn:
        _query(conn, "CREATE DATABASE kept")
    assert (tmp_path / "kept" / ".dolt").is_dir()
    with DoltServer(tmp_path, dolt_bin=dolt_bin) as second, second.connect() as conn:
        assert ("kept",) in _query(conn, "SHOW DATABASES")


def test_failed_start_reports_the_server_log_and_leaves_no_process(dolt_bin: Path, tmp_path: Path) -> None:
    # A database can be served by one dolt process only.
    with DoltServer(tmp_path, dolt_bin=dolt_bin) as first:
        with first.connect() as conn:
            _query(conn, "CREATE DATABASE held")
        second = DoltServer(tmp_path, dolt_bin=dolt_bin)
        root = second.env["DOLT_ROOT_PATH"]
        # The second server exits; the error carries its own explanation.
        with pytest.raises(DoltServerError, match=r"exited with 1") as caught:
            second.start()
        assert 'database "held" is locked by another dolt process' in str(caught.value)
        assert _pids_with_env("DOLT_ROOT_PATH", root) == []
        with pytest.raises(DoltServerError, match="was stopped"):
            second.start()


def test_retries_on_another_port_when_the_probed_one_is_taken(
    dolt_bin: Path, monkeypatch: pytest.MonkeyPatch, stack: ExitStack
) -> None:
    # Someone else binds the probed port before dolt does: the launcher moves on.
    squatter = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
    taken = squatter.getsockname()[1]
    ports = iter([taken, launcher._free_port("127.0.0.1")])
    monkeypatch.setattr(launcher, "_free_port", lambda host: next(ports))
    server = stack.enter_context(DoltServer(dolt_bin=dolt_bin))
    assert server.port != taken
    assert f"Port {taken} already in use" in server.log_tail()
    with server.connect() as conn:
        assert _query(conn, "SELECT 1") == [(1,)]


def test_start_deadline_is_enforced(dolt_bin: Path) -> None:
    # No server answers within 0 s; it is killed, not left behind.
    server = DoltServer(dolt_bin=dolt_bin, start_timeout=0.0)
    root = server.env["DOLT_ROOT_PATH"]
    with pytest.raises(DoltServerError, match=r"did not answer within 0s"):
        server.start()
    assert _pids_with_env("DOLT_ROOT_PATH", root) == []


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPLOG_DOLT_BIN", str(tmp_path / "no-such-dolt"))
    with pytest.raises(DoltServerError, match="scripts/install-dolt.sh"):
        find_dolt()
    assert "bash scripts/install-dolt.sh" in INSTALL_HINT


# --- hashing facts --------------------------------------------------------------


def test_create_database_init_commits_differ_between_servers(dolt_bin: Path, stack: ExitStack) -> None:
    # Two fresh servers, same SQL user, same statement, seconds apart.
    a = stack.enter_context(DoltServer(dolt_bin=dolt_bin))
    b = stack.enter_context(DoltServer(dolt_bin=dolt_bin))
    with a.connect() as conn:
        _query(conn, "CREATE DATABASE d")
    time.sleep(APART_S)
    with b.connect() as conn:
        _query(conn, "CREATE DATABASE d")
    # The init commit is stamped with the current time: no shared genesis this way.
    assert _head(a) != _head(b)


def test_create_database_is_deterministic_under_pinned_committer_date(dolt_bin: Path, stack: ExitStack) -> None:
    # With DOLT_COMMITTER_DATE in the server's environment, CREATE DATABASE uses it
    # for both of the init commit's dates.
    env = {"DOLT_COMMITTER_DATE": COMMITTER_DATE}
    a = stack.enter_context(DoltServer(dolt_bin=dolt_bin, env=env))
    b = stack.enter_context(DoltServer(dolt_bin=dolt_bin, env=env))
    with a.connect() as conn:
        _query(conn, "CREATE DATABASE d")
    time.sleep(APART_S)
    with b.connect() as conn:
        _query(conn, "CREATE DATABASE d")
    assert _head(a) == _head(b)


def test_dolt_init_date_alone_is_not_a_deterministic_genesis(dolt_bin: Path, tmp_path: Path, stack: ExitStack) -> None:
    # `dolt init --date` sets the author date only; the committer date is "now".
    heads = []
    for name in ("a", "b"):
        repo = tmp_path / name / "d"
        repo.mkdir(parents=True)
        unstarted = DoltServer(tmp_path / name, dolt_bin=dolt_bin)
        stack.callback(unstarted.stop)
        env = unstarted.env  # its isolated DOLT_ROOT_PATH, metrics off
        args = [str(dolt_bin), "init", "--name", "oplog", "--email", "oplog@example.invalid", "--date", GENESIS_DATE]
        subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)
        log = subprocess.run(
            [str(dolt_bin), "log", "-n", "1", "--oneline"],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        heads.append(log.stdout.split()[0])
        time.sleep(APART_S)
    assert heads[0] != heads[1]


def test_init_database_gives_identical_genesis(dolt_bin: Path, tmp_path: Path, stack: ExitStack) -> None:
    # init_database pins both dates to its `date`, so separate peers share a genesis.
    a = _peer_from_genesis(stack, dolt_bin, tmp_path / "a", {})
    time.sleep(APART_S)
    b = _peer_from_genesis(stack, dolt_bin, tmp_path / "b", {})
    assert _head(a) == _head(b)
    with a.connect("d") as conn:
        assert _query(conn, "SELECT committer, email, date, message FROM dolt_log") == [
            ("oplog", "oplog@example.invalid", datetime(2026, 1, 1), "Initialize data repository")
        ]


def test_epoch_commits_differ_when_only_author_date_is_pinned(dolt_bin: Path, tmp_path: Path, stack: ExitStack) -> None:
    # Same genesis, same rows, same --author/--date/-m, seconds apart, no committer date pin.
    a = _peer_from_genesis(stack, dolt_bin, tmp_path / "a", {})
    b = _peer_from_genesis(stack, dolt_bin, tmp_path / "b", {})
    first = _commit_epoch(a)
    time.sleep(APART_S)
    second = _commit_epoch(b)
    # --date is the author date only; the committer date (hashed too) is the server's clock.
    assert first != second


def test_epoch_commits_match_with_dolt_committer_date_env(dolt_bin: Path, tmp_path: Path, stack: ExitStack) -> None:
    # The working method: every peer starts dolt sql-server with the same DOLT_COMMITTER_DATE.
    env = {"DOLT_COMMITTER_DATE": COMMITTER_DATE}
    a = _peer_from_genesis(stack, dolt_bin, tmp_path / "a", env)
    b = _peer_from_genesis(stack, dolt_bin, tmp_path / "b", env)
    first = _commit_epoch(a)
    time.sleep(APART_S)
    second = _commit_epoch(b)
    assert first == second
    # dolt_log shows the author date, milliseconds included.
    with a.connect("d") as conn:
        assert _query(conn, "SELECT DATE_FORMAT(date, '%Y-%m-%dT%H:%i:%s.%f') FROM dolt_log LIMIT 1") == [
            ("2026-01-01T00:00:10.250000",)
        ]


def test_this_dolt_has_no_dolt_committer_date_session_variable(dolt_bin: Path, stack: ExitStack) -> None:
    # @@dolt_committer_date arrived in dolt 1.87.0; the pinned 1.86.4 rejects it.
    # If this fails after a dolt upgrade, the session variable may now be the better pin.
    server = stack.enter_context(DoltServer(dolt_bin=dolt_bin))
    with server.connect() as conn, pytest.raises(pymysql.err.MySQLError, match="(?i)unknown system variable"):
        _query(conn, "SET @@dolt_committer_date = %s", COMMITTER_DATE)


def test_unparsable_committer_date_falls_back_to_the_clock_with_a_warning(dolt_bin: Path, stack: ExitStack) -> None:
    # A typo in DOLT_COMMITTER_DATE does not stop the server: it warns and uses "now".
    server = stack.enter_context(DoltServer(dolt_bin=dolt_bin, env={"DOLT_COMMITTER_DATE": "2026-01-01 00:00"}))
    assert "Unable to parse value for DOLT_COMMITTER_DATE" in server.log_tail()
