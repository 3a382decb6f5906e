"""Reading an hour back from Kinesis (moto server, real sockets): window, cutoff, reshard,
retention, and the idempotent archive into bronze."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.kinesis_reader import (
    KinesisReader,
    WindowNotReadable,
    archive_hour,
)
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, now_ms

# The last closed hour: its end is in the past, so a cutoff of "now" is legal.
HOUR = floor_hour(now_ms()) - HOUR_MS


def trade(symbol: str, tid: int, event_ts: int) -> dict[str, Any]:
    return {
        "symbol": symbol, "event_ts": event_ts, "ingest_ts": event_ts + 5, "trade_id": tid,
        "price": 100.0, "qty": 1.0, "is_buyer_maker": False, "source": "sbe",
    }  # fmt: skip


@pytest.fixture
def kinesis(aws_settings: Settings) -> Any:
    return aws_client("kinesis", aws_settings)


@pytest.fixture
def stream(kinesis: Any) -> str:
    name = f"archive-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50}
    )
    return name


def put(kinesis: Any, stream: str, records: list[dict[str, Any]]) -> None:
    for i in range(0, len(records), 500):
        resp = kinesis.put_records(
            StreamName=stream,
            Records=[
                {"Data": orjson.dumps(r), "PartitionKey": r.get("symbol", "X")}
                for r in records[i : i + 500]
            ],
        )
        assert resp["FailedRecordCount"] == 0


def test_window_keeps_the_hour_and_stops_at_the_cutoff(kinesis: Any, stream: str) -> None:
    first = [trade("BTCUSDT", 100 + i, HOUR + i * 60_000) for i in range(60)]
    edges = [
        trade("BTCUSDT", 99, HOUR - 1),  # previous hour
        trade("BTCUSDT", 200, HOUR + HOUR_MS),  # next hour
        trade("ETHUSDT", 7, HOUR + 5),  # another symbol
    ]
    put(kinesis, stream, first + edges + first[:5])  # a redelivery: duplicates kept here
    time.sleep(0.05)
    cutoff = now_ms() + 1
    time.sleep(0.05)
    late = [trade("BTCUSDT", 160, HOUR + HOUR_MS - 1)]  # arrives after the cutoff
    put(kinesis, stream, late)

    reader = KinesisReader(kinesis)
    read = reader.read_window(stream, HOUR, HOUR + HOUR_MS, cutoff, partition_key="BTCUSDT")
    assert [r["trade_id"] for r in read.records] == list(range(100, 160)) + list(range(100, 105))
    assert read.outside_window == 2 and read.other_keys == 1 and not read.malformed
    assert [s.stopped for s in read.shards] == ["cutoff"]

    # A later cutoff (more grace) takes the late record; the reader stops at the stream's tip.
    read = reader.read_window(stream, HOUR, HOUR + HOUR_MS, now_ms() + 1, partition_key="BTCUSDT")
    assert read.records[-1]["trade_id"] == 160
    assert [s.stopped for s in read.shards] == ["caught_up"]


def test_parent_and_child_shards_are_read_after_a_reshard(kinesis: Any, stream: str) -> None:
    before = [trade(f"SYM{i}USDT", i, HOUR + i) for i in range(40)]
    put(kinesis, stream, before)
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]
    middle = (int(shard["HashKeyRange"]["StartingHashKey"])
              + int(shard["HashKeyRange"]["EndingHashKey"])) // 2  # fmt: skip
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=shard["ShardId"], NewStartingHashKey=str(middle)
    )
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    after = [trade(f"SYM{i}USDT", 1000 + i, HOUR + 1000 + i) for i in range(40)]
    put(kinesis, stream, after)

    read = KinesisReader(kinesis).read_window(stream, HOUR, HOUR + HOUR_MS, now_ms() + 1)
    assert len(read.shards) == 3
    assert {s.parent for s in read.shards} == {None, shard["ShardId"]}
    # Every shard was read to its end. (moto keeps routing records to the closed parent, so
    # which shard holds them is moto's business; AWS would put the later ones in the children.)
    assert all(s.stopped in ("caught_up", "closed") for s in read.shards)
    assert sorted(r["trade_id"] for r in read.records) == sorted(
        r["trade_id"] for r in before + after
    )


def test_an_hour_older_than_retention_is_refused(kinesis: Any, stream: str) -> None:
    reader = KinesisReader(kinesis)
    assert reader.check_retention(stream, HOUR, now_ms()) == 24
    with pytest.raises(WindowNotReadable, match=r"keeps records 24 h \(RetentionPeriodHours\)"):
        reader.check_retention(stream, HOUR - 30 * HOUR_MS, now_ms())


def test_malformed_data_is_kept_aside(kinesis: Any, stream: str) -> None:
    kinesis.put_records(
        StreamName=stream,
        Records=[
            {"Data": b"{not json", "PartitionKey": "BTCUSDT"},
            {"Data": orjson.dumps({"symbol": "BTCUSDT"}), "PartitionKey": "BTCUSDT"},
            {"Data": orjson.dumps(trade("BTCUSDT", 1, HOUR)), "PartitionKey": "BTCUSDT"},
        ],
    )
    read = KinesisReader(kinesis).read_window(stream, HOUR, HOUR + HOUR_MS, now_ms() + 1)
    assert [r["trade_id"] for r in read.records] == [1]
    assert len(read.malformed) == 2 and read.malformed[0]["raw"] == "{not json"


def test_archive_hour_dedups_and_is_idempotent(
    kinesis: Any, stream: str, aws_settings: Settings
) -> None:
    records = [trade("BTCUSDT", 10 + i, HOUR + 1000 * i) for i in range(30)]
    put(kinesis, stream, records[10:] + records + records[:3])
    store = BronzeStore(aws_client("s3", aws_settings), aws_settings.bucket, "bronze")
    reader = KinesisReader(kinesis)
    cutoff = now_ms() + 1
    first = archive_hour(reader, store, stream, "BTCUSDT", TRADE, HOUR, cutoff)
    assert first.duplicates == 23 and first.result.action == "created"
    assert [r["trade_id"] for r in first.records][:3] == [20, 21, 22]  # Kinesis order kept
    stored = store.read_hour("BTCUSDT", TRADE, HOUR)
    assert [r["trade_id"] for r in stored] == list(range(10, 40))
    again = archive_hour(reader, store, stream, "BTCUSDT", TRADE, HOUR, cutoff)
    assert again.result.action == "unchanged"


def test_tail_reads_what_arrived_since_a_moment_over_every_shard(kinesis: Any) -> None:
    name = f"tail-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50}
    )
    # Old event times do not matter: the tail is about arrival.
    put(kinesis, name, [trade(s, i, HOUR - 5 * HOUR_MS) for s in ("A", "B", "C") for i in (1, 2)])
    time.sleep(1.1)
    since = now_ms()
    time.sleep(0.05)
    put(kinesis, name, [trade(s, i, HOUR) for s in ("A", "B", "C") for i in (3, 4)])
    kinesis.put_records(StreamName=name, Records=[{"Data": b"not json", "PartitionKey": "A"}])
    read = KinesisReader(kinesis).read_tail(name, since, now_ms() + 1)
    assert len(read.shards) == 2 and {s.stopped for s in read.shards} == {"caught_up"}
    assert sorted((r["symbol"], r["trade_id"]) for r in read.records) == [
        (s, i) for s in ("A", "B", "C") for i in (3, 4)
    ]
    assert len(read.malformed) == 1 and read.malformed[0]["raw"] == "not json"
