"""The pure parts of ``oplog bench --only sustain``: the criterion, the lags, the options, the rows.

Nothing here starts a peer or times anything; the measurement itself runs only when named.
"""

from __future__ import annotations

import argparse
import json

import pytest

from devtools.bench import sustain
from devtools.bench.options import ALL_MEASUREMENTS, FULL, MEASUREMENTS, QUICK, add_arguments, sizes_from
from devtools.bench.report import render, rows_of


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_bound_is_one_second_or_two_epochs() -> None:
    assert sustain.lag_bound_ms(100) == 1000
    assert sustain.lag_bound_ms(500) == 1000
    assert sustain.lag_bound_ms(1000) == 2000


def test_steady_lags_within_the_bound_sustain() -> None:
    v = sustain.judge(100, [80.0, 120.0, 90.0, 300.0, 110.0, 95.0, 100.0, 130.0], agree=True)
    assert v.sustained and v.why == ""
    assert v.bound_ms == 1000
    assert v.p50_ms == 100.0 and v.p99_ms == 300.0
    assert v.second_half_p99_ms == 130.0  # the early 300 ms is not in the second half
    assert v.last_ms == 130.0
    assert v.growth_ms_per_s is not None and abs(v.growth_ms_per_s) < sustain.MAX_GROWTH_MS_PER_S


def test_lag_growth_is_the_slope_of_lag_over_run_time() -> None:
    assert sustain.lag_growth(100, [70.0] * 10) == 0.0
    assert sustain.lag_growth(100, [50.0 + 10 * k for k in range(10)]) == pytest.approx(100.0)  # 10 ms more per 0.1 s
    assert sustain.lag_growth(1000, [None, 100.0, None, 300.0]) == pytest.approx(100.0)  # over the committed epochs
    assert sustain.lag_growth(1000, [100.0]) is None


def test_a_lag_that_keeps_growing_fails_even_below_the_bound() -> None:
    creeping = [50.0 + 6 * k for k in range(100)]  # 100 ms epochs: 60 ms more lag per second, at most 644 ms
    v = sustain.judge(100, creeping, agree=True)
    assert v.second_half_p99_ms is not None and v.second_half_p99_ms < v.bound_ms
    assert not v.sustained and v.why == "lag grew 60 ms/s > 50"


def test_a_lag_that_grows_past_the_bound_does_not_sustain() -> None:
    growing = [100.0 * k for k in range(1, 21)]  # the peers fall 100 ms further behind each epoch
    v = sustain.judge(250, growing, agree=True)
    assert not v.sustained
    assert v.second_half_p99_ms == 2000.0 and "second-half p99" in v.why


def test_the_last_epoch_must_be_within_the_bound_too() -> None:
    lags: list[float | None] = [50.0] * 299 + [5000.0]  # one late epoch hides under a p99 of 150 samples
    v = sustain.judge(100, lags, agree=True)
    assert v.second_half_p99_ms == 50.0
    assert not v.sustained and v.why.startswith("last epoch")


def test_an_epoch_not_committed_by_every_peer_fails() -> None:
    v = sustain.judge(500, [100.0, 110.0, None, 120.0, 100.0], agree=True)
    assert not v.sustained and v.why == "1 of 5 epochs not committed by all peers"
    assert v.p50_ms == 100.0  # over the committed ones


def test_disagreeing_hashes_fail() -> None:
    assert sustain.judge(500, [100.0] * 6, agree=False).why == "peers disagree"


def test_too_short_a_run_fails() -> None:
    v = sustain.judge(1000, [100.0] * (sustain.MIN_EPOCHS - 1), agree=True)
    assert not v.sustained and "epochs measured" in v.why
    assert not sustain.judge(1000, [], agree=True).sustained


def test_each_epoch_counts_from_the_first_commit_all_peers_reported_at_or_after_it() -> None:
    due = {e: 1000.0 * e for e in range(2, 8)}
    reports = {
        3: {"a": (3100.0, "h3"), "b": (3200.0, "h3"), "c": (3150.0, "h3")},  # closes epochs 2 and 3
        4: {"a": (4100.0, "h4"), "b": (4100.0, "h4")},  # only 2 of 3 peers: not committed yet
        5: {"a": (5300.0, "h5"), "b": (5050.0, "h5"), "c": (5100.0, "h5")},
    }
    assert sustain.epoch_lags(range(2, 8), due, reports, 3) == [1200.0, 200.0, 1300.0, 300.0, None, None]
    assert sustain.disagreements(reports) == []
    reports[5]["c"] = (5100.0, "other")
    assert sustain.disagreements(reports) == [5]


