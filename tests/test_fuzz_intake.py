"""Property tests of intake: arbitrary stream messages through the deterministic core.

No servers. Each example is a stream: the database's config (``max_future_epochs`` 5),
the corpus schema (one table per strategy: text, integer and composite keys), a few
good ops and ``seal 0``, then up to a dozen generated messages, then a seal that closes
everything still open. The generated messages are:

* arbitrary bytes on any subject;
* arbitrary JSON values on any subject;
* mostly valid op batches with one field of one op mutated (to a hostile value:
  64-bit edges, huge numbers, NaN/Infinity, deep nesting, reserved names, ...), on the
  op's own table's subject or on another;
* mostly valid seals, config messages (init, change, roster) and schema messages with
  one field mutated; plain valid seals of nearby epochs, so epochs close mid-stream.

The stream is fed through :class:`epoch.assign.Assigner` (with the materializer's
``prepare`` hook, :func:`materializer.prepare.prepare_op`) and every sealed epoch through
:func:`materializer.plan.plan_epoch`. Properties:

* nothing raises;
* every message is taken or recorded: each op of a batch is in exactly one sealed
  epoch (then applied, counted as a duplicate, or rejected at planning) or rejected
  before planning; a message that is not a batch is rejected as a whole; a schema
  message is applied or rejected; an unknown subject is rejected;
* per epoch, ``len(ops) == applied + duplicates + ops rejected at planning``;
* nothing is rejected as ``unexpected_error`` (that reason means a bug met the input);
* determinism: the same stream run twice gives equal plans, and equal plans again with
  no ``prepare`` hook at all (a peer catching up plans everything at the seal);
* the plans commit into a real doltlite database (DoltliteBackend, from a genesis):
  the backend accepts everything planning let through.

Example counts are sized for about a minute on 2 cores. For a longer run::

    OPLOG_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz_intake.py -q

sets the pure properties' count (default 1000); the doltlite property runs a quarter of it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (before sqlite3)
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from epoch.assign import Assigner, SealedEpoch, StreamMessage
from materializer.backends.doltlite import DoltliteBackend
from materializer.plan import EpochPlan, plan_epoch
from materializer.prepare import prepare_op
from oplog.schema import TableSchema
from oplog.topology import Topology
from tests import hostile_corpus as hc
from tests.support import doltlite_genesis

EXAMPLES = int(os.environ.get("OPLOG_FUZZ_EXAMPLES", "1000"))
BACKEND_EXAMPLES = max(10, EXAMPLES // 4)
# pytest-timeout's default (120 s) would cut a raised example count short mid-search.
TIMEOUT_S = max(120.0, EXAMPLES * 0.25)
MAX_FUTURE = 5
TOPOLOGY = Topology(db=hc.DB)
UNEXPECTED = "unexpected_error"
FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}

TABLES = {t["name"]: t for t in hc.SCHEMA["tables"]}
KINDS = {"lww_t": "upsert", "lww_i": "upsert", "fl_c": "patch", "ctr": "incr", "doc": "crdt"}
ALL_KINDS = ["upsert", "delete", "patch", "incr", "crdt"]


@dataclasses.dataclass(frozen=True)
class Message:
    subject: str  # after "oplog.<db>."
    payload: bytes

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300] + b"..."
        return f"Message({self.subject!r}, {shown!r} ({len(self.payload)} bytes))"


# -- hostile values ------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30]
EDGE_FLOATS = [0.0, -0.0, 1e308, -1e308, 5e-324, 1.5, float("nan"), float("inf"), float("-inf")]
class Long(str):
    """A long string with a short repr (Hypothesis refuses to print 70 kB reprs)."""

    def __repr__(self) -> str:
        return f"Long({self[:1]!r} * {len(self)})"


EDGE_STRINGS = [
    "", " ", "NaN", "Infinity", "-Infinity", "1e1000000", "1e-1000000", "0." + "0" * 40 + "1", "9" * 80, "-0",
    "\x00", "🙂", "\ud800", "lww_t", "LWW_T", "ctr", "sqlite_x", "dolt_x", "oplog_epochs", "t" * 64, "a b",
    "AAEC", "!!", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00", Long("x" * 70_000),
]  # fmt: skip


def _scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from(EDGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(EDGE_FLOATS),
        st.text(max_size=12),
        st.sampled_from(EDGE_STRINGS),
    )


json_values = st.recursive(
    _scalars(),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
hostile = st.one_of(
    json_values,
    st.integers(min_value=2, max_value=400).map(hc.nested_list),  # deep nesting (as raw JSON text)
    st.integers(min_value=2, max_value=400).map(lambda n: {"x": hc.nested_list(n)}),
)


# -- messages --------------------------------------------------------------------------------


@st.composite
def keys(draw: st.DrawFn, table: str) -> Any:
    if table == "lww_i":
        return draw(st.integers(-3, 3))
    if table == "fl_c":
        return [draw(st.sampled_from(["s", "t"])), draw(st.integers(0, 3))]
    return draw(st.sampled_from(["a", "b", "c"]))


@st.composite
def datas(draw: st.DrawFn, table: str, kind: str) -> Any:
    if kind == "delete":
        return hc.MISSING
    if table == "ctr":
        return {"qty": draw(st.integers(-5, 5)), "amt": draw(st.sampled_from(["0.1", "-2", "1.25"]))}
    if table == "doc":
        return {"update": draw(st.sampled_from([hc.CRDT["corp"], hc.CRDT["good1"], hc.CRDT["gap"]]))}
    if table == "lww_i":
        return {"v": draw(st.text(max_size=5))}
    if table == "fl_c":
        return {draw(st.sampled_from(["a", "b"])): draw(st.one_of(st.text(max_size=3), st.integers(-9, 9)))}
    return {"name": draw(st.text(max_size=5)), "n": draw(st.integers(-9, 9))}


@st.composite
def valid_ops(draw: st.DrawFn, table: str | None = None) -> dict[str, Any]:
    table = table or draw(st.sampled_from(sorted(TABLES)))
    kind = KINDS[table] if draw(st.integers(0, 4)) else draw(st.sampled_from(ALL_KINDS))
    epoch = draw(st.one_of(st.integers(-1, 5), st.integers(-1, 5), st.integers(-2, 12)))  # some late, some future
    return hc.op(
        table,
        draw(keys(table)),
        kind,
        draw(datas(table, kind)),
        id=f"o{draw(st.integers(0, 40))}",  # a small pool: duplicates and conflicts happen
        hlc=[hc.wall(epoch, draw(st.integers(0, 999))), draw(st.integers(0, 2)), draw(st.sampled_from(["n1", "n2"]))],
    )


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with one field replaced by a hostile value, removed, or added."""
    fields = [*base, "extra"]
    name = draw(st.sampled_from(fields))
    out = dict(base)
    if draw(st.integers(0, 5)) == 0 and name in out:
        del out[name]
    else:
        out[name] = draw(hostile)
    return out


