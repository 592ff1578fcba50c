"""Result rows of the chaos suite: pure functions over what peers' databases hold.

A :class:`PeerLedger` is what one peer's own database says after a scenario;
:func:`build_row` checks the ledgers of all peers against the acknowledged ops and
the scenario's :class:`Expectation` and names every broken promise; :func:`format_table`
prints the rows. Nothing here touches NATS or a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TABLE = "users"  # the table every chaos op upserts into


@dataclass(frozen=True)
class PeerLedger:
    """What one peer's own database says after a scenario."""

    name: str
    applied: int  # SUM(oplog_epochs.applied)
    rejected: int  # SUM(oplog_epochs.rejected)
    rejection_rows: int  # COUNT(*) of oplog_rejections: must equal ``rejected``
    duplicates: int  # SUM(oplog_epochs.duplicates): re-sent copies dropped by op id
    late: int  # SUM(oplog_epochs.late): ops applied after their own epoch was sealed
    hashes: Mapping[int, str]  # epoch -> commit hash (Backend.epoch_hashes)
    rejections: Mapping[str | None, str]  # op id -> reason
    rows: Mapping[str, tuple[Any, ...]]  # users: id -> (name, score)


@dataclass(frozen=True)
class Comparison:
    """Epoch hashes of several peers, compared epoch by epoch."""

    compared: int
    disagreeing: tuple[int, ...]


def compare_hashes(hashes: Mapping[str, Mapping[int, str]]) -> Comparison:
    """Compare every epoch up to the lowest peer's newest one.

    An epoch counts as a disagreement if the peers' hashes differ or if some peer lacks
    it although that peer committed later epochs (a skipped commit is a divergence too).
    """
    if not hashes or any(not h for h in hashes.values()):
        return Comparison(0, ())
    horizon = min(max(h) for h in hashes.values())
    epochs = sorted({e for h in hashes.values() for e in h if e <= horizon})
    disagreeing = tuple(
        e for e in epochs if any(e not in h for h in hashes.values()) or len({h[e] for h in hashes.values()}) != 1
    )
    return Comparison(len(epochs), disagreeing)


@dataclass(frozen=True)
class Expectation:
    """What a scenario's ops must end as, beyond "acked == applied + rejected".

    ``rejections``: the exact op id -> reason map every peer must record (None: none at
    all). ``late``: how many applied ops every peer must count as late (None: any).
    ``min_epochs``: fewest epoch commits to compare.
    """

    rejections: Mapping[str, str] | None = None
    late: int | None = None
    min_epochs: int = 1


@dataclass(frozen=True)
class ResultRow:
    """One scenario's outcome: the table's columns, what was injected, and what failed."""

    scenario: str
    ops_acked: int
    ops_applied: int
    ops_rejected: int
    epochs_compared: int
    disagreements: int
    seconds: float
    injected: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    peers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def explain(self) -> str:
        """A multi-line account for a failing test or the console."""
        lines = [
            f"{self.scenario}: {'ok' if self.ok else 'FAILED'} ({self.seconds:.1f} s)",
            f"  injected: {self.injected}",
        ]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        lines += [f"  peer {name}: {counts}" for name, counts in self.peers.items()]
        lines += [f"  FAILURE: {f}" for f in self.failures]
        return "\n".join(lines)


