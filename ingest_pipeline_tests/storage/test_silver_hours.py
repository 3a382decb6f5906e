"""One silver hour computed from bronze (storage/silver_hours.py), without Dagster: which inputs
it reads, what it records about them, and the training set's join of stored and fresh tables."""

from __future__ import annotations

import pandas as pd

from ingest_pipeline import spans
from ingest_pipeline.features import DEFAULT_SPEC, SymbolInputs
from ingest_pipeline.features.coverage import BBA_SOURCE, DEPTH_SOURCE, TRADE_SOURCE
from ingest_pipeline.features.spec import BOOK_TABLE, KLINE_TABLE, TRADE_TABLE
from ingest_pipeline.features.summary import jsonable
from ingest_pipeline.features.tables import hour_table, join_tables
from ingest_pipeline.records import AGG_TRADES, BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.silver_hours import source_hour, training_hour
from ingest_pipeline.storage.silver_inputs import BronzeHours, SourceTable, source_tables
from ingest_pipeline.timeutil import HOUR_MS
from ingest_pipeline_tests.features.test_hand_computed import H0, SYM, inputs

H1, H_1 = H0 + HOUR_MS, H0 - HOUR_MS
HALF = ((H0, H0 + HOUR_MS // 2),)


class FakeBronze:
    """Bronze objects by (type, hour): records and covered spans; absent ones are None."""

    def __init__(self, objects: dict[tuple[str, int], tuple[list, spans.Spans]]) -> None:
        self.objects = objects

    def read_hour(self, symbol: str, data_type: str, hour: int) -> list | None:
        assert symbol == SYM
        found = self.objects.get((data_type, hour))
        return None if found is None else found[0]

    def coverage(self, symbol: str, data_type: str, hour: int) -> spans.Spans | None:
        found = self.objects.get((data_type, hour))
        return None if found is None else found[1]


def _source(settings: Settings, table: str) -> SourceTable:
    return next(s for s in source_tables(settings) if s.table == table)


def _whole(hour: int) -> spans.Spans:
    return ((hour, hour + HOUR_MS),)


def test_trade_hour_falls_back_to_archived_trades_and_says_so(local_settings: Settings) -> None:
    previous, current, _ = inputs()
    bronze = FakeBronze(
        {
            (AGG_TRADES, H_1): (previous.trades, _whole(H_1)),
            (AGG_TRADES, H0): ([], _whole(H0)),  # landed, empty: the archived trades count
            (TRADE, H0): (current.trades, HALF),
        }
    )
    h = source_hour(
        _source(local_settings, TRADE_TABLE), BronzeHours(bronze, SYM), H0, SYM, DEFAULT_SPEC
    )
    assert (h.trade_source, h.coverage) == (TRADE, {TRADE: 0.5})
    assert (h.previous_in_bronze, h.next_in_bronze, h.book_sync) == (True, False, None)
    want = hour_table(
        TRADE_TABLE,
        SYM,
        H0,
        SymbolInputs(trades=current.trades, coverage={TRADE_SOURCE: HALF}),
        SymbolInputs(trades=previous.trades, coverage={TRADE_SOURCE: _whole(H_1)}),
        None,
    ).frame
    pd.testing.assert_frame_equal(h.frame, want)
    assert h.frame["trade_count"].sum() == 3 and not h.frame["complete"].iloc[-1]


def test_book_hour_records_the_sync_and_the_inputs_coverage(local_settings: Settings) -> None:
    _, current, nxt = inputs()
    bronze = FakeBronze(
        {
            (BBA, H0): (current.bba, _whole(H0)),
            (DEPTH_DELTA, H0): (current.depth_deltas, HALF),
            (DEPTH_SNAPSHOT, H0): (current.depth_snapshots, _whole(H0)),
            (BBA, H1): (nxt.bba, _whole(H1)),
        }
    )
    h = source_hour(
        _source(local_settings, BOOK_TABLE), BronzeHours(bronze, SYM), H0, SYM, DEFAULT_SPEC
    )
    assert h.coverage == {BBA: 1.0, DEPTH_DELTA: 0.5}
    assert (h.previous_in_bronze, h.next_in_bronze, h.trade_source) == (False, True, None)
    coverage = {BBA_SOURCE: _whole(H0), DEPTH_SOURCE: HALF}
    result = hour_table(
        BOOK_TABLE,
        SYM,
        H0,
        SymbolInputs(
            bba=current.bba,
            depth_deltas=current.depth_deltas,
            depth_snapshots=current.depth_snapshots,
            coverage=coverage,
        ),
        None,
        SymbolInputs(bba=nxt.bba, coverage={BBA_SOURCE: _whole(H1), DEPTH_SOURCE: ()}),
    )
    pd.testing.assert_frame_equal(h.frame, result.frame)
    assert h.book_sync == jsonable(result.book)
    assert h.book_sync["snapshots_used"] == 2 and h.book_sync["gaps"] == 1


def test_kline_hour_reads_no_next_hour(local_settings: Settings) -> None:
    previous, current, _ = inputs()
    bronze = FakeBronze(
        {
            ("klines_1m", H_1): (previous.klines, _whole(H_1)),
            ("klines_1m", H0): (current.klines, HALF),
        }
    )
    h = source_hour(
        _source(local_settings, KLINE_TABLE), BronzeHours(bronze, SYM), H0, SYM, DEFAULT_SPEC
    )
    assert (h.previous_in_bronze, h.next_in_bronze, h.trade_source, h.book_sync) == (
        True,
        None,
        None,
        None,
    )
    assert h.coverage == {"klines_1m": 0.5} and len(h.frame) == 3600


class FakeSilver:
    def __init__(self, tables: dict[str, pd.DataFrame]) -> None:
        self.tables = tables
        self.reads: list[str] = []

    def read_hour(self, table: str, symbol: str, hour: int) -> pd.DataFrame | None:
        self.reads.append(table)
        return self.tables.get(table)


def test_training_hour_joins_fresh_tables_and_stored_ones(local_settings: Settings) -> None:
    previous, current, nxt = inputs()
    trades = hour_table(TRADE_TABLE, SYM, H0, current, previous, nxt).frame
    book = hour_table(BOOK_TABLE, SYM, H0, current, previous, nxt).frame
    stale = trades.assign(trade_count=-1.0)  # stored before: this run's table wins
    silver = FakeSilver({TRADE_TABLE: stale, BOOK_TABLE: book})
    frame, present = training_hour(silver, SYM, H0, {TRADE_TABLE: trades}, DEFAULT_SPEC)
    assert silver.reads == [BOOK_TABLE, KLINE_TABLE]  # the kline table is not stored
    assert present == [BOOK_TABLE, TRADE_TABLE]
    want = join_tables(SYM, {TRADE_TABLE: trades, BOOK_TABLE: book, KLINE_TABLE: None})
    pd.testing.assert_frame_equal(frame, want)
    # an empty table computed by this run stands: the stored one is not read instead
    empty = trades.iloc[:0]
    frame, present = training_hour(
        silver, SYM, H0, {TRADE_TABLE: empty, BOOK_TABLE: book}, DEFAULT_SPEC
    )
    assert present == [BOOK_TABLE] and frame["trade_count"].isna().all()