def test_peer_figures_are_differences_between_scrapes() -> None:
    before = {"oplog_epoch_commit_seconds_sum": 1.0, "oplog_epoch_commit_seconds_count": 10.0,
              "oplog_ops_late_total": 2.0}  # fmt: skip
    after = {"oplog_epoch_commit_seconds_sum": 3.0, "oplog_epoch_commit_seconds_count": 30.0,
             "oplog_seal_to_commit_seconds_sum": 1.5, "oplog_seal_to_commit_seconds_count": 20.0,
             "oplog_ops_late_total": 7.0}  # fmt: skip
    got = sustain.peer_figures(before, after)
    assert got["commit_ms_mean"] == 100.0
    assert got["due_to_commit_ms_mean"] == 75.0
    assert got["late_ops"] == 5.0
    assert sustain.peer_figures({}, {})["commit_ms_mean"] is None  # an endpoint that did not answer


def test_sustain_runs_only_when_named() -> None:
    assert "sustain" in ALL_MEASUREMENTS and "sustain" not in MEASUREMENTS
    assert "sustain" not in _args().only.split(",")


def test_sustain_sizes_and_flags() -> None:
    assert FULL.sustain_epoch_ms == [1000, 500, 250, 100] and FULL.sustain_seconds == 20
    assert QUICK.sustain_epoch_ms == [500, 100] and QUICK.sustain_seconds == 8
    assert sizes_from(_args()).sustain_rate == 10_000 and sizes_from(_args()).sustain_grace_ms == 500
    s = sizes_from(_args("--quick", "--sustain-epoch-ms", "1000,500,250", "--sustain-seconds", "5.5",
                         "--sustain-rate", "2_000", "--sustain-grace-ms", "100"))  # fmt: skip
    assert s.sustain_epoch_ms == [1000, 500, 250]
    assert (s.sustain_seconds, s.sustain_rate, s.sustain_grace_ms) == (5.5, 2000, 100)
    assert QUICK.sustain_epoch_ms == [500, 100]  # the defaults were copied, not changed


def _run(epoch_ms: int, lags: list[float | None]) -> dict[str, object]:
    v = sustain.judge(epoch_ms, lags, agree=True)
    return {"epoch_ms": epoch_ms, "ops_per_s": 9990.0, "epochs": len(lags), "commits": len(lags),
            "epochs_committed": sum(x is not None for x in lags), "agree": True, **v.__dict__,
            "max_growth_ms_per_s": sustain.MAX_GROWTH_MS_PER_S}  # fmt: skip


def test_rows_name_the_shortest_length_sustained_and_each_run() -> None:
    result = {"rate_ops_per_s": 10_000, "seconds": 8.0, "grace_ms": 500, "peers": 3,
              "500": _run(500, [200.0] * 10), "100": _run(100, [100.0 * k for k in range(40)]),
              "50": {"epoch_ms": 50, "error": "RuntimeError: peer s1 exited 1:\nTraceback"},
              "shortest_sustained_ms": 500}  # fmt: skip
    json.dumps(result)
    table = render(rows_of({"sustain": result}))
    lines = table.splitlines()
    assert "shortest epoch" in lines[2] and "500 ms" in lines[2] and "of 500, 100, 50 ms, grace 500 ms" in lines[2]
    assert "epoch 500 ms, 8 s: 10/10 epochs in 10 commits" in lines[3] and lines[3].endswith("met")
    assert "lag growth +0 ms/s" in lines[3] and "growth <=50 ms/s" in lines[3]
    assert "epoch 100 ms" in lines[4] and lines[4].endswith("MISSED") and "second-half p99 3900 ms" in lines[4]
    assert "epoch 50 ms, 8 s: ERROR" in lines[5] and "peer s1 exited 1:" in lines[5]
    none = render(rows_of({"sustain": {**result, "shortest_sustained_ms": None}}))
    assert "shortest epoch" in none and "  none  " in none
