"""Totality: the hostile corpus (tests/hostile_corpus.py) against real peers.

For ANY message on the stream, every peer applies it or records it as rejected (a row
in ``oplog_rejections`` with a reason), identically on every peer, and the epoch
commits: no crash, no stall, no crash loop.

* ``test_every_peer_survives_the_hostile_corpus_and_agrees`` (integration): a real
  nats-server, three ``oplog serve`` processes (no sealer: the test publishes the seals),
  the whole corpus published raw between good ops. Two peers run from the start and
  read the corpus at the stream's head, one message at a time (so ops are prepared and
  their rows read ahead while the epoch is open, ``materializer/commit/readahead.py``); the
  third starts after the last message and catches up (it plans everything at the seal).
  Asserts every peer stays up, commits every epoch through the last message with one
  hash per epoch on all peers, holds exactly the expected rows, and reached the expected
  outcome for every corpus entry. It prints a table: entry | outcome on each peer |
  expected, and the traceback of any peer that exited (and whether a restart of it
  exits again).
* ``test_each_corpus_entry_alone_through_the_pipeline[mode-entry]``: each entry alone,
  between the same good ops, through the in-process pipeline (Assigner -> plan_epoch ->
  a doltlite backend, composed as ``materializer.commit.loop`` composes them), in two
  modes: ``head`` notes every op for read-ahead and fills it after every message (a
  peer at the stream's head); ``catchup`` plans at the seal with no read-ahead. No
  servers; a failing entry shows its own traceback. The integration test is the
  authority: this one does not run the stream reader.

Run::

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python -m pytest tests/test_hostile_corpus.py -q
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doltlite  # noqa: F401  (before sqlite3)
import orjson
import pytest

from devtools.natsd import NatsServer
from devtools.processes import PeerProcess
from epoch.assign import Assigner, StreamMessage
from materializer.agreement.hashes import HashBoard
from materializer.backends.doltlite import DoltliteBackend
from materializer.commit.readahead import ReadAhead
from materializer.plan import plan_epoch
from materializer.prepare import prepare_op
from oplog.stream import ensure_stream
from oplog.topology import Topology
from tests import hostile_corpus as hc
from tests.support import connected, doltlite_genesis

TOPOLOGY = Topology(db=hc.DB)
PEERS = hc.PEER_NAMES
AT_HEAD = ("p0", "p1")  # started before the corpus; the others start after the last message
PAUSE_S = 0.02  # between corpus messages, so the peers at the head read them one by one
SETTLE_S = 1.5  # before each seal, so the peers at the head fill their read-ahead
WAIT_S = 240.0
UNEXPECTED = "unexpected_error"

Outcome = str | tuple[str, ...]


# -- reading outcomes back from a peer's database -------------------------------------------


@dataclasses.dataclass
class PeerState:
    """What one peer's database holds after the run."""

    epochs: list[tuple[int, int, int, int]]  # epoch, first_epoch, seal_seq, resume_seq
    hashes: list[tuple[int, str]]
    rejections: dict[tuple[int, int], str]  # (seq, idx) -> reason
    op_ids: set[str]
    config_seqs: set[int]
    tables: dict[str, list[str]]  # declared table -> its column names
    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]]
    error: str | None = None


def read_state(path: Path) -> PeerState:
    if not path.exists():
        return PeerState([], [], {}, set(), set(), {}, {}, error=f"no database file {path}")
    with DoltliteBackend(path) as backend:
        conn = backend.conn
        if not backend.is_initialized():
            return PeerState([], [], {}, set(), set(), {}, {}, error="database not initialized")
        epochs = [
            tuple(r)
            for r in conn.execute("SELECT epoch, first_epoch, seal_seq, resume_seq FROM oplog_epochs ORDER BY epoch")
        ]
        rejections = {(s, i): reason for s, i, reason in conn.execute("SELECT seq, idx, reason FROM oplog_rejections")}
        op_ids = {i for (i,) in conn.execute("SELECT id FROM oplog_op_ids")}
        config_seqs = {s for (s,) in conn.execute("SELECT seq FROM oplog_config")}
        tables = {
            name: [c["name"] for c in orjson.loads(definition)["columns"]]
            for name, definition in conn.execute("SELECT name, definition FROM oplog_tables")
        }
        rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        for table, key_columns in hc.TABLE_KEYS.items():
            if table not in tables:
                continue
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
            for values in cursor.fetchall():
                record = dict(zip(names, values, strict=True))
                key = tuple(record.pop(c) for c in key_columns)
                record.pop("_oplog_meta", None)
                by_key[key] = record
            rows[table] = by_key
        return PeerState(
            epochs,  # type: ignore[arg-type]
            backend.epoch_hashes(),
            rejections,
            op_ids,
            config_seqs,
            tables,
            rows,
        )


