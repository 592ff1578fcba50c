"""Verification: every peer publishes ``(epoch, commit hash)``; anyone can compare.

Reports live in the KV bucket ``OPLOG_<db>_HASHES`` under ``e.<epoch>.<peer>``;
``p.<peer>`` holds the peer's latest epoch, ``d.<peer>`` its last divergence (a
JSON record, deleted again when the peer repaired) and ``h.<peer>`` its heartbeat (a
JSON record rewritten every few seconds while it runs: see :class:`Heartbeat`). :meth:`HashBoard.collect` groups
recent reports per epoch; :meth:`HashBoard.reports` reads one epoch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from pydantic import BaseModel, ConfigDict

from materializer.buckets import key_value, keys_matching
from oplog.topology import Topology


@dataclass(frozen=True)
class EpochAgreement:
    epoch: int
    hashes: dict[str, str]

    @property
    def agree(self) -> bool:
        return len(set(self.hashes.values())) <= 1


class Heartbeat(BaseModel):
    """What a running peer says about itself every ``--check-interval`` (``h.<peer>``).

    Read by ``oplog status``: a peer whose heartbeat is older than a few intervals is
    down; one whose last epoch trails the newest seal is lagging."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    at_ms: int  # when this heartbeat was written (the peer's clock)
    interval_ms: int  # how often the peer writes one
    epoch: int  # its last committed epoch (-1: none yet)
    commit_hash: str = ""
    committed_at_ms: int = 0  # when it made that commit
    applied: int = 0  # ops applied since the peer started
    rejected: int = 0  # ops and messages rejected since the peer started
    ops_per_s: float = 0.0  # applied ops per second over the last interval
    lag_messages: int = 0  # stream messages after the last one it read
    started_ms: int = 0
    # The last config message this peer took, and why it was rejected ("" if accepted),
    # and the newest timeline segment (first_epoch, start_ms, epoch_ms, grace_ms) in force:
    # how `oplog config set` learns what became of a change.
    config_seq: int = 0
    config_rejected: str = ""
    instance: str = ""  # one run of the peer: a second peer under the same name differs
    segment: tuple[int, int, int, int] | None = None


class HashBoard:
    """One database's hash reports."""

    def __init__(self, js: JetStreamContext, topology: Topology) -> None:
        self._js = js
        self.topology = topology
        self._kv = None

    async def _bucket(self):  # type: ignore[no-untyped-def]
        if self._kv is None:
            self._kv = await key_value(self._js, self.topology.hashes_bucket, replicas=self.topology.limits.replicas)
        return self._kv

    async def report(self, peer: str, epoch: int, commit_hash: str) -> None:
        kv = await self._bucket()
        await kv.put(f"e.{epoch}.{peer}", commit_hash.encode())
        await kv.put(f"p.{peer}", str(epoch).encode())

    async def heartbeat(self, peer: str, beat: Heartbeat) -> None:
        kv = await self._bucket()
        await kv.put(f"h.{peer}", beat.model_dump_json().encode())

    async def heartbeats(self, peers: list[str]) -> dict[str, Heartbeat]:
        """``peer -> its last heartbeat`` for the peers among ``peers`` that wrote one."""
        found = await self._values({p: f"h.{p}" for p in peers})
        return {peer: Heartbeat.model_validate_json(value) for peer, value in found.items()}

    async def peers(self) -> list[str]:
        """Every peer that ever reported, including peers that are down now."""
        await self._bucket()
        return [key[2:] for key in await keys_matching(self._js, self.topology.hashes_bucket, "p.>")]

    async def reports(self, epoch: int, peers: list[str]) -> dict[str, str]:
        """``peer -> hash`` for ``epoch``, from the peers among ``peers`` that reported it."""
        found = await self._values({peer: f"e.{epoch}.{peer}" for peer in peers})
        return {peer: value.decode() for peer, value in found.items()}

    async def progress(self, peers: list[str]) -> dict[str, int]:
        """``peer -> latest epoch it reported`` for the peers among ``peers``."""
        return {peer: int(value) for peer, value in (await self._values({p: f"p.{p}" for p in peers})).items()}

    async def _values(self, keys: dict[str, str]) -> dict[str, bytes]:
        """``name -> value`` of the KV ``keys`` (``name -> key``) that hold one."""
        kv = await self._bucket()
        found: dict[str, bytes] = {}
        for name, key in keys.items():
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue
            if entry.value:
                found[name] = entry.value
        return found

    async def flag_divergence(self, peer: str, record: dict[str, object]) -> None:
        """Record, for operators and ``oplog status``, that ``peer`` diverged."""
        kv = await self._bucket()
        await kv.put(f"d.{peer}", orjson.dumps(record))

    async def clear_divergence(self, peer: str) -> None:
        kv = await self._bucket()
        await kv.delete(f"d.{peer}")

    async def divergences(self) -> dict[str, dict[str, object]]:
        """``peer -> record`` of every peer whose divergence is not repaired."""
        await self._bucket()
        keys = await keys_matching(self._js, self.topology.hashes_bucket, "d.>")
        found = await self._values({key[2:]: key for key in keys})  # a repaired peer's record is deleted
        return {peer: orjson.loads(value) for peer, value in found.items()}

    async def collect(self, last: int = 20) -> list[EpochAgreement]:
        """The reports of the ``last`` most recent epochs any peer reported."""
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        peers = sorted(k[2:] for k in keys if k.startswith("p."))
        epochs = sorted({int(k.split(".")[1]) for k in keys if k.startswith("e.")})[-last:]
        result = []
        for epoch in epochs:
            hashes: dict[str, str] = {}
            for peer in peers:
                key = f"e.{epoch}.{peer}"
                if key in keys:
                    entry = await kv.get(key)
                    hashes[peer] = (entry.value or b"").decode()
            result.append(EpochAgreement(epoch, hashes))
        return result
