"""Whether peers agree on an epoch: a pure judgement over hash reports.

Every peer reports ``(epoch, commit hash)``; for the epoch the contract says every
hash is the same. When they are not, the question is who is wrong. A hash wins only
with a **strict majority of every peer known to the board** (not merely of the peers
that reported so far): a verdict can then never flip when the missing reports
arrive, and a peer that is down counts against every hash, so the rule errs towards
"undecided" rather than towards repairing a healthy peer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    AGREED = "agreed"  # a strict majority of known peers confirmed my hash
    PENDING = "pending"  # not decided yet: too few reports
    MINORITY = "minority"  # a strict majority of known peers holds another hash: I diverged
    SPLIT = "split"  # reports differ and none can reach a majority any more


@dataclass(frozen=True)
class Judgement:
    epoch: int
    verdict: Verdict
    mine: str
    majority_hash: str | None
    majority_peers: tuple[str, ...]
    dissenters: tuple[str, ...]  # peers whose report differs from mine

    def describe(self, peer: str) -> str:
        if self.verdict is Verdict.MINORITY:
            return (
                f"peer {peer} DIVERGED at epoch {self.epoch}: its commit is {self.mine}, but "
                f"{', '.join(self.majority_peers)} committed {self.majority_hash}"
            )
        if self.verdict is Verdict.SPLIT:
            return (
                f"peers disagree on epoch {self.epoch} and no hash has a majority "
                f"({peer} has {self.mine}; {', '.join(self.dissenters)} differ)"
            )
        return f"epoch {self.epoch}: {self.verdict.value}"


def majority(reports: dict[str, str], known_peers: int) -> tuple[str, tuple[str, ...]] | None:
    """The hash held by a strict majority of ``known_peers`` peers, with its holders."""
    if not reports:
        return None
    (top, count), *_ = Counter(reports.values()).most_common(1)
    if 2 * count <= max(known_peers, len(reports)):
        return None
    return top, tuple(sorted(p for p, h in reports.items() if h == top))


def judge(
    epoch: int, peer: str, reports: dict[str, str], known_peers: int, *, counted: frozenset[str] | None = None
) -> Judgement:
    """Judge ``peer``'s report for ``epoch`` against everyone's (``reports`` includes it).

    ``known_peers`` is how many peers count; a peer that never reported this epoch
    still counts, so a majority is final. ``counted``, if given, is the roster: only
    its members' reports count toward a majority (``peer`` itself too only if it is a
    member); the others are still named as dissenters.
    """
    mine = reports[peer]
    votes = reports if counted is None else {p: h for p, h in reports.items() if p in counted}
    known = max(known_peers, len(votes))
    dissenters = tuple(sorted(p for p, h in reports.items() if h != mine))
    won = majority(votes, known)
    if won is not None:
        top, holders = won
        verdict = Verdict.AGREED if top == mine else Verdict.MINORITY
        return Judgement(epoch, verdict, mine, top, holders, dissenters)
    # No majority yet: can one still form from the peers that have not reported?
    counts = Counter(votes.values())
    missing = known - len(votes)
    if missing > 0 and not counts:
        return Judgement(epoch, Verdict.PENDING, mine, None, (), dissenters)
    if any(2 * (c + missing) > known for c in counts.values()):
        return Judgement(epoch, Verdict.PENDING, mine, None, (), dissenters)
    return Judgement(epoch, Verdict.SPLIT, mine, None, (), dissenters)