def _op_ids_of(payload: bytes) -> list[Any] | None:
    """The ``id`` of each op of a batch payload, as the peers parse it (None if it is not a batch)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("ops"), list):
        return None
    return [o.get("id") if isinstance(o, dict) else None for o in body["ops"]]


def observe(entry: hc.Entry, seq: int, state: PeerState) -> Outcome:
    """The outcome a peer's database shows for the message of ``entry`` at stream ``seq``."""
    whole = state.rejections.get((seq, -1))
    if whole is not None:
        return f"rejected:{whole}"
    if entry.kind in ("ops", "ops-mismatch"):
        ids = _op_ids_of(entry.payload)
        count = len(ids) if ids is not None else len(entry.expect) if isinstance(entry.expect, tuple) else 0
        stray = [i for (s, i) in state.rejections if s == seq and i >= count]
        count = max([count, *(i + 1 for i in stray)])
        out = []
        for index in range(count):
            reason = state.rejections.get((seq, index))
            if reason is not None:
                out.append(f"rejected:{reason}")
            elif ids is not None and index < len(ids) and isinstance(ids[index], str) and ids[index] in state.op_ids:
                out.append("applied")
            else:
                out.append("missing")
        if ids is None and not out:
            return "missing"  # not a batch, yet not rejected either
        return tuple(out)
    if entry.kind == "seal":
        return "sealed" if any(e[2] == seq for e in state.epochs) else "ignored"
    if entry.kind == "config":
        return "applied" if seq in state.config_seqs else "ignored"
    if entry.kind == "schema":
        return "applied"
    return "ignored"


def _matches_one(expected: str, observed: str) -> bool:
    if expected == observed:
        return True
    if expected == "duplicate":
        return observed == "applied"  # the id is known; the rows show the first copy won
    if expected == "rejected":
        return observed.startswith("rejected:") and observed != f"rejected:{UNEXPECTED}"
    return False


def matches(expected: Outcome, observed: Outcome) -> bool:
    if isinstance(expected, str) or isinstance(observed, str):
        return isinstance(expected, str) and isinstance(observed, str) and _matches_one(expected, observed)
    return len(expected) == len(observed) and all(map(_matches_one, expected, observed))


def schema_problems(entry: hc.Entry, state: PeerState) -> list[str]:
    problems = []
    for item in entry.declares:
        table, _, column = item.partition(".")
        if table not in state.tables:
            problems.append(f"{entry.name}: table {table!r} was not created")
        elif column and column not in state.tables[table]:
            problems.append(f"{entry.name}: column {table}.{column} was not added")
    return problems


def _same(expected: Any, stored: Any) -> bool:
    if isinstance(expected, float) or isinstance(stored, float):
        return (
            type(expected) is type(stored)
            and expected == stored
            and math.copysign(1.0, expected) == math.copysign(1.0, stored)
        )
    return type(expected) is type(stored) and expected == stored


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} chars)"