@st.composite
def op_batches(draw: st.DrawFn) -> Message:
    table = draw(st.sampled_from(sorted(TABLES)))
    ops: list[Any] = draw(st.lists(valid_ops(table), min_size=1, max_size=5))
    if draw(st.integers(0, 5)) == 0:
        ops.insert(draw(st.integers(0, len(ops))), draw(valid_ops()))  # another table's op
    if draw(st.booleans()):
        i = draw(st.integers(0, len(ops) - 1))
        ops[i] = draw(mutated(ops[i]))
    if draw(st.integers(0, 9)) == 0:
        ops.append(draw(hostile))  # an element that is not an op at all
    if draw(st.integers(0, 7)) == 0:
        table = draw(st.sampled_from([*sorted(TABLES), "ghost", "lww_t.x"]))
    return Message(f"ops.{table}", hc.batch(*ops))


@st.composite
def seals(draw: st.DrawFn) -> Message:
    epoch = draw(st.one_of(st.integers(-2, 12), st.integers(-2, 12), st.sampled_from(EDGE_INTS), hostile))
    body: Any = {"epoch": epoch}
    if draw(st.integers(0, 5)) == 0:
        body = draw(mutated(body))
    return Message("seal", hc.encode(body))


@st.composite
def configs(draw: st.DrawFn) -> Message:
    which = draw(st.sampled_from(["init", "change", "roster"]))
    if which == "init":
        base = hc.config_body(max_future_epochs=MAX_FUTURE)
    elif which == "change":
        base = {"type": "change", "effective_epoch": draw(st.integers(0, 40)), "epoch_ms": 1000, "grace_ms": 0}
    else:
        base = {"type": "roster", "peers": ["p0", "p1"]}
    body = draw(mutated(base)) if draw(st.integers(0, 3)) else base
    return Message("config", hc.encode(body))


