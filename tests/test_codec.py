"""The fast op decoder must build exactly what pydantic validation builds, and fall
back to it (with its error messages) for anything unusual."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oplog.codec import decode_op
from oplog.errors import CodecError
from oplog.op import Op, fast_op

scalars = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=False))
raw_ops = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(min_size=0, max_size=3), st.integers()),
        "hlc": st.one_of(
            st.lists(st.one_of(st.integers(-1, 3), st.text(max_size=2), st.booleans()), min_size=2, max_size=4),
            st.tuples(st.integers(0, 9), st.integers(0, 9), st.text(min_size=1, max_size=2)).map(list),
        ),
        "table": st.sampled_from(["users", "oplog_x", "1bad", "t_2", 5]),
        "key": st.one_of(scalars, st.lists(scalars, max_size=3)),
        "kind": st.sampled_from(["upsert", "delete", "patch", "incr", "crdt", "zap", 1]),
    },
    optional={"data": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), scalars, max_size=3), scalars)},
)


@settings(max_examples=300, deadline=None)
@given(raw_ops)
def test_fast_path_agrees_with_pydantic(raw: dict[str, Any]) -> None:
    try:
        expected: Op | None = Op.model_validate(raw)
    except ValueError:
        expected = None
    fast = fast_op(raw)
    if fast is not None:
        # Whatever the fast path accepts, pydantic accepts identically.
        assert expected is not None
        assert fast == expected
        assert fast.model_dump() == expected.model_dump()
        assert fast.to_wire() == expected.to_wire()
    decoded: Op | None
    try:
        decoded = decode_op(raw)
    except CodecError:
        decoded = None
    assert decoded == expected


def test_an_invalid_op_is_refused_with_every_problem_named() -> None:
    with pytest.raises(CodecError, match=r"invalid op: hlc: .*; kind: .*'zap' is not one of"):
        decode_op({"id": "a", "hlc": [1, 0], "table": "t", "key": "k", "kind": "zap"})
