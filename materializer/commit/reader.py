"""Reading a database's stream in order, from a given sequence, with no gaps.

We declare our own ephemeral pull consumer (no acks, starts at an explicit stream
sequence) instead of relying on the client's ordered push consumer, which has had
bugs that skip messages after a slow-consumer reset. Every message's stream
sequence is checked against the one expected; on a gap the consumer is recreated at
the expected sequence. If the stream no longer holds that sequence (retention), the
gap cannot be repaired from the stream and :class:`RetentionGap` says so (a snapshot
can); a gap that re-reading does not close is :class:`StreamDamaged`.

Off-by-one rule: ``StreamReader(start_seq=n)`` yields message ``n`` first. With a
``subject`` filter (tools reading only config, say) sequences are not contiguous and
are not checked.

Each read is one pull request ``{batch, max_bytes, expires, no_wait}``: the server waits
up to ``expires`` for the first message, then sends everything available (up to the
batch and byte caps) and ends the request at once. The client library's ``fetch`` instead
keeps a request open until the batch fills or it expires, so a seal arriving on an idle
stream waited up to the whole ``wait_s`` (measured: 50-210 ms of 250) before the peer saw
it; that wait was part of every seal-to-commit latency.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from epoch.assign import StreamMessage
from materializer.errors import RetentionGap, StreamDamaged
from oplog.nats_errors import TRANSIENT
from oplog.topology import Topology

MAX_REPAIRS = 5
DEFAULT_BATCH = 2000
# Per read: bounds the payloads a peer holds at once when it is behind (at ~150 bytes
# an op, 8 MiB is ~50k ops; reading more at once was not faster, measured).
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# How long past the request's own expiry we wait for the server before giving up on it.
SERVER_GRACE_S = 2.0
FRESH_RETRIES = 5  # pulls re-sent while a new consumer is not answering yet (clusters)


class StreamReader:
    """Yields batches of :class:`StreamMessage` in contiguous sequence order."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        start_seq: int,
        *,
        batch: int = DEFAULT_BATCH,
        max_bytes: int = DEFAULT_MAX_BYTES,
        wait_s: float = 0.25,
        subject: str | tuple[str, ...] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``subject``: read only these subjects (one, or several, e.g. the config and
        seal subjects); default every subject of the database, gap-checked."""
        self._js = js
        self.topology = topology
        self.next_seq = max(1, start_seq)
        self._batch = batch
        # A message larger than the cap could never be read: keep room for the largest.
        self._max_bytes = max(max_bytes, 2 * topology.limits.max_msg_bytes)
        self._wait_s = wait_s
        self._subject = subject or topology.all_subjects
        self._log = logger or logging.getLogger(__name__)
        self._sub: Subscription | None = None
        self.pending = 0  # messages in the stream after the last one read (server's count)
        self._inbox = ""
        self._next_subject = ""
        self._consumer: str | None = None
        self._served = False  # whether the current consumer has answered a pull yet
        self._repairs = 0
        self.caught_up = False
        """Whether the last read ended because the stream had nothing more (rather than
        at the batch or byte cap): the reader is at the stream's head."""

    async def close(self) -> None:
        await self._drop_consumer()

    async def _open(self) -> None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            ack_policy=AckPolicy.NONE,
            filter_subject=self._subject if isinstance(self._subject, str) else None,
            filter_subjects=list(self._subject) if isinstance(self._subject, tuple) else None,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._js._jsm.add_consumer(self.topology.stream, config=config)
        self._consumer, self._served = info.name, False
        # Our own inbox and pull requests (see the module docstring), on the client's
        # connection and API prefix.
        nc = self._js._nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox)
        self._next_subject = f"{self._js._prefix}.CONSUMER.MSG.NEXT.{self.topology.stream}.{info.name}"

    async def _drop_consumer(self) -> None:
        sub, consumer = self._sub, self._consumer
        self._sub, self._consumer = None, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closed
                pass
        if consumer is not None:
            try:
                await self._js._jsm.delete_consumer(self.topology.stream, consumer)
            except Exception:  # ephemeral consumers also expire on their own
                pass

    async def next_batch(self) -> list[StreamMessage]:
        """The next messages (possibly none, after waiting up to ``wait_s``)."""
        if self._sub is None:
            try:
                await self._open()
            except TRANSIENT as e:
                # A cluster electing a leader (a node died): read nothing now, try again.
                self._log.warning("cannot create a consumer on %s yet (%r); retrying", self.topology.stream, e)
                await asyncio.sleep(min(self._wait_s, 0.5))
                return []
        assert self._sub is not None
        msgs = await self._pull(self._sub)
        out: list[StreamMessage] = []
        topology = self.topology
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq < self.next_seq:
                continue  # redelivery after a repair
            if seq > self.next_seq and self._subject == self.topology.all_subjects:
                await self._repair(seq)
                break
            subject = msg.subject
            out.append(StreamMessage(seq, topology.message_kind(subject), msg.data, topology.subject_table(subject)))
            self.next_seq = seq + 1
        if out:
            self._repairs = 0
        if msgs:
            # The server's count of messages after the last one delivered: how far behind.
            self.pending = msgs[-1].metadata.num_pending
        return out

    async def _pull(self, sub: Subscription) -> list[Msg]:
        """One pull request's messages (see the module docstring)."""
        request = orjson.dumps(
            {"batch": self._batch, "max_bytes": self._max_bytes, "expires": int(self._wait_s * 1e9), "no_wait": True}
        )
        loop = asyncio.get_running_loop()
        await self._js._nc.publish(self._next_subject, request, reply=self._inbox)
        msgs: list[Msg] = []
        deadline = loop.time() + self._wait_s + SERVER_GRACE_S
        unanswered = 0
        self.caught_up = False
        while len(msgs) < self._batch:
            try:
                msg = await sub.next_msg(timeout=max(0.001, deadline - loop.time()))
            except TRANSIENT:
                # The server never ended the request: start over with a fresh consumer at
                # next_seq, so nothing this request might still deliver is read twice.
                await self._drop_consumer()
                break
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                msgs.append(msg)
                self._served = True
            elif status == "100":
                continue  # idle heartbeat or flow control
            elif status in ("404", "408") or (status == "409" and msgs):
                # Nothing (more) now, the request expired, or the byte cap was reached.
                self._served, self.caught_up = True, status != "409"
                break
            elif status == "409" and "MaxBytes" in msg.headers.get("Description", ""):
                # A message above the cap (a stream whose limits exceed the topology's).
                self._max_bytes *= 2
                self._log.warning("a stream message exceeds the read cap; raising it to %d bytes", self._max_bytes)
                break
            elif status == "503" and not self._served and unanswered < FRESH_RETRIES:
                # No responder yet for a consumer just made on a cluster: it is being
                # placed. The request is over (nobody took it), so asking again is safe.
                unanswered += 1
                await asyncio.sleep(0.05 * unanswered)
                await self._js._nc.publish(self._next_subject, request, reply=self._inbox)
            else:
                # 503: the consumer is gone (server restart, inactivity); 409 with nothing
                # read: consumer deleted, or similar. Make a new one at next_seq.
                self._log.info("pull request ended with status %s %s; re-creating the consumer",
                               status, msg.headers.get("Description", ""))  # fmt: skip
                await self._drop_consumer()
                break
        return msgs

    async def _repair(self, got: int) -> None:
        self._repairs += 1
        info = await self._js.stream_info(self.topology.stream)
        first = info.state.first_seq
        if first > self.next_seq:
            raise RetentionGap(
                f"stream {self.topology.stream} starts at sequence {first} but this peer needs "
                f"{self.next_seq}: the messages were removed by retention; bootstrap this peer "
                "from a snapshot instead"
            )
        if self._repairs > MAX_REPAIRS:
            raise StreamDamaged(
                f"stream {self.topology.stream}: expected sequence {self.next_seq}, got {got}, "
                f"{MAX_REPAIRS} times after re-reading; the stream may be damaged"
            )
        self._log.warning("stream gap: expected seq %d, got %d; re-reading from %d", self.next_seq, got, self.next_seq)
        await self._drop_consumer()
        await asyncio.sleep(0.05 * self._repairs)