@st.composite
def schemas(draw: st.DrawFn) -> Message:
    base = dict(TABLES[draw(st.sampled_from(sorted(TABLES)))])
    if draw(st.booleans()):
        base = {**base, "name": draw(st.sampled_from(["new_t", "New_T", "lww_t", "LWW_T", "sqlite_q", "n2"]))}
    table: Any = draw(mutated(base)) if draw(st.integers(0, 3)) else base
    if isinstance(table, dict) and isinstance(table.get("columns"), list) and table["columns"] and draw(st.booleans()):
        columns = list(table["columns"])
        i = draw(st.integers(0, len(columns) - 1))
        columns[i] = draw(mutated(columns[i])) if isinstance(columns[i], dict) else columns[i]
        table = {**table, "columns": columns}
    body: Any = {"tables": [table]}
    if draw(st.integers(0, 6)) == 0:
        body = draw(mutated(body))
    return Message("schema", hc.encode(body))


SUBJECTS = ["ops.lww_t", "ops.ctr", "ops", "seal", "config", "schema", "bogus", "OPS.lww_t"]
raw_bytes = st.builds(Message, st.sampled_from(SUBJECTS), st.binary(max_size=64))
raw_json = st.builds(lambda s, v: Message(s, hc.encode(v)), st.sampled_from(SUBJECTS), json_values)
next_seals = st.integers(1, 8).map(lambda k: Message("seal", hc.encode({"epoch": k})))  # mostly honoured
messages = st.one_of(
    op_batches(), op_batches(), op_batches(), op_batches(), next_seals, seals(), configs(), schemas(), raw_bytes,
    raw_json,
)
streams = st.lists(messages, min_size=1, max_size=12)


def prefix() -> list[Message]:
    out = [Message("config", hc.encode(hc.config_body(max_future_epochs=MAX_FUTURE))),
           Message("schema", hc.encode(hc.SCHEMA))]  # fmt: skip
    out += [Message(subject, payload) for subject, payload in hc.good_batches(hc.GOOD_BEFORE)]
    out.append(Message("seal", hc.encode({"epoch": 0})))
    return out


# -- running a stream ------------------------------------------------------------------------


def stream_message(seq: int, suffix: str, payload: bytes) -> StreamMessage:
    """A StreamMessage as the stream reader makes one from subject ``oplog.<db>.<suffix>``."""
    subject = f"{TOPOLOGY.prefix}.{suffix}"
    fields = {f.name for f in dataclasses.fields(StreamMessage)}
    extra: dict[str, Any] = {}
    subject_table = getattr(TOPOLOGY, "subject_table", None)
    if "table" in fields and subject_table is not None:
        extra["table"] = subject_table(subject)
    if "subject" in fields:
        extra["subject"] = subject
    return StreamMessage(seq, TOPOLOGY.message_kind(subject), payload, **extra)