def build_row(
    scenario: str,
    *,
    acked: Mapping[str, tuple[Any, ...]],
    ledgers: Sequence[PeerLedger],
    seconds: float,
    injected: str,
    expect: Expectation = Expectation(),
    facts: Mapping[str, Any] | None = None,
    failures: Iterable[str] = (),
) -> ResultRow:
    """Check the ledgers against what was acknowledged (op id -> expected row) and
    against ``expect``; every broken promise becomes a failure string."""
    problems = list(failures)
    if not ledgers:
        problems.append("no peer database could be read")
    comparison = compare_hashes({led.name: led.hashes for led in ledgers})
    if comparison.disagreeing:
        problems.append(f"peers disagree on epochs {list(comparison.disagreeing)[:10]}")
    if ledgers and comparison.compared < expect.min_epochs:
        problems.append(f"only {comparison.compared} epochs compared; expected at least {expect.min_epochs}")
    acked_ids = set(acked)
    for led in ledgers:
        who = f"peer {led.name}"
        if led.applied + led.rejected != len(acked):
            problems.append(
                f"{who}: acked {len(acked)} != applied {led.applied} + rejected {led.rejected} "
                f"({led.applied + led.rejected - len(acked):+d})"
            )
        if led.rejection_rows != led.rejected:
            problems.append(f"{who}: {led.rejection_rows} rejection rows but oplog_epochs counts {led.rejected}")
        strangers = sorted(str(op_id) for op_id in led.rejections if op_id not in acked_ids)[:5]
        if strangers:
            problems.append(f"{who}: rejected ops nobody was acked for: {strangers}")
        wanted = {op_id: row for op_id, row in acked.items() if op_id not in led.rejections}
        if dict(led.rows) != wanted:
            missing = sorted(set(wanted) - set(led.rows))[:5]
            extra = sorted(set(led.rows) - set(wanted))[:5]
            wrong = sorted(k for k in set(wanted) & set(led.rows) if wanted[k] != led.rows[k])[:5]
            problems.append(
                f"{who}: {TABLE} rows differ from the acked ops: missing {missing}, extra {extra}, wrong {wrong}"
            )
        got = {str(op_id): reason for op_id, reason in led.rejections.items()}
        wanted_rejections = dict(expect.rejections or {})
        if got != wanted_rejections:
            diff = sorted(
                (op_id, got.get(op_id), wanted_rejections.get(op_id))
                for op_id in set(got) | set(wanted_rejections)
                if got.get(op_id) != wanted_rejections.get(op_id)
            )
            problems.append(f"{who}: rejections (op, got, expected) differ: {diff[:5]} ({len(diff)} in all)")
        if expect.late is not None and led.late != expect.late:
            problems.append(f"{who}: {led.late} late ops applied; expected {expect.late}")
    if len({(led.applied, led.rejected) for led in ledgers}) > 1:
        problems.append("peers counted different applied/rejected totals")
    return ResultRow(
        scenario=scenario,
        ops_acked=len(acked),
        ops_applied=min((led.applied for led in ledgers), default=0),
        ops_rejected=min((led.rejected for led in ledgers), default=0),
        epochs_compared=comparison.compared,
        disagreements=len(comparison.disagreeing),
        seconds=round(seconds, 1),
        injected=injected,
        facts=dict(facts or {}),
        peers={
            led.name: {"applied": led.applied, "rejected": led.rejected, "duplicates": led.duplicates, "late": led.late}
            for led in ledgers
        },
        failures=tuple(problems),
    )


def failed_row(
    scenario: str, seconds: float, injected: str, error: BaseException, facts: Mapping[str, Any]
) -> ResultRow:
    """The row of a scenario that could not finish."""
    return ResultRow(scenario, 0, 0, 0, 0, 0, round(seconds, 1), injected, dict(facts), {}, (f"{error!r}",))


COLUMNS = ("scenario", "ops acked", "applied", "rejected", "epochs compared", "disagreements", "seconds", "ok")


def format_table(rows: Sequence[ResultRow]) -> str:
    """The result rows as an aligned text table."""
    cells = [COLUMNS] + [
        (
            r.scenario,
            str(r.ops_acked),
            str(r.ops_applied),
            str(r.ops_rejected),
            str(r.epochs_compared),
            str(r.disagreements),
            f"{r.seconds:.1f}",
            "yes" if r.ok else "NO",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Outcome:
    """What a scenario hands back to the runner to build its row from."""

    acked: dict[str, tuple[Any, ...]]
    ledgers: list[PeerLedger]
    expect: Expectation = Expectation()
    facts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
