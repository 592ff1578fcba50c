"""``materializer.agreement.explain`` on real doltlite files, without NATS: which tables and
rows differ between two commits, every kind of difference, and the problems it reports
instead of raising."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devtools.demo import USERS_TABLE
from materializer.agreement.commits import DoltliteFile
from materializer.agreement.explain import compare_rows, explain_commit


def database(path: Path, users: list[tuple[str, str, int]], *, notes: bool = False) -> str:
    """A doltlite file declaring ``users`` and holding ``users``; returns its commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE oplog_tables (name TEXT PRIMARY KEY, definition TEXT NOT NULL, epoch INTEGER)")
        conn.execute("INSERT INTO oplog_tables VALUES ('users', ?, 0)", (USERS_TABLE.model_dump_json(),))
        conn.execute("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT, score INTEGER, _oplog_meta TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, '{}')", users)
        if notes:
            conn.execute("CREATE TABLE notes (body TEXT)")
            conn.execute("INSERT INTO notes VALUES ('made by hand')")
        return str(conn.execute("SELECT dolt_commit('-A', '-m', 'epoch 1')").fetchone()[0])
    finally:
        conn.close()


def test_every_kind_of_difference_between_two_commits(tmp_path: Path) -> None:
    expected = database(tmp_path / "expected.db", [("u1", "Ann", 1), ("u2", "Bo", 2), ("u3", "Cy", 3)])
    peer = database(tmp_path / "peer.db", [("u1", "Ann", 1), ("u2", "Bob", 20), ("u4", "Di", 4)], notes=True)

    found = explain_commit("p", 1, DoltliteFile(tmp_path / "peer.db"), peer,
                           DoltliteFile(tmp_path / "expected.db"), expected, max_rows=2)  # fmt: skip

    assert found.problem is None and found.peer_info is not None and found.peer_info.message == "epoch 1"
    assert [t.table for t in found.tables] == ["notes", "users"]  # oplog_tables is equal: not listed
    notes, users = found.tables
    assert notes.expected_hash is None and notes.peer_hash is not None and notes.rows_differing == 1
    assert notes.rows[0].peer == {"body": "made by hand"} and notes.rows[0].expected is None
    assert users.rows_differing == 3 and [r.key for r in users.rows] == [("u2",), ("u3",)]  # max_rows=2
    changed, missing = users.rows
    assert changed.columns == ("name", "score") and changed.peer is not None and changed.peer["score"] == 20
    assert missing.peer is None and missing.expected is not None and missing.expected["name"] == "Cy"
    text = "\n".join(found.lines())
    assert 'key ["u2"]: name "Bob", expected "Bo"; score 20, expected 2' in text, text
    assert 'key ["u3"]: missing on p, expected {' in text and "… and 1 more rows" in text, text
    assert "table notes: only on p (1 rows), not in the recomputation" in text, text
    assert found.to_json()["tables"][1]["rows"][0]["peer"]["score"] == 20


def test_what_cannot_be_compared_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    expected = database(tmp_path / "expected.db", [("u1", "Ann", 1)])
    ours = DoltliteFile(tmp_path / "expected.db")

    missing_file = explain_commit("p", 1, DoltliteFile(tmp_path / "nope.db"), expected, ours, expected)
    assert missing_file.problem is not None and "does not exist" in missing_file.problem
    unknown_commit = explain_commit("p", 1, ours, "0" * 40, ours, expected)
    assert unknown_commit.problem is not None and f"has no commit {'0' * 40}" in unknown_commit.problem
    assert unknown_commit.lines() == [f"p at epoch 1: commit 0000000000, recomputed {expected[:10]}: "
                                      + unknown_commit.problem]  # fmt: skip
    same = explain_commit("p", 1, ours, expected, ours, expected)
    assert same.tables == () and "every table is identical" in same.lines()[-1]


@pytest.mark.parametrize(
    ("key", "peer", "expected", "differing"),
    [
        (("k",), [{"k": 1, "v": "a"}], [{"k": 1, "v": "a"}], []),
        (("k",), [{"k": 2, "v": "a"}, {"k": 10, "v": "b"}], [{"k": 2, "v": "x"}], [(2,), (10,)]),
        (None, [{"v": "a"}, {"v": "b"}], [{"v": "b"}, {"v": "c"}], [("a",), ("c",)]),
    ],
)
def test_rows_are_matched_by_key_in_key_order(
    key: tuple[str, ...] | None, peer: list[dict[str, object]], expected: list[dict[str, object]],
    differing: list[tuple[object, ...]],
) -> None:  # fmt: skip
    assert [r.key for r in compare_rows(peer, expected, key)] == differing