class EmptyReader:
    """No stored rows, no known op ids."""

    def read_rows(self, table: TableSchema, keys: list[Any]) -> dict[Any, Any]:
        return {}

    def known_op_ids(self, ids: list[str]) -> dict[str, str]:
        return {}

    def check_key(self, table: TableSchema, key: Any) -> None:
        return None  # no storage limits beyond the schema's


@dataclasses.dataclass
class Run:
    messages: list[Message]  # every message fed, the closing seal included
    epochs: list[tuple[SealedEpoch, EpochPlan]]


def run(
    stream: list[Message], *, prepare: bool = True, backend: DoltliteBackend | None = None
) -> Run:
    """Feed ``prefix() + stream`` and a closing seal; plan (and with ``backend``, commit)
    every sealed epoch. Tables evolve from the plans, as a backend's would."""
    reader: Any = backend if backend is not None else EmptyReader()
    tables: dict[str, TableSchema] = {}

    def prep(op: Any) -> Any:
        return prepare_op(op, tables, backend)

    assigner = Assigner(prepare=prep if prepare else None)
    fed: list[Message] = []
    epochs: list[tuple[SealedEpoch, EpochPlan]] = []

    def feed(message: Message) -> None:
        fed.append(message)
        sealed = assigner.feed(stream_message(len(fed), message.subject, message.payload))
        if sealed is not None:
            plan = plan_epoch(sealed, dict(tables), reader)
            if backend is not None:
                backend.commit_epoch(plan)
            for change in plan.table_changes:
                tables[change.after.name] = change.after
            epochs.append((sealed, plan))

    for message in [*prefix(), *stream]:
        feed(message)
    # Close everything still open: max_future_epochs past the last seal is the furthest an
    # op can have been accepted, and the furthest a seal may reach.
    feed(Message("seal", hc.encode({"epoch": assigner.last_sealed + MAX_FUTURE})))
    return Run(fed, epochs)


def violations(result: Run) -> list[str]:
    """Every way ``result`` breaks totality (see the module docstring)."""
    problems: list[str] = []
    rejected: dict[tuple[int, int], str] = {}
    refused_early: set[tuple[int, int]] = set()  # rejected by the assigner, before planning
    accepted: dict[tuple[int, int], int] = {}
    schema_seen: set[int] = set()
    config_seen: set[int] = set()
    seal_seqs = {sealed.seal_seq for sealed, _ in result.epochs}
    for sealed, plan in result.epochs:
        for r in plan.rejections:
            if (r.seq, r.index) in rejected:
                problems.append(f"seq {r.seq} index {r.index} rejected twice")
            rejected[(r.seq, r.index)] = r.reason
            if r.reason == UNEXPECTED:
                problems.append(f"seq {r.seq} index {r.index}: unexpected_error ({r.detail})")
        refused_early |= {(r.seq, r.index) for r in sealed.rejected}
        for a in sealed.ops:
            if (a.seq, a.index) in accepted:
                problems.append(f"seq {a.seq} index {a.index} taken into two commits")
            accepted[(a.seq, a.index)] = sealed.epoch
        schema_seen |= {c.seq for c in sealed.controls if c.kind == "schema"}
        config_seen |= {seq for seq, _ in plan.config_rows}
        # Every op of the epoch is applied, a duplicate, or rejected at planning.
        positions = {(a.seq, a.index) for a in sealed.ops}
        planned_rejections = sum(1 for r in plan.rejections if (r.seq, r.index) in positions)
        row = plan.epoch
        if len(sealed.ops) != row.applied + row.duplicates + planned_rejections:
            problems.append(
                f"epoch {sealed.epoch}: {len(sealed.ops)} ops, but applied {row.applied} + duplicates "
                f"{row.duplicates} + rejected {planned_rejections}"
            )
    if not result.epochs or result.epochs[-1][0].seal_seq != len(result.messages):
        problems.append("the closing seal did not commit")
    for seq, message in enumerate(result.messages, 1):
        kind = TOPOLOGY.message_kind(f"{TOPOLOGY.prefix}.{message.subject}")
        if (seq, -1) in rejected:
            continue
        if kind == "ops":
            try:
                body = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("ops"), list):
                problems.append(f"seq {seq}: not a batch, yet not rejected")
                continue
            for index in range(len(body["ops"])):
                taken, refused = (seq, index) in accepted, (seq, index) in rejected
                if not (taken or refused):
                    problems.append(f"seq {seq} op {index}: neither taken nor rejected")
                if taken and (seq, index) in refused_early:
                    problems.append(f"seq {seq} op {index}: both taken into a commit and rejected on arrival")
        elif kind == "schema":
            if seq not in schema_seen:
                problems.append(f"seq {seq}: schema message neither applied nor rejected")
        elif kind == "seal":
            if seq not in seal_seqs:
                # Ignored: only a well-formed seal of an already sealed epoch may be.
                try:
                    body = orjson.loads(message.payload)
                    ok = isinstance(body, dict) and type(body.get("epoch")) is int
                except orjson.JSONDecodeError:
                    ok = False
                if not ok:
                    problems.append(f"seq {seq}: a malformed seal was neither honoured nor rejected")
        elif kind == "config":
            if seq not in config_seen:
                try:
                    body = orjson.loads(message.payload)
                    ok = isinstance(body, dict) and body.get("type") == "init"
                except orjson.JSONDecodeError:
                    ok = False
                if not ok:
                    problems.append(f"seq {seq}: a config message was neither recorded nor rejected")
        else:
            problems.append(f"seq {seq}: a message on an unknown subject was not rejected")
    return problems


