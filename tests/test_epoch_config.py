"""Epoch windows under a config history: arithmetic, changes, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epoch.config import ConfigChange, DatabaseConfig, Segment, Timeline, check_change
from epoch.errors import ConfigRejected

ORIGIN = 10_000
CONFIG = DatabaseConfig(db="t", origin_ms=ORIGIN, epoch_ms=1_000, grace_ms=500, max_future_epochs=5)


def test_epochs_are_windows_counted_from_the_origin_and_negative_before_it() -> None:
    timeline = Timeline.from_config(CONFIG)

    # Epoch 0 is [origin, origin + L); the end is exclusive.
    assert timeline.epoch_of(10_000) == 0
    assert timeline.epoch_of(10_999) == 0
    assert timeline.epoch_of(11_000) == 1
    assert (timeline.start_ms(0), timeline.end_ms(0)) == (10_000, 11_000)

    # Before the origin the first segment extends backwards, flooring (not truncating).
    assert timeline.epoch_of(9_999) == -1
    assert timeline.epoch_of(9_000) == -1
    assert timeline.epoch_of(8_999) == -2
    assert timeline.epoch_of(0) == -10
    assert (timeline.start_ms(-1), timeline.end_ms(-1)) == (9_000, 10_000)
    assert (timeline.start_ms(-10), timeline.end_ms(-10)) == (0, 1_000)


def test_an_epoch_becomes_sealable_once_its_end_plus_grace_has_passed() -> None:
    timeline = Timeline.from_config(CONFIG)

    assert timeline.seal_due_ms(0) == 11_500
    assert timeline.seal_due_ms(-1) == 10_500

    # Inside epoch 1's window, epoch 0 waits for its grace.
    assert timeline.last_sealable(11_499) == -1
    assert timeline.last_sealable(11_500) == 0
    assert timeline.last_sealable(12_499) == 0
    assert timeline.last_sealable(12_500) == 1
    # Before the origin too.
    assert timeline.last_sealable(9_000) == -3


def test_a_change_starts_at_the_previous_epochs_end_so_no_boundary_jumps() -> None:
    timeline = Timeline.from_config(CONFIG)

    # From epoch 5 on, epochs last 250 ms with 100 ms grace.
    changed = timeline.with_change(ConfigChange(effective_epoch=5, epoch_ms=250, grace_ms=100))

    assert changed.segments == (Segment(0, 10_000, 1_000, 500), Segment(5, 15_000, 250, 100))
    # Epochs before the change keep their windows, graces and numbers.
    for k in range(-3, 5):
        assert (changed.start_ms(k), changed.end_ms(k)) == (timeline.start_ms(k), timeline.end_ms(k))
    assert changed.seal_due_ms(4) == 15_500
    # The new segment begins exactly at the end of epoch 4.
    assert changed.end_ms(4) == changed.start_ms(5) == 15_000
    assert (changed.start_ms(6), changed.end_ms(6)) == (15_250, 15_500)
    assert changed.epoch_of(14_999) == 4
    assert changed.epoch_of(15_000) == 5
    assert changed.epoch_of(15_249) == 5
    assert changed.epoch_of(15_250) == 6
    assert changed.seal_due_ms(5) == 15_350


def test_a_shorter_grace_after_a_change_does_not_seal_the_previous_epoch_early() -> None:
    # Epoch 5 (250 ms + 100 ms grace) is due at 15_350, before epoch 4 (grace 500) at 15_500.
    changed = Timeline.from_config(CONFIG).with_change(ConfigChange(effective_epoch=5, epoch_ms=250, grace_ms=100))

    # Sealing 5 would close 4 as well, so nothing past 3 is sealable until 4's grace ends.
    assert changed.last_sealable(15_349) == 3
    assert changed.last_sealable(15_400) == 3
    assert changed.last_sealable(15_499) == 3
    # Once 4 is due, 5 (already due) comes with it; 6 follows at 15_500 + 100.
    assert changed.last_sealable(15_500) == 5
    assert changed.last_sealable(15_599) == 5
    assert changed.last_sealable(15_600) == 6


def test_check_change_refuses_a_change_ops_may_already_be_assigned_past() -> None:
    timeline = Timeline.from_config(CONFIG)

    # Sealed through 3 with max_future_epochs 5, ops may be assigned up to epoch 8 now
    # and up to 9 once seal 4 lands, so epoch 10 is the earliest a change may start.
    with pytest.raises(ConfigRejected, match="effective at epoch 9 is too soon: .* up to epoch 9; choose epoch 10"):
        check_change(ConfigChange(effective_epoch=9, epoch_ms=500, grace_ms=0), timeline, 3, CONFIG)
    check_change(ConfigChange(effective_epoch=10, epoch_ms=500, grace_ms=0), timeline, 3, CONFIG)

    # A later change must come after the last one.
    changed = timeline.with_change(ConfigChange(effective_epoch=20, epoch_ms=500, grace_ms=0))
    with pytest.raises(
        ConfigRejected, match=r"effective at epoch 20 does not come after the previous change \(epoch 20\)"
    ):
        check_change(ConfigChange(effective_epoch=20, epoch_ms=250, grace_ms=0), changed, 3, CONFIG)
    check_change(ConfigChange(effective_epoch=21, epoch_ms=250, grace_ms=0), changed, 3, CONFIG)


def test_a_timeline_needs_a_segment() -> None:
    with pytest.raises(ValueError, match="at least one segment"):
        Timeline(())


changes = st.lists(
    st.tuples(st.integers(1, 6), st.integers(10, 3_000), st.integers(0, 4_000)),
    max_size=6,
)


def build(history: list[tuple[int, int, int]]) -> tuple[Timeline, list[Timeline]]:
    """Apply changes with increasing effective epochs (gaps from ``history``)."""
    timeline = Timeline.from_config(CONFIG)
    steps = [timeline]
    effective = 0
    for gap, epoch_ms, grace_ms in history:
        effective += gap
        timeline = timeline.with_change(ConfigChange(effective_epoch=effective, epoch_ms=epoch_ms, grace_ms=grace_ms))
        steps.append(timeline)
    return timeline, steps


@settings(max_examples=200, deadline=None)
@given(changes, st.lists(st.integers(-20_000, 60_000), max_size=20))
def test_windows_tile_the_line_under_any_change_history(history: list[tuple[int, int, int]], walls: list[int]) -> None:
    timeline, steps = build(history)
    last_first = timeline.segments[-1].first_epoch

    # Consecutive windows touch: no gap, no overlap, each non-empty and of its segment's length.
    for k in range(-5, last_first + 5):
        assert timeline.end_ms(k) == timeline.start_ms(k + 1)
        segment = timeline._segment_of_epoch(k)
        assert timeline.end_ms(k) - timeline.start_ms(k) == segment.epoch_ms
        assert timeline.epoch_of(timeline.start_ms(k)) == k
        assert timeline.epoch_of(timeline.end_ms(k) - 1) == k

    # Any instant lies in exactly the window of its epoch.
    for wall in walls:
        k = timeline.epoch_of(wall)
        assert timeline.start_ms(k) <= wall < timeline.end_ms(k)

    # Each change left every earlier epoch's window where it was.
    for before, after in zip(steps, steps[1:], strict=False):
        for k in range(-3, after.segments[-1].first_epoch):
            assert (after.start_ms(k), after.end_ms(k), after.seal_due_ms(k)) == (
                before.start_ms(k),
                before.end_ms(k),
                before.seal_due_ms(k),
            )


@settings(max_examples=200, deadline=None)
@given(changes, st.integers(-3, 40), st.integers(-600, 600))
def test_last_sealable_is_the_highest_epoch_with_every_seal_up_to_it_due(
    history: list[tuple[int, int, int]], near: int, delta: int
) -> None:
    timeline, _ = build(history)
    # Look around the moment some epoch falls due, where the edge cases are.
    now = timeline.seal_due_ms(near) + delta

    k = timeline.last_sealable(now)

    # Every epoch up to k is due (checked down past the origin), and k + 1 is not.
    for j in range(min(k, -12) - 2, k + 1):
        assert timeline.seal_due_ms(j) <= now
    assert timeline.seal_due_ms(k + 1) > now
