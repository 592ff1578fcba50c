"""When a commit gets a snapshot: whenever it closes a multiple of ``every_epochs``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from materializer.bootstrap.snapshots import SnapshotPolicy


@given(every=st.integers(1, 12), cuts=st.sets(st.integers(0, 200), min_size=1))
def test_a_commit_snapshots_exactly_when_it_closes_a_multiple(every: int, cuts: set[int]) -> None:
    # A run of seals: each commit closes the epochs after the previous seal up to its own.
    policy = SnapshotPolicy(every_epochs=every)
    ranges, first = [], 0
    for epoch in sorted(cuts):
        ranges.append((first, epoch))
        first = epoch + 1
    multiples = range(0, max(cuts) + 1, every)
    for first, last in ranges:
        assert policy.due(first, last) == any(first <= m <= last for m in multiples)
    # So no multiple is ever skipped: the one commit that closes it snapshots.
    for m in multiples:
        assert [policy.due(f, last) for f, last in ranges if f <= m <= last] == [True]


def test_a_commit_of_one_epoch_snapshots_only_on_a_multiple() -> None:
    policy = SnapshotPolicy(every_epochs=100)
    assert [e for e in range(0, 301) if policy.due(e, e)] == [0, 100, 200, 300]
