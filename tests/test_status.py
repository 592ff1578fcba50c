"""``oplog status``: a pure assessment of peers' heartbeats and hashes, then the real command."""

from __future__ import annotations

import pytest

from epoch.config import Timeline
from materializer.agreement.hashes import EpochAgreement, Heartbeat
from peer.status import StatusError, Verdict, assess
from tests.support import config

NOW = 1_700_000_100_000  # epoch 100 of tests.support.config()'s timeline
TIMELINE = Timeline.from_config(config())


def beat(epoch: int, age_s: float = 0.5, **fields: object) -> Heartbeat:
    values: dict[str, object] = {
        "at_ms": NOW - int(age_s * 1000), "interval_ms": 1000, "epoch": epoch, "commit_hash": f"h{epoch}",
        "committed_at_ms": NOW - 1500, "applied": 10, "rejected": 1, "ops_per_s": 5.0,
    }  # fmt: skip
    values.update(fields)
    return Heartbeat.model_validate(values)


def status(**overrides: object):  # type: ignore[no-untyped-def]
    inputs: dict[str, object] = {
        "now_ms": NOW,
        "board_peers": ["a", "b", "c"],
        "roster": None,
        "heartbeats": {name: beat(98) for name in "abc"},
        "progress": dict.fromkeys("abc", 98),
        "epochs": [EpochAgreement(98, dict.fromkeys("abc", "x"))],
        "divergences": {},
        "newest_seal": 98,
        "timeline": TIMELINE,
    }
    inputs.update(overrides)
    return assess("t", **inputs)  # type: ignore[arg-type]


def test_every_peer_up_current_and_agreeing_is_agree() -> None:
    result = status()
    assert result.verdict is Verdict.AGREE and result.verdict.exit_status == 0
    assert [(p.name, p.up, p.epoch, p.lag_epochs, p.problems) for p in result.peers] == [
        ("a", True, 98, 0, ()), ("b", True, 98, 0, ()), ("c", True, 98, 0, ()),
    ]  # fmt: skip
    assert result.peers[0].commit_age_s == 1.5 and result.peers[0].ops_per_s == 5.0


def test_a_peer_whose_heartbeat_stopped_is_down_and_the_verdict_degraded() -> None:
    result = status(heartbeats={"a": beat(98), "b": beat(98), "c": beat(90, age_s=3.5)})
    assert result.verdict is Verdict.DEGRADED and result.verdict.exit_status == 3
    assert result.reasons == ("peer c: down, lagging 8 epochs",)
    c = result.peers[2]
    assert not c.up and c.lag_epochs == 8 and c.lag_s == pytest.approx(100 - 92)  # epoch 91 was due at its end, second 92


def test_a_peer_that_never_wrote_a_heartbeat_is_not_up() -> None:
    result = status(heartbeats={"a": beat(98), "b": beat(98)})
    assert result.verdict is Verdict.DEGRADED and result.reasons == ("peer c: no heartbeat",)


def test_different_hashes_are_diverged_and_name_the_minority() -> None:
    epochs = [EpochAgreement(97, dict.fromkeys("abc", "x")), EpochAgreement(98, {"a": "x", "b": "x", "c": "y"})]
    result = status(epochs=epochs)
    assert result.verdict is Verdict.DIVERGED and result.verdict.exit_status == 1
    assert result.reasons == ("peer c: diverged at epoch 98",)


def test_names_outside_the_roster_are_shown_but_change_nothing() -> None:
    forged = {f"x{i}": beat(98, commit_hash="forged") for i in range(4)}
    epochs = [EpochAgreement(98, {**dict.fromkeys("abc", "x"), **dict.fromkeys(forged, "forged")})]
    honest = {name: beat(98) for name in "abc"}
    result = status(
        board_peers=["a", "b", "c", *forged], roster=("a", "b", "c"), heartbeats={**honest, **forged}, epochs=epochs
    )
    assert result.verdict is Verdict.AGREE
    assert result.strangers == ("x0", "x1", "x2", "x3")
    assert [p.problems for p in result.peers if not p.counted] == [("not in the roster: not counted",)] * 4


def test_a_roster_member_that_never_started_is_degraded() -> None:
    result = status(roster=("a", "b", "c", "d"))
    assert result.verdict is Verdict.DEGRADED and result.reasons == ("peer d: no heartbeat",)


def test_a_database_no_peer_reported_for_is_an_error() -> None:
    with pytest.raises(StatusError, match="no peer has reported for database 't' yet"):
        status(board_peers=[], heartbeats={}, progress={}, epochs=[])
