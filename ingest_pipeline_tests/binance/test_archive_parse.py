"""The archive's pure half: paths, CHECKSUM lines, CSV parsing, units and the file plan."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ingest_pipeline.binance.archive import (
    ArchiveFormatError,
    daily_file,
    monthly_file,
    parse_checksum,
)
from ingest_pipeline.binance.archive_csv import INVALID_AGG_REASON, parse_hours
from ingest_pipeline.binance.history import (
    check_agg_hour,
    check_trade_hour,
    expected_kline_opens,
    plan_files,
)
from ingest_pipeline.binance.normalize import agg_trade_from_rest, kline_from_rest, trade_from_rest
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

DAY = parse_hour("2024-12-31-00:00")
NEW_YEAR = parse_hour("2025-01-01-00:00")


def zip_of(tmp_path: Path, text: str, name: str = "X.csv") -> Path:
    path = tmp_path / "f.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, text)
    return path


def test_paths_follow_the_archive_layout() -> None:
    f = daily_file("BTCUSDT", AGG_TRADES, DAY + 5 * HOUR_MS)
    assert f.path == "data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-12-31.zip"
    assert list(f.hours()) == [DAY + i * HOUR_MS for i in range(24)]
    k = monthly_file("ETHUSDT", klines_type("1M"), DAY)
    assert k.path == "data/spot/monthly/klines/ETHUSDT/1mo/ETHUSDT-1mo-2024-12.zip"
    assert (k.start_ms, k.end_ms) == (parse_hour("2024-12-01-00:00"), NEW_YEAR)
    t = daily_file("币安人生USDT", TRADES, DAY)
    assert t.path.startswith("data/spot/daily/trades/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT/")


def test_checksum_line_must_name_the_file() -> None:
    sha = "ab" * 32
    assert (
        parse_checksum(
            f"{sha.upper()}  BTCUSDT-trades-2024-12-31.zip\n", "BTCUSDT-trades-2024-12-31.zip"
        )
        == sha
    )
    with pytest.raises(ArchiveFormatError, match="names another file"):
        parse_checksum(f"{sha}  ETHUSDT-trades-2024-12-31.zip", "BTCUSDT-trades-2024-12-31.zip")
    with pytest.raises(ArchiveFormatError, match="unreadable"):
        parse_checksum("<html>404</html>", "BTCUSDT-trades-2024-12-31.zip")


def rest_agg(a: int, p: str, q: str, f: int, last: int, t: int, m: bool) -> dict:
    raw = {"a": a, "p": p, "q": q, "f": f, "l": last, "T": t, "m": m, "M": True}
    return agg_trade_from_rest(raw, "BTCUSDT", 7)


def test_agg_rows_equal_rest_records_with_micros_header_and_invalid_rows(tmp_path: Path) -> None:
    t0 = NEW_YEAR + 3 * HOUR_MS + 17
    text = (
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,"
        "is_best_match\n"
        f"10,93000.01000000,0.00100000,100,101,{t0 * 1000 + 999},True,True\n"
        "11,0,0,-1,-1,1735700000000000,False,True\n"
        f"12,0.10000000,3.30000000,102,102,{(t0 + HOUR_MS) * 1000},False,True\n"
    )
    hours = list(parse_hours(zip_of(tmp_path, text), AGG_TRADES, "BTCUSDT", 7))
    assert [h.hour for h in hours] == [NEW_YEAR + 3 * HOUR_MS, NEW_YEAR + 4 * HOUR_MS]
    assert hours[0].records == [rest_agg(10, "93000.01000000", "0.00100000", 100, 101, t0, True)]
    assert hours[0].invalid_marked == 1
    assert hours[0].rejects[0]["reason"] == INVALID_AGG_REASON
    assert hours[0].rejects[0]["raw"]["a"] == 11
    assert hours[1].records == [
        rest_agg(12, "0.10000000", "3.30000000", 102, 102, t0 + HOUR_MS, False)
    ]


def test_trade_and_kline_rows_equal_rest_records_in_ms(tmp_path: Path) -> None:
    t = DAY + 61_234
    trades = f"5,42000.12000000,0.00012000,5.04001440,{t},False,True\n"
    (hour,) = parse_hours(zip_of(tmp_path, trades), TRADES, "BTCUSDT", 7)
    raw = {
        "id": 5,
        "price": "42000.12000000",
        "qty": "0.00012000",
        "time": t,
        "isBuyerMaker": False,
    }
    assert hour.records == [trade_from_rest(raw, "BTCUSDT", 7)]
    row = [NEW_YEAR, "1.10000000", "1.20000000", "1.00000000", "1.10000000", "5.00000000",
           NEW_YEAR + 59_999, "5.50000000", 3, "2.00000000", "2.20000000", "0"]  # fmt: skip
    micros = [str(row[0] * 1000), *row[1:6], str(row[6] * 1000 + 999), *map(str, row[7:])]
    (hour,) = parse_hours(
        zip_of(tmp_path, ",".join(micros) + "\n"), klines_type("1m"), "BTCUSDT", 7
    )
    assert hour.records == [kline_from_rest(row, "BTCUSDT", "1m", 7)]


def test_a_broken_row_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    text = f"5,1.0,1.0,1.0,{DAY},False,True\n6,abc,1.0,1.0,{DAY},False,True\n"
    with pytest.raises(ArchiveFormatError):
        list(parse_hours(zip_of(tmp_path, text), TRADES, "BTCUSDT", 7))
    bad = tmp_path / "two.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.csv", "")
        z.writestr("b.csv", "")
    with pytest.raises(ArchiveFormatError, match="one CSV"):
        list(parse_hours(bad, TRADES, "BTCUSDT", 7))
    (tmp_path / "nozip.zip").write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(ArchiveFormatError, match="not a zip"):
        list(parse_hours(tmp_path / "nozip.zip", TRADES, "BTCUSDT", 7))


def test_plan_uses_months_days_and_rest_for_open_days() -> None:
    dec = parse_hour("2024-12-01-00:00")
    now = NEW_YEAR + 30 * HOUR_MS  # 2025-01-02 06:00
    hours = [dec - 2 * HOUR_MS, *range(dec, NEW_YEAR + 31 * HOUR_MS, HOUR_MS)]
    plans = plan_files("BTCUSDT", TRADES, hours, now)
    assert [(p.file.path.rsplit("/", 1)[-1] if p.file else None, len(p.hours)) for p in plans] == [
        ("BTCUSDT-trades-2024-11-30.zip", 1),
        ("BTCUSDT-trades-2024-12.zip", 31 * 24),
        ("BTCUSDT-trades-2025-01-01.zip", 24),
        (None, 7),  # 2025-01-02 is not over
    ]
    assert "not over" in plans[-1].reason
    # Without the whole month asked, one file per day, never per hour.
    days = plan_files("BTCUSDT", TRADES, range(dec + 5 * HOUR_MS, dec + 30 * HOUR_MS, HOUR_MS), now)
    assert [len(p.hours) for p in days] == [19, 6]


def test_expected_kline_opens() -> None:
    assert len(expected_kline_opens("1m", DAY)) == 60
    assert expected_kline_opens("1h", DAY) == [DAY]
    assert (
        expected_kline_opens("1d", DAY) == [DAY] and expected_kline_opens("1d", DAY + HOUR_MS) == []
    )
    monday = parse_hour("2024-12-30-00:00")
    assert expected_kline_opens("1w", monday) == [monday] and expected_kline_opens("1w", DAY) == []
    assert expected_kline_opens("1M", parse_hour("2024-12-01-00:00")) == [
        parse_hour("2024-12-01-00:00")
    ]


def test_agg_hour_must_chain_and_cover_the_klines_count() -> None:
    def agg(a: int, f: int, n: int) -> dict[str, int]:
        return {"trade_id": a, "first_trade_id": f, "last_trade_id": f + n - 1}

    aggs = [agg(7, 100, 3), agg(8, 103, 1), agg(9, 104, 2)]
    assert check_agg_hour(aggs, 6) is None
    assert check_agg_hour([], 0) is None
    assert check_agg_hour(aggs, 7) == (
        "the file covers 6 trades, Binance's 1m klines count 7: truncated or padded"
    )
    assert check_agg_hour(aggs, None) is not None
    # The first break is named, whether the aggregate ids or the trade ids jump.
    id_jump = [aggs[0], agg(9, 103, 1), agg(11, 104, 2)]
    assert check_agg_hour(id_jump, 6) == "ids jump from aggTrade 7 (l=102) to 9 (f=103)"
    trade_jump = [*aggs[:2], agg(9, 105, 2)]
    assert check_agg_hour(trade_jump, 6) == "ids jump from aggTrade 8 (l=103) to 9 (f=105)"


def test_trade_hour_must_be_the_range_of_its_agg_trades() -> None:
    trades = [{"trade_id": i} for i in range(100, 106)]
    assert check_trade_hour(trades, (100, 105)) is None
    assert check_trade_hour([], None) is None
    assert check_trade_hour(trades[:-1], (100, 105)) == (
        "5 trades in the file, the hour's aggTrades cover ids 100..105"
    )
    assert check_trade_hour(trades, None) == "6 trades in an hour without aggTrades"
