import gzip
import hashlib
import re

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import (
    FIRST_TRADE_ID_META,
    LAST_TRADE_ID_META,
    TRADES_COVERED_META,
    BronzeStore,
    TradeCoverage,
    decode_jsonl_gz,
    encode_jsonl_gz,
    encode_with_fingerprint,
    hour_path,
    prepare_records,
)
from ingest_pipeline.symbols import UnsafeSymbol
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

HOUR = parse_hour("2024-08-09-00:00")


def trade(trade_id: int, ts_offset: int = 0, price: float = 100.0, ingest: int = 1) -> dict:
    return {
        "symbol": "BTCUSDT",
        "event_ts": HOUR + ts_offset,
        "ingest_ts": ingest,
        "trade_id": trade_id,
        "price": price,
        "qty": 0.5,
        "is_buyer_maker": False,
        "source": "rest",
        "first_trade_id": trade_id * 2,
        "last_trade_id": trade_id * 2 + 1,
    }


def test_hour_path_layout() -> None:
    assert hour_path("BTCUSDT", AGG_TRADES, HOUR + 5 * HOUR_MS) == (
        "BTCUSDT/agg_trades/yyyy=2024/mm=08/dd=09/hh=05/agg_trades-BTCUSDT-2024080905.jsonl.gz"
    )
    assert hour_path("币安人生USDT", klines_type("1m"), HOUR).startswith("币安人生USDT/klines_1m/")
    with pytest.raises(UnsafeSymbol):
        hour_path("../x", AGG_TRADES, HOUR)
    with pytest.raises(ValueError, match="start of an hour"):
        hour_path("BTCUSDT", AGG_TRADES, HOUR + 1)


def test_prepare_sorts_by_key_and_drops_duplicates() -> None:
    records = [trade(3, 5), trade(1, 1), trade(2, 2), trade(1, 1, ingest=99)]
    ordered, dropped = prepare_records(records, AGG_TRADES, HOUR, "BTCUSDT")
    assert [r["trade_id"] for r in ordered] == [1, 2, 3]
    assert dropped == 1
    assert ordered[0]["ingest_ts"] == 1  # the first one seen wins


def test_prepare_refuses_records_outside_the_hour() -> None:
    with pytest.raises(ValueError, match="outside the hour"):
        prepare_records([trade(1, HOUR_MS)], AGG_TRADES, HOUR, "BTCUSDT")
    with pytest.raises(ValueError, match="outside the hour"):
        prepare_records([trade(1, -1)], AGG_TRADES, HOUR, "BTCUSDT")


def test_encoding_is_deterministic_jsonl_with_zero_gzip_mtime() -> None:
    records = [trade(i, i) for i in range(25_000)]
    a, b = encode_jsonl_gz(records), encode_jsonl_gz(records)
    assert a == b
    assert a[4:8] == b"\x00\x00\x00\x00"  # gzip header MTIME
    lines = gzip.decompress(a).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 25_001
    assert decode_jsonl_gz(a) == records


@pytest.fixture
def store(aws_settings: Settings) -> BronzeStore:
    s = aws_settings
    return BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)


def test_write_then_rerun_with_same_records_leaves_object_untouched(store: BronzeStore) -> None:
    first = store.write_hour("BTCUSDT", AGG_TRADES, HOUR, [trade(i, i) for i in range(100)])
    assert first.action == "created" and first.records == 100
    assert first.uri == f"s3://{store.bucket}/bronze/" + hour_path("BTCUSDT", AGG_TRADES, HOUR)
    before = store._s3.get_object(Bucket=store.bucket, Key=first.key)
    body_before = before["Body"].read()
    # Same records fetched later: only ingest_ts differs.
    again = store.write_hour(
        "BTCUSDT", AGG_TRADES, HOUR, [trade(i, i, ingest=777) for i in reversed(range(100))]
    )
    assert again.action == "unchanged"
    after = store._s3.get_object(Bucket=store.bucket, Key=first.key)
    assert after["Body"].read() == body_before
    assert after["ETag"] == before["ETag"]
    assert {r["ingest_ts"] for r in store.read_hour("BTCUSDT", AGG_TRADES, HOUR)} == {1}


def test_rerun_with_different_records_replaces_and_reports(store: BronzeStore) -> None:
    store.write_hour("BTCUSDT", AGG_TRADES, HOUR, [trade(i, i) for i in range(10)])
    changed = [trade(i, i, price=101.0 if i == 4 else 100.0) for i in range(1, 12)]
    result = store.write_hour("BTCUSDT", AGG_TRADES, HOUR, changed)
    assert result.action == "replaced"
    assert result.changes == {"added": 2, "removed": 1, "changed": 1}
    stored = store.read_hour("BTCUSDT", AGG_TRADES, HOUR)
    assert [r["trade_id"] for r in stored] == list(range(1, 12))
    assert stored[3]["price"] == 101.0


def test_empty_hour_is_an_empty_object(store: BronzeStore) -> None:
    result = store.write_hour("ETHUSDT", AGG_TRADES, HOUR, [])
    assert result.records == 0 and result.first_key is None
    assert store.read_hour("ETHUSDT", AGG_TRADES, HOUR) == []
    assert store.read_hour("ETHUSDT", DEPTH_SNAPSHOT, HOUR) is None


