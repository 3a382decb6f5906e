"""Coverage is data: what span of its hour a bronze object's source covered, on the real moto
server (S3 user metadata, read with a HEAD)."""

from __future__ import annotations

import pytest

from ingest_pipeline import quality
from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import (
    MAX_COVERAGE_SPANS,
    BronzeStore,
    decode_coverage,
    encode_coverage,
)
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

HOUR = parse_hour("2024-08-09-00:00")


def trade(tid: int, offset: int) -> dict:
    return {
        "symbol": "BTCUSDT", "event_ts": HOUR + offset, "ingest_ts": 1, "trade_id": tid,
        "price": 100.0, "qty": 0.5, "is_buyer_maker": False, "source": "sbe",
    }  # fmt: skip


@pytest.fixture
def store(aws_settings: Settings) -> BronzeStore:
    return BronzeStore(aws_client("s3", aws_settings), aws_settings.bucket, "bronze")


def test_a_partial_hour_says_so_and_a_whole_one_says_nothing(store: BronzeStore) -> None:
    records = [trade(1, 1_000), trade(2, 300_000)]
    partial = store.write_hour("BTCUSDT", TRADE, HOUR, records, [(HOUR - 5, HOUR + 305_000)])
    assert partial.partial and partial.coverage == ((HOUR, HOUR + 305_000),)
    assert store.coverage("BTCUSDT", TRADE, HOUR) == ((HOUR, HOUR + 305_000),)
    whole = store.write_hour("BTCUSDT", TRADE, HOUR + HOUR_MS, [])
    assert not whole.partial
    assert store.coverage("BTCUSDT", TRADE, HOUR + HOUR_MS) == (
        (HOUR + HOUR_MS, HOUR + 2 * HOUR_MS),
    )
    assert store.coverage("BTCUSDT", TRADE, HOUR + 2 * HOUR_MS) is None  # no object


def test_same_records_with_other_coverage_replace_the_object(store: BronzeStore) -> None:
    records = [trade(1, 1_000)]
    first = store.write_hour("BTCUSDT", TRADE, HOUR, records, [(HOUR, HOUR + 60_000)])
    again = store.write_hour("BTCUSDT", TRADE, HOUR, records, [(HOUR, HOUR + 60_000)])
    assert (first.action, again.action) == ("created", "unchanged")
    wider = store.write_hour("BTCUSDT", TRADE, HOUR, records, [(HOUR, HOUR + 120_000)])
    assert wider.action == "replaced" and wider.changes == {"added": 0, "removed": 0, "changed": 0}
    assert store.coverage("BTCUSDT", TRADE, HOUR) == ((HOUR, HOUR + 120_000),)
    whole = store.write_hour("BTCUSDT", TRADE, HOUR, records)
    assert whole.action == "replaced" and not whole.partial


def test_too_many_spans_drop_the_shortest_never_add_time() -> None:
    spans = [
        (HOUR + i * 10_000, HOUR + i * 10_000 + 1_000 + i) for i in range(MAX_COVERAGE_SPANS + 20)
    ]
    value = encode_coverage(spans, HOUR)
    assert value is not None and len(value) < 2048  # S3 user metadata limit: 2 KB
    kept = decode_coverage({"coverage": value}, HOUR)
    assert len(kept) == MAX_COVERAGE_SPANS
    assert set(kept) <= set(spans)  # a subset: dropped spans count as not covered
    assert min(e - s for s, e in kept) > max(e - s for s, e in set(spans) - set(kept))


def test_the_coverage_rule_reports_what_was_left_out() -> None:
    v = quality.check_coverage([(HOUR, HOUR + 305_000)], HOUR)
    assert not v.passed and v.numbers["covered_share"] == pytest.approx(305 / 3600)
    assert v.details["not_covered_ms"] == [[305_000, HOUR_MS]]
    assert quality.check_coverage([(HOUR - 1, HOUR + HOUR_MS)], HOUR).passed
