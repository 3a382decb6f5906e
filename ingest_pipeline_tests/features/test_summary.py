"""What the catalogue shows of a silver hour (features/summary.py): numbers, nulls, preview."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ingest_pipeline.features import DEFAULT_SPEC, SyncStats
from ingest_pipeline.features.spec import BOOK_TABLE, KLINE_TABLE, TRADE_TABLE, TRAINING_TABLE
from ingest_pipeline.features.summary import (
    hour_numbers,
    hourly_realized_vol,
    jsonable,
    null_counts,
    preview_markdown,
)
from ingest_pipeline_tests.features.test_hand_computed import H0

W = DEFAULT_SPEC.max_window_ms  # rv_300s: one value per 300 s window of the hour


def _frame(**cols: list) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    frame = pd.DataFrame({"symbol": ["BTCUSDT"] * n, "ts": H0 + 1000 * np.arange(1, n + 1)})
    for name, values in cols.items():
        frame[name] = values
    return frame


def test_hourly_realized_vol_sums_the_non_overlapping_windows() -> None:
    rv = np.full(3600, np.nan)
    ts = H0 + 1000 * np.arange(1, 3601)
    rv[ts % W == 0] = 0.0
    rv[(ts - H0) == W] = 3.0
    rv[(ts - H0) == 2 * W] = 4.0
    rv[(ts - H0) == W + 1000] = 100.0  # an overlapping window: not counted
    frame = _frame(rv_300s=list(rv), complete=[True] * 3600)
    assert hourly_realized_vol(frame, DEFAULT_SPEC) == 5.0
    frame["rv_300s"] = np.where(ts % W == 0, np.nan, 1.0)
    assert math.isnan(hourly_realized_vol(frame, DEFAULT_SPEC))  # no window with a value
    assert math.isnan(hourly_realized_vol(frame.iloc[:0], DEFAULT_SPEC))


def test_hour_numbers_per_table_counts_as_ints() -> None:
    frame = _frame(
        trade_count=[2.0, np.nan, 5.0],
        rv_300s=[np.nan] * 3,
        spread_bps=[1.0, 3.0, np.nan],
        complete=[True, False, True],
    )
    trade = hour_numbers(TRADE_TABLE, frame, DEFAULT_SPEC)
    assert set(trade) == {"complete_rows", "hourly_realized_vol", "trade_count"}
    assert trade["complete_rows"] == 2 and type(trade["complete_rows"]) is int
    assert trade["trade_count"] == 7 and type(trade["trade_count"]) is int
    assert math.isnan(trade["hourly_realized_vol"])
    assert hour_numbers(BOOK_TABLE, frame, DEFAULT_SPEC) == {
        "complete_rows": 2,
        "mean_spread_bps": 2.0,
    }
    assert set(hour_numbers(TRAINING_TABLE, frame, DEFAULT_SPEC)) == {
        "complete_rows", "hourly_realized_vol", "trade_count", "mean_spread_bps",
    }  # fmt: skip
    assert hour_numbers(KLINE_TABLE, frame, DEFAULT_SPEC) == {"complete_rows": 2}
    frame["spread_bps"] = np.nan
    assert math.isnan(hour_numbers(BOOK_TABLE, frame, DEFAULT_SPEC)["mean_spread_bps"])


def test_null_counts_name_only_value_columns_with_nulls() -> None:
    frame = _frame(mid=[1.0, np.nan, np.nan], vwap=[1.0, 2.0, 3.0], complete=[True] * 3)
    frame.loc[0, "ts"] = None  # not a value column: not counted
    assert null_counts(frame) == {"mid": 2}


def test_preview_shows_complete_rows_with_readable_times() -> None:
    frame = _frame(mid=[1.5, np.nan, 2.25, 3.0], complete=[True, False, True, False])
    lines = preview_markdown(frame, rows=6).splitlines()
    assert lines[0] == "| ts (UTC) | mid | complete |"
    assert lines[1] == "|---|---|---|"
    assert lines[2:] == [
        "| 2024-01-01T01:00:01.000Z | 1.5 | True |",
        "| 2024-01-01T01:00:03.000Z | 2.25 | True |",
    ]
    # no complete row: any rows, NaN as an empty cell; too many columns: complete kept last
    frame["complete"] = False
    wide = frame.drop(columns="complete").assign(**{f"c{i}": 0.0 for i in range(20)})
    wide["complete"] = False  # last, as in every table
    lines = preview_markdown(wide, rows=2, max_cols=4).splitlines()
    assert lines[0] == "| ts (UTC) | mid | c0 | complete |"
    assert lines[2:] == [
        "| 2024-01-01T01:00:01.000Z | 1.5 | 0 | False |",
        "| 2024-01-01T01:00:04.000Z | 3 | 0 | False |",
    ]
    assert preview_markdown(frame.iloc[:0]) == "(no rows)"
    assert "|  |" in preview_markdown(frame.iloc[1:2])  # NaN mid


def test_jsonable_turns_sync_stats_into_plain_json() -> None:
    stats = SyncStats(snapshots_used=np.int64(2), bridges=[(1, 2, 3)], gap_times=[np.int64(7)])
    out = jsonable(stats)
    assert out["snapshots_used"] == 2 and type(out["snapshots_used"]) is int
    assert out["bridges"] == [[1, 2, 3]] and out["gap_times"] == [7]
    assert type(out["gap_times"][0]) is int
    assert jsonable({1: (np.float64(0.5),)}) == {"1": [0.5]}
