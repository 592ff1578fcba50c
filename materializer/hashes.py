"""Verification: every peer publishes ``(epoch, commit hash)``; anyone can compare.

Reports live in the KV bucket ``OPLOG_<db>_HASHES`` under ``e.<epoch>.<peer>``, and
``p.<peer>`` holds the peer's latest epoch. :func:`compare` groups them per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NoKeysError

from materializer.buckets import key_value
from oplog.topology import Topology


@dataclass(frozen=True)
class EpochAgreement:
    epoch: int
    hashes: dict[str, str]

    @property
    def agree(self) -> bool:
        return len(set(self.hashes.values())) <= 1


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
