from ingest_pipeline import quality
from ingest_pipeline.timeutil import HOUR_MS, iso_ms

H = 1_723_161_600_000


def agg(a: int, t: int = 0, f: int | None = None, n: int = 1, qty: float = 1.0) -> dict:
    f = a * 10 if f is None else f
    return {
        "symbol": "BTCUSDT", "event_ts": H + t, "ingest_ts": 0, "trade_id": a, "price": 10.0,
        "qty": qty, "is_buyer_maker": False, "source": "rest", "first_trade_id": f,
        "last_trade_id": f + n - 1,
    }  # fmt: skip


def kline(minute: int, o=10.0, h=11.0, lo=9.0, c=10.5, v=0.0, n=0) -> dict:
    t = H + minute * 60_000
    return {
        "open_time": t, "close_time": t + 59_999, "open_price": o, "high_price": h,
        "low_price": lo, "close_price": c, "volume": v, "quote_volume": 0.0, "trade_count": n,
        "taker_buy_base_volume": 0.0, "taker_buy_quote_volume": 0.0, "symbol": "BTCUSDT",
        "interval": "1m", "ingest_ts": 0,
    }  # fmt: skip


def test_contiguous_ids_reports_gap_ranges_and_duplicates() -> None:
    assert quality.check_contiguous_ids([agg(i) for i in (5, 6, 7)], "trade_id").passed
    v = quality.check_contiguous_ids([agg(i) for i in (5, 6, 9, 10, 14)], "trade_id")
    assert not v.passed and v.details["gaps"] == ["7..8", "11..13"]
    v = quality.check_contiguous_ids([agg(i) for i in (5, 6, 6)], "trade_id")
    assert not v.passed and v.details["duplicates"] == 1


def test_duplicates_in_hour_and_positive_values() -> None:
    assert not quality.check_no_duplicates([agg(1), agg(2), agg(1)], "trade_id").passed
    assert quality.check_no_duplicates([agg(1), agg(2)], "trade_id").passed
    assert not quality.check_in_hour([agg(1, t=HOUR_MS)], "event_ts", H).passed
    assert not quality.check_in_hour([agg(1, t=-1)], "event_ts", H).passed
    assert quality.check_in_hour([agg(1, t=HOUR_MS - 1)], "event_ts", H).passed
    assert not quality.check_positive_price_qty([agg(1, qty=0.0)], "trade_id").passed


def test_hour_continues_previous_hour() -> None:
    check = quality.check_continues_previous_hour
    assert check([agg(10)], [agg(8), agg(9)], "trade_id").passed
    v = check([agg(12)], [agg(9)], "trade_id")
    assert not v.passed and v.details["missing"] == ["10..11"]
    assert check([agg(12)], None, "trade_id").passed


def test_trade_count_must_match_agg_ranges() -> None:
    # Two aggTrades covering 3 + 2 trades (storage's TradeCoverage sums them).
    trades = [{"trade_id": i} for i in range(100, 105)]
    ok = quality.check_trades_match_agg_trades(trades, 5, 2)
    assert ok.passed and ok.numbers == {"trades": 5, "expected": 5, "difference": 0}
    short = quality.check_trades_match_agg_trades(trades[:-1], 5, 2)
    assert not short.passed and short.numbers["difference"] == -1


def test_klines_steps_ohlc_and_agreement_with_trades() -> None:
    trades = [agg(1, t=1_000, n=2, qty=0.5), agg(2, t=61_000, qty=0.25)]
    klines = [kline(m) for m in range(60)]
    klines[0].update(volume=0.5, trade_count=2)
    klines[1].update(volume=0.25, trade_count=1)
    assert quality.check_klines(klines, trades, "1m", H).passed
    assert not quality.check_klines(klines[:-1], trades, "1m", H).passed  # a missing step
    crossed = [dict(k) for k in klines]
    crossed[5]["high_price"] = 9.5  # close 10.5 above high
    assert quality.check_klines(crossed, trades, "1m", H).details["ohlc"] == [
        iso_ms(H + 5 * 60_000)
    ]
    wrong = [dict(k) for k in klines]
    wrong[1]["volume"] = 0.25 + 1e-6
    v = quality.check_klines(wrong, trades, "1m", H)
    assert not v.passed and v.details["disagree_with_trades"] == ["2024-08-09T00:01:00.000Z"]


def test_book_order_crossing_and_zero_sizes() -> None:
    good = {"last_update_id": 1, "bids": [["10.0", "1"], ["9.0", "2"]],
            "asks": [["11.0", "1"], ["12.0", "3"]]}  # fmt: skip
    assert quality.check_book(good).passed
    assert not quality.check_book({**good, "bids": [["9.0", "2"], ["10.0", "1"]]}).passed
    assert not quality.check_book({**good, "asks": [["12.0", "1"], ["11.0", "3"]]}).passed
    crossed = quality.check_book({**good, "bids": [["11.5", "1"]]})
    assert not crossed.passed and "crossed" in crossed.summary
    assert not quality.check_book({**good, "asks": [["11.0", "0"]]}).passed
