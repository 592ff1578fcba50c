"""Commit metadata: the applied-ops digest is a pinned function of the ids, in order."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from materializer.metadata import ops_digest


def digest_id_by_id(op_ids: list[str]) -> str:
    """The definition, spelled as it was first written: each id, then a newline."""
    h = hashlib.sha256()
    for op_id in op_ids:
        h.update(op_id.encode())
        h.update(b"\n")
    return h.hexdigest()


@given(st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=12), max_size=30))
def test_the_digest_is_sha256_of_each_id_and_a_newline_in_apply_order(op_ids: list[str]) -> None:
    assert ops_digest(op_ids) == digest_id_by_id(op_ids)


def test_known_values_of_the_digest() -> None:
    assert ops_digest([]) == hashlib.sha256(b"").hexdigest()
    assert ops_digest(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()
    # Order and boundaries count: ids are not a set, and "a\nb" is not "a" then "b".
    assert ops_digest(["b", "a"]) != ops_digest(["a", "b"])
    assert ops_digest(["", "a"]) != ops_digest(["a"])
