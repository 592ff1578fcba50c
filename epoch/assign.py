"""Assignment of stream messages to epoch commits, by stream position alone.

:class:`Assigner` is a pure state machine: fed the stream's messages in sequence
order, it returns a :class:`SealedEpoch` each time a seal closes epochs. Every
decision depends only on the messages before it in the stream, so every peer makes
the same ones (contract item 5):

* An op whose epoch (the window holding its HLC wall time) is already sealed is
  *late*: carried into the next commit (default) or rejected, by config.
* An op more than ``max_future_epochs`` past the last sealed epoch is rejected.
* A message that is not a batch, or an op that does not validate, is rejected; so is
  an op whose table is not the one its subject names (subject permissions bind
  producers to tables), and a batch of more than :data:`MAX_OPS_PER_MESSAGE` ops.
* A seal beyond :func:`~epoch.config.seal_ceiling` (``max_future_epochs`` past the
  last sealed epoch, or past the origin's epoch before the first seal), or whose
  epoch ends outside the years 1970-9999, is rejected: a forged seal can neither
  stall sealing nor overflow a commit date.
* Totality: whatever a message holds, it is taken or recorded as rejected. An
  unexpected error while taking one message rejects it with the error's class as
  its detail (never its text, which could differ between peers).
* Rejections, schema messages and late ops are attached to the first commit sealed
  after their stream position.
* The *first* ``seal k`` in stream order with ``k`` above the last sealed epoch
  closes every epoch up to ``k``: one commit, numbered ``k``. Later copies are ignored.

Resume rule (contract item 10). After commit ``k`` the peer stores ``seal_seq`` and
``resume_seq``: the lowest stream sequence still buffered (ops of later epochs read
before the seal), or ``seal_seq + 1``. A restarted peer builds an assigner with
:meth:`Assigner.resume` and reads the stream from ``resume_seq`` on: it re-makes
the same decisions, and every commit up to ``k`` it would emit again is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

# The values assignment makes are defined beside it (epoch/assigned.py) and named here too:
# most callers import them from this module.
from epoch.assigned import (
    MAX_COMMIT_MS,
    MAX_OPS_PER_MESSAGE,
    MAX_RECORDED_PAYLOAD,
    NO_EPOCH,
    Accepted,
    Control,
    Reason,
    Rejected,
    SealedEpoch,
    StreamMessage,
    recordable,
)
from epoch.config import ConfigChange, DatabaseConfig, LatePolicy, Roster, Timeline, check_change, seal_ceiling
from epoch.errors import ConfigRejected
from oplog.codec import decode_batch, decode_json, decode_record, raw_op_id
from oplog.errors import CodecError
from oplog.op import OpRecord

__all__ = [
    "MAX_COMMIT_MS",
    "MAX_OPS_PER_MESSAGE",
    "MAX_RECORDED_PAYLOAD",
    "NO_EPOCH",
    "Accepted",
    "Assigner",
    "Control",
    "Reason",
    "Rejected",
    "SealedEpoch",
    "StreamMessage",
    "recordable",
]

@dataclass
class Assigner:
    """The assignment state machine of one database (see module docstring).

    ``prepare``, if given, is called with every accepted op as it is accepted, and its
    result travels with the op (:attr:`Accepted.prepared`): the materializer uses it to
    do per-op planning work while the epoch is still open. It has no say in assignment.
    """

    config: DatabaseConfig | None = None
    timeline: Timeline | None = None
    roster: Roster | None = None  # the peers that count toward agreement, once an admin declared them
    # The last config message taken and, if it was rejected, why: a peer reports both in
    # its heartbeat, so `oplog config set` can tell an operator what became of a change.
    config_seq: int = 0
    config_rejected: str = ""
    last_sealed: int = NO_EPOCH
    committed_through: int = NO_EPOCH
    _pending: list[Accepted] = field(default_factory=list)
    _carried: list[Accepted] = field(default_factory=list)
    _rejected: list[Rejected] = field(default_factory=list)
    _controls: list[Control] = field(default_factory=list)
    prepare: Callable[[OpRecord], Any] | None = field(default=None, compare=False)

    @classmethod
    def resume(
        cls,
        config_log: list[tuple[int, Any]],
        resume_seq: int,
        sealed_before_resume: int,
        committed_through: int,
        *,
        prepare: Callable[[OpRecord], Any] | None = None,
    ) -> Assigner:
        """The assigner as it stood just before stream sequence ``resume_seq``.

        ``config_log`` is every config message recorded in Dolt as ``(seq, body)``;
        those before ``resume_seq`` are replayed, the rest will be read again from the
        stream. ``sealed_before_resume`` is the highest epoch whose seal came before
        ``resume_seq``; commits up to ``committed_through`` are not emitted again.
        """
        assigner = cls(committed_through=committed_through, prepare=prepare)
        for seq, body in sorted(config_log, key=lambda row: row[0]):
            if seq < resume_seq:
                assigner._apply_config(seq, body, replay=True)
        assigner._controls.clear()
        assigner._rejected.clear()
        assigner.last_sealed = sealed_before_resume
        return assigner

    @property
    def resume_seq_hint(self) -> int | None:
        """Lowest stream sequence still buffered, if any."""
        buffered = [a.seq for a in self._pending] + [a.seq for a in self._carried]
        buffered += [r.seq for r in self._rejected] + [c.seq for c in self._controls]
        return min(buffered) if buffered else None

    def feed(self, message: StreamMessage) -> SealedEpoch | None:
        """Take the next stream message; return the commit it seals, if any.

        Total: never raises for anything a message holds (see the module docstring)."""
        try:
            return self._feed(message)
        except MemoryError:
            raise  # about this peer, not the message: another peer may not run out
        except Exception as e:
            # A bug met by this message alone. Ops already taken from it stay taken;
            # the message is recorded once more, as a whole, naming the error's class.
            detail = f"{type(e).__name__} while taking this {message.kind} message"
            self._reject(message.seq, -1, None, Reason.UNEXPECTED, detail, message.payload)
            return None

    def _feed(self, message: StreamMessage) -> SealedEpoch | None:
        if message.kind == "ops":
            self._take_ops(message)
        elif message.kind == "seal":
            return self._take_seal(message)
        elif message.kind == "config":
            try:
                body = decode_json(message.payload)
            except CodecError as e:
                self._reject(message.seq, -1, None, Reason.BAD_CONFIG, str(e), message.payload)
                self.config_seq, self.config_rejected = message.seq, str(e)
            else:
                self._apply_config(message.seq, body)
        elif message.kind == "schema":
            try:
                self._controls.append(Control(message.seq, "schema", decode_json(message.payload)))
            except CodecError as e:
                self._reject(message.seq, -1, None, Reason.MALFORMED, f"schema message: {e}", message.payload)
        else:
            self._reject(
                message.seq,
                -1,
                None,
                Reason.UNKNOWN_SUBJECT,
                "message on a subject oplog does not use",
                message.payload,
            )
        return None

    # -- ops -----------------------------------------------------------------------

    def _take_ops(self, message: StreamMessage) -> None:
        seq = message.seq
        try:
            raws = decode_batch(message.payload)
        except CodecError as e:
            self._reject(seq, -1, None, Reason.MALFORMED, str(e), message.payload)
            return
        if len(raws) > MAX_OPS_PER_MESSAGE:
            detail = f"a batch of {len(raws)} ops; at most {MAX_OPS_PER_MESSAGE} per message"
            self._reject(seq, -1, None, Reason.OVERSIZE, detail, message.payload)
            return
        config, timeline = self.config, self.timeline
        if config is None or timeline is None:
            for index, raw in enumerate(raws):
                self._reject(
                    seq, index, raw_op_id(raw), Reason.NO_CONFIG, "op published before the database's config", raw
                )
            return
        # Everything below is per op, on every peer, for every op of the stream: the
        # per-message invariants are hoisted, and the newest timeline segment (where
        # nearly every op falls) is inlined instead of calling Timeline.epoch_of.
        max_bytes = config.max_op_bytes
        last_sealed = self.last_sealed
        carry = config.late_policy is not LatePolicy.REJECT
        future_past = None if last_sealed == NO_EPOCH else last_sealed + config.max_future_epochs
        newest = timeline.segments[-1]
        seg_first, seg_start, seg_ms = newest.first_epoch, newest.start_ms, newest.epoch_ms
        pending, carried = self._pending.append, self._carried.append
        prepare = self.prepare
        subject_table = message.table
        for index, raw in enumerate(raws):
            try:
                # Canonical bytes: the size the limit applies to, and (decode_record) the
                # bytes the op's digest is hashed from.
                wire = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
                size = len(wire)
            except TypeError:
                # Nested past orjson's 254 levels: it has no canonical form, so no digest.
                self._reject(seq, index, raw_op_id(raw), Reason.INVALID_OP,
                             "op cannot be encoded as canonical JSON (nested too deeply)", raw)  # fmt: skip
                continue
            if size > max_bytes:
                self._reject(
                    seq, index, raw_op_id(raw), Reason.OVERSIZE, f"op is {size} bytes; the limit is {max_bytes}", raw
                )
                continue
            try:
                op = decode_record(raw, wire)
            except CodecError as e:
                self._reject(seq, index, raw_op_id(raw), Reason.INVALID_OP, str(e), raw)
                continue
            if subject_table is not None and op.table != subject_table:
                detail = f"op names table {op.table!r} but was published on the subject of {subject_table!r}"
                self._reject(seq, index, op.id, Reason.WRONG_SUBJECT, detail, raw)
                continue
            wall = op.wall_ms
            epoch = seg_first + (wall - seg_start) // seg_ms if wall >= seg_start else timeline.epoch_of(wall)
            if epoch <= last_sealed:
                if carry:
                    carried(_tuple_new(Accepted, (seq, index, op, epoch, True, prepare and prepare(op))))
                else:
                    self._reject(
                        seq,
                        index,
                        op.id,
                        Reason.LATE,
                        f"epoch {epoch} was already sealed (through {last_sealed})",
                        raw,
                    )
            elif future_past is not None and epoch > future_past:
                self._reject(
                    seq,
                    index,
                    op.id,
                    Reason.FUTURE,
                    f"epoch {epoch} is more than {config.max_future_epochs} epochs past the last sealed "
                    f"epoch {last_sealed}; the producer's clock is probably fast",
                    raw,
                )
            else:
                pending(_tuple_new(Accepted, (seq, index, op, epoch, False, prepare and prepare(op))))

    def _reject(self, seq: int, index: int, op_id: str | None, reason: str, detail: str, payload: Any = None) -> None:
        self._rejected.append(Rejected(seq, index, op_id, reason, detail, recordable(payload)))

    # -- config ----------------------------------------------------------------------

    def _apply_config(self, seq: int, body: Any, *, replay: bool = False) -> None:
        """Apply a config message; ``replay`` re-applies one already accepted (resume)."""
        kind = body.get("type") if isinstance(body, dict) else None
        try:
            if kind == "init":
                config = DatabaseConfig.model_validate(body)
                if self.config is None:
                    self.config, self.timeline = config, Timeline.from_config(config)
                    self._controls.append(Control(seq, "config", config.model_dump(mode="json")))
                elif config != self.config:
                    raise ConfigRejected("the database is already initialized with a different config")
            elif kind == "change":
                change = ConfigChange.model_validate(body)
                if self.config is None or self.timeline is None:
                    raise ConfigRejected("a config change before the database's init")
                if not replay:
                    if self.last_sealed == NO_EPOCH:
                        # Before the first seal there is no bound on the epochs ops were
                        # already assigned to, so no boundary is provably in the future.
                        raise ConfigRejected("a config change before the first sealed epoch; publish it later")
                    check_change(change, self.timeline, self.last_sealed, self.config)
                self.timeline = self.timeline.with_change(change)
                self._controls.append(Control(seq, "config", change.model_dump(mode="json")))
            elif kind == "roster":
                roster = Roster.model_validate(body)
                if self.config is None:
                    raise ConfigRejected("a roster before the database's init")
                self.roster = roster
                self._controls.append(Control(seq, "config", roster.model_dump(mode="json")))
            else:
                raise ConfigRejected(f"config message type {kind!r} is not 'init', 'change' or 'roster'")
        except (ValidationError, ConfigRejected) as e:
            detail = _validation_detail(e) if isinstance(e, ValidationError) else str(e)
            self._reject(seq, -1, None, Reason.BAD_CONFIG, detail, body)
            self.config_seq, self.config_rejected = seq, detail
        else:
            self.config_seq, self.config_rejected = seq, ""

    # -- seals -----------------------------------------------------------------------

    def _take_seal(self, message: StreamMessage) -> SealedEpoch | None:
        try:
            body = orjson.loads(message.payload)
            epoch = body["epoch"]
            if type(epoch) is not int:
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self._reject(
                message.seq, -1, None, Reason.MALFORMED, 'a seal message must be {"epoch": <integer>}', message.payload
            )
            return None
        if self.config is None or self.timeline is None or epoch <= self.last_sealed:
            return None  # nothing to seal yet, or a later copy of a seal already applied
        ceiling = seal_ceiling(self.config, self.timeline, self.last_sealed if self.last_sealed != NO_EPOCH else None)
        if epoch > ceiling or not 0 <= self.timeline.end_ms(epoch) <= MAX_COMMIT_MS:
            why = (
                f"seal {epoch} is beyond epoch {ceiling} (max_future_epochs past the last sealed epoch)"
                if epoch > ceiling
                else f"epoch {epoch} ends outside the years 1970-9999"
            )
            self._reject(message.seq, -1, None, Reason.BAD_SEAL, why, message.payload)
            return None
        first = self.timeline.epoch_of(self.config.origin_ms) if self.last_sealed == NO_EPOCH else self.last_sealed + 1
        first = min(first, epoch)
        taken = [a for a in self._pending if a.epoch <= epoch]
        self._pending = [a for a in self._pending if a.epoch > epoch]
        sealed = SealedEpoch(
            epoch=epoch,
            first_epoch=first,
            seal_seq=message.seq,
            resume_seq=min((a.seq for a in self._pending), default=message.seq + 1),
            end_ms=self.timeline.end_ms(epoch),
            config=self.config,
            ops=tuple(self._carried) + tuple(taken),
            rejected=tuple(self._rejected),
            controls=tuple(self._controls),
        )
        self.last_sealed = epoch
        self._carried, self._rejected, self._controls = [], [], []
        if epoch <= self.committed_through:
            return None  # already in Dolt: we are replaying after a restart
        return sealed


_tuple_new = tuple.__new__  # builds an Accepted without NamedTuple's Python-level __new__


def _validation_detail(error: ValidationError) -> str:
    """A config validation error in one line: ``field: message`` per problem."""
    problems = [f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in error.errors()]
    return "; ".join(problems)