def _events(result: Run) -> None:
    """What the example exercised (``--hypothesis-show-statistics`` lists them)."""
    for reason in sorted({r.reason for _, plan in result.epochs for r in plan.rejections}):
        event(f"rejected: {reason}")
    event(f"epochs committed: {min(len(result.epochs), 5)}{'+' if len(result.epochs) >= 5 else ''}")
    if any(plan.epoch.applied > 1 for _, plan in result.epochs[1:]):
        event("generated ops applied")


def plans_of(result: Run) -> list[EpochPlan]:
    return [plan for _, plan in result.epochs]


# -- the properties --------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(streams)
def test_any_stream_is_taken_or_recorded_and_planned_deterministically(stream: list[Message]) -> None:
    first = run(stream)
    _events(first)
    problems = violations(first)
    assert not problems, "\n".join(problems)
    again = run(stream)
    assert plans_of(again) == plans_of(first), "the same stream planned twice gave different plans"
    unprepared = run(stream, prepare=False)
    assert plans_of(unprepared) == plans_of(first), "plans differ with and without the prepare hook"


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(st.lists(st.one_of(raw_bytes, raw_json), min_size=1, max_size=8))
def test_arbitrary_bytes_and_json_on_any_subject_are_recorded(stream: list[Message]) -> None:
    problems = violations(run(stream))
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=BACKEND_EXAMPLES, **FUZZ_SETTINGS)
@given(streams)
def test_whatever_planning_lets_through_commits_into_doltlite(stream: list[Message]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        backend = DoltliteBackend(Path(scratch) / "fuzz.db")
        backend.open()
        try:
            backend.install_snapshot(doltlite_genesis())
            result = run(stream, backend=backend)  # raises if the backend refuses a plan
            problems = violations(result)
            assert not problems, "\n".join(problems)
            committed = [epoch for epoch, _ in backend.epoch_hashes()]
            assert committed == [sealed.epoch for sealed, _ in result.epochs]
            last = backend.last_epoch()
            assert last is not None and last == result.epochs[-1][1].epoch
        finally:
            backend.close()
