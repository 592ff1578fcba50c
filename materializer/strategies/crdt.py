"""``crdt``: one JSON document per row, merged by Yjs (pycrdt).

An op is ``{"kind": "crdt", "data": {"update": "<base64 Yjs v1 update>"}}``; build
updates with :class:`oplog.crdt_helper.DocumentWriter`. The table must have exactly
one non-key column, of type ``json``; it receives the canonical JSON (sorted keys) of
the document's root map named ``"doc"`` (see :func:`oplog.crdt_helper.to_json`;
other roots are kept in the state but not shown). The row's meta holds the CRDT
state: ``{"state": base64, "pending": [base64, ...]}`` (``pending`` only when
non-empty). There is no ``delete``: set the document's keys instead.

Canonical state. Every peer must store the same bytes whatever order the updates
arrived in, including updates carried late into a later epoch. What we measured
(pycrdt 0.14.13; three writers making 3-8 random edits in all to a text, a list and
map keys; the properties of the chosen encoding are tested in
``tests/test_strategies.py``):

* ``Doc.get_update()`` of one doc that applied the same updates in different orders
  differed in bytes in 22 of 100 histories (30 orders each) — and, worse, when an
  update arrived before one it depends on, the *content* was wrong in 114 of 2000
  shuffled applications: yrs integrates structs past a clock gap (encoding a
  ``Skip``), and edits that fill the gap later can be lost.
* ``merge_updates`` of all updates applied in one go always gave the right content,
  and its bytes were order-independent for disjoint updates — but not when updates
  overlap (a writer's full-state snapshot beside its incremental updates): 80 of 100
  histories then gave different bytes.
* ``get_update()`` of a fresh doc that applied a complete, gap-free state is
  order-independent and idempotent (re-encoding it changes nothing).

So the state is built causally: starting from the stored state, each waiting update
(sorted by bytes) is tried on a fresh copy and kept only if it integrates fully —
every struct within the resulting state vector and every deleted range present;
this repeats until nothing more fits. Updates that do not fit yet (their causal
predecessors have not arrived) stay in ``pending`` and are retried with every later
update of the row; the JSON shows them once they fit. The integrated part is
therefore the same set of updates whatever the arrival order, re-encoded through a
fresh doc, and ``pending`` is a sorted set. Measured: 150 complete histories (with
overlapping snapshots), 15 arrival orders each, gave the right JSON and identical
meta bytes within each history; 1193 incomplete subsets in 8 orders each gave
identical meta bytes.

Bounded state. Updates that never integrate (their predecessors never come, or they
were forged to depend on nothing that exists) would otherwise pile up in ``pending``
forever, and every later update of the row retries all of them (quadratic). A row
keeps at most :data:`MAX_PENDING_UPDATES` waiting updates of at most
:data:`MAX_PENDING_BYTES` in all; an update that would leave more waiting is rejected
(``crdt_backlog``), so the state stays bounded and its fold cost with it.

Schema changes. The document column may be renamed (the meta names no column), but not
dropped or retyped: each row's meta holds the CRDT state the column shows, and the
strategy needs that json column (:meth:`CrdtDocument.check_change`). Drop the table
instead.

Rejections: ``bad_table`` (not exactly one json value column), ``bad_data`` (no
``update`` text), ``bad_crdt_update`` (not base64, or not a Yjs v1 update),
``crdt_backlog`` (too many updates of the row wait for their causal predecessors).
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, get_update, merge_updates

from materializer.errors import OpRejected
from materializer.strategy import OpLike, RowState, Strategy
from oplog.crdt_helper import decode_update, encode_update, to_json
from oplog.errors import SchemaError
from oplog.op import OpKind
from oplog.schema import Column, ColumnChange, ColumnType, RenameColumn, TableSchema, normalize_value

# The materializer never edits, so its own client id never reaches the state; fixed anyway.
MATERIALIZER_CLIENT_ID = 1
MAX_PENDING_UPDATES = 16
MAX_PENDING_BYTES = 256 * 1024


def document_column(table: TableSchema) -> Column:
    """The json column that holds the document; OpRejected if the table has another shape."""
    columns = table.value_columns
    if len(columns) != 1 or columns[0].type is not ColumnType.JSON:
        found = ", ".join(f"{c.name} {c.type.value}" for c in columns) or "none"
        raise OpRejected(
            "bad_table",
            f"table {table.name!r} uses strategy 'crdt', which needs exactly one non-key column, of type json, "
            f"for the document; its non-key columns are: {found}",
        )
    return columns[0]


def parse_update(data: Any) -> bytes:
    """The op's update, decoded and re-encoded canonically; raises OpRejected."""
    if not isinstance(data, dict) or not isinstance(data.get("update"), str):
        raise OpRejected("bad_data", 'a crdt op\'s data must be {"update": "<base64 Yjs update>"}')
    try:
        raw = decode_update(data["update"])
        # Both paths must accept it: merging (for the canonical form) and applying.
        Doc(client_id=MATERIALIZER_CLIENT_ID).apply_update(raw)
        return merge_updates(raw)
    except (ValueError, RuntimeError) as e:  # pycrdt refuses some corrupt updates with RuntimeError
        raise OpRejected("bad_crdt_update", f"not a base64 Yjs v1 update: {e}") from None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _state_vector(raw: bytes) -> dict[int, int]:
    count, pos = _varint(raw, 0)
    vector: dict[int, int] = {}
    for _ in range(count):
        client, pos = _varint(raw, pos)
        vector[client], pos = _varint(raw, pos)
    return vector


