"""Which epoch an op is in, as a producer learns it from the stream (decisions.md #39).

A receipt names the epoch of its op's HLC (decisions.md #16). The epochs are defined by
the database's config history: the ``init`` config, then the ``change`` messages the
peers accepted. Whether a change is accepted depends on the last sealed epoch at its
stream position (``epoch.config.check_change``), so this module reads the config
messages and, when a change needs judging, the seal messages before it, and takes them
exactly as ``epoch.assign.Assigner`` does, so far as they shape epoch windows.

The ``oplog`` package must not import ``epoch`` (tests/test_layers.py), so the rules
that decide windows are restated here, small: :class:`ConfigState` mirrors the
assigner's config and seal handling, :class:`Windows` mirrors ``epoch.config.Timeline``'s
arithmetic, and :class:`InitConfig` / :class:`ChangeConfig` mirror the validation of
``DatabaseConfig`` / ``ConfigChange``. ``tests/test_producer_connect.py`` holds them to
the originals: the same fields and bounds, and the same decisions and epochs for
random message sequences.

:class:`EpochTracker` reads the stream once when it starts, then keeps following it in
the background, so a config change published while a producer runs is in its receipts
from the epoch the change takes effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import orjson
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oplog.codec import decode_json
from oplog.errors import CodecError, OplogError
from oplog.topology import DEFAULT_MAX_OP_BYTES, Topology

logger = logging.getLogger(__name__)

# The same values as epoch.config and epoch.assign (tests/test_producer_connect.py checks).
NO_EPOCH = -(2**62)
MAX_COMMIT_MS = 253_402_300_799_999
MIN_EPOCH_MS, MAX_EPOCH_MS = 10, 86_400_000
MAX_GRACE_MS = 3_600_000
MAX_MAX_FUTURE_EPOCHS = 1_000_000
MAX_DEDUP_EPOCHS = 100_000_000
MAX_OP_BYTES = 1024 * 1024
MAX_ORIGIN_MS = 253_402_300_799_999 // 2
MAX_CHANGE_LEAD_EPOCHS = 1_000_000


class NoConfig(OplogError):
    """The stream holds no accepted ``init`` config for the database, so no op has an epoch."""


class InitConfig(BaseModel):
    """``epoch.config.DatabaseConfig``, field for field: the same message is valid for both."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["init"] = "init"
    db: str
    origin_ms: int = Field(ge=0, le=MAX_ORIGIN_MS)
    epoch_ms: int = Field(1000, ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)
    grace_ms: int = Field(500, ge=0, le=MAX_GRACE_MS)
    late_policy: Literal["carry", "reject"] = "carry"
    max_future_epochs: int = Field(600, ge=1, le=MAX_MAX_FUTURE_EPOCHS)
    dedup_epochs: int = Field(3600, ge=1, le=MAX_DEDUP_EPOCHS)
    max_op_bytes: int = Field(DEFAULT_MAX_OP_BYTES, gt=0, le=MAX_OP_BYTES)
    author_name: str = Field("oplog", min_length=1, max_length=200, pattern=r"^[^<>\x00-\x1f\x7f]+$")
    author_email: str = Field("oplog@localhost", min_length=3, max_length=200, pattern=r"^[^<>\s]+$")
    checkpoint_epochs: int | None = Field(None, ge=2, le=100_000_000)


