"""Assignment of stream messages to epoch commits, by stream position alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from epoch.assign import (
    NO_EPOCH,
    Accepted,
    Assigner,
    Control,
    Rejected,
    SealedEpoch,
    StreamMessage,
)
from epoch.config import ConfigChange, DatabaseConfig, LatePolicy
from oplog.codec import WIRE_VERSION, canonical_bytes, canonical_json, encode_batch, record_of
from oplog.hlc import HLC
from oplog.op import Op, OpKind, OpRecord

ORIGIN = 1_000_000
EPOCH_MS = 1_000
CONFIG = DatabaseConfig(db="t", origin_ms=ORIGIN, epoch_ms=EPOCH_MS, grace_ms=0, max_future_epochs=3)
CONFIG_BODY = CONFIG.model_dump(mode="json")


def make_op(op_id: str, epoch: int, offset: int = 0, *, logical: int = 0, node: str = "p1", data: Any = None) -> Op:
    """An upsert whose wall time lies ``offset`` ms into ``epoch`` of the initial timeline."""
    return Op(
        id=op_id,
        hlc=HLC(ORIGIN + epoch * EPOCH_MS + offset, logical, node),
        table="items",
        key=(op_id,),
        kind=OpKind.UPSERT,
        data={"n": 1} if data is None else data,
    )


class Stream:
    """Messages numbered 1, 2, … in the order the test adds them."""

    def __init__(self) -> None:
        self.messages: list[StreamMessage] = []

    def add(self, kind: str, payload: bytes) -> int:
        seq = len(self.messages) + 1
        self.messages.append(StreamMessage(seq, kind, payload))
        return seq

    def config(self, body: Any = CONFIG_BODY) -> int:
        return self.add("config", orjson.dumps(body))

    def ops(self, *items: Op | dict[str, Any]) -> int:
        if all(isinstance(item, Op) for item in items):
            return self.add("ops", encode_batch(list(items)))  # type: ignore[arg-type]
        wire = [item.to_wire() if isinstance(item, Op) else item for item in items]
        return self.add("ops", orjson.dumps({"v": WIRE_VERSION, "ops": wire}))

    def seal(self, epoch: int) -> int:
        return self.add("seal", orjson.dumps({"epoch": epoch}))


def run(messages: Iterable[StreamMessage], assigner: Assigner | None = None) -> list[SealedEpoch]:
    assigner = Assigner() if assigner is None else assigner
    return [sealed for message in messages if (sealed := assigner.feed(message)) is not None]


def rec(op: Op) -> OpRecord:
    """What the assigner carries for ``op``: the same content as a lean record."""
    return record_of(op)


def recorded(op: Op | dict[str, Any]) -> str:
    return canonical_json(op.to_wire() if isinstance(op, Op) else op)


# -- narratives ----------------------------------------------------------------------


def test_a_seal_turns_the_ops_of_its_epoch_into_one_commit() -> None:
    s = Stream()
    s.config()
    a, b, later = make_op("a", 0, 10), make_op("b", 0, 20), make_op("later", 1)
    s.ops(a, later)
    s.ops(b)
    s.seal(0)

    # Epoch 0's ops go into commit 0; the op of epoch 1 stays buffered, so a restart
    # must re-read from its message (resume_seq 2).
    assert run(s.messages) == [
        SealedEpoch(
            epoch=0,
            first_epoch=0,
            seal_seq=4,
            resume_seq=2,
            end_ms=ORIGIN + EPOCH_MS,
            config=CONFIG,
            ops=(Accepted(2, 0, rec(a), 0), Accepted(3, 0, rec(b), 0)),
            rejected=(),
            controls=(Control(1, "config", CONFIG_BODY),),
        )
    ]


def test_a_late_op_is_carried_into_the_next_commit_under_the_carry_policy() -> None:
    s = Stream()
    s.config()
    a = make_op("a", 0)
    s.ops(a)
    s.seal(0)
    # b belongs to epoch 0, already sealed when b reaches the stream.
    b, c = make_op("b", 0, 500), make_op("c", 1)
    s.ops(c, b)
    s.seal(1)

    first, second = run(s.messages)

    assert first.ops == (Accepted(2, 0, rec(a), 0),)
    # b is kept with its own epoch number and flagged late; the commit is epoch 1's.
    assert second == SealedEpoch(
        epoch=1,
        first_epoch=1,
        seal_seq=5,
        resume_seq=6,
        end_ms=ORIGIN + 2 * EPOCH_MS,
        config=CONFIG,
        ops=(Accepted(4, 1, rec(b), 0, late=True), Accepted(4, 0, rec(c), 1)),
        rejected=(),
        controls=(),
    )


def test_a_late_op_is_recorded_as_rejected_under_the_reject_policy() -> None:
    config = CONFIG.model_copy(update={"late_policy": LatePolicy.REJECT})
    s = Stream()
    s.config(config.model_dump(mode="json"))
    s.seal(0)
    b, c = make_op("b", 0, 500), make_op("c", 1)
    s.ops(b, c)
    s.seal(1)

    _, second = run(s.messages)

    assert second.ops == (Accepted(3, 1, rec(c), 1),)
    assert second.rejected == (Rejected(3, 0, "b", "late", "epoch 0 was already sealed (through 0)", recorded(b)),)


def test_an_op_too_far_past_the_last_seal_is_rejected_as_future() -> None:
    s = Stream()
    s.config()
    s.seal(0)
    # max_future_epochs is 3: epoch 3 is the furthest an op may be after seal 0.
    near, far = make_op("near", 3), make_op("far", 4)
    s.ops(near, far)
    s.seal(3)

    _, sealed = run(s.messages)

    assert (sealed.epoch, sealed.first_epoch) == (3, 1)
    assert sealed.ops == (Accepted(3, 0, rec(near), 3),)
    assert sealed.rejected == (
        Rejected(
            3,
            1,
            "far",
            "future",
            "epoch 4 is more than 3 epochs past the last sealed epoch 0; the producer's clock is probably fast",
            recorded(far),
        ),
    )


def test_bad_messages_and_ops_are_rejected_and_attached_to_the_next_commit() -> None:
    config = CONFIG.model_copy(update={"max_op_bytes": 300})
    s = Stream()
    s.config(config.model_dump(mode="json"))
    s.add("ops", b"not json")
    s.add("ops", b'{"ops": 5}')
    good, big = make_op("good", 0), make_op("big", 0, data={"n": "x" * 300})
    bad = {"id": "bad", "hlc": [ORIGIN, 0, "p1"], "table": "items", "key": ["bad"], "kind": "frobnicate"}
    s.ops(good, bad, big)
    s.add("unknown", b"hello")
    s.seal(0)
    after = make_op("after", 1)
    s.ops(after)
    s.seal(1)

    first, second = run(s.messages)

    # The good op of the mixed batch is kept; each bad part is recorded where it was.
    assert first.ops == (Accepted(4, 0, rec(good), 0),)
    not_json, not_batch, invalid, oversize, unknown = first.rejected
    assert (not_json.seq, not_json.index, not_json.op_id, not_json.reason, not_json.payload) == (
        2,
        -1,
        None,
        "malformed",
        "not json",
    )
    assert not_json.detail.startswith("message is not valid JSON: ")
    assert not_batch == Rejected(
        3, -1, None, "malformed", 'a batch message must be a JSON object with an "ops" array', '{"ops": 5}'
    )
    assert (invalid.seq, invalid.index, invalid.op_id, invalid.reason, invalid.payload) == (
        4,
        1,
        "bad",
        "invalid_op",
        recorded(bad),
    )
    assert invalid.detail.startswith("invalid op: kind: ")
    assert "kind 'frobnicate' is not one of upsert, delete, patch, incr, crdt" in invalid.detail
    size = len(canonical_bytes(big.to_wire()))
    assert size > 300
    assert oversize == Rejected(4, 2, "big", "oversize", f"op is {size} bytes; the limit is 300", recorded(big))
    assert unknown == Rejected(5, -1, None, "unknown_subject", "message on a subject oplog does not use", "hello")

    # Each rejection is recorded once: the next commit carries none of them.
    assert second.ops == (Accepted(7, 0, rec(after), 1),)
    assert second.rejected == ()


def test_ops_and_seals_before_the_config_are_not_assigned() -> None:
    s = Stream()
    early = make_op("early", 0)
    s.ops(early)
    s.seal(0)
    s.config()
    s.seal(0)

    # The first seal came before the config: it seals nothing and is not remembered.
    assert run(s.messages) == [
        SealedEpoch(
            epoch=0,
            first_epoch=0,
            seal_seq=4,
            resume_seq=5,
            end_ms=ORIGIN + EPOCH_MS,
            config=CONFIG,
            ops=(),
            rejected=(
                Rejected(1, 0, "early", "no_config", "op published before the database's config", recorded(early)),
            ),
            controls=(Control(3, "config", CONFIG_BODY),),
        )
    ]


def test_duplicate_and_stale_seals_are_ignored() -> None:
    s = Stream()
    s.config()
    s.seal(0)
    # Other peers' copies of seal 0, and a seal for an older epoch, change nothing.
    s.seal(0)
    s.seal(-1)
    op = make_op("x", 1)
    s.ops(op)
    s.seal(0)
    s.seal(1)

    assigner = Assigner()
    outcomes = [assigner.feed(message) for message in s.messages]

    assert [sealed.epoch if sealed else None for sealed in outcomes] == [None, 0, None, None, None, None, 1]
    last = outcomes[-1]
    assert last is not None
    assert (last.first_epoch, last.seal_seq, last.ops, last.rejected) == (1, 7, (Accepted(5, 0, rec(op), 1),), ())


def test_a_seal_past_the_next_epoch_closes_every_epoch_in_between_in_one_commit() -> None:
    config = CONFIG.model_copy(update={"max_future_epochs": 5})
    s = Stream()
    s.config(config.model_dump(mode="json"))
    s.seal(0)
    ops = [make_op(f"e{k}", k) for k in (1, 2, 3, 4)]
    s.ops(*ops)
    s.seal(3)

    _, sealed = run(s.messages)

    # One commit numbered 3 spans epochs 1-3, dated at the end of epoch 3.
    assert sealed == SealedEpoch(
        epoch=3,
        first_epoch=1,
        seal_seq=4,
        resume_seq=3,
        end_ms=ORIGIN + 4 * EPOCH_MS,
        config=config,
        ops=(Accepted(3, 0, rec(ops[0]), 1), Accepted(3, 1, rec(ops[1]), 2), Accepted(3, 2, rec(ops[2]), 3)),
        rejected=(),
        controls=(),
    )


def test_a_config_change_too_soon_is_rejected_and_a_valid_one_moves_later_boundaries() -> None:
    s = Stream()
    s.config()
    s.seal(0)
    # Sealed through 0 with max_future_epochs 3: the earliest possible change is epoch 5.
    too_soon = ConfigChange(effective_epoch=4, epoch_ms=500, grace_ms=0).model_dump(mode="json")
    s.config(too_soon)
    change = ConfigChange(effective_epoch=5, epoch_ms=500, grace_ms=0).model_dump(mode="json")
    s.config(change)
    s.seal(1)
    s.seal(4)
    # 5_500 ms past the origin: epoch 5 under the old length, epoch 6 from the change on.
    op = make_op("x", 5, 500)
    s.ops(op)
    s.seal(6)

    _, one, four, six = run(s.messages)

    assert one.rejected == (
        Rejected(
            3,
            -1,
            None,
            "bad_config",
            "config change effective at epoch 4 is too soon: ops may already be assigned up to epoch 4; "
            "choose epoch 5 or later",
            canonical_json(too_soon),
        ),
    )
    assert one.controls == (Control(4, "config", change),)
    # Epochs before the change keep their windows; later ones are 500 ms long.
    assert four.end_ms == ORIGIN + 5 * EPOCH_MS
    assert (six.epoch, six.first_epoch, six.end_ms) == (6, 5, ORIGIN + 6_000)
    assert six.ops == (Accepted(7, 0, rec(op), 6),)


def test_a_config_change_before_the_first_seal_is_rejected() -> None:
    # Before any seal, ops of any future epoch may already be buffered, so no epoch is
    # provably safe to re-window: the change must wait for the first seal.
    s = Stream()
    s.config()
    s.ops(make_op("far", 40))
    change = ConfigChange(effective_epoch=10, epoch_ms=500, grace_ms=0).model_dump(mode="json")
    s.config(change)
    s.seal(0)

    (zero,) = run(s.messages)

    assert zero.controls == (Control(1, "config", CONFIG_BODY),)
    assert zero.rejected == (
        Rejected(3, -1, None, "bad_config", "a config change before the first sealed epoch; publish it later",
                 canonical_json(change)),
    )  # fmt: skip


def test_a_second_different_init_is_rejected_and_an_identical_one_ignored() -> None:
    s = Stream()
    s.config()
    s.config()
    other = CONFIG.model_copy(update={"epoch_ms": 2_000}).model_dump(mode="json")
    s.config(other)
    s.seal(0)

    (sealed,) = run(s.messages)

    assert sealed.config == CONFIG
    assert sealed.controls == (Control(1, "config", CONFIG_BODY),)
    assert sealed.rejected == (
        Rejected(
            3,
            -1,
            None,
            "bad_config",
            "the database is already initialized with a different config",
            canonical_json(other),
        ),
    )


# -- properties ----------------------------------------------------------------------

# Epochs in a script are relative to a cursor, the highest seal proposed so far, so
# that late ops, future ops, duplicate seals and too-early changes are all common.
op_events = st.builds(
    lambda rel, offset, logical, node, big: ("op", rel, offset, logical, node, big),
    st.integers(-2, 6),
    st.integers(0, 999),
    st.integers(0, 3),
    st.sampled_from(["p1", "p2", "p3"]),
    st.integers(0, 15).map(lambda n: n == 0),
)
seal_events = st.tuples(st.just("seal"), st.integers(-1, 3))
other_events = st.one_of(
    st.tuples(st.just("change"), st.integers(1, 12), st.sampled_from([250, 500, 2_000])),
    st.tuples(st.just("invalid")),
    st.tuples(st.just("malformed")),
    st.tuples(st.just("schema")),
    st.tuples(st.just("init"), st.booleans()),
)
# Mostly ops, then seals (one_of would weigh every alternative of other_events alike).
events = st.sampled_from("oooossx").flatmap(lambda k: {"o": op_events, "s": seal_events, "x": other_events}[k])


@st.composite
def scripts(draw: st.DrawFn) -> tuple[DatabaseConfig, list[tuple[Any, ...]]]:
    """A config and a random stream script (ops, seals, changes, junk) after a few
    ops published before the config."""
    config = DatabaseConfig(
        db="t",
        origin_ms=ORIGIN,
        epoch_ms=EPOCH_MS,
        grace_ms=0,
        late_policy=draw(st.sampled_from(LatePolicy)),
        max_future_epochs=draw(st.integers(1, 6)),
        max_op_bytes=400,
    )
    before = draw(st.lists(op_events, max_size=2))
    after = draw(st.lists(events, min_size=8, max_size=50))
    return config, before + [("config",)] + after


def build(config: DatabaseConfig, script: list[tuple[Any, ...]], breaks: list[bool]) -> list[StreamMessage]:
    """Stream messages for ``script``; consecutive ops share a batch unless ``breaks``
    starts a new one at that op."""
    s = Stream()
    batch: list[Op | dict[str, Any]] = []
    cursor = -1

    def flush() -> None:
        if batch:
            s.ops(*batch)
            batch.clear()

    for i, event in enumerate(script):
        kind = event[0]
        if kind in ("op", "invalid"):
            if breaks[i % len(breaks)]:
                flush()
            if kind == "op":
                _, rel, offset, logical, node, big = event
                data = {"n": "x" * 400} if big else {"n": i}
                batch.append(make_op(f"o{i}", cursor + rel, offset, logical=logical, node=node, data=data))
            else:
                batch.append({"id": f"o{i}", "hlc": [ORIGIN, 0, ""], "table": "items", "key": [i], "kind": "upsert"})
            continue
        flush()
        if kind == "seal":
            s.seal(cursor + event[1])
            cursor = max(cursor, cursor + event[1])
        elif kind == "config":
            s.config(config.model_dump(mode="json"))
        elif kind == "change":
            body = ConfigChange(effective_epoch=cursor + event[1], epoch_ms=event[2], grace_ms=0)
            s.config(body.model_dump(mode="json"))
        elif kind == "init":
            same = config if event[1] else config.model_copy(update={"grace_ms": 7})
            s.config(same.model_dump(mode="json"))
        elif kind == "malformed":
            s.add("ops", b"\xff not a batch")
        elif kind == "schema":
            s.add("schema", orjson.dumps({"tables": [], "n": i}))
    flush()
    return s.messages


def shape(sealed: SealedEpoch) -> tuple[Any, ...]:
    """A sealed epoch without stream positions (which batching changes)."""
    return (
        sealed.epoch,
        sealed.first_epoch,
        sealed.end_ms,
        sealed.config,
        tuple((a.op, a.epoch, a.late) for a in sealed.ops),
        tuple((r.op_id, r.reason, r.detail, r.payload) for r in sealed.rejected),
        tuple((c.kind, c.body) for c in sealed.controls),
    )


@settings(max_examples=150, deadline=None)
@given(scripts(), st.lists(st.booleans(), min_size=1, max_size=50), st.lists(st.booleans(), min_size=1, max_size=50))
def test_batching_does_not_change_the_assignment(
    script: tuple[DatabaseConfig, list[tuple[Any, ...]]], breaks_a: list[bool], breaks_b: list[bool]
) -> None:
    config, events_ = script

    # The same ops in the same stream order, cut into batch messages two ways.
    one = run(build(config, events_, breaks_a))
    other = run(build(config, events_, breaks_b))
    # Every op in its own message, and all consecutive ops in one message.
    single = run(build(config, events_, [True]))
    joined = run(build(config, events_, [False]))

    assert [shape(s) for s in one] == [shape(s) for s in other] == [shape(s) for s in single]
    assert [shape(s) for s in one] == [shape(s) for s in joined]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 999), st.integers(0, 2), st.sampled_from(["p1", "p2", "p3"])),
        min_size=1,
        max_size=25,
    ),
    st.data(),
)
def test_the_arrival_order_of_an_epochs_ops_before_its_seal_does_not_matter(
    stamps: list[tuple[int, int, int, str]], data: st.DataObject
) -> None:
    ops = [
        make_op(f"o{i}", epoch, offset, logical=logical, node=node)
        for i, (epoch, offset, logical, node) in enumerate(stamps)
    ]
    arrived = data.draw(st.permutations(ops))
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=len(ops), max_size=len(ops)))

    def sealed_for(order: list[Op]) -> list[SealedEpoch]:
        s = Stream()
        s.config()
        rest = list(order)
        for size in sizes:
            if rest:
                s.ops(*rest[:size])
                rest = rest[size:]
        s.seal(1)
        s.seal(3)
        return run(s.messages)

    for sealed in (sealed_for(ops), sealed_for(arrived)):
        upto_1, upto_3 = sealed
        # Each commit holds exactly its epochs' ops, none late or rejected...
        assert {a.op.id for a in upto_1.ops} == {op.id for op in ops if op.hlc.wall_ms < ORIGIN + 2 * EPOCH_MS}
        assert {a.op.id for a in upto_3.ops} == {op.id for op in ops if op.hlc.wall_ms >= ORIGIN + 2 * EPOCH_MS}
        assert not any(a.late for a in upto_1.ops + upto_3.ops)
        assert upto_1.rejected == upto_3.rejected == ()
        # ...and in HLC order they are one and the same sequence.
        for commit in (upto_1, upto_3):
            in_order = sorted((a.op for a in commit.ops), key=lambda op: op.sort_key())
            assert in_order == sorted(
                (rec(op) for op in ops if commit.first_epoch <= (op.hlc.wall_ms - ORIGIN) // EPOCH_MS <= commit.epoch),
                key=lambda op: op.sort_key(),
            )


@settings(max_examples=200, deadline=None)
@given(scripts(), st.lists(st.booleans(), min_size=1, max_size=50))
def test_a_peer_resumed_after_any_commit_emits_exactly_the_same_later_commits(
    script: tuple[DatabaseConfig, list[tuple[Any, ...]]], breaks: list[bool]
) -> None:
    config, events_ = script
    messages = build(config, events_, breaks)

    # One peer reads the whole stream without stopping.
    full = run(messages)

    for i, committed in enumerate(full):
        # Another peer crashed right after commit i: from what Dolt holds (the config
        # rows of commits up to i, the epochs table) it rebuilds its assigner...
        config_log = [(c.seq, c.body) for sealed in full[: i + 1] for c in sealed.controls if c.kind == "config"]
        sealed_before = max((s.epoch for s in full if s.seal_seq < committed.resume_seq), default=NO_EPOCH)
        assigner = Assigner.resume(config_log, committed.resume_seq, sealed_before, committed_through=committed.epoch)

        # ...and re-reads the stream from the stored resume position.
        again = run((m for m in messages if m.seq >= committed.resume_seq), assigner)

        # Nothing up to commit i comes out twice, and everything after comes out the same.
        assert again == full[i + 1 :]


@settings(max_examples=100, deadline=None)
@given(scripts(), st.lists(st.booleans(), min_size=1, max_size=50))
def test_a_prepare_hook_rides_along_with_each_accepted_op_and_changes_no_assignment(
    script: tuple[DatabaseConfig, list[tuple[Any, ...]]], breaks: list[bool]
) -> None:
    config, events_ = script
    messages = build(config, events_, breaks)
    seen: list[OpRecord] = []

    def prepare(op: OpRecord) -> tuple[str, str]:
        seen.append(op)
        return ("prepared", op.id)

    plain = run(messages)
    hooked = run(messages, Assigner(prepare=prepare))

    # Each accepted op (on time or carried late) carries what the hook made of it...
    assert all(a.prepared == ("prepared", a.op.id) for sealed in hooked for a in sealed.ops)
    # ...the hook saw only accepted ops, and the commits are otherwise the same.
    assert {a.op.id for sealed in hooked for a in sealed.ops} <= {op.id for op in seen}
    assert [dataclasses.replace(s, ops=tuple(a._replace(prepared=None) for a in s.ops)) for s in hooked] == plain
