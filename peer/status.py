"""``oplog status``: every peer's health and whether they agree, from the stream and the board.

:func:`assess` is the whole judgement, a pure function of what :func:`gather` read
(the hash board's reports and heartbeats, the roster, the newest seal) and the time,
so it is tested without servers. A peer is

* **up** while its heartbeat is younger than :data:`DOWN_AFTER_BEATS` of its own
  intervals (at least :data:`DOWN_AFTER_MIN_S`), else **down**;
* **lagging** when its last commit trails the newest seal by more than
  ``lag_epochs`` epochs (default :data:`LAG_EPOCHS`);
* **diverged** when it reported a divergence, or its hash for an epoch differs from
  the hash a majority of the counted peers hold.

The verdict, also the exit status: ``agree`` (0) when every counted peer is up, not
lagging, and every compared epoch has one hash; ``diverged`` (1) when hashes differ;
``degraded`` (3) when they agree but a peer is down or lagging. An unknown database,
or a database no peer ever reported for, is an error (2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from epoch.config import Timeline
from materializer.agreement.hashes import EpochAgreement, HashBoard, Heartbeat
from materializer.agreement.verdict import majority
from oplog.errors import OplogError
from oplog.topology import Topology
from peer.control import newest_seal, read_config

DOWN_AFTER_BEATS = 3
DOWN_AFTER_MIN_S = 3.0
LAG_EPOCHS = 5


class Verdict(Enum):
    AGREE = ("agree", 0)
    DIVERGED = ("diverged", 1)
    DEGRADED = ("degraded", 3)

    @property
    def exit_status(self) -> int:
        return self.value[1]

    @property
    def word(self) -> str:
        return self.value[0]


class StatusError(OplogError):
    """``oplog status`` cannot say anything: no such database, or no peer ever reported."""


@dataclass(frozen=True)
class PeerHealth:
    name: str
    counted: bool  # in the roster (or no roster declared)
    up: bool
    epoch: int | None  # last committed epoch, None if never reported
    commit_hash: str
    commit_age_s: float | None
    lag_epochs: int | None  # behind the newest seal
    lag_s: float | None  # how long ago the first epoch it lacks became due
    ops_per_s: float
    applied: int
    rejected: int
    heartbeat_age_s: float | None
    diverged: bool
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Status:
    db: str
    newest_seal: int | None
    roster: tuple[str, ...] | None
    peers: tuple[PeerHealth, ...]
    epochs: tuple[EpochAgreement, ...]
    strangers: tuple[str, ...]
    verdict: Verdict
    reasons: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "db": self.db,
            "verdict": self.verdict.word,
            "reasons": list(self.reasons),
            "newest_seal": self.newest_seal,
            "roster": list(self.roster) if self.roster is not None else None,
            "strangers": list(self.strangers),
            "peers": [p.__dict__ | {"problems": list(p.problems)} for p in self.peers],
            "epochs": [{"epoch": e.epoch, "hashes": e.hashes, "agree": e.agree} for e in self.epochs],
        }


def assess(
    db: str,
    *,
    now_ms: int,
    board_peers: list[str],
    roster: tuple[str, ...] | None,
    heartbeats: dict[str, Heartbeat],
    progress: dict[str, int],
    epochs: list[EpochAgreement],
    divergences: dict[str, dict[str, object]],
    newest_seal: int | None,
    timeline: Timeline | None,
    lag_epochs: int = LAG_EPOCHS,
) -> Status:
    """The status of database ``db`` from what :func:`gather` read (see the module docstring)."""
    if not board_peers and not heartbeats:
        raise StatusError(f"no peer has reported for database {db!r} yet; start one with `oplog serve --db {db}`")
    names = sorted(set(board_peers) | set(heartbeats) | set(roster or ()))
    counted = set(roster) if roster is not None else set(names)
    # A peer cannot commit past the newest seal; if one did, the seal read was older.
    committed = [b.epoch for n, b in heartbeats.items() if n in counted] + [e for n, e in progress.items() if n in counted]
    if committed and newest_seal is not None:
        newest_seal = max(newest_seal, *committed)
    strangers = tuple(n for n in names if n not in counted)
    # An epoch's hashes are judged among the counted peers only.
    wrong: dict[str, int] = {}
    for row in epochs:
        votes = {p: h for p, h in row.hashes.items() if p in counted}
        won = majority(votes, len(counted))
        for peer, commit_hash in votes.items():
            if (won is not None and commit_hash != won[0]) or (won is None and len(set(votes.values())) > 1):
                wrong.setdefault(peer, row.epoch)
    peers: list[PeerHealth] = []
    for name in names:
        beat = heartbeats.get(name)
        epoch = beat.epoch if beat is not None and beat.epoch >= 0 else progress.get(name)
        beat_age = (now_ms - beat.at_ms) / 1000 if beat is not None else None
        down_after = max(DOWN_AFTER_MIN_S, DOWN_AFTER_BEATS * beat.interval_ms / 1000) if beat else 0.0
        up = beat_age is not None and beat_age <= down_after
        behind = None if epoch is None or newest_seal is None else max(0, newest_seal - epoch)
        behind_s = None
        if behind and timeline is not None and epoch is not None:
            behind_s = max(0.0, (now_ms - timeline.seal_due_ms(epoch + 1)) / 1000)
        problems = []
        if not up:
            problems.append("down" if beat is not None else "no heartbeat")
        if behind is not None and behind > lag_epochs:
            problems.append(f"lagging {behind} epochs")
        diverged = name in divergences or name in wrong
        if diverged:
            at = divergences.get(name, {}).get("epoch", wrong.get(name))
            problems.append(f"diverged at epoch {at}")
        if name not in counted:
            problems.append("not in the roster: not counted")
        peers.append(
            PeerHealth(
                name=name,
                counted=name in counted,
                up=up,
                epoch=epoch,
                commit_hash=beat.commit_hash if beat is not None else "",
                commit_age_s=(now_ms - beat.committed_at_ms) / 1000 if beat is not None and beat.committed_at_ms else None,
                lag_epochs=behind,
                lag_s=behind_s,
                ops_per_s=beat.ops_per_s if beat is not None else 0.0,
                applied=beat.applied if beat is not None else 0,
                rejected=beat.rejected if beat is not None else 0,
                heartbeat_age_s=beat_age,
                diverged=diverged,
                problems=tuple(problems),
            )
        )
    reasons = tuple(f"peer {p.name}: {', '.join(p.problems)}" for p in peers if p.problems and p.counted)
    if any(p.diverged for p in peers if p.counted):
        verdict = Verdict.DIVERGED
    elif reasons:
        verdict = Verdict.DEGRADED
    else:
        verdict = Verdict.AGREE
    return Status(db, newest_seal, roster, tuple(peers), tuple(epochs), strangers, verdict, reasons)


async def gather(js: JetStreamContext, topology: Topology, *, now_ms: int, last: int = 20) -> Status:
    """Read the stream and the hash board and :func:`assess` them."""
    try:
        await js.stream_info(topology.stream)
    except NotFoundError:
        raise StatusError(
            f"no database {topology.db!r}: stream {topology.stream} does not exist; create it with "
            f"`oplog init --db {topology.db}`"
        ) from None
    config = await read_config(js, topology)
    seal = newest_seal(config)
    board = HashBoard(js, topology)
    board_peers = await board.peers()
    roster = config.roster.peers if config.roster is not None else None
    everyone = sorted(set(board_peers) | set(roster or ()))
    return assess(
        topology.db,
        now_ms=now_ms,
        board_peers=board_peers,
        roster=roster,
        heartbeats=await board.heartbeats(everyone),
        progress=await board.progress(everyone),
        epochs=await board.collect(last),
        divergences=await board.divergences(),
        newest_seal=seal,
        timeline=config.timeline,
    )