def row_problems(state: PeerState, expected: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    """Differences between the rows a peer holds and exactly the expected rows."""
    problems = []
    for table, want in expected.items():
        have = state.rows.get(table)
        if have is None:
            problems.append(f"table {table} is missing")
            continue
        for key in sorted(set(have) - set(want), key=repr):
            problems.append(f"{table} holds an unexpected row {_short(key)}: {_short(have[key])}")
        for key in sorted(set(want) - set(have), key=repr):
            problems.append(f"{table} lacks row {_short(key)}")
        for key in sorted(set(want) & set(have), key=repr):
            for column, stored in have[key].items():
                value = want[key].get(column)
                if not _same(value, stored):
                    problems.append(f"{table} {_short(key)}.{column} = {_short(stored)}, expected {_short(value)}")
            for column in set(want[key]) - set(have[key]):
                problems.append(f"{table} has no column {column}")
    return problems


def render_table(rows: list[tuple[str, list[str], str, bool]], peers: list[str]) -> str:
    width = max(len(r[0]) for r in rows)
    cols = [max([len(p), *(len(r[1][i]) for r in rows)]) for i, p in enumerate(peers)]
    cols = [min(c, 48) for c in cols]
    head = f"{'entry':<{width}} | " + " | ".join(f"{p:<{c}}" for p, c in zip(peers, cols, strict=True))
    head += " | expected"
    lines = [head, "-" * len(head)]
    for name, outs, expected, ok in rows:
        cells = " | ".join(f"{o[:c]:<{c}}" for o, c in zip(outs, cols, strict=True))
        lines.append(f"{name:<{width}} | {cells} | {expected}{'' if ok else '   <-- MISMATCH'}")
    return "\n".join(lines)


def describe(outcome: Outcome) -> str:
    return hc.describe(outcome)


# -- the integration test -----------------------------------------------------------------------


async def _publish(js: Any, message: hc.Message) -> int:
    headers = {"Nats-Msg-Id": message.msg_id} if message.msg_id else None
    ack = await js.publish(f"{TOPOLOGY.prefix}.{message.subject}", message.payload, stream=TOPOLOGY.stream,
                           headers=headers)  # fmt: skip
    return int(ack.seq)


async def _reached(board: HashBoard, names: list[str], epoch: int) -> set[str]:
    rows = await board.collect(last=5)
    return {p for r in rows if r.epoch >= epoch for p in r.hashes} & set(names)


async def _wait_for_final(board: HashBoard, peers: list[PeerProcess], timeout: float) -> tuple[set[str], set[str]]:
    """Wait until every living peer reported FINAL_EPOCH, or all died, or ``timeout``.
    Returns (reached, died)."""
    deadline = time.monotonic() + timeout
    died: set[str] = set()
    while True:
        done = await _reached(board, [p.name for p in peers], hc.FINAL_EPOCH)
        died |= {p.name for p in peers if not p.running}
        living = {p.name for p in peers} - died
        if living <= done or time.monotonic() > deadline:
            return done, died
        await asyncio.sleep(0.2)


def _traceback_of(peer: PeerProcess, lines: int = 60) -> str:
    try:
        text = peer.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    start = text.find("Traceback")
    if start >= 0:
        return "\n".join(text[start:].splitlines()[:lines])
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.integration
@pytest.mark.timeout(900)
async def test_every_peer_survives_the_hostile_corpus_and_agrees(nats_server: NatsServer, tmp_path: Path) -> None:
    plan = hc.stream_plan()
    peers = [PeerProcess(name, hc.DB, nats_server.url, tmp_path / name, extra=["--no-seal"]) for name in PEERS]
    seq_of: dict[str, int] = {}
    publish_errors: dict[str, str] = {}
    last_seq = 0
    problems: list[str] = []
    restarts: dict[str, str] = {}
    try:
        async with connected(nats_server.url) as nc:
            js = nc.jetstream()
            await ensure_stream(js, TOPOLOGY)
            # Config and schema first, then the peers, then the rest while they run (at the
            # stream's head, so ops are also prepared and read ahead as they arrive).
            for message in plan[:2]:
                last_seq = await _publish(js, message)
            for p in peers:
                if p.name in AT_HEAD:
                    p.start()
            for message in plan[2:]:
                if message.subject == "seal" and message.entry is None:
                    await asyncio.sleep(SETTLE_S)  # the peers at the head fill read-ahead first
                try:
                    last_seq = await _publish(js, message)
                except Exception as e:  # the server refused it: report, go on
                    assert message.entry is not None, f"a structural message failed to publish: {e!r}"
                    publish_errors[message.entry] = f"{type(e).__name__}: {e}"
                    continue
                if message.entry is not None:
                    seq_of[message.entry] = last_seq
                await asyncio.sleep(PAUSE_S)
            for p in peers:
                if p.name not in AT_HEAD:
                    p.start()
            board = HashBoard(js, TOPOLOGY)
            reached, died = await _wait_for_final(board, peers, WAIT_S)
            for p in peers:
                if p.name in died:
                    problems.append(f"peer {p.name} exited (status {p.proc.returncode if p.proc else None}):\n"
                                    f"{_traceback_of(p)}")  # fmt: skip
                elif p.name not in reached:
                    problems.append(f"peer {p.name} is up but did not commit epoch {hc.FINAL_EPOCH} in {WAIT_S} s "
                                    f"(a stall):\n{p.log_tail(15)}")  # fmt: skip
            # A dead peer, restarted: does it come back, or crash-loop on the same message?
            for p in peers:
                if p.name in died:
                    p.start()
                    again, died_again = await _wait_for_final(board, [p], 30.0)
                    restarts[p.name] = (
                        "restarted: exited again (crash loop)"
                        if died_again
                        else "restarted: recovered"
                        if again
                        else "restarted: up, but no commit of the final epoch within 30 s"
                    )
            alive = {p.name: p.running for p in peers}
    finally:
        for p in peers:
            p.stop()

    states = {name: read_state(tmp_path / name / f"{hc.DB}.db") for name in PEERS}
    for name, state in states.items():
        if state.error:
            problems.append(f"peer {name}: {state.error}")

    # Every peer committed every epoch through the last message, with one hash per epoch.
    for name, state in states.items():
        epochs = [e[0] for e in state.epochs]
        if epochs != [0, hc.CORPUS_EPOCH, hc.FINAL_EPOCH]:
            problems.append(f"peer {name} committed epochs {epochs}, expected [0, 1, 2]")
        elif state.epochs[-1][2] != last_seq:
            problems.append(f"peer {name}'s last commit was sealed at seq {state.epochs[-1][2]}, not {last_seq}")
    by_epoch: dict[int, dict[str, str]] = {}
    for name, state in states.items():
        for epoch, commit in state.hashes:
            by_epoch.setdefault(epoch, {})[name] = commit
    for epoch, hashes in sorted(by_epoch.items()):
        if len(set(hashes.values())) != 1 or len(hashes) != len(PEERS):
            problems.append(f"epoch {epoch}: hashes differ or are missing: {hashes}")

    # Exact rows: the good ops, and every corpus op that applies.
    expected_rows = hc.expected_rows()
    for name, state in states.items():
        if not state.error:
            problems += [f"peer {name}: {p}" for p in row_problems(state, expected_rows)]

    # Every corpus entry: the same outcome on every peer, and the expected one.
    table: list[tuple[str, list[str], str, bool]] = []
    mismatched: list[str] = []
    for entry in hc.CORPUS:
        if entry.name in publish_errors:
            outs = [f"publish failed: {publish_errors[entry.name]}"] * len(PEERS)
            table.append((entry.name, outs, entry.describe_expect(), False))
            mismatched.append(f"{entry.name}: could not be published ({publish_errors[entry.name]})")
            continue
        seq = seq_of[entry.name]
        observed = [observe(entry, seq, states[name]) for name in PEERS]
        agree = all(o == observed[0] for o in observed)
        ok = agree and matches(entry.expect, observed[0])
        table.append((entry.name, [describe(o) for o in observed], entry.describe_expect(), ok))
        if not agree:
            mismatched.append(f"{entry.name} (seq {seq}): peers disagree: {[describe(o) for o in observed]}")
        elif not ok:
            mismatched.append(
                f"{entry.name} (seq {seq}): expected {entry.describe_expect()}, got {describe(observed[0])}"
                f" [attacks: {entry.attacks}]"
            )
        if entry.kind == "schema" and entry.expect == "applied":
            for name in PEERS:
                mismatched += [f"peer {name}: {p}" for p in schema_problems(entry, states[name])]
    # Nothing but corpus messages is rejected.
    corpus_seqs = set(seq_of.values())
    for name, state in states.items():
        stray = sorted({s for s, _ in state.rejections} - corpus_seqs)
        if stray:
            problems.append(f"peer {name} rejected messages that are not corpus entries: seqs {stray}")

    print(f"\n{len(hc.CORPUS)} corpus entries; stream ends at seq {last_seq}")
    print(render_table(table, list(PEERS)))
    for name, verdict in restarts.items():
        print(f"peer {name}: {verdict}")
    problems += mismatched
    assert all(alive.values()) and not problems, (
        f"peers alive at the end: {alive}; {restarts}\n{len(problems)} problem(s):\n" + "\n".join(problems)
    )


# -- each entry alone, in process ---------------------------------------------------------------


def stream_message(seq: int, suffix: str, payload: bytes) -> StreamMessage:
    """A StreamMessage as the stream reader makes one from subject ``oplog.<db>.<suffix>``."""
    subject = f"{TOPOLOGY.prefix}.{suffix}"
    fields = {f.name for f in dataclasses.fields(StreamMessage)}
    extra: dict[str, Any] = {}
    subject_table: Callable[[str], str | None] | None = getattr(TOPOLOGY, "subject_table", None)
    if "table" in fields and subject_table is not None:
        extra["table"] = subject_table(subject)
    if "subject" in fields:
        extra["subject"] = subject
    return StreamMessage(seq, TOPOLOGY.message_kind(subject), payload, **extra)


def run_in_process(messages: list[hc.Message], backend: DoltliteBackend, *, at_head: bool) -> dict[str, int]:
    """Feed ``messages`` (seq 1, 2, …) through the steps of ``Materializer.step``, one
    message per step; returns each entry's seq. ``at_head``: every op is noted for
    read-ahead and the read-ahead filled after every step, as on a peer that is caught
    up; otherwise there is no read-ahead (a peer catching up)."""
    tables = [backend.tables()]
    read_ahead = ReadAhead(backend)

    def prepare(op: Any) -> Any:
        if at_head:
            read_ahead.note(op, tables[0])
        return prepare_op(op, tables[0], backend)

    assigner = Assigner(prepare=prepare)
    seqs: dict[str, int] = {}
    for seq, message in enumerate(messages, 1):
        if message.entry is not None:
            seqs[message.entry] = seq
        sealed = assigner.feed(stream_message(seq, message.subject, message.payload))
        if sealed is not None:
            backend.commit_epoch(plan_epoch(sealed, backend.tables(), read_ahead.reader()))
            read_ahead.clear()
            tables[0] = backend.tables()
        if read_ahead.pending:
            read_ahead.fill()
    return seqs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [e.name for e in hc.CORPUS])
