"""What is particular to the Dolt sql-server backend: its dialect, its error boundary,
the committer-date pin it checks, and repair after a crash between DDL and commit.

The shared contract is tests/test_backend_contract.py; these run on real servers too.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pymysql
import pytest

from materializer.backends import dolt_server_sql as sql
from materializer.backends.dolt_server import DEFAULT_COMMITTER_DATE, DoltServerBackend
from materializer.backends.dolt_server_launcher import DoltServer, DoltServerError, find_dolt
from materializer.errors import BackendError, TransientBackendError
from materializer.plan import TableChange, TableWrites
from oplog.schema import TableSchema
from tests.conftest import start_dolt_server
from tests.test_backend_contract import HISTORY, ITEMS, USERS, create, plan, user

pytestmark = pytest.mark.doltserver


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def backend_on(server: DoltServer, database: str, stack: ExitStack) -> DoltServerBackend:
    backend = DoltServerBackend(host=server.host, port=server.port, database=database)
    backend.open()
    stack.callback(backend.close)
    return backend


def query(backend: DoltServerBackend, text: str) -> list[tuple[object, ...]]:
    with backend.connect(backend.database) as conn, conn.cursor() as cur:
        cur.execute(text)
        return list(cur.fetchall())


# --- the dialect (pure) -------------------------------------------------------------


def test_tables_render_in_mysql_types_with_bounded_text_keys() -> None:
    assert sql.DIALECT.create_table_sql(ITEMS) == (
        "CREATE TABLE `items` (`shop` VARCHAR(1024) NOT NULL, `sku` BIGINT NOT NULL, `price` LONGTEXT, "
        "`weight` DOUBLE, `note` LONGTEXT, `active` BOOLEAN, `attrs` LONGTEXT, `blob` LONGBLOB, "
        "`seen` VARCHAR(32), `_oplog_meta` LONGTEXT NOT NULL, PRIMARY KEY (`shop`, `sku`))"
        " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_bin"
    )
    wider = ITEMS.model_copy(update={"columns": (*ITEMS.columns, ITEMS.columns[4].model_copy(update={"name": "n2"}))})
    assert sql.DIALECT.table_change_sql(TableChange(ITEMS, wider)) == ["ALTER TABLE `items` ADD COLUMN `n2` LONGTEXT"]
    # Many text key columns share Dolt's 65,504-byte budget for fixed-width columns.
    assert sql.text_key_chars(USERS) == 1024
    assert sql.text_key_chars(many_text_keys(20)) == 750


def many_text_keys(count: int) -> TableSchema:
    columns = [{"name": f"k{i}", "type": "text", "nullable": False} for i in range(count)]
    return TableSchema.model_validate(
        {
            "name": "wide",
            "columns": [*columns, {"name": "v", "type": "text"}],
            "primary_key": [f"k{i}" for i in range(count)],
        }
    )


def test_every_pymysql_error_class_maps_to_a_backend_error() -> None:
    # Whatever pymysql raises leaves the backend as one of ours, worded and bounded.
    classes = [c for c in vars(pymysql.err).values() if inspect.isclass(c) and issubclass(c, pymysql.err.MySQLError)]
    assert len(classes) == 11
    for cls in classes:
        assert isinstance(sql.map_error(cls(1105, "x" * 5000), "here"), BackendError)
    mapped = sql.map_error(pymysql.err.ProgrammingError(1064, "x" * 5000), "here")
    assert type(mapped) is BackendError and len(str(mapped)) < 700 and "(5000 characters)" in str(mapped)
    # Lost connections and lock conflicts are worth a retry; bad SQL is not.
    assert isinstance(sql.map_error(pymysql.err.OperationalError(2013, "lost"), "h"), TransientBackendError)
    assert isinstance(
        sql.map_error(pymysql.err.OperationalError(1213, "serialization failure"), "h"), TransientBackendError
    )
    assert isinstance(sql.map_error(pymysql.err.InterfaceError(0, ""), "h"), TransientBackendError)
    assert not isinstance(
        sql.map_error(pymysql.err.OperationalError(1105, "table not found"), "h"), TransientBackendError
    )


# --- real servers -------------------------------------------------------------------


def test_twenty_text_key_columns_fit_in_one_table(dolt_server: DoltServer, stack: ExitStack) -> None:
    backend = backend_on(dolt_server, "wide", stack)
    backend.create_genesis()
    wide = many_text_keys(20)
    key = tuple("é" * 750 for _ in range(20))
    backend.commit_epoch(plan(0, changes=create(wide), writes=(TableWrites(wide, upserts=[(key, {"v": "x"}, {})]),)))
    assert list(backend.read_rows(wide, [key])) == [key]


def test_independent_geneses_on_pinned_servers_are_the_same_commit(tmp_path: Path, stack: ExitStack) -> None:
    # Two servers started with the same committer date, each making its own genesis.
    heads = []
    for name in ("a", "b"):
        server = stack.enter_context(start_dolt_server(tmp_path / name))
        backend = backend_on(server, "db", stack)
        backend.create_genesis()
        heads.append(backend.head())
    assert heads[0] == heads[1]
    # Its history: the init commit stamped with the pinned date, then the genesis; the
    # genesis tag records the date and the probe other servers must reproduce.
    assert [m for (m,) in query(backend, "SELECT message FROM dolt_log")] == ["genesis", "Initialize data repository"]
    ((message,),) = query(backend, "SELECT message FROM dolt_tags WHERE tag_name = 'oplog-genesis'")
    assert message.startswith("committer-date: 2000-01-01T00:00:00.000Z\ncommitter-probe: ")


def test_a_server_with_another_committer_date_is_refused(
    dolt_server: DoltServer, tmp_path: Path, stack: ExitStack
) -> None:
    genesis = backend_on(dolt_server, "pinned", stack).create_genesis()
    other = stack.enter_context(DoltServer(tmp_path, committer_date="2001-01-01T00:00:00Z").start())
    backend = backend_on(other, "db", stack)
    with pytest.raises(
        BackendError, match=r"restart dolt sql-server with DOLT_COMMITTER_DATE=2000-01-01T00:00:00\.000Z"
    ):
        backend.install_snapshot(genesis)
    # Every later open says so again, before any epoch is written.
    with pytest.raises(BackendError, match="committer date differs"):
        backend_on(other, "db", stack)


def test_a_server_on_the_clock_cannot_make_a_genesis(tmp_path: Path, stack: ExitStack) -> None:
    server = stack.enter_context(DoltServer(tmp_path, dolt_bin=find_dolt()).start())  # no DOLT_COMMITTER_DATE
    with pytest.raises(
        BackendError, match=f"stamps commits with its clock.*DOLT_COMMITTER_DATE={DEFAULT_COMMITTER_DATE}"
    ):
        backend_on(server, "db", stack).create_genesis()


def test_the_launcher_refuses_a_committer_date_dolt_would_ignore(tmp_path: Path) -> None:
    # dolt logs a warning and uses the clock: a peer that would diverge silently.
    with pytest.raises(DoltServerError, match="could not parse committer_date='2026-01-01 00:00'"):
        DoltServer(tmp_path, committer_date="2026-01-01 00:00").start()


def test_a_crash_between_ddl_and_commit_is_repaired_on_reopen(
    dolt_server: DoltServer, stack: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    genesis = backend_on(dolt_server, "ref", stack).create_genesis()
    crashy, reference = backend_on(dolt_server, "crashy", stack), backend_on(dolt_server, "ref", stack)
    crashy.install_snapshot(genesis)
    for p in HISTORY[:2]:
        crashy.commit_epoch(p)
        reference.commit_epoch(p)
    before = crashy.head()

    # The peer dies after epoch 2's CREATE TABLE (which Dolt commits implicitly) and
    # before its DOLT_COMMIT: no cleanup runs.
    class Died(BaseException):
        pass

    def die(*_: object) -> None:
        crashy.conn.close()
        raise Died

    monkeypatch.setattr(crashy, "_write_table", die)
    monkeypatch.setattr(crashy, "_abandon", lambda: None)
    epoch2 = plan(2, changes=create(ITEMS), writes=(TableWrites(USERS, upserts=[user("a", "Ann", 5)]),))
    with pytest.raises(Died):
        crashy.commit_epoch(epoch2)
    # HEAD did not move, but the working set holds the new table.
    assert query(crashy, "SELECT HASHOF('HEAD')") == [(before,)]
    assert query(crashy, "SELECT table_name, status FROM dolt_status") == [("items", "new table")]
    # The restarted peer discards it and commits epoch 2 as a peer that never crashed.
    monkeypatch.undo()
    restarted = backend_on(dolt_server, "crashy", stack)
    assert query(restarted, "SELECT * FROM dolt_status") == []
    assert restarted.head() == before
    assert restarted.commit_epoch(epoch2) == reference.commit_epoch(epoch2)


def test_a_lost_connection_is_transient_and_the_next_call_reconnects(dolt_server: DoltServer, stack: ExitStack) -> None:
    backend = backend_on(dolt_server, "lost", stack)
    backend.create_genesis()
    head = backend.head()
    # The server drops the backend's connection (a restart, a proxy timeout).
    with backend.conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (connection_id,) = cur.fetchone()
    with dolt_server.connect() as admin, admin.cursor() as cur:
        cur.execute(f"KILL {int(connection_id)}")
    with pytest.raises(TransientBackendError, match="retry"):
        backend.head()
    assert backend.head() == head