def test_fingerprint_ignores_ingest_ts_only() -> None:
    base = [trade(i, i) for i in range(3)]
    _, fp = encode_with_fingerprint(base)
    assert encode_with_fingerprint([trade(i, i, ingest=10**12 + i) for i in range(3)])[1] == fp
    assert encode_with_fingerprint([trade(i, i, price=100.5) for i in range(3)])[1] != fp
    assert encode_with_fingerprint(base[:2])[1] != fp


@pytest.mark.parametrize(
    "records",
    [
        [trade(i, i, ingest=1_733_011_200_123) for i in range(25_000)],  # one value: a replace
        [trade(i, i, ingest=7) for i in range(3)],
        [trade(i, i, ingest=i // 2) for i in range(5)],  # several values
        [trade(1, ingest=-5), trade(2, ingest=-5)],  # no digits right after the key
        [{**trade(1, ingest=12), 'x"ingest_ts': 4}, {**trade(2, ingest=12), 'x"ingest_ts': 4}],
        [trade(1, ingest=3), {k: v for k, v in trade(2).items() if k != "ingest_ts"}],
    ],
)
def test_fingerprint_is_the_sha256_of_the_body_with_ingest_ts_digits_zeroed(
    records: list[dict],
) -> None:
    body, fingerprint = encode_with_fingerprint(records)
    masked = re.sub(rb'"ingest_ts":\d+', b'"ingest_ts":0', gzip.decompress(body))
    assert fingerprint == hashlib.sha256(masked).hexdigest()


def test_prepare_keeps_already_ordered_input_as_is() -> None:
    records = [trade(i, i) for i in range(5)]
    ordered, dropped = prepare_records(records, AGG_TRADES, HOUR, "BTCUSDT")
    assert ordered == records and dropped == 0


def test_lines_are_exact_even_when_a_string_holds_a_record_joint() -> None:
    rejects = [{"reason": "bad", "raw": '[{"a":1},{"b":2}]'}, {"reason": "x", "raw": "},{"}]
    assert decode_jsonl_gz(encode_jsonl_gz(rejects)) == rejects
    records = [trade(i, i) for i in range(3)]
    body = gzip.decompress(encode_jsonl_gz(records))
    assert body.count(b"\n") == 3 and decode_jsonl_gz(encode_jsonl_gz(records)) == records


def test_prepare_refuses_records_of_another_symbol() -> None:
    with pytest.raises(ValueError, match="ETHUSDT"):
        prepare_records([trade(1), {**trade(2), "symbol": "ETHUSDT"}], AGG_TRADES, HOUR, "BTCUSDT")


def test_agg_trades_object_says_which_trades_it_covers(store: BronzeStore) -> None:
    # Aggregate i covers trades 2i and 2i + 1; given out of order, stored by aggregate id.
    store.write_hour("BTCUSDT", AGG_TRADES, HOUR, [trade(i, i) for i in reversed(range(100))])
    meta = store.head("BTCUSDT", AGG_TRADES, HOUR)["Metadata"]  # type: ignore[index]
    assert (meta[FIRST_TRADE_ID_META], meta[LAST_TRADE_ID_META]) == ("0", "199")
    assert meta[TRADES_COVERED_META] == "200"
    coverage = store.trade_coverage("BTCUSDT", HOUR)
    assert coverage == TradeCoverage(aggs=100, covered=200, first=0, last=199)
    assert coverage == TradeCoverage.of(store.read_hour("BTCUSDT", AGG_TRADES, HOUR) or [])
    assert coverage.bounds == (0, 199)
    # Only agg_trades objects carry the entries.
    kline = {"symbol": "BTCUSDT", "interval": "1m", "open_time": HOUR, "ingest_ts": 1}
    store.write_hour("BTCUSDT", klines_type("1m"), HOUR, [kline])
    head = store.head("BTCUSDT", klines_type("1m"), HOUR)
    assert head is not None and TRADES_COVERED_META not in head["Metadata"]


def test_agg_trades_object_without_the_entries_is_decoded_and_left_alone(
    store: BronzeStore,
) -> None:
    records = [trade(i, i) for i in range(50)]
    result = store.write_hour("BTCUSDT", AGG_TRADES, HOUR, records)
    # The object as a writer before the entries existed left it: same body, older metadata.
    old = store._s3.get_object(Bucket=store.bucket, Key=result.key)
    older_meta = {
        k: v
        for k, v in old["Metadata"].items()
        if k not in (TRADES_COVERED_META, FIRST_TRADE_ID_META, LAST_TRADE_ID_META)
    }
    store._s3.put_object(
        Bucket=store.bucket, Key=result.key, Body=old["Body"].read(), Metadata=older_meta
    )
    assert store.trade_coverage("BTCUSDT", HOUR) == TradeCoverage(50, 100, 0, 99)
    before = store._s3.head_object(Bucket=store.bucket, Key=result.key)
    again = store.write_hour(
        "BTCUSDT", AGG_TRADES, HOUR, [trade(i, i, ingest=9) for i in range(50)]
    )
    after = store._s3.head_object(Bucket=store.bucket, Key=result.key)
    assert again.action == "unchanged"
    assert (after["ETag"], after["Metadata"]) == (before["ETag"], older_meta)


def test_trade_coverage_of_an_empty_and_of_a_missing_hour(store: BronzeStore) -> None:
    store.write_hour("ETHUSDT", AGG_TRADES, HOUR, [])
    empty = store.trade_coverage("ETHUSDT", HOUR)
    assert empty == TradeCoverage(0, 0) and empty.bounds is None
    assert store.trade_coverage("ETHUSDT", HOUR + HOUR_MS) is None