@pytest.mark.parametrize("mode", ["head", "catchup"])
def test_each_corpus_entry_alone_through_the_pipeline(mode: str, name: str, tmp_path: Path) -> None:
    entry = hc.BY_NAME[name]
    messages = hc.stream_plan([entry])
    backend = DoltliteBackend(tmp_path / "alone.db")
    backend.open()
    try:
        backend.install_snapshot(doltlite_genesis())
        try:
            seqs = run_in_process(messages, backend, at_head=mode == "head")
        except Exception:
            pytest.fail(f"{name} [{entry.attacks}] stopped the pipeline ({mode}):\n{traceback.format_exc()}")
    finally:
        backend.close()
    state = read_state(tmp_path / "alone.db")
    problems = []
    epochs = [e[0] for e in state.epochs]
    if epochs != [0, hc.CORPUS_EPOCH, hc.FINAL_EPOCH]:
        problems.append(f"committed epochs {epochs}, expected [0, 1, 2] (a stall)")
    elif state.epochs[-1][2] != len(messages):
        problems.append(f"the last commit was sealed at seq {state.epochs[-1][2]}, not {len(messages)}")
    observed = observe(entry, seqs[name], state)
    if not matches(entry.expect, observed):
        problems.append(f"expected {entry.describe_expect()}, got {describe(observed)}")
    if entry.kind == "schema" and entry.expect == "applied":
        problems += schema_problems(entry, state)
    problems += row_problems(state, hc.expected_rows([entry]))
    stray = sorted({s for s, _ in state.rejections} - {seqs[name]})
    if stray:
        problems.append(f"messages other than the entry were rejected: seqs {stray}")
    assert not problems, f"{name} [{entry.attacks}]:\n" + "\n".join(problems)


def test_the_corpus_is_large_and_covers_every_subject_kind() -> None:
    assert len(hc.CORPUS) >= 60
    assert {e.kind for e in hc.CORPUS} == {"ops", "ops-mismatch", "seal", "config", "schema", "unknown"}
    assert all(e.attacks for e in hc.CORPUS)
    # Every payload fits the stream's message limit, so the server stores all of them.
    limit = TOPOLOGY.limits.max_msg_bytes
    assert all(len(e.payload) <= limit for e in hc.CORPUS), [e.name for e in hc.CORPUS if len(e.payload) > limit]