def fully_integrated(update: bytes, doc: Doc[Any]) -> bool:
    """Whether every struct and every deletion of ``update`` has taken effect in ``doc``.

    The diff of ``update`` against ``doc``'s state vector holds the structs the doc
    lacks (none, if integrated) followed by ``update``'s whole delete set, whose ranges
    must all lie within the state vector.
    """
    raw_vector = doc.get_state()
    vector = _state_vector(raw_vector)
    rest = get_update(update, raw_vector)
    structs, pos = _varint(rest, 0)
    if structs:
        return False
    clients, pos = _varint(rest, pos)
    for _ in range(clients):
        client, pos = _varint(rest, pos)
        ranges, pos = _varint(rest, pos)
        for _ in range(ranges):
            clock, pos = _varint(rest, pos)
            length, pos = _varint(rest, pos)
            if clock + length > vector.get(client, 0):
                return False
    return True


def _doc(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc(client_id=MATERIALIZER_CLIENT_ID)
    if state:
        doc.apply_update(state)
    return doc


def integrate(state: bytes, waiting: list[bytes]) -> tuple[Doc[Any], bytes, list[bytes]]:
    """Fold ``waiting`` updates into ``state`` causally (see the module docstring).

    Returns the document, its canonical state and the sorted updates still waiting.
    """
    left = sorted(set(waiting))
    doc = _doc(state)
    progress = True
    while progress and left:
        progress = False
        for update in list(left):
            trial = _doc(state)
            trial.apply_update(update)
            if fully_integrated(update, trial):
                doc, state = trial, trial.get_update()
                left.remove(update)
                progress = True
    return doc, canonical_state(doc.get_update()), left


def canonical_state(state: bytes, rounds: int = 8) -> bytes:
    """Re-encode ``state`` through a fresh document until the bytes stop changing.

    A document that saw an item inserted and later deleted can encode its delete set
    differently from one that received the item already deleted (found by the
    permutation property test); one pass through a fresh document folds both into
    the same bytes.
    """
    for _ in range(rounds):
        again = _doc(state).get_update()
        if again == state:
            return state
        state = again
    return state


class CrdtDocument(Strategy):
    name = "crdt"
    kinds = frozenset({OpKind.CRDT})

    def check_change(self, table: TableSchema, change: ColumnChange) -> None:
        column = table.column(change.column)
        if column is not None and column.type is ColumnType.JSON and not isinstance(change, RenameColumn):
            what = "dropped" if change.op == "drop_column" else "retyped"
            raise SchemaError(
                f"table {table.name!r} uses strategy 'crdt': its document column {column.name!r} cannot be {what}, "
                "since each row's CRDT state belongs to it; drop the table instead"
            )

    def apply(self, table: TableSchema, state: RowState, op: OpLike) -> RowState:
        return self.apply_prepared(table, state, op, self.prepare(table, op))

    def prepare(self, table: TableSchema, op: OpLike) -> tuple[Column, bytes]:
        # Parsing and checking the update is the costly part that needs no state.
        self.check_kind(op)
        return document_column(table), parse_update(op.data)

    def apply_prepared(
        self, table: TableSchema, state: RowState, op: OpLike, prepared: tuple[Column, bytes]
    ) -> RowState:
        column, update = prepared
        try:
            stored = decode_update(state.meta["state"]) if "state" in state.meta else b""
            pending = [decode_update(p) for p in state.meta.get("pending", [])]
            doc, encoded, left = integrate(stored, [*pending, update])
        except (ValueError, IndexError, RuntimeError) as e:
            # The stored state was written by this strategy; only the new update can be at fault.
            raise OpRejected("bad_crdt_update", f"the update does not merge with the row's state: {e}") from None
        if len(left) > MAX_PENDING_UPDATES or sum(map(len, left)) > MAX_PENDING_BYTES:
            raise OpRejected(
                "crdt_backlog",
                f"row {list(op.key)!r} would hold {len(left)} updates waiting for updates they depend on "
                f"(at most {MAX_PENDING_UPDATES}, {MAX_PENDING_BYTES} bytes); publish the missing updates first",
            )
        meta: dict[str, Any] = {"state": encode_update(encoded)}
        if left:
            meta["pending"] = [encode_update(p) for p in left]
        values = {column.name: normalize_value(column, to_json(doc))}
        if values == state.values and meta == state.meta:
            return state
        return RowState(values, meta)
