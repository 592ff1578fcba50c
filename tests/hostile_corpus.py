"""Hostile stream messages, as data: the totality corpus.

The promise under test (shared/DESIGN.md, "Trust and roles"): for ANY message on the
stream, every peer applies it or records it as rejected (a row in ``oplog_rejections``
with a reason), identically on every peer, and the epoch commits.

Each :class:`Entry` is ONE stream message: the subject it is published on (relative
to ``oplog.<db>.``, raw, so nothing is validated client-side), its bytes, and the
outcome every peer must reach. ``tests/test_hostile_corpus.py`` publishes the whole
corpus to a real stream read by three real peers, and replays each entry alone
through the in-process pipeline.

The stream around the corpus (see :func:`stream_plan`)::

    config init, SCHEMA, GOOD_BEFORE (epoch 0), seal 0,
    every corpus entry (ops stamped in epoch CORPUS_EPOCH = 1),
    seal 1, GOOD_AFTER (epoch 2), seal 2

Every entry is independent of every other entry (unique op ids and row keys), so the
outcomes are the same whether the corpus is published as a whole or one entry at a time.

Outcome vocabulary (:attr:`Entry.expect`):

* ops messages: a tuple with one outcome per op of the batch — ``"applied"``;
  ``"duplicate"`` (an identical copy of an op id already taken: counted, not applied
  again; indistinguishable from "applied" in the database, the row checks tell);
  ``"rejected"`` or ``"rejected:<reason>"`` (a row at ``(seq, index)``). A plain string
  instead of a tuple is the outcome of the message as a whole (a row at ``(seq, -1)``).
* seal messages: ``"sealed"`` (closed epochs), ``"ignored"`` (a later copy: at or
  below the last sealed epoch), ``"rejected[:reason]"``.
* config messages: ``"applied"`` (a row in ``oplog_config``), ``"ignored"`` (an init
  identical to the first), ``"rejected[:reason]"``.
* schema messages: ``"applied"`` (and the tables/columns of :attr:`Entry.declares`
  exist), ``"rejected[:reason]"``.
* unknown subjects: ``"rejected[:reason]"``.

``"rejected"`` without a reason matches any reason except ``unexpected_error``: that
reason means a bug met the message (the catch-all kept the peer up), never an
intended outcome. Reason codes are those of ``epoch.assign.Reason``,
``materializer.plan`` and the strategies; where a code was not settled when this was
written, the entry expects just ``"rejected"``.

Limits the lead engineer introduced while this corpus was written (JSON depth, column
count, ops per message, decimal digits) are read from the product when it defines
them, with the value it had then as the fallback, so boundary entries follow the
product's own constant.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import oplog.op as _op_module
import oplog.schema as _schema_module
from oplog.crdt_helper import DocumentWriter

# -- the database the corpus runs against ---------------------------------------------

DB = "t"
ORIGIN_MS = 1_700_000_000_000  # tests.support.ORIGIN_MS
EPOCH_MS = 1000
MAX_FUTURE_EPOCHS = 600  # the default; seals/ops beyond last_sealed + this are rejected
CORPUS_EPOCH = 1  # every corpus op (unless it attacks the HLC) is stamped in this epoch
FINAL_EPOCH = 2
PEER_NAMES = ("p0", "p1", "p2")  # the peers of the integration test (a roster entry names them)

MAX_JSON_DEPTH: int = getattr(_op_module, "MAX_JSON_DEPTH", 64)
MAX_ID_LENGTH: int = getattr(_op_module, "MAX_ID_LENGTH", 200)
MAX_COLUMNS: int = getattr(_schema_module, "MAX_COLUMNS", 250)
MAX_TABLES_PER_MESSAGE: int = getattr(_schema_module, "MAX_TABLES_PER_MESSAGE", 100)
MAX_DECIMAL_DIGITS: int = getattr(_schema_module, "MAX_DECIMAL_DIGITS", 65)
MIN_TIMESTAMP_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
try:
    from epoch.assign import MAX_OPS_PER_MESSAGE as _MAX_OPS
except ImportError:  # not defined before the hardening
    _MAX_OPS = 10_000
MAX_OPS_PER_MESSAGE: int = _MAX_OPS
MAX_OP_BYTES = 64 * 1024  # oplog.topology.DEFAULT_MAX_OP_BYTES, the config default


def config_body(**overrides: Any) -> dict[str, Any]:
    """The init config (as tests.support.config(...).model_dump(mode="json") renders it)."""
    body: dict[str, Any] = {
        "type": "init", "db": DB, "origin_ms": ORIGIN_MS, "epoch_ms": EPOCH_MS, "grace_ms": 0,
        "late_policy": "carry", "max_future_epochs": MAX_FUTURE_EPOCHS, "dedup_epochs": 3600,
        "max_op_bytes": MAX_OP_BYTES, "author_name": "oplog", "author_email": "oplog@localhost",
    }  # fmt: skip
    body.update(overrides)
    return body


def _col(name: str, type_: str, nullable: bool = True) -> dict[str, Any]:
    return {"name": name, "type": type_, "nullable": nullable}


# One table per strategy; text, integer and composite keys; every column type in lww_t.
LWW_T = {
    "name": "lww_t", "strategy": "lww", "primary_key": ["id"],
    "columns": [_col("id", "text", False), _col("name", "text"), _col("n", "integer"), _col("f", "float"),
                _col("d", "decimal"), _col("j", "json"), _col("b", "bytes"), _col("ts", "timestamp"),
                _col("flag", "boolean")],
}  # fmt: skip
LWW_I = {
    "name": "lww_i", "strategy": "lww", "primary_key": ["id"],
    "columns": [_col("id", "integer", False), _col("v", "text")],
}  # fmt: skip
FL_C = {
    "name": "fl_c", "strategy": "field-lww", "primary_key": ["shop", "sku"],
    "columns": [_col("shop", "text", False), _col("sku", "integer", False), _col("a", "text"), _col("b", "integer")],
}  # fmt: skip
CTR = {
    "name": "ctr", "strategy": "counter", "primary_key": ["sku"],
    "columns": [_col("sku", "text", False), _col("qty", "integer"), _col("amt", "decimal"), _col("note", "text")],
}  # fmt: skip
DOC = {
    "name": "doc", "strategy": "crdt", "primary_key": ["id"],
    "columns": [_col("id", "text", False), _col("body", "json")],
}  # fmt: skip
SCHEMA: dict[str, Any] = {"tables": [LWW_T, LWW_I, FL_C, CTR, DOC]}
TABLE_KEYS = {"lww_t": ("id",), "lww_i": ("id",), "fl_c": ("shop", "sku"), "ctr": ("sku",), "doc": ("id",)}


# -- raw JSON --------------------------------------------------------------------------


class Raw(str):
    """JSON text spliced in verbatim (numbers orjson and Python cannot render, deep nesting)."""


def encode(value: Any) -> bytes:
    """JSON bytes of ``value``, keeping what a producer's encoder would refuse: integers
    of any size, NaN/Infinity, ``-0.0``, and :class:`Raw` text as it is."""
    return _encode(value).encode("utf-8", errors="surrogatepass")


def _encode(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def nested_list(levels: int) -> Raw:
    """A JSON array nested ``levels`` deep (``[]`` is one level)."""
    return Raw("[" * levels + "]" * levels)


def data_of_depth(depth: int) -> dict[str, Any]:
    """Data for lww_t whose JSON depth is ``depth`` (the data object itself is level 1,
    as ``oplog.op.json_too_deep`` counts)."""
    return {"j": nested_list(depth - 1)}


# -- ops -------------------------------------------------------------------------------

AUTO = object()  # an op id filled in from the entry's name
MISSING = object()  # a field left out of the op


def wall(epoch: int, offset_ms: int = 0) -> int:
    return ORIGIN_MS + epoch * EPOCH_MS + offset_ms


def op(
    table: Any,
    key: Any,
    kind: Any,
    data: Any = MISSING,
    *,
    id: Any = AUTO,  # noqa: A002 (the wire field)
    hlc: Any = None,
    at: int = 500,
    node: str = "h",
    **extra: Any,
) -> dict[str, Any]:
    """A wire op dict (fields in wire order); ``hlc`` defaults to ``at`` ms into CORPUS_EPOCH."""
    wire: dict[str, Any] = {
        "id": id,
        "hlc": [wall(CORPUS_EPOCH, at), 0, node] if hlc is None else hlc,
        "table": table,
        "key": key,
        "kind": kind,
    }
    if data is not MISSING:
        wire["data"] = data
    wire.update(extra)
    return {k: v for k, v in wire.items() if v is not MISSING}


def batch(*ops: Any, **top: Any) -> bytes:
    return encode({"v": 1, "ops": list(ops), **top})


@dataclass(frozen=True)
class Row:
    """A row every peer must hold after the last epoch: the value columns listed have
    these values, every other value column is NULL. ``key`` is the full primary key."""

    table: str
    key: tuple[Any, ...]
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # ops | ops-mismatch (subject names another table) | seal | config | schema | unknown
    subject: str  # after "oplog.<db>."
    payload: bytes
    expect: str | tuple[str, ...]
    attacks: str
    rows: tuple[Row, ...] = ()
    declares: tuple[str, ...] = ()  # "table" or "table.column" that an applied schema creates

    def describe_expect(self) -> str:
        return describe(self.expect)


def describe(outcome: str | tuple[str, ...]) -> str:
    """A short rendering of an outcome (tuples of many ops are counted)."""
    if isinstance(outcome, str):
        return outcome
    if len(outcome) <= 3:
        return ", ".join(outcome) if outcome else "(no ops)"
    counts: dict[str, int] = {}
    for item in outcome:
        counts[item] = counts.get(item, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in counts.items())


def _fill_ids(name: str, ops: list[Any]) -> list[Any]:
    out = []
    for i, o in enumerate(ops):
        if isinstance(o, dict) and o.get("id") is AUTO:
            o = {**o, "id": f"{name}#{i}"}
        out.append(o)
    return out


def ops_entry(
    name: str,
    ops: list[Any],
    expect: str | tuple[str, ...],
    attacks: str,
    *,
    rows: tuple[Row, ...] = (),
    subject_table: str | None = None,
    payload: bytes | None = None,
    top: dict[str, Any] | None = None,
) -> Entry:
    """An ops message; published on the subject of ``subject_table`` (default: the first op's table)."""
    ops = _fill_ids(name, ops)
    if subject_table is None:
        first = ops[0] if ops and isinstance(ops[0], dict) else {}
        subject_table = first.get("table") if isinstance(first.get("table"), str) else "lww_t"
    body = payload if payload is not None else batch(*ops, **(top or {}))
    kind = "ops"
    if any(isinstance(o, dict) and isinstance(o.get("table"), str) and o["table"] != subject_table for o in ops):
        kind = "ops-mismatch"
    return Entry(name, kind, f"ops.{subject_table}", body, expect, attacks, rows)


def one(name: str, o: dict[str, Any], expect: str, attacks: str, *, rows: tuple[Row, ...] = (), **kw: Any) -> Entry:
    """A batch of one op, with a per-op expectation."""
    return ops_entry(name, [o], (expect,), attacks, rows=rows, **kw)


def lww_value(name: str, column: str, value: Any, expect: str, attacks: str, stored: Any = None) -> Entry:
    """An upsert of one lww_t row (key = name) setting one column; ``stored`` is the
    value read back when it applies."""
    rows = (Row("lww_t", (name,), {column: stored}),) if expect == "applied" else ()
    return one(name, op("lww_t", name, "upsert", {column: value}), expect, attacks, rows=rows)


def control(kind: str, name: str, body: Any, expect: str, attacks: str, *, declares: tuple[str, ...] = ()) -> Entry:
    payload = body if isinstance(body, bytes) else encode(body)
    return Entry(name, kind, kind, payload, expect, attacks, (), declares)


def table_def(name: Any, columns: Any = None, primary_key: Any = ("id",), strategy: Any = "lww") -> dict[str, Any]:
    if columns is None:
        columns = [_col("id", "text", False), _col("v", "text")]
    return {"name": name, "strategy": strategy, "primary_key": list(primary_key), "columns": columns}


def schema_of(*tables: Any) -> dict[str, Any]:
    return {"tables": list(tables)}


# Deterministic CRDT updates (fixed client ids).
def _crdt_updates() -> dict[str, str]:
    good1 = DocumentWriter(client_id=11).set("title", "hello")
    good2 = DocumentWriter(client_id=12).set("n", 1)
    corp = DocumentWriter(client_id=21).set("k", "v")
    gapped = DocumentWriter(client_id=22)
    gapped.set("a", 1)
    second = gapped.set("b", 2)  # depends on the first, which is never published
    return {"good1": good1, "good2": good2, "corp": corp, "gap": second}


CRDT = _crdt_updates()


# -- the good ops around the corpus -----------------------------------------------------


def good_op(op_id: str, epoch: int, at: int, table: str, key: Any, kind: str, data: Any = MISSING) -> dict[str, Any]:
    return op(table, key, kind, data, id=op_id, hlc=[wall(epoch, at), 0, "good"])


GOOD_BEFORE: list[dict[str, Any]] = [
    good_op("g0-a", 0, 10, "lww_t", "good-a", "upsert",
            {"name": "Ann", "n": 1, "f": 1.5, "d": "2.50", "j": {"b": 1, "a": [1, 2]}, "b": "AAEC",
             "ts": "2026-01-01T00:00:00Z", "flag": True}),
    good_op("g0-b", 0, 11, "lww_t", "good-b", "upsert", {"name": "Bob"}),
    good_op("g0-i1", 0, 12, "lww_i", 1, "upsert", {"v": "one"}),
    good_op("g0-i2", 0, 13, "lww_i", [-1], "upsert", {"v": "minus"}),
    good_op("g0-f1", 0, 14, "fl_c", ["shop", 1], "patch", {"a": "x"}),
    good_op("g0-f2", 0, 15, "fl_c", ["shop", 2], "upsert", {"a": "y", "b": 7}),
    good_op("g0-c", 0, 16, "ctr", "good", "incr", {"qty": 5, "amt": "1.10"}),
    good_op("g0-d", 0, 17, "doc", "good", "crdt", {"update": CRDT["good1"]}),
    good_op("g0-nul", 0, 18, "lww_t", "good\x00nul🙂", "upsert", {"name": "orig"}),
    good_op("g0-edge", 0, 19, "lww_i", -(2**63) + 5, "upsert", {"v": "edge"}),
]  # fmt: skip
GOOD_AFTER: list[dict[str, Any]] = [
    good_op("g2-b", FINAL_EPOCH, 10, "lww_t", "good-b", "delete"),
    good_op("g2-c", FINAL_EPOCH, 11, "lww_t", "good-c", "upsert", {"name": "Cy", "n": -3}),
    good_op("g2-i", FINAL_EPOCH, 12, "lww_i", 2, "upsert", {"v": "two"}),
    good_op("g2-f", FINAL_EPOCH, 13, "fl_c", ["shop", 1], "patch", {"b": 2}),
    good_op("g2-c2", FINAL_EPOCH, 14, "ctr", "good", "incr", {"qty": -2, "amt": "0.9"}),
    good_op("g2-d", FINAL_EPOCH, 15, "doc", "good", "crdt", {"update": CRDT["good2"]}),
    # Late (stamped in epoch 0, older than the rows' writes): carried, applied, and they
    # lose to the stored rows, which planning must find by these keys (NUL, emoji, -2**63+5).
    good_op("g2-late-nul", 0, 5, "lww_t", "good\x00nul🙂", "upsert", {"name": "late-loser"}),
    good_op("g2-late-edge", 0, 5, "lww_i", -(2**63) + 5, "upsert", {"v": "late-loser"}),
]
GOOD_ROWS: tuple[Row, ...] = (
    Row("lww_t", ("good-a",), {"name": "Ann", "n": 1, "f": 1.5, "d": "2.5", "j": '{"a":[1,2],"b":1}',
                               "b": b"\x00\x01\x02", "ts": "2026-01-01T00:00:00.000Z", "flag": 1}),
    Row("lww_t", ("good-c",), {"name": "Cy", "n": -3}),
    Row("lww_i", (1,), {"v": "one"}),
    Row("lww_i", (-1,), {"v": "minus"}),
    Row("lww_i", (2,), {"v": "two"}),
    Row("fl_c", ("shop", 1), {"a": "x", "b": 2}),
    Row("fl_c", ("shop", 2), {"a": "y", "b": 7}),
    Row("ctr", ("good",), {"qty": 3, "amt": "2"}),
    Row("doc", ("good",), {"body": '{"n":1,"title":"hello"}'}),
    Row("lww_t", ("good\x00nul🙂",), {"name": "orig"}),
    Row("lww_i", (-(2**63) + 5,), {"v": "edge"}),
)  # fmt: skip
GOOD_OP_IDS = tuple(o["id"] for o in GOOD_BEFORE + GOOD_AFTER)


def good_batches(ops: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """(subject, payload) of ``ops``, one batch message per table."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for o in ops:
        by_table.setdefault(o["table"], []).append(o)
    return [(f"ops.{table}", batch(*group)) for table, group in by_table.items()]


# -- the corpus --------------------------------------------------------------------------


def _corpus() -> list[Entry]:
    E: list[Entry] = []
    add = E.append
    valid = op("lww_t", "k", "upsert", {"name": "x"}, id="valid-template")

    # ---- malformed bytes on an ops subject -------------------------------------------
    add(ops_entry("bytes_not_json", [], "rejected:malformed", "bytes that are not JSON at all",
                  payload=b"this is not json {", subject_table="lww_t"))
    add(ops_entry("bytes_not_utf8", [], "rejected:malformed", "invalid UTF-8 inside a JSON string",
                  payload=b'{"v":1,"ops":[{"id":"\xff\xfe","table":"lww_t"}]}', subject_table="lww_t"))
    add(ops_entry("bytes_empty", [], "rejected:malformed", "an empty message body",
                  payload=b"", subject_table="lww_t"))
    add(ops_entry("bytes_json_scalar", [], "rejected:malformed", "a JSON number where a batch object belongs",
                  payload=b"42", subject_table="lww_t"))
    add(ops_entry("bytes_json_null", [], "rejected:malformed", "JSON null as the whole message",
                  payload=b"null", subject_table="lww_t"))
    add(ops_entry("bytes_json_string", [], "rejected:malformed", "a JSON string as the whole message",
                  payload=b'"ops"', subject_table="lww_t"))
    add(ops_entry("bytes_huge_array", [], "rejected:malformed",
                  "an 800 KB top-level JSON array (not an object): parse cost, payload recording",
                  payload=b"[" + b"0," * 400_000 + b"0]", subject_table="lww_t"))
    add(ops_entry("bytes_bom", [], "rejected:malformed", "a UTF-8 byte order mark before a valid batch",
                  payload=b"\xef\xbb\xbf" + batch(valid), subject_table="lww_t"))
    add(ops_entry("bytes_trailing_garbage", [], "rejected:malformed", "a valid batch followed by junk bytes",
                  payload=batch(valid) + b"}}garbage", subject_table="lww_t"))
    add(ops_entry("bytes_lone_surrogate", [], "rejected:malformed", "a lone UTF-16 surrogate escape in a string",
                  payload=b'{"v":1,"ops":[{"id":"s","hlc":[1,0,"n"],"table":"lww_t","key":"\\ud800","kind":"delete"}]}',
                  subject_table="lww_t"))
    add(ops_entry("bytes_depth_2000", [], "rejected:malformed",
                  "JSON nested 2000 levels: beyond the parser's depth limit",
                  payload=b'{"v":1,"ops":[' + b"[" * 2000 + b"]" * 2000 + b"]}", subject_table="lww_t"))
    add(ops_entry("batch_ops_not_array", [], "rejected:malformed", '"ops" is an object, not an array',
                  payload=encode({"v": 1, "ops": {"0": valid}}), subject_table="lww_t"))
    add(ops_entry("batch_no_ops", [], "rejected:malformed", 'a batch object without "ops"',
                  payload=encode({"v": 1}), subject_table="lww_t"))
    add(ops_entry("batch_version_2", [], "rejected:malformed", "an unsupported wire version",
                  payload=encode({"v": 2, "ops": [valid]}), subject_table="lww_t"))
    add(ops_entry("batch_version_string", [], "rejected:malformed", 'the wire version as a string "1"',
                  payload=encode({"v": "1", "ops": [valid]}), subject_table="lww_t"))
    add(ops_entry("batch_empty", [], (), "an empty ops array: nothing to apply, nothing to record",
                  subject_table="lww_t"))
    add(ops_entry("batch_scalar_ops", [5, "x", None, [], True], ("rejected:invalid_op",) * 5,
                  "batch elements that are not op objects", subject_table="lww_t"))
    add(ops_entry("batch_extra_top_fields", [op("lww_t", "batch_extra_top_fields", "upsert", {"name": "t"})],
                  ("applied",), "unknown top-level batch fields (a newer producer) are tolerated",
                  rows=(Row("lww_t", ("batch_extra_top_fields",), {"name": "t"}),), top={"x": [1, {"y": None}]}))
    add(ops_entry("batch_too_many_ops", [], "rejected:oversize",
                  f"{MAX_OPS_PER_MESSAGE + 1} tiny ops in one batch: one past the per-message limit",
                  payload=b'{"v":1,"ops":[' + b",".join([b"{}"] * (MAX_OPS_PER_MESSAGE + 1)) + b"]}",
                  subject_table="lww_t"))
    add(ops_entry("batch_100k_ops", [], "rejected:oversize",
                  "100,000 ops in one batch (as {} to fit the stream's 1 MiB message limit)",
                  payload=b'{"v":1,"ops":[' + b",".join([b"{}"] * 100_000) + b"]}", subject_table="lww_t"))
    bulk = [op("ctr", "bulk", "incr", {"qty": 1}, id=f"b{i}", at=i % 1000) for i in range(MAX_OPS_PER_MESSAGE)]
    add(ops_entry("batch_max_ops_valid", bulk, ("applied",) * MAX_OPS_PER_MESSAGE,
                  f"{MAX_OPS_PER_MESSAGE} valid increments of one counter row in one batch (the limit exactly)",
                  rows=(Row("ctr", ("bulk",), {"qty": MAX_OPS_PER_MESSAGE, "amt": "0"}),)))

    # ---- op fields: id, hlc, kind, extra fields ---------------------------------------
    add(one("id_empty", op("lww_t", "id_empty", "upsert", {}, id=""), "rejected:invalid_op", "an empty op id"))
    add(one("id_too_long", op("lww_t", "id_too_long", "upsert", {}, id="i" * (MAX_ID_LENGTH + 1)),
            "rejected:invalid_op", "an op id one character over the limit"))
    add(one("id_at_limit", op("lww_t", "id_at_limit", "upsert", {"name": "L"}, id="L" * MAX_ID_LENGTH), "applied",
            "an op id exactly at the length limit", rows=(Row("lww_t", ("id_at_limit",), {"name": "L"}),)))
    add(one("id_integer", op("lww_t", "id_integer", "upsert", {}, id=12345), "rejected:invalid_op",
            "an integer op id"))
    add(one("id_null", op("lww_t", "id_null", "upsert", {}, id=None), "rejected:invalid_op", "a null op id"))
    add(one("id_control_chars", op("lww_t", "id_control_chars", "upsert", {"name": "c"},
                                   id="id\x00with\nNUL\t\u202e🙂"), "applied",
            "an op id holding NUL, newline, a bidi override and an emoji (stored in oplog_op_ids)",
            rows=(Row("lww_t", ("id_control_chars",), {"name": "c"}),)))
    add(one("hlc_negative_wall", op("lww_t", "hlc_negative_wall", "upsert", {}, hlc=[-1, 0, "h"]),
            "rejected:invalid_op", "a negative HLC wall time"))
    add(one("hlc_wall_2p64", op("lww_t", "hlc_wall_2p64", "upsert", {}, hlc=[2**64, 0, "h"]),
            "rejected:invalid_op", "HLC wall 2**64: parsed as a float by the JSON parser"))
    add(one("hlc_wall_2p63", op("lww_t", "hlc_wall_2p63", "upsert", {}, hlc=[2**63, 0, "h"]),
            "rejected:future", "HLC wall 2**63 (a valid unsigned 64-bit int): an epoch far past the bound"))
    add(one("hlc_far_future", op("lww_t", "hlc_far_future", "upsert", {}, hlc=[wall(10**6), 0, "h"]),
            "rejected:future", "an op a million epochs ahead"))
    add(one("hlc_one_past_future_bound",
            op("lww_t", "hlc_one_past_future_bound", "upsert", {}, hlc=[wall(MAX_FUTURE_EPOCHS + 1), 0, "h"]),
            "rejected:future", "an op one epoch past max_future_epochs after the last seal"))
    add(one("hlc_before_origin", op("lww_t", "hlc_before_origin", "upsert", {"name": "1970"}, hlc=[0, 0, "h"]),
            "applied", "an op stamped 1970, long before the origin: late, carried into the next commit",
            rows=(Row("lww_t", ("hlc_before_origin",), {"name": "1970"}),)))
    add(one("hlc_late_sealed_epoch", op("lww_t", "hlc_late_sealed", "upsert", {"name": "late"},
                                        hlc=[wall(0, 999), 0, "h"]), "applied",
            "an op of the already sealed epoch 0: carried (late policy carry)",
            rows=(Row("lww_t", ("hlc_late_sealed",), {"name": "late"}),)))
    add(one("hlc_logical_negative", op("lww_t", "hlc_logical_negative", "upsert", {}, hlc=[wall(1), -1, "h"]),
            "rejected:invalid_op", "a negative HLC logical counter"))
    add(one("hlc_node_empty", op("lww_t", "hlc_node_empty", "upsert", {}, hlc=[wall(1), 0, ""]),
            "rejected:invalid_op", "an empty HLC node"))
    add(one("hlc_node_integer", op("lww_t", "hlc_node_integer", "upsert", {}, hlc=[wall(1), 0, 7]),
            "rejected:invalid_op", "an integer HLC node"))
    add(one("hlc_two_parts", op("lww_t", "hlc_two_parts", "upsert", {}, hlc=[wall(1), 0]),
            "rejected:invalid_op", "an HLC with two parts"))
    add(one("hlc_wall_float", op("lww_t", "hlc_wall_float", "upsert", {}, hlc=[float(wall(1)), 0, "h"]),
            "rejected:invalid_op", "an HLC wall time as a float"))
    add(one("hlc_string", op("lww_t", "hlc_string", "upsert", {}, hlc="now"), "rejected:invalid_op",
            "an HLC that is a string"))
    add(one("kind_unknown", op("lww_t", "kind_unknown", "merge", {}), "rejected:invalid_op", "an unknown op kind"))
    add(one("kind_uppercase", op("lww_t", "kind_uppercase", "UPSERT", {}), "rejected:invalid_op",
            "a kind differing only in case"))
    add(one("kind_missing", op("lww_t", "kind_missing", MISSING, {}), "rejected:invalid_op", "no kind at all"))
    add(one("op_extra_fields", op("lww_t", "op_extra_fields", "upsert", {"name": "e"}, future_field={"a": [1]}),
            "applied", "unknown op fields (a newer producer) are ignored",
            rows=(Row("lww_t", ("op_extra_fields",), {"name": "e"}),)))
    add(ops_entry("op_duplicate_json_keys", [], ("applied",),
                  "an op object repeating a key: the parser keeps the last copy, on every peer",
                  payload=(b'{"v":1,"ops":[{"id":"op_duplicate_json_keys#0","hlc":[' + str(wall(1, 500)).encode()
                           + b',0,"h"],"table":"lww_t","key":"op_duplicate_json_keys","kind":"upsert",'
                           b'"data":{"name":"first"},"data":{"name":"second"}}]}'),
                  subject_table="lww_t", rows=(Row("lww_t", ("op_duplicate_json_keys",), {"name": "second"}),)))

    # ---- table names in ops, and subjects -----------------------------------------------
    for name, table, attacks in [
        ("table_unicode", "tablé", "a table name with a non-ASCII letter"),
        ("table_control_char", "lww\x01t", "a table name holding a control character"),
        ("table_trailing_space", "lww_t ", "a table name with a trailing space"),
        ("table_64_chars", "t" * 64, "a 64-character table name (one over)"),
        ("table_empty", "", "an empty table name"),
    ]:
        add(one(name, op(table, name, "upsert", {}), "rejected:invalid_op", attacks, subject_table="lww_t"))
    for name, table, attacks in [
        ("table_oplog_prefix", "oplog_epochs", "an op aimed at the internal progress table"),
        ("table_sqlite_prefix", "sqlite_master", "an op aimed at SQLite's own catalog"),
        ("table_dolt_prefix", "dolt_log", "an op aimed at a Dolt system table"),
        ("table_dolt_prefix_upper", "DOLT_x", "an engine prefix in upper case"),
    ]:
        add(one(name, op(table, name, "upsert", {}), "rejected:invalid_op", attacks))
    add(one("table_integer", op(7, "table_integer", "upsert", {}), "rejected:invalid_op",
            "a table that is a number", subject_table="lww_t"))
    add(one("table_case_variant", op("LWW_T", "table_case_variant", "upsert", {}), "rejected:unknown_table",
            "a table differing only in case from a declared one (SQLite would resolve it to lww_t)"))
    add(one("table_undeclared", op("ghost", "table_undeclared", "upsert", {}), "rejected:unknown_table",
            "a table nobody declared"))
    add(one("subject_table_differs", op("ctr", "subject_table_differs", "incr", {"qty": 1}),
            "rejected:wrong_subject", "an op for ctr published on lww_t's subject", subject_table="lww_t"))
    add(ops_entry("subject_table_differs_mixed",
                  [op("lww_t", "subject_mixed", "upsert", {"name": "ok"}),
                   op("ctr", "subject_mixed", "incr", {"qty": 1})],
                  ("applied", "rejected:wrong_subject"),
                  "a batch on lww_t's subject with one op of lww_t and one of ctr",
                  rows=(Row("lww_t", ("subject_mixed",), {"name": "ok"}),)))
    add(one("subject_table_case", op("LWW_T", "subject_table_case", "upsert", {}), "rejected:wrong_subject",
            "an op for LWW_T on lww_t's subject", subject_table="lww_t"))
    add(one("subject_extra_token", op("lww_t", "subject_extra_token", "upsert", {}), "rejected:wrong_subject",
            "an op for lww_t on the subject ops.lww_t.x", subject_table="lww_t.x"))
    E.append(Entry("subject_ops_without_table", "ops-mismatch", "ops",
                   batch(op("lww_t", "subject_ops_without_table", "upsert", {}, id="subject_ops_without_table#0")),
                   ("rejected:wrong_subject",),
                   "an op published on oplog.<db>.ops, a subject that names no table (DESIGN: an op's "
                   "table must equal its subject's)"))

    # ---- keys ----------------------------------------------------------------------------
    add(one("key_int_max", op("lww_i", 2**63 - 1, "upsert", {"v": "max"}), "applied",
            "integer key 2**63-1, the largest signed 64-bit value", rows=(Row("lww_i", (2**63 - 1,), {"v": "max"}),)))
    add(one("key_int_min", op("lww_i", -(2**63), "upsert", {"v": "min"}), "applied",
            "integer key -2**63, the smallest signed 64-bit value", rows=(Row("lww_i", (-(2**63),), {"v": "min"}),)))
    add(one("key_int_2p63", op("lww_i", 2**63, "upsert", {"v": "x"}), "rejected:bad_key",
            "integer key 2**63: one past the signed 64-bit range (parses as an int)"))
    add(one("key_int_2p64_minus_1", op("lww_i", 2**64 - 1, "upsert", {"v": "x"}), "rejected:bad_key",
            "integer key 2**64-1: the largest unsigned 64-bit value"))
    add(one("key_int_below_min", op("lww_i", -(2**63) - 1, "upsert", {"v": "x"}), "rejected:invalid_op",
            "integer key -2**63-1: the parser makes it a float"))
    add(one("key_int_2p64", op("lww_i", 2**64, "upsert", {"v": "x"}), "rejected:invalid_op",
            "integer key 2**64: the parser makes it a float"))
    add(ops_entry("key_10000_digits", [], "rejected:malformed",
                  "a 10,000-digit integer key: the parser refuses the whole message",
                  payload=batch(op("lww_i", Raw("9" * 10_000), "upsert", {"v": "x"}, id="key_10000_digits#0")),
                  subject_table="lww_i"))
    add(one("key_float", op("lww_i", 1.5, "upsert", {}), "rejected:invalid_op", "a float key part"))
    add(one("key_bool", op("lww_i", True, "upsert", {}), "rejected:invalid_op", "a boolean key part (True == 1)"))
    add(one("key_null", op("lww_t", None, "upsert", {}), "rejected:invalid_op", "a null key"))
    add(one("key_object", op("lww_t", {"id": "x"}, "upsert", {}), "rejected:invalid_op", "an object as the key"))
    add(one("key_nested_list", op("lww_t", [["a"]], "upsert", {}), "rejected:invalid_op", "a list as a key part"))
    add(one("key_empty_list", op("lww_t", [], "upsert", {}), "rejected:invalid_op", "an empty key"))
    add(one("key_empty_string", op("lww_t", "", "upsert", {"name": "empty"}), "applied",
            "an empty string as a text key", rows=(Row("lww_t", ("",), {"name": "empty"}),)))
    add(one("key_too_many_parts", op("lww_t", ["a", "b"], "upsert", {}), "rejected:bad_key",
            "two key parts for a one-column key"))
    add(one("key_too_few_parts", op("fl_c", ["key_too_few_parts"], "patch", {}), "rejected:bad_key",
            "one key part for a two-column key"))
    add(one("key_three_parts", op("fl_c", ["key_three_parts", 1, 2], "patch", {}), "rejected:bad_key",
            "three key parts for a two-column key"))
    add(one("key_part_wrong_type", op("fl_c", ["key_part_wrong_type", "1"], "patch", {}), "rejected:bad_key",
            "a text part where the key column is integer"))
    add(one("key_int_for_text", op("lww_t", 7, "upsert", {}), "rejected:bad_key",
            "an integer key for a text key column"))
    add(one("key_composite_sku_max", op("fl_c", ["key_composite", 2**63 - 1], "patch", {"a": "max"}), "applied",
            "2**63-1 as the integer part of a composite key",
            rows=(Row("fl_c", ("key_composite", 2**63 - 1), {"a": "max"}),)))
    add(one("key_composite_sku_2p63", op("fl_c", ["key_composite", 2**63], "patch", {"a": "x"}),
            "rejected:bad_key", "2**63 as the integer part of a composite key"))
    add(one("key_long_text", op("lww_t", "k" * 2000, "upsert", {"name": "long"}), "applied",
            "a 2,000-character text key (doltlite stores it; dolt-server's VARCHAR(1024) would refuse it)",
            rows=(Row("lww_t", ("k" * 2000,), {"name": "long"}),)))
    add(one("key_nul_and_emoji", op("lww_t", "k\x00ey🙂\u202e", "upsert", {"name": "nul"}), "applied",
            "a text key holding NUL, an emoji and a bidi override",
            rows=(Row("lww_t", ("k\x00ey🙂\u202e",), {"name": "nul"}),)))

    # ---- values: every numeric edge, sizes, types ------------------------------------------
    add(lww_value("val_int_max", "n", 2**63 - 1, "applied", "integer value 2**63-1", 2**63 - 1))
    add(lww_value("val_int_2p63", "n", 2**63, "rejected:bad_value", "integer value 2**63"))
    add(lww_value("val_int_min", "n", -(2**63), "rejected:bad_value",
                  "integer value -2**63 (values are held to the symmetric range, oplog.schema.MAX_INTEGER)"))
    add(lww_value("val_int_2p64", "n", 2**64, "rejected:bad_value", "integer value 2**64 (a float once parsed)"))
    add(lww_value("val_int_as_float", "n", 1.0, "rejected:bad_value", "1.0 for an integer column"))
    add(lww_value("val_float_1e308", "f", 1e308, "applied", "float 1e308, the edge of finite doubles", 1e308))
    add(lww_value("val_float_neg_zero", "f", -0.0, "applied", "float -0.0 (stored as 0.0)", 0.0))
    add(lww_value("val_float_nan_string", "f", "NaN", "rejected:bad_value", 'the string "NaN" for a float'))
    add(lww_value("val_float_inf_string", "f", "Infinity", "rejected:bad_value",
                  'the string "Infinity" for a float'))
    add(ops_entry("val_float_nan_literal", [], "rejected:malformed", "a bare NaN literal (not JSON)",
                  payload=batch(op("lww_t", "val_float_nan_literal", "upsert", {"f": float("nan")},
                                   id="val_float_nan_literal#0")), subject_table="lww_t"))
    add(ops_entry("val_float_1e309_literal", [], "rejected:malformed",
                  "the number 1e309: infinite as a double, refused by the parser",
                  payload=batch(op("lww_t", "val_float_1e309", "upsert", {"f": Raw("1e309")},
                                   id="val_float_1e309_literal#0")), subject_table="lww_t"))
    add(lww_value("val_decimal_exp_1e1000000", "d", "1e1000000", "rejected:bad_value",
                  'decimal "1e1000000": a 10-byte string that would render as a megabyte of zeros'))
    add(ops_entry("val_decimal_exp_literal", [], "rejected:malformed", "the JSON number 1e1000000",
                  payload=batch(op("lww_t", "val_decimal_exp_literal", "upsert", {"d": Raw("1e1000000")},
                                   id="val_decimal_exp_literal#0")), subject_table="lww_t"))
    add(lww_value("val_decimal_nan", "d", "NaN", "rejected:bad_value", 'decimal "NaN"'))
    add(lww_value("val_decimal_10000_digits", "d", "9" * 10_000, "rejected:bad_value", "a 10,000-digit decimal"))
    add(lww_value("val_decimal_1e308_number", "d", 1e308, "rejected:bad_value",
                  "1e308 for a decimal column: 309 digits"))
    add(lww_value("val_decimal_max_digits", "d", "9" * MAX_DECIMAL_DIGITS, "applied",
                  "a decimal of exactly the allowed number of digits", "9" * MAX_DECIMAL_DIGITS))
    add(lww_value("val_decimal_neg_zero", "d", "-0.000", "applied", 'decimal "-0.000" (canonical "0")', "0"))
    add(ops_entry("val_int_10000_digits", [], "rejected:malformed",
                  "a 10,000-digit integer value: the parser refuses the whole message",
                  payload=batch(op("lww_t", "val_int_10000_digits", "upsert", {"n": Raw("9" * 10_000)},
                                   id="val_int_10000_digits#0")), subject_table="lww_t"))
    for depth, expect in [(10, "applied"), (100, "applied"), (MAX_JSON_DEPTH, "applied"),
                          (MAX_JSON_DEPTH + 1, "rejected:invalid_op"), (300, "rejected:invalid_op"),
                          (1000, "rejected:invalid_op")]:
        name = f"val_json_depth_{depth}"
        rows = (Row("lww_t", (name,), {"j": str(nested_list(depth - 1))}),) if expect == "applied" else ()
        add(one(name, op("lww_t", name, "upsert", data_of_depth(depth)), expect,
                f"op data nested {depth} levels deep (orjson cannot encode past 254)", rows=rows))
    add(lww_value("val_string_1mb", "name", "x" * 1_000_000, "rejected:oversize",
                  "a 1 MB string: over max_op_bytes (the message itself fits the stream)"))
    add(lww_value("val_string_60kb", "name", "y" * 60_000, "applied", "a 60 KB string, under the op limit",
                  "y" * 60_000))
    add(lww_value("val_bytes_not_base64", "b", "not base64!", "rejected:bad_value", "bytes that are not base64"))
    add(lww_value("val_timestamp_max", "ts", MAX_TIMESTAMP_MS, "applied", "the last millisecond of year 9999",
                  "9999-12-31T23:59:59.999Z"))
    add(lww_value("val_timestamp_min", "ts", MIN_TIMESTAMP_MS, "applied", "the first millisecond of year 1",
                  "0001-01-01T00:00:00.000Z"))
    add(lww_value("val_timestamp_past_9999", "ts", MAX_TIMESTAMP_MS + 1, "rejected:bad_value",
                  "a timestamp one millisecond into year 10000"))
    add(lww_value("val_timestamp_1e18", "ts", 10**18, "rejected:bad_value", "timestamp 10**18 ms"))
    add(lww_value("val_timestamp_no_zone", "ts", "2026-01-01T00:00:00", "rejected:bad_value",
                  "an ISO timestamp without a time zone"))
    add(lww_value("val_boolean_as_int", "flag", 1, "rejected:bad_value", "1 for a boolean column"))
    add(lww_value("val_json_nul_string", "j", "\x00", "applied", "a JSON string holding NUL", '"\\u0000"'))
    add(lww_value("val_text_nul", "name", "a\x00b", "applied", "a text value holding NUL", "a\x00b"))
    add(one("val_unknown_column", op("lww_t", "val_unknown_column", "upsert", {"nope": 1}),
            "rejected:unknown_column", "a column the table does not have"))
    add(one("val_key_column_in_data", op("lww_t", "val_key_column_in_data", "upsert", {"id": "other", "name": "k"}),
            "applied", "the key column repeated in data with another value (the op's key wins)",
            rows=(Row("lww_t", ("val_key_column_in_data",), {"name": "k"}),)))
    add(one("val_data_null_upsert", op("lww_t", "val_data_null_upsert", "upsert", None), "applied",
            "an upsert with data null: every value column NULL", rows=(Row("lww_t", ("val_data_null_upsert",)),)))
    add(one("val_data_string", op("lww_t", "val_data_string", "upsert", "x"), "rejected:invalid_op",
            "data that is a string"))
    add(one("val_delete_absent_row", op("lww_t", "val_delete_absent_row", "delete"), "applied",
            "a delete of a row that never existed (a tombstone, no row)"))

    # ---- op kinds that do not fit the table's strategy ------------------------------------
    for name, table, key, kind, data in [
        ("kind_incr_on_lww", "lww_t", "kind_incr_on_lww", "incr", {"n": 1}),
        ("kind_patch_on_lww", "lww_t", "kind_patch_on_lww", "patch", {"name": "p"}),
        ("kind_crdt_on_lww", "lww_t", "kind_crdt_on_lww", "crdt", {"update": CRDT["corp"]}),
        ("kind_upsert_on_counter", "ctr", "kind_upsert_on_counter", "upsert", {"qty": 1}),
        ("kind_delete_on_counter", "ctr", "good", "delete", MISSING),
        ("kind_patch_on_counter", "ctr", "kind_patch_on_counter", "patch", {"qty": 1}),
        ("kind_delete_on_crdt", "doc", "good", "delete", MISSING),
        ("kind_upsert_on_crdt", "doc", "kind_upsert_on_crdt", "upsert", {"body": {}}),
        ("kind_incr_on_field_lww", "fl_c", ["kind_incr", 1], "incr", {"b": 1}),
        ("kind_crdt_on_field_lww", "fl_c", ["kind_crdt", 1], "crdt", {"update": CRDT["corp"]}),
    ]:
        add(one(name, op(table, key, kind, data), "rejected:kind_not_allowed",
                f"a {kind} op on a {table} row, whose strategy does not take {kind}"))

    # ---- crdt ------------------------------------------------------------------------------
    add(one("crdt_valid", op("doc", "crdt_valid", "crdt", {"update": CRDT["corp"]}), "applied",
            "a valid update on a fresh row", rows=(Row("doc", ("crdt_valid",), {"body": '{"k":"v"}'}),)))
    add(one("crdt_causal_gap", op("doc", "crdt_causal_gap", "crdt", {"update": CRDT["gap"]}), "applied",
            "an update whose predecessor never comes: kept pending, the document shows {}",
            rows=(Row("doc", ("crdt_causal_gap",), {"body": "{}"}),)))
    for name, data, reason, attacks in [
        ("crdt_not_base64", {"update": "!!not base64!!"}, "bad_crdt_update", "an update that is not base64"),
        ("crdt_not_yjs", {"update": base64.b64encode(b"not yjs").decode()}, "bad_crdt_update",
         "base64 of bytes that are not a Yjs update"),
        ("crdt_empty_update", {"update": ""}, "bad_crdt_update", "an empty update"),
        ("crdt_random_bytes", {"update": base64.b64encode(b"\x01\xff\xff\xff\xff\x0f\x00\x07").decode()},
         "bad_crdt_update", "varints that overflow, as an update"),
        ("crdt_no_update", {}, "bad_data", 'crdt data without "update"'),
        ("crdt_update_integer", {"update": 5}, "bad_data", "an update that is a number"),
        ("crdt_data_null", None, "bad_data", "a crdt op with data null"),
    ]:
        add(one(name, op("doc", name, "crdt", data), f"rejected:{reason}", attacks))

    # ---- counter ---------------------------------------------------------------------------
    for name, data, reason, attacks in [
        ("ctr_float_delta", {"qty": 1.5}, "bad_delta", "a fractional delta for an integer counter"),
        ("ctr_integral_float_delta", {"qty": 1.0}, "bad_delta", "1.0 for an integer counter"),
        ("ctr_bool_delta", {"qty": True}, "bad_delta", "true as a delta"),
        ("ctr_string_delta", {"qty": "5"}, "bad_delta", 'the string "5" for an integer counter'),
        ("ctr_delta_2p63", {"qty": 2**63}, "bad_delta", "an integer delta of 2**63"),
        ("ctr_decimal_nan", {"amt": "NaN"}, "bad_delta", 'a decimal delta "NaN"'),
        ("ctr_decimal_1e1000000", {"amt": "1e1000000"}, "bad_delta", 'a decimal delta "1e1000000"'),
        ("ctr_delta_on_text", {"note": 1}, "not_a_counter", "a delta for a text column"),
        ("ctr_delta_on_key", {"sku": 1}, "not_a_counter", "a delta for the key column"),
        ("ctr_unknown_column", {"nope": 1}, "unknown_column", "a delta for a column that does not exist"),
    ]:
        add(one(name, op("ctr", name, "incr", data), f"rejected:{reason}", attacks))
    add(one("ctr_decimal_scale_31", op("ctr", "ctr_decimal_scale_31", "incr", {"amt": "0." + "0" * 30 + "1"}),
            "rejected", "a decimal delta with 31 places: within the counter's 38 digits, past the column's scale"))
    add(one("ctr_data_array", op("ctr", "ctr_data_array", "incr", [1]), "rejected:invalid_op",
            "incr data that is an array"))
    add(one("ctr_empty_incr", op("ctr", "ctr_empty_incr", "incr", {}), "applied",
            "an incr with no deltas: creates the row at zero",
            rows=(Row("ctr", ("ctr_empty_incr",), {"qty": 0, "amt": "0"}),)))
    add(ops_entry("ctr_overflow", [op("ctr", "ctr_overflow", "incr", {"qty": 2**63 - 1}, at=100),
                                   op("ctr", "ctr_overflow", "incr", {"qty": 1}, at=200)],
                  ("applied", "rejected:overflow"), "a sum pushed one past the signed 64-bit range",
                  rows=(Row("ctr", ("ctr_overflow",), {"qty": 2**63 - 1, "amt": "0"}),)))
    add(ops_entry("ctr_decimal_exact", [op("ctr", "ctr_decimal_exact", "incr", {"amt": 0.1}, at=100),
                                        op("ctr", "ctr_decimal_exact", "incr", {"amt": "0.2"}, at=200)],
                  ("applied", "applied"), "0.1 + 0.2 as decimals: exactly 0.3, not a float sum",
                  rows=(Row("ctr", ("ctr_decimal_exact",), {"qty": 0, "amt": "0.3"}),)))

    # ---- field-lww -----------------------------------------------------------------------------
    add(one("fl_patch_unknown_column", op("fl_c", ["fl_unknown", 1], "patch", {"zzz": 1}),
            "rejected:unknown_column", "a patch naming a column the table lacks"))
    add(one("fl_patch_empty", op("fl_c", ["fl_empty", 1], "patch", {}), "applied",
            "an empty patch: the row exists, every column NULL", rows=(Row("fl_c", ("fl_empty", 1)),)))
    add(one("fl_patch_array", op("fl_c", ["fl_array", 1], "patch", ["a", 1]), "rejected:invalid_op",
            "a patch whose data is an array"))
    add(one("fl_patch_string", op("fl_c", ["fl_string", 1], "patch", "a=1"), "rejected:invalid_op",
            "a patch whose data is a string"))
    add(one("fl_patch_bad_value", op("fl_c", ["fl_bad_value", 1], "patch", {"b": "two"}), "rejected:bad_value",
            "a patch setting an integer column to text"))

    # ---- duplicates ------------------------------------------------------------------------------
    twin = op("lww_t", "dup_identical", "upsert", {"name": "same"}, id="dup_identical#0")
    add(ops_entry("dup_identical_in_batch", [twin, twin], ("applied", "duplicate"),
                  "the same op twice in one batch (a retry inside a batch)",
                  rows=(Row("lww_t", ("dup_identical",), {"name": "same"}),)))
    add(ops_entry("dup_conflict_in_batch",
                  [op("lww_t", "dup_conflict", "upsert", {"name": "first"}, id="dup_conflict#0"),
                   op("lww_t", "dup_conflict", "upsert", {"name": "second"}, id="dup_conflict#0", at=900)],
                  ("applied", "rejected:duplicate_id_conflict"),
                  "one op id for two different ops in one batch (the later copy is newer by HLC)",
                  rows=(Row("lww_t", ("dup_conflict",), {"name": "first"}),)))
    add(one("dup_of_committed_op", dict(GOOD_BEFORE[0]), "duplicate",
            "an exact re-send of an op committed in epoch 0 (beyond the stream's dedup: no Nats-Msg-Id)"))
    add(one("dup_id_of_committed_op", op("lww_t", "good-a", "upsert", {"name": "Mallory"}, id="g0-a"),
            "rejected:duplicate_id_conflict", "a different op reusing the id of an op committed in epoch 0"))

    # ---- seals ----------------------------------------------------------------------------------
    for name, body, expect, attacks in [
        ("seal_epoch_string", {"epoch": "1"}, "rejected:malformed", "a seal whose epoch is a string"),
        ("seal_epoch_float", {"epoch": 1.0}, "rejected:malformed", "a seal whose epoch is a float"),
        ("seal_epoch_bool", {"epoch": True}, "rejected:malformed", "a seal whose epoch is true (== 1)"),
        ("seal_epoch_null", {"epoch": None}, "rejected:malformed", "a seal whose epoch is null"),
        ("seal_missing_epoch", {"seal": 1}, "rejected:malformed", "a seal without an epoch"),
        ("seal_not_json", b"seal 1", "rejected:malformed", "a seal that is not JSON"),
        ("seal_array", [1], "rejected:malformed", "a seal that is an array"),
        ("seal_scalar", 1, "rejected:malformed", "a seal that is a bare number"),
        ("seal_epoch_2p64", {"epoch": 2**64}, "rejected:malformed", "seal 2**64 (a float once parsed)"),
        ("seal_epoch_deep", {"epoch": nested_list(300)}, "rejected:malformed", "a seal epoch nested 300 deep"),
        ("seal_epoch_2p62", {"epoch": 2**62}, "rejected:bad_seal", "seal 2**62: its commit date overflows"),
        ("seal_epoch_1e18", {"epoch": 10**18}, "rejected:bad_seal", "seal 10**18"),
        ("seal_epoch_2p63_minus_1", {"epoch": 2**63 - 1}, "rejected:bad_seal", "seal 2**63-1"),
        ("seal_million_ahead", {"epoch": 10**6}, "rejected:bad_seal",
         "a seal a million epochs past the last one: would close every open epoch and stall sealing"),
        ("seal_one_past_ceiling", {"epoch": MAX_FUTURE_EPOCHS + 1}, "rejected:bad_seal",
         "a seal one past last_sealed + max_future_epochs"),
        ("seal_negative", {"epoch": -5}, "ignored", "seal -5, below the last sealed epoch: a stale copy"),
        ("seal_copy_of_last", {"epoch": 0}, "ignored", "a second copy of the last seal (no Nats-Msg-Id)"),
    ]:
        add(control("seal", name, body, expect, attacks))

    # ---- config -------------------------------------------------------------------------------
    earliest = 0 + MAX_FUTURE_EPOCHS + 2  # after seal 0: the first epoch a change may name
    for name, body, expect, attacks in [
        ("config_init_again_different", config_body(epoch_ms=2000), "rejected:bad_config",
         "a second init with another epoch length"),
        ("config_init_again_identical", config_body(), "ignored", "a second init identical to the first"),
        ("config_change_valid", {"type": "change", "effective_epoch": 1000, "epoch_ms": EPOCH_MS, "grace_ms": 0},
         "applied", "a well-formed change at a future boundary (same length: nothing moves)"),
        ("config_change_epoch_ms_1e15", {"type": "change", "effective_epoch": 2000, "epoch_ms": 10**15,
                                         "grace_ms": 0}, "rejected:bad_config",
         "a change to epochs of 10**15 ms (31,000 years)"),
        ("config_change_grace_1e15", {"type": "change", "effective_epoch": 2000, "epoch_ms": EPOCH_MS,
                                      "grace_ms": 10**15}, "rejected:bad_config", "a grace of 10**15 ms"),
        ("config_change_epoch_ms_tiny", {"type": "change", "effective_epoch": 2000, "epoch_ms": 1, "grace_ms": 0},
         "rejected:bad_config", "a 1 ms epoch"),
        ("config_change_in_past", {"type": "change", "effective_epoch": 0, "epoch_ms": 500, "grace_ms": 0},
         "rejected:bad_config", "a change effective at an already sealed epoch"),
        ("config_change_too_soon", {"type": "change", "effective_epoch": earliest - 1, "epoch_ms": 500,
                                    "grace_ms": 0}, "rejected:bad_config",
         "a change one epoch before the earliest allowed boundary"),
        ("config_change_negative", {"type": "change", "effective_epoch": -1, "epoch_ms": 500, "grace_ms": 0},
         "rejected:bad_config", "a change effective at epoch -1"),
        ("config_change_far_future", {"type": "change", "effective_epoch": 2**62, "epoch_ms": 500, "grace_ms": 0},
         "rejected:bad_config", "a change effective at epoch 2**62 (its start is past year 9999)"),
        ("config_change_epoch_2p64", {"type": "change", "effective_epoch": 2**64, "epoch_ms": 500, "grace_ms": 0},
         "rejected:bad_config", "effective epoch 2**64 (a float once parsed)"),
        ("config_change_epoch_text", {"type": "change", "effective_epoch": "soon", "epoch_ms": 500, "grace_ms": 0},
         "rejected:bad_config", "effective epoch as text"),
        ("config_unknown_type", {"type": "reset", "epoch_ms": 1}, "rejected:bad_config", "an unknown config type"),
        ("config_no_type", {"epoch_ms": 500}, "rejected:bad_config", "a config without a type"),
        ("config_type_deep", {"type": nested_list(300)}, "rejected:bad_config", "a config type nested 300 deep"),
        ("config_not_json", b"\x00\x01config", "rejected:bad_config", "config bytes that are not JSON"),
        ("config_scalar", 7, "rejected:bad_config", "a config that is a bare number"),
        # The roster (decisions #32): who counts toward agreement. The foreign one comes
        # first, so the roster in force at the end names the test's own peers.
        ("config_roster_foreign", {"type": "roster", "peers": ["x", "y", "z"]}, "applied",
         "a roster naming only peers that do not exist: no majority can form, peers must go on"),
        ("config_roster_valid", {"type": "roster", "peers": list(PEER_NAMES)}, "applied",
         "a well-formed roster naming the running peers"),
        ("config_roster_empty", {"type": "roster", "peers": []}, "rejected:bad_config", "an empty roster"),
        ("config_roster_duplicate", {"type": "roster", "peers": ["p0", "p0"]}, "rejected:bad_config",
         "a roster naming one peer twice"),
        ("config_roster_bad_name", {"type": "roster", "peers": ["../p0", "p 1"]}, "rejected:bad_config",
         "roster names with a path and a space"),
        ("config_roster_too_many", {"type": "roster", "peers": [f"p{i}" for i in range(1001)]},
         "rejected:bad_config", "a roster of 1,001 peers"),
        ("config_roster_string", {"type": "roster", "peers": "p0"}, "rejected:bad_config",
         "roster peers given as one string"),
    ]:
        add(control("config", name, body, expect, attacks))

    # ---- schema -------------------------------------------------------------------------------
    def text_columns(count: int) -> list[dict[str, Any]]:
        return [_col("id", "text", False)] + [_col(f"c{i}", "text") for i in range(count - 1)]

    long63 = "t" + "x" * 62
    for name, body, expect, attacks, declares in [
        ("schema_not_json", b"{tables", "rejected:malformed", "schema bytes that are not JSON", ()),
        ("schema_array", [LWW_T], "rejected:schema", "a schema message that is an array", ()),
        ("schema_scalar", 5, "rejected:schema", "a schema message that is a number", ()),
        ("schema_null", None, "rejected:schema", "a schema message that is null", ()),
        ("schema_no_tables", {"tables": []}, "rejected:schema", "a schema with no tables", ()),
        ("schema_deep", {"tables": [nested_list(300)]}, "rejected:schema", "a schema nested 300 deep", ()),
        ("schema_no_primary_key", schema_of(table_def("nopk", primary_key=())), "rejected:schema",
         "a table without a primary key", ()),
        ("schema_pk_missing_column", schema_of(table_def("pkmiss", primary_key=("nope",))), "rejected:schema",
         "a primary key naming a column that does not exist", ()),
        ("schema_pk_nullable", schema_of(table_def("pknull", [_col("id", "text"), _col("v", "text")])),
         "rejected:schema", "a nullable primary key column", ()),
        ("schema_pk_float", schema_of(table_def("pkfloat", [_col("id", "float", False), _col("v", "text")])),
         "rejected:schema", "a float primary key column", ()),
        ("schema_unknown_strategy", schema_of(table_def("strat", strategy="quantum")), "rejected:schema",
         "a strategy nobody registered", ()),
        ("schema_unknown_type", schema_of(table_def("typ", [_col("id", "text", False), _col("v", "uuid")])),
         "rejected:schema", "a column type that does not exist", ()),
        ("schema_same_name_twice", schema_of(table_def("twin"), table_def("twin", strategy="counter")),
         "rejected:schema", "two tables of one name (and different strategies) in one message", ()),
        ("schema_case_of_existing", schema_of(table_def("LWW_T")), "rejected:schema",
         "a table whose name differs from lww_t only in case (one table to SQLite)", ()),
        ("schema_case_pair_in_message", schema_of(table_def("dup_a"), table_def("DUP_A")), "rejected:schema",
         "two new tables differing only in case, in one message", ()),
        ("schema_sqlite_prefix", schema_of(table_def("sqlite_x")), "rejected:schema",
         "a table name SQLite reserves", ()),
        ("schema_sqlite_prefix_upper", schema_of(table_def("SQLITE_X")), "rejected:schema",
         "SQLite's reserved prefix in upper case", ()),
        ("schema_dolt_prefix", schema_of(table_def("dolt_x")), "rejected:schema",
         "a table name Dolt reserves for system tables", ()),
        ("schema_oplog_prefix", schema_of(table_def("oplog_epochs")), "rejected:schema",
         "redeclaring an internal table", ()),
        ("schema_unicode_name", schema_of(table_def("tablé")), "rejected:schema", "a non-ASCII table name", ()),
        ("schema_control_char_name", schema_of(table_def("ta\x07ble")), "rejected:schema",
         "a table name with a control character", ()),
        ("schema_trailing_space", schema_of(table_def("spaced ")), "rejected:schema",
         "a table name with a trailing space", ()),
        ("schema_quote_in_name", schema_of(table_def('q"uote')), "rejected:schema",
         "a table name holding a double quote (SQL injection through identifiers)", ()),
        ("schema_name_64_chars", schema_of(table_def("t" * 64)), "rejected:schema",
         "a 64-character table name", ()),
        ("schema_name_63_chars", schema_of(table_def(long63)), "applied",
         "a 63-character table name, the longest allowed", (long63,)),
        ("schema_sql_keywords", schema_of(table_def("select", [_col("from", "text", False), _col("where", "text"),
                                                                _col("order", "integer")], ("from",))),
         "applied", "a table and columns named by SQL keywords (quoting)", ("select", "select.where")),
        ("schema_column_rowid", schema_of(table_def("rowidt", [_col("id", "text", False), _col("rowid", "text"),
                                                               _col("oid", "integer")])),
         "applied", "columns named rowid and oid (SQLite's implicit row id names)", ("rowidt", "rowidt.rowid")),
        ("schema_column_unicode", schema_of(table_def("colu", [_col("id", "text", False), _col("näme", "text")])),
         "rejected:schema", "a non-ASCII column name", ()),
        ("schema_column_case_dup", schema_of(table_def("colcase", [_col("id", "text", False), _col("a", "text"),
                                                                   _col("A", "text")])),
         "rejected:schema", "two columns differing only in case", ()),
        ("schema_column_reserved", schema_of(table_def("colres", [_col("id", "text", False),
                                                                  _col("_oplog_meta", "text")])),
         "rejected:schema", "a column named _oplog_meta, the strategy's bookkeeping column", ()),
        ("schema_column_empty_name", schema_of(table_def("colempty", [_col("id", "text", False), _col("", "text")])),
         "rejected:schema", "an empty column name", ()),
        ("schema_column_quote", schema_of(table_def("colq", [_col("id", "text", False), _col('a"b', "text")])),
         "rejected:schema", "a column name holding a double quote", ()),
        ("schema_columns_at_limit", schema_of(table_def("wide_ok", text_columns(MAX_COLUMNS))), "applied",
         f"{MAX_COLUMNS} columns, the most allowed", ("wide_ok", f"wide_ok.c{MAX_COLUMNS - 2}")),
        ("schema_columns_over_limit", schema_of(table_def("wide_over", text_columns(MAX_COLUMNS + 1))),
         "rejected:schema", f"{MAX_COLUMNS + 1} columns", ()),
        ("schema_columns_1001", schema_of(table_def("wide_1001", text_columns(1001))), "rejected:schema",
         "1,001 columns", ()),
        ("schema_columns_2001", schema_of(table_def("wide_2001", text_columns(2001))), "rejected:schema",
         "2,001 columns: past SQLite's hard limit of 2,000", ()),
        ("schema_too_many_tables", schema_of(*(table_def(f"many_{i}") for i in range(MAX_TABLES_PER_MESSAGE + 1))),
         "rejected:schema", f"{MAX_TABLES_PER_MESSAGE + 1} tables in one message", ()),
        ("schema_add_nullable_column", schema_of({**LWW_T, "columns": [*LWW_T["columns"], _col("extra", "text")]}),
         "applied", "adding a nullable column to lww_t (allowed evolution)", ("lww_t.extra",)),
        ("schema_add_not_null_column",
         schema_of({**LWW_T, "columns": [*LWW_T["columns"], _col("strict", "text", False)]}),
         "rejected:schema", "adding a NOT NULL column to a table with rows", ()),
        ("schema_change_strategy", schema_of({**CTR, "strategy": "lww"}), "rejected:schema",
         "changing ctr's strategy", ()),
        ("schema_retype_column",
         schema_of({**LWW_I, "columns": [_col("id", "integer", False), _col("v", "integer")]}),
         "rejected:schema", "retyping lww_i.v from text to integer", ()),
    ]:
        add(control("schema", name, body, expect, attacks, declares=declares))

    # ---- unknown subjects ---------------------------------------------------------------------
    for name, subject, attacks in [
        ("unknown_subject_bogus", "bogus", "a subject oplog does not use"),
        ("unknown_subject_hashes", "hashes.p1", "a subject that looks like the hash board"),
        ("unknown_subject_ops_upper", "OPS.lww_t", "the ops subject in upper case"),
        ("unknown_subject_seals", "seals", "a near-miss of the seal subject"),
    ]:
        E.append(Entry(name, "unknown", subject, batch(op("lww_t", name, "upsert", {}, id=f"{name}#0")),
                       "rejected:unknown_subject", attacks))
    return E


CORPUS: list[Entry] = _corpus()
BY_NAME: dict[str, Entry] = {e.name: e for e in CORPUS}
assert len(BY_NAME) == len(CORPUS), "corpus entry names must be unique"


def corpus_rows() -> tuple[Row, ...]:
    return tuple(row for entry in CORPUS for row in entry.rows)


# -- the stream around the corpus ---------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message of the planned stream; ``entry`` names the corpus entry, if any."""

    subject: str  # after "oplog.<db>."
    payload: bytes
    entry: str | None = None
    msg_id: str | None = None


def seal_message(epoch: int) -> Message:
    return Message("seal", encode({"epoch": epoch}), None, f"seal-{DB}-{epoch}")


def stream_plan(entries: list[Entry] | None = None) -> list[Message]:
    """Every message of the test stream, in order (see the module docstring)."""
    entries = CORPUS if entries is None else entries
    out = [Message("config", encode(config_body()), None, f"config-{DB}-init"), Message("schema", encode(SCHEMA))]
    out += [Message(subject, payload) for subject, payload in good_batches(GOOD_BEFORE)]
    out.append(seal_message(0))
    out += [Message(e.subject, e.payload, e.name) for e in entries]
    out.append(seal_message(CORPUS_EPOCH))
    out += [Message(subject, payload) for subject, payload in good_batches(GOOD_AFTER)]
    out.append(seal_message(FINAL_EPOCH))
    return out


def expected_rows(entries: list[Entry] | None = None) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every row of every corpus-schema table after the last epoch, by table and key."""
    entries = CORPUS if entries is None else entries
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {t: {} for t in TABLE_KEYS}
    for row in (*GOOD_ROWS, *(r for e in entries for r in e.rows)):
        assert row.key not in out[row.table], f"two expectations for {row.table} {row.key}"
        out[row.table][row.key] = row.values
    return out
