"""Reading a database's stream in order, from a given sequence, with no gaps.

We declare our own ephemeral pull consumer (no acks, starts at an explicit stream
sequence) instead of relying on the client's ordered push consumer, which has had
bugs that skip messages after a slow-consumer reset. Every message's stream
sequence is checked against the one expected; on a gap the consumer is recreated at
the expected sequence. If the stream no longer holds that sequence (retention), the
gap cannot be repaired from the stream and :class:`StreamGap` says so.

Off-by-one rule: ``StreamReader(start_seq=n)`` yields message ``n`` first. With a
``subject`` filter (tools reading only config, say) sequences are not contiguous and
are not checked.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from epoch.assign import StreamMessage
from materializer.errors import StreamGap
from oplog.topology import Topology

MAX_REPAIRS = 5


class StreamReader:
    """Yields batches of :class:`StreamMessage` in contiguous sequence order."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        start_seq: int,
        *,
        batch: int = 2000,
        wait_s: float = 0.25,
        subject: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._js = js
        self.topology = topology
        self.next_seq = max(1, start_seq)
        self._batch = batch
        self._wait_s = wait_s
        self._subject = subject or topology.all_subjects
        self._log = logger or logging.getLogger(__name__)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        self._repairs = 0

    async def close(self) -> None:
        await self._drop_consumer()

    async def _open(self) -> None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            ack_policy=AckPolicy.NONE,
            filter_subject=self._subject,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._js._jsm.add_consumer(self.topology.stream, config=config)
        self._consumer = info.name
        self._sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=self.topology.stream)

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
            await self._open()
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(self._batch, timeout=self._wait_s)
        except (NatsTimeoutError, TimeoutError):
            return []
        except NotFoundError:
            # The server forgot our consumer (restart, inactivity): make a new one.
            await self._drop_consumer()
            return []
        out: list[StreamMessage] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq < self.next_seq:
                continue  # redelivery after a repair
            if seq > self.next_seq and self._subject == self.topology.all_subjects:
                await self._repair(seq)
                break
            out.append(StreamMessage(seq, self.topology.message_kind(msg.subject), msg.data))
            self.next_seq = seq + 1
        if out:
            self._repairs = 0
        return out

    async def _repair(self, got: int) -> None:
        self._repairs += 1
        info = await self._js.stream_info(self.topology.stream)
        first = info.state.first_seq
        if first > self.next_seq:
            raise StreamGap(
                f"stream {self.topology.stream} starts at sequence {first} but this peer needs "
                f"{self.next_seq}: the messages were removed by retention; bootstrap this peer "
                "from a snapshot instead"
            )
        if self._repairs > MAX_REPAIRS:
            raise StreamGap(
                f"stream {self.topology.stream}: expected sequence {self.next_seq}, got {got}, "
                f"{MAX_REPAIRS} times after re-reading; the stream may be damaged"
            )
        self._log.warning("stream gap: expected seq %d, got %d; re-reading from %d", self.next_seq, got, self.next_seq)
        await self._drop_consumer()
        await asyncio.sleep(0.05 * self._repairs)
