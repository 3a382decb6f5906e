from ingest_pipeline.preview import human_size, preview_table
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT
from ingest_pipeline.timeutil import parse_hour

HOUR = parse_hour("2024-08-09-00:00")


def test_sizes_read_in_decimal_units_with_the_exact_count() -> None:
    assert human_size(999) == "999 bytes"
    assert human_size(1_213_441) == "1.21 MB (1,213,441 bytes)"
    assert human_size(4_000_000_000) == "4 GB (4,000,000,000 bytes)"


def test_preview_shows_the_first_records_by_key_with_iso_times() -> None:
    records = [
        {"symbol": "BTCUSDT", "event_ts": HOUR + i, "trade_id": i, "note": "a|b"}
        for i in (3, 1, 2, 9, 8, 7, 6)
    ]
    table = preview_table(records, AGG_TRADES, rows=2).splitlines()
    assert table == [
        "| event_ts (UTC) | trade_id | note |",
        "|---|---|---|",
        "| 2024-08-09T00:00:00.001Z | 1 | a\\|b |",
        "| 2024-08-09T00:00:00.002Z | 2 | a\\|b |",
    ]
    assert preview_table([], AGG_TRADES) == "(no records)"


def test_book_levels_show_as_their_count() -> None:
    snap = {"symbol": "BTCUSDT", "timestamp": HOUR, "last_update_id": 5, "bids": [[1, 2]] * 3}
    rows = preview_table([snap], DEPTH_SNAPSHOT).splitlines()
    assert rows[-1] == "| 2024-08-09T00:00:00.000Z | 5 | [3 levels] |"