class ChangeConfig(BaseModel):
    """``epoch.config.ConfigChange``, field for field."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["change"] = "change"
    effective_epoch: int
    epoch_ms: int = Field(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)
    grace_ms: int = Field(ge=0, le=MAX_GRACE_MS)


class Segment(NamedTuple):
    first_epoch: int
    start_ms: int
    epoch_ms: int
    grace_ms: int


class Windows:
    """Epoch windows under a config history: ``epoch.config.Timeline``'s arithmetic."""

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        self.segments = segments

    @classmethod
    def from_init(cls, config: InitConfig) -> Windows:
        return cls((Segment(0, config.origin_ms, config.epoch_ms, config.grace_ms),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Windows) and other.segments == self.segments

    def __repr__(self) -> str:
        return f"Windows({self.segments!r})"

    def epoch_of(self, wall_ms: int) -> int:
        """The epoch whose window holds ``wall_ms`` (negative before the origin)."""
        for segment in reversed(self.segments):
            if wall_ms >= segment.start_ms:
                break
        else:
            segment = self.segments[0]
        return segment.first_epoch + (wall_ms - segment.start_ms) // segment.epoch_ms

    def start_ms(self, epoch: int) -> int:
        segment = self.segments[0]
        for candidate in reversed(self.segments):
            if epoch >= candidate.first_epoch:
                segment = candidate
                break
        return segment.start_ms + (epoch - segment.first_epoch) * segment.epoch_ms

    def end_ms(self, epoch: int) -> int:
        return self.start_ms(epoch + 1)

    def with_change(self, change: ChangeConfig) -> Windows:
        start = self.end_ms(change.effective_epoch - 1)
        kept = tuple(s for s in self.segments if s.first_epoch < change.effective_epoch)
        return Windows(kept + (Segment(change.effective_epoch, start, change.epoch_ms, change.grace_ms),))


class ConfigState:
    """The config, epoch windows and last sealed epoch that a database's config and seal
    messages make, decided as ``epoch.assign.Assigner`` decides them. Total: a message
    it cannot take is ignored, as the assigner rejects it."""

    def __init__(self) -> None:
        self.config: InitConfig | None = None
        self.windows: Windows | None = None
        self.last_sealed = NO_EPOCH
        self.init_seq = 0  # the stream sequence of the init config taken
        self.position = 0  # the stream sequence of the last message taken

    def epoch_of(self, wall_ms: int) -> int | None:
        """The epoch holding ``wall_ms``, or None while there is no config."""
        windows = self.windows
        return None if windows is None else windows.epoch_of(wall_ms)

    def feed(self, seq: int, kind: str, payload: bytes) -> None:
        """Take the message at stream sequence ``seq``; ``kind`` is ``config`` or ``seal``
        (anything else is skipped)."""
        self.position = max(self.position, seq)
        try:
            if kind == "config":
                self._take_config(seq, payload)
            elif kind == "seal":
                self._take_seal(seq, payload)
        except (CodecError, ValidationError, _Refused):
            pass  # rejected by the peers (recorded in oplog_rejections); changes nothing here
        except MemoryError:
            raise
        except Exception as e:  # the assigner rejects such a message too (Reason.UNEXPECTED)
            logger.debug("config/seal message %d not taken: %r", seq, e)

    def _take_config(self, seq: int, payload: bytes) -> None:
        body = decode_json(payload)
        kind = body.get("type") if isinstance(body, dict) else None
        if kind == "init":
            config = InitConfig.model_validate(body)
            if self.config is None:
                self.config, self.windows, self.init_seq = config, Windows.from_init(config), seq
        elif kind == "change":
            change = ChangeConfig.model_validate(body)
            if self.config is None or self.windows is None or self.last_sealed == NO_EPOCH:
                raise _Refused
            earliest = self.last_sealed + self.config.max_future_epochs + 2
            if not earliest <= change.effective_epoch <= earliest + MAX_CHANGE_LEAD_EPOCHS:
                raise _Refused
            if change.effective_epoch <= self.windows.segments[-1].first_epoch:
                raise _Refused
            self.windows = self.windows.with_change(change)
        # A roster, or anything else, shapes no epoch window.

    def _take_seal(self, seq: int, payload: bytes) -> None:
        try:
            epoch = orjson.loads(payload)["epoch"]
            if type(epoch) is not int:
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _Refused from None
        config, windows = self.config, self.windows
        # Seals may be taken after later config messages (EpochTracker reads them only
        # when a change needs them): one before the init counts as before any config.
        if config is None or windows is None or seq < self.init_seq or epoch <= self.last_sealed:
            return
        base = windows.epoch_of(config.origin_ms) if self.last_sealed == NO_EPOCH else self.last_sealed
        if epoch > base + config.max_future_epochs or not 0 <= windows.end_ms(epoch) <= MAX_COMMIT_MS:
            return  # bad_seal
        self.last_sealed = epoch


class _Refused(Exception):
    """A message the assigner would reject (internal)."""


class ControlReader:
    """Reads the messages of one subject of a database's stream (config, or seals) in
    order, from a sequence on, through an ephemeral pull consumer (no acks); it goes on
    reading as new ones arrive. A consumer lost on the way (a restarted server) is made
    again at the next sequence."""

    def __init__(
        self, js: JetStreamContext, topology: Topology, subject: str, *, start_seq: int = 1, batch: int = 1000
    ) -> None:
        self._js = js
        self.topology = topology
        self.subject = subject
        self.next_seq = max(1, start_seq)
        self._batch = batch
        self._sub: Any = None
        self._consumer: str | None = None
        self.pending = -1  # matching messages after the last one read (-1: not known yet)

    async def _open(self) -> None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            ack_policy=AckPolicy.NONE,
            filter_subject=self.subject,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        stream = self.topology.stream
        try:
            info = await self._js.add_consumer(stream, config=config)
        except NotFoundError:
            raise _no_stream(self.topology) from None
        self._consumer, self.pending = info.name, info.num_pending
        self._sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=stream)

    async def close(self) -> None:
        """Drop the consumer; a later read makes a new one at :attr:`next_seq`."""
        sub, consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None:
            with contextlib.suppress(Exception):  # ephemeral consumers also expire by themselves
                await self._js.delete_consumer(self.topology.stream, consumer)

    async def read(self, timeout: float) -> list[tuple[int, bytes]]:
        """The next messages as ``(seq, payload)``, waiting up to ``timeout`` for the
        first; ``[]`` if none came."""
        if self._sub is None:
            await self._open()
            if self.pending == 0:
                return []
        try:
            messages = await self._sub.fetch(self._batch, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return []
        found = []
        for message in messages:
            meta = message.metadata
            seq = meta.sequence.stream
            if seq < self.next_seq:
                continue  # delivered again after the consumer was made again
            self.next_seq = seq + 1
            self.pending = meta.num_pending
            found.append((seq, message.data or b""))
        return found


def _no_stream(topology: Topology) -> OplogError:
    db = topology.db
    return OplogError(f"database {db} has no stream {topology.stream}; run `oplog init --db {db}` first")


class EpochTracker:
    """A database's epochs, kept current from its stream (see the module docstring).

    ``await EpochTracker.start(js, topology)`` reads every config message the stream
    holds, then follows new ones in a background task until :meth:`close`. Seals are
    read only when a config change needs judging (whether it is taken depends on the
    last sealed epoch at its position), and only up to it: a database whose config
    never changed costs one short read, however long its stream.
    """

    READ_WAIT_S = 5.0  # one pull request's wait while nothing new arrives
    RETRY_S = 1.0

    def __init__(self, js: JetStreamContext, topology: Topology) -> None:
        self.topology = topology
        self.state = ConfigState()
        self._js = js
        self._configs = ControlReader(js, topology, topology.config_subject)
        self._sealed_through = 0  # seals up to this stream sequence are taken
        self._task: asyncio.Task[None] | None = None
        self.first_seq = 1  # the stream's first sequence when the tracker started

    @classmethod
    async def start(cls, js: JetStreamContext, topology: Topology, *, follow: bool = True) -> EpochTracker:
        tracker = cls(js, topology)
        try:
            await tracker._catch_up()
        except BaseException:
            await tracker._configs.close()
            raise
        if follow:
            tracker._task = asyncio.get_running_loop().create_task(tracker._follow(), name="oplog-epoch-tracker")
        else:
            await tracker._configs.close()
        return tracker

    @property
    def config(self) -> InitConfig | None:
        return self.state.config

    @property
    def purged(self) -> bool:
        """Whether the stream no longer holds its first messages (retention purged them),
        so that a missing config may only be missing from the stream."""
        return self.first_seq > 1

    def epoch_of(self, wall_ms: int) -> int | None:
        return self.state.epoch_of(wall_ms)

    def require_config(self) -> InitConfig:
        """The database's config; raises :class:`NoConfig`, saying why, without one."""
        if self.state.config is not None:
            return self.state.config
        db = self.topology.db
        if self.purged:
            raise NoConfig(
                f"the stream {self.topology.stream} no longer holds the config of database {db} (its messages "
                f"before seq {self.first_seq} were purged, by snapshot retention), so no op's epoch can be named; "
                "connect with require_config=False to publish with receipts that carry no epoch"
            )
        raise NoConfig(f"database {db} has no config yet; run `oplog init --db {db}` first")

    async def _catch_up(self) -> None:
        try:
            info = await self._js.stream_info(self.topology.stream)
        except NotFoundError:
            raise _no_stream(self.topology) from None
        self.first_seq = int(info.state.first_seq or 1)
        while True:
            batch = await self._configs.read(self.READ_WAIT_S)
            await self._take(batch)
            if self._configs.pending == 0:
                return
            if not batch:
                raise OplogError(f"reading the config of database {self.topology.db} from its stream timed out")

    async def _take(self, batch: Iterable[tuple[int, bytes]]) -> None:
        for seq, payload in batch:
            if _is_change(payload):
                await self._take_seals(before=seq)
            self.state.feed(seq, "config", payload)

    async def _take_seals(self, *, before: int) -> None:
        """Take every seal between the last one taken and stream sequence ``before``."""
        if self._sealed_through >= before - 1:
            return
        reader = ControlReader(self._js, self.topology, self.topology.seal_subject, start_seq=self._sealed_through + 1)
        try:
            while True:
                batch = await reader.read(self.READ_WAIT_S)
                for seq, payload in batch:
                    if seq >= before:
                        self._sealed_through = before - 1
                        return
                    self.state.feed(seq, "seal", payload)
                if reader.pending == 0:
                    self._sealed_through = before - 1
                    return
                if not batch:
                    raise OplogError(f"reading the seals of database {self.topology.db} from its stream timed out")
        finally:
            await reader.close()

    async def _follow(self) -> None:
        while True:
            try:
                await self._take(await self._configs.read(self.READ_WAIT_S))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A lost consumer or connection: the client reconnects by itself; make
                # the consumer again where we stopped.
                logger.debug("following the config of %s: %r; retrying", self.topology.db, e)
                with contextlib.suppress(Exception):
                    await self._configs.close()
                await asyncio.sleep(self.RETRY_S)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._configs.close(), 2.0)


def _is_change(payload: bytes) -> bool:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("type") == "change"
