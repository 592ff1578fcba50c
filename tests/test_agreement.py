"""The agreement judgement: who is in the minority, and verdicts that never flip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from materializer.agreement.verdict import Verdict, judge, majority


def test_a_peer_alone_against_two_agreeing_peers_is_the_minority() -> None:
    j = judge(7, "c", {"a": "H", "b": "H", "c": "X"}, known_peers=3)
    assert j.verdict is Verdict.MINORITY
    assert (j.majority_hash, j.majority_peers, j.dissenters) == ("H", ("a", "b"), ("a", "b"))
    assert "DIVERGED at epoch 7" in j.describe("c")


def test_the_majority_side_agrees_and_names_the_dissenter() -> None:
    j = judge(7, "a", {"a": "H", "b": "H", "c": "X"}, known_peers=3)
    assert (j.verdict, j.dissenters) == (Verdict.AGREED, ("c",))


def test_two_peers_that_disagree_are_a_split_never_a_repair() -> None:
    assert judge(1, "a", {"a": "H", "b": "X"}, known_peers=2).verdict is Verdict.SPLIT


def test_a_peer_that_is_down_counts_against_every_hash() -> None:
    # 2 of 5 known peers reported the same hash: not yet a majority, and it still could be.
    assert judge(1, "a", {"a": "H", "b": "H"}, known_peers=5).verdict is Verdict.PENDING
    assert judge(1, "a", {"a": "H", "b": "H", "c": "H"}, known_peers=5).verdict is Verdict.AGREED
    # 1 vs 1 vs 1 out of 4: a fourth report cannot make any hash a majority.
    assert judge(1, "a", {"a": "H", "b": "X", "c": "Y"}, known_peers=4).verdict is Verdict.SPLIT


def test_majority_needs_more_than_half_of_the_known_peers() -> None:
    assert majority({"a": "H", "b": "H"}, 4) is None
    assert majority({"a": "H", "b": "H", "c": "X"}, 4) is None
    assert majority({"a": "H", "b": "H", "c": "H"}, 4) == ("H", ("a", "b", "c"))
    assert majority({}, 3) is None


peers = st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=7, unique=True)


@given(peers=peers, data=st.data())
def test_a_decided_verdict_never_changes_when_more_reports_arrive(peers: list[str], data: st.DataObject) -> None:
    hashes = {p: data.draw(st.sampled_from(["H", "X", "Y"]), label=p) for p in peers}
    order = data.draw(st.permutations(peers), label="arrival")
    me = order[0]
    verdicts = []
    for n in range(1, len(order) + 1):
        reports = {p: hashes[p] for p in order[:n]}
        verdicts.append(judge(0, me, reports, known_peers=len(peers)).verdict)
    decided = [v for v in verdicts if v is not Verdict.PENDING]
    assert len(set(decided)) <= 1, verdicts
    if decided:  # once decided, every later check says the same
        first = verdicts.index(decided[0])
        assert set(verdicts[first:]) == {decided[0]}
    # With every report in, the verdict is final: never pending.
    final = verdicts[-1]
    assert final is not Verdict.PENDING
    counts = sorted((list(hashes.values()).count(h) for h in set(hashes.values())), reverse=True)
    if final is Verdict.SPLIT:
        assert 2 * counts[0] <= len(peers)
    else:
        assert 2 * counts[0] > len(peers)
        assert (final is Verdict.AGREED) == (2 * list(hashes.values()).count(hashes[me]) > len(peers))
