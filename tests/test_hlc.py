"""The hybrid logical clock: send and receive rules under an injected wall clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oplog.errors import ClockError
from oplog.hlc import HLC, MAX_LOGICAL, HybridLogicalClock


class ManualClock:
    """A wall clock the test sets by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make_clock(ms: int = 1_000, *, max_offset_ms: int = 100) -> tuple[ManualClock, HybridLogicalClock]:
    wall = ManualClock(ms)
    return wall, HybridLogicalClock("n1", now_ms=wall, max_offset_ms=max_offset_ms)


def test_send_rule_counts_up_while_the_wall_clock_stands_still_or_goes_back() -> None:
    wall, clock = make_clock(1_000)

    # The first stamp takes the wall time with a zero counter.
    assert clock.now() == HLC(1_000, 0, "n1")
    # Within the same millisecond the counter breaks the tie.
    assert clock.now() == HLC(1_000, 1, "n1")

    # The wall clock steps back (NTP): the HLC keeps its wall time and counts on.
    wall.ms = 900
    assert clock.now() == HLC(1_000, 2, "n1")
    assert clock.now() == HLC(1_000, 3, "n1")

    # Once physical time passes the HLC again, the counter resets.
    wall.ms = 1_001
    assert clock.now() == HLC(1_001, 0, "n1")
    assert clock.last == HLC(1_001, 0, "n1")


def test_receive_adopts_a_remote_stamp_ahead_of_us_and_stays_above_it() -> None:
    wall, clock = make_clock(1_000, max_offset_ms=100)
    clock.now()

    # A remote stamp 50 ms ahead: its wall time is adopted, the counter goes one past it.
    assert clock.receive((1_050, 7, "n2")) == HLC(1_050, 8, "n1")
    # Local stamps then continue from there even though our wall clock is behind.
    assert clock.now() == HLC(1_050, 9, "n1")

    # A remote stamp with the same wall time: the larger counter plus one.
    assert clock.receive(HLC(1_050, 20, "n3")) == HLC(1_050, 21, "n1")
    assert clock.receive(HLC(1_050, 3, "n3")) == HLC(1_050, 22, "n1")

    # A remote stamp behind us only bumps our own counter.
    assert clock.receive(HLC(1_010, 99, "n2")) == HLC(1_050, 23, "n1")

    # Physical time ahead of both: the counter resets.
    wall.ms = 2_000
    assert clock.receive(HLC(1_500, 4, "n2")) == HLC(2_000, 0, "n1")


def test_receive_refuses_a_remote_stamp_beyond_the_max_offset_and_leaves_the_clock_unchanged() -> None:
    wall, clock = make_clock(1_000, max_offset_ms=100)
    clock.now()
    clock.now()
    before = clock.last

    # 101 ms ahead of our physical clock is one ms too many.
    with pytest.raises(
        ClockError, match=r"remote clock 1101 is 101 ms ahead of this node's clock \(max offset 100 ms\)"
    ):
        clock.receive((1_101, 0, "n2"))
    assert clock.last == before == HLC(1_000, 1, "n1")
    assert clock.now() == HLC(1_000, 2, "n1")

    # Exactly the max offset is still accepted.
    assert clock.receive((1_100, 0, "n2")) == HLC(1_100, 1, "n1")


def test_check_stamp_refuses_an_explicit_stamp_too_far_ahead() -> None:
    wall, clock = make_clock(5_000, max_offset_ms=100)

    # Stamps in the past or up to the offset ahead pass, and do not move the clock.
    clock.check_stamp((1, 0, "x"))
    clock.check_stamp(HLC(5_100, 0, "x"))
    assert clock.last == HLC(0, 0, "n1")

    with pytest.raises(ClockError, match=r"timestamp 5101 is 101 ms ahead"):
        clock.check_stamp(HLC(5_101, 0, "x"))

    # The check reads the wall clock at call time.
    wall.ms = 5_001
    clock.check_stamp(HLC(5_101, 0, "x"))


def test_the_logical_counter_overflow_is_refused() -> None:
    wall, clock = make_clock(1_000)

    # A remote stamp at the ceiling would need a counter past it: refused, clock unchanged.
    with pytest.raises(ClockError, match="logical counter overflow"):
        clock.receive((1_000, MAX_LOGICAL, "n2"))
    assert clock.last == HLC(0, 0, "n1")

    # One below the ceiling is adopted; the next local stamp in the same ms overflows.
    assert clock.receive((1_000, MAX_LOGICAL - 1, "n2")) == HLC(1_000, MAX_LOGICAL, "n1")
    with pytest.raises(ClockError, match="logical counter overflow"):
        clock.now()
    assert clock.last == HLC(1_000, MAX_LOGICAL, "n1")

    # When the wall clock moves on, stamping works again.
    wall.ms = 1_001
    assert clock.now() == HLC(1_001, 0, "n1")


def test_a_clock_needs_a_node_name() -> None:
    with pytest.raises(ClockError, match="non-empty node name"):
        HybridLogicalClock("")


steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-300, 300)),
        st.tuples(st.just("now"), st.just(0)),
        # A remote wall time relative to our physical clock, some beyond the max offset.
        st.tuples(st.just("receive"), st.integers(-500, 150), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_interleaving_of_now_and_receive_yields_strictly_increasing_stamps(
    script: list[tuple[str, int] | tuple[str, int, int]],
) -> None:
    wall, clock = make_clock(10_000, max_offset_ms=100)
    previous = clock.last
    for step in script:
        if step[0] == "tick":
            wall.ms += step[1]
            continue
        if step[0] == "now":
            stamp = clock.now()
        else:
            remote = HLC(wall.ms + step[1], step[2], "n2")
            if step[1] > clock.max_offset_ms:
                # Refused, and nothing changed.
                with pytest.raises(ClockError):
                    clock.receive(remote)
                assert clock.last == previous
                continue
            stamp = clock.receive(remote)
            # A received stamp is above the remote one too.
            assert stamp[:2] > remote[:2]
        assert stamp[:2] > previous[:2]
        assert stamp.wall_ms >= wall.ms
        assert stamp == clock.last
        previous = stamp
