"""The fast op decoders (the pydantic Op a producer gets, the lean record a peer keeps)
must build exactly what pydantic validation builds, and fall back to it (with its
error messages) for anything unusual."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oplog.codec import canonical_bytes, decode_op, decode_record, digest, record_of
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


def wire_bytes(raw: Any) -> bytes | None:
    """The canonical bytes the assigner's size check makes (none for what JSON cannot hold)."""
    try:
        return canonical_bytes(raw)
    except TypeError:
        return None


@settings(max_examples=400, deadline=None)
@given(raw_ops, st.dictionaries(st.sampled_from(["extra", "v", "note"]), scalars, max_size=2))
def test_the_record_decoder_accepts_and_refuses_exactly_what_the_model_does(
    raw: dict[str, Any], extra: dict[str, Any]
) -> None:
    # Unknown fields too: they are ignored, but they are in the bytes the size check hashes.
    raw = {**raw, **extra}
    wire = wire_bytes(raw)
    try:
        expected: Op | None = decode_op(raw)
    except CodecError as e:
        with pytest.raises(CodecError) as caught:
            decode_record(raw, wire)
        assert str(caught.value) == str(e)
        return
    assert expected is not None
    record = decode_record(raw, wire)
    # The same op, read through the same attributes...
    assert record.to_op() == expected
    assert record.to_wire() == expected.to_wire()
    assert record.sort_key() == expected.sort_key()
    assert (record.hlc, record.wall_ms, record.logical, record.node) == (expected.hlc, *expected.hlc)
    # ...with the digest dedup always used: of the op's canonical wire form, not the raw bytes.
    assert record.digest == digest(expected.to_wire())
    assert decode_record(raw) == record == record_of(expected)


def test_a_record_digest_hashes_the_ops_wire_form_whatever_extra_the_raw_op_had() -> None:
    plain = {"id": "a", "hlc": [5, 0, "n"], "table": "t", "key": ["k"], "kind": "upsert", "data": {"x": 1}}
    variants = [
        plain,
        {**plain, "future_field": [1, 2]},  # unknown fields are ignored
        {**plain, "key": "k"},  # a bare single-part key
    ]
    no_data = {k: v for k, v in plain.items() if k != "data"}
    digests = {decode_record(raw, canonical_bytes(raw)).digest for raw in variants}

    assert digests == {digest(plain)}
    # "data": null is the op without data.
    assert decode_record({**no_data, "data": None}, canonical_bytes({**no_data, "data": None})).digest == digest(
        no_data
    )
