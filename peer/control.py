"""Control-plane helpers for the CLI: initializing a database, reading its config,
scheduling a config change and learning what the peers made of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from epoch.assign import NO_EPOCH, Assigner
from epoch.config import ConfigChange, DatabaseConfig, Roster, Timeline
from materializer.agreement.hashes import HashBoard
from materializer.commit.reader import StreamReader
from oplog.errors import OplogError
from oplog.schema import SchemaMessage
from oplog.stream import ensure_stream, publish_json
from oplog.topology import Topology


async def init_database(js: JetStreamContext, topology: Topology, config: DatabaseConfig) -> bool:
    """Create the stream and publish the init config; False if it already had one."""
    await ensure_stream(js, topology)
    try:
        await js._jsm.get_last_msg(topology.stream, topology.config_subject)
        return False
    except NotFoundError:
        pass
    await publish_json(
        js, topology, topology.config_subject, config.model_dump(mode="json"), msg_id=f"config-{topology.db}-init"
    )
    return True


def default_origin_ms(epoch_ms: int, now_ms: int | None = None) -> int:
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return now - now % epoch_ms


async def read_config(js: JetStreamContext, topology: Topology, *, wait_s: float = 0.5) -> Assigner:
    """An assigner fed every config and seal message the stream still holds: its
    ``config``, ``timeline``, ``roster`` and ``last_sealed`` are the database's as of the
    stream's end (None where no such message was published, or retention purged it).

    Seals are read too because whether a config change is taken depends on the last
    sealed epoch at its position; ops are not (they decide nothing about config)."""
    reader = StreamReader(
        js, topology, 1, wait_s=wait_s, subject=(topology.config_subject, topology.seal_subject)
    )
    assigner = Assigner()
    try:
        info = await js.stream_info(topology.stream)
        last = info.state.last_seq
        while reader.next_seq <= last:
            batch = await reader.next_batch()
            if not batch:
                break
            for message in batch:
                assigner.feed(message)
            if reader.pending == 0:
                break  # nothing of these subjects after it (the stream's tail is ops)
    finally:
        await reader.close()
    return assigner


async def read_timeline(js: JetStreamContext, topology: Topology, *, wait_s: float = 0.5) -> Timeline | None:
    """The epoch timeline as the stream's config messages define it (None before init)."""
    return (await read_config(js, topology, wait_s=wait_s)).timeline


# A change must lie past every epoch an op could already be in when the peers read
# it; seals go on while the command runs, so it aims this much later than the minimum.
CHANGE_LEAD_MS = 5_000


class ChangeRefused(OplogError):
    """The peers rejected a config change (the reason is theirs, from the stream)."""


def newest_seal(state: Assigner) -> int | None:
    """The last epoch sealed in the stream (accepted seals only), or None."""
    return None if state.last_sealed == NO_EPOCH else state.last_sealed


async def plan_change(
    js: JetStreamContext,
    topology: Topology,
    *,
    epoch_ms: int,
    grace_ms: int,
    at_epoch: int | None,
    now_ms: int,
) -> tuple[ConfigChange, int]:
    """The change to publish, and the earliest epoch it could have taken effect at.

    The earliest is the assigner's own rule (epoch.config.check_change) applied to the
    newest seal, plus :data:`CHANGE_LEAD_MS` of epochs for seals that land before the
    change does. Raises :class:`~oplog.errors.OplogError` if ``at_epoch`` is sooner.
    """
    state = await read_config(js, topology)
    config, timeline = state.config, state.timeline
    if config is None or timeline is None:
        raise OplogError(f"database {topology.db} has no config; run `oplog init --db {topology.db}` first")
    sealed = newest_seal(state)
    if sealed is None:
        raise OplogError(
            f"database {topology.db} has no sealed epoch yet, and a change needs one to be scheduled after; "
            "start a peer first (`oplog serve`)"
        )
    lead = -(-CHANGE_LEAD_MS // timeline.segments[-1].epoch_ms)
    earliest = max(sealed + config.max_future_epochs + 2 + lead, timeline.segments[-1].first_epoch + 1)
    if at_epoch is not None and at_epoch < earliest:
        raise OplogError(
            f"epoch {at_epoch} is too soon: ops may already be assigned up to epoch "
            f"{sealed + config.max_future_epochs} (max_future_epochs {config.max_future_epochs} past the newest "
            f"seal {sealed}); choose epoch {earliest} or later"
        )
    change = ConfigChange(effective_epoch=at_epoch if at_epoch is not None else earliest, epoch_ms=epoch_ms,
                          grace_ms=grace_ms)  # fmt: skip
    return change, earliest


async def wait_for_change(
    js: JetStreamContext, topology: Topology, seq: int, change: ConfigChange, poll_s: float = 0.2
) -> str:
    """Wait until a peer has taken the config message at ``seq``; the name of the first
    peer that accepted it. Raises :class:`ChangeRefused` with the peers' reason if it
    was rejected. Peers say in their heartbeat which config message they took last, and
    the timeline in force; the decision is the same on every peer, so one is enough.
    No deadline here: the caller sets one."""
    board = HashBoard(js, topology)
    wanted = (change.effective_epoch, change.epoch_ms, change.grace_ms)
    while True:
        beats = await board.heartbeats(await board.peers())
        for name, beat in sorted(beats.items()):
            if beat.config_seq == seq:
                if beat.config_rejected:
                    raise ChangeRefused(beat.config_rejected)
                return name
            if beat.config_seq > seq and beat.segment is not None:
                first, _, ms, grace = beat.segment
                if (first, ms, grace) == wanted:
                    return name
        await asyncio.sleep(poll_s)


async def publish_roster(js: JetStreamContext, topology: Topology, roster: Roster) -> int:
    """Declare the peers that count toward agreement (an admin's message on the config subject)."""
    return await publish_json(js, topology, topology.config_subject, roster.model_dump(mode="json"))


def schema_body(schema: SchemaMessage) -> dict[str, Any]:
    """The JSON body a schema message is published as."""
    body = orjson.loads(schema.model_dump_json())
    # Without an empty list, a message of tables alone is the very body older versions
    # published (and older peers know).
    return {key: value for key, value in body.items() if value != []}


async def publish_schema(js: JetStreamContext, topology: Topology, schema: SchemaMessage) -> int:
    return await publish_json(js, topology, topology.schema_subject, schema_body(schema))
