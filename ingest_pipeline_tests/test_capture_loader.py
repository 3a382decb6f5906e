"""The real Binance captures loaded into bronze on the real moto server."""

from __future__ import annotations

from ingest_pipeline.aws import aws_client
from ingest_pipeline.capture_loader import load_capture
from ingest_pipeline.records import BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, parse_hour
from ingest_pipeline_tests.paths import CAPTURES

H23 = parse_hour("2024-08-08-23:00")
H00 = H23 + HOUR_MS


def test_capture_lands_in_bronze_by_event_hour_and_reloads_unchanged(
    aws_settings: Settings,
) -> None:
    store = BronzeStore(aws_client("s3", aws_settings), aws_settings.bucket, "bronze")
    summary = load_capture(CAPTURES, store)
    assert summary.rejected == 0
    assert summary.hours() == [H23, H00]
    counts = summary.counts()
    # the README's table
    assert counts[("BTCUSDT", TRADE)] == 19_904 and counts[("ETHUSDT", TRADE)] == 14_515
    assert counts[("BTCUSDT", DEPTH_DELTA)] == 6_495 and counts[("ETHUSDT", DEPTH_DELTA)] == 6_470
    assert counts[("BTCUSDT", BBA)] == 73_174 and counts[("ETHUSDT", BBA)] == 58_758
    assert counts[("BTCUSDT", DEPTH_SNAPSHOT)] == 1 == counts[("ETHUSDT", DEPTH_SNAPSHOT)]

    trades = store.read_hour("BTCUSDT", TRADE, H23) + store.read_hour("BTCUSDT", TRADE, H00)
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(3735683259, 3735703162 + 1))  # no gap, nothing lost at midnight
    # trades by exchange time T; bba by receive time
    assert all(H23 <= t["event_ts"] < H00 for t in store.read_hour("BTCUSDT", TRADE, H23))
    bba = store.read_hour("ETHUSDT", BBA, H00)
    assert all(b["event_ts"] == b["ingest_ts"] and b["event_ts"] >= H00 for b in bba)
    snap = store.read_hour("ETHUSDT", DEPTH_SNAPSHOT, H23)[0]
    assert snap["last_update_id"] == 35346513512 and len(snap["bids"]) == 1000

    again = load_capture(CAPTURES, store)
    assert {w.action for w in again.written} == {"unchanged"}


def test_capture_coverage_is_recorded_per_object(aws_settings: Settings) -> None:
    """The session spans 23:54:15 -> 00:05:05 of trade time: each stream's objects say which
    part of their hour the capture covered; a snapshot is a point and covers no span."""
    store = BronzeStore(aws_client("s3", aws_settings), aws_settings.bucket, "bronze")
    summary = load_capture(CAPTURES, store, symbols=["ETHUSDT"])
    by_key = {w.key: w for w in summary.written}

    def written(data_type: str, hour: int):
        return by_key[store.key("ETHUSDT", data_type, hour)]

    trades = store.read_hour("ETHUSDT", TRADE, H23) + store.read_hour("ETHUSDT", TRADE, H00)
    first, last = trades[0]["event_ts"], trades[-1]["event_ts"]
    assert store.coverage("ETHUSDT", TRADE, H23) == ((first, H00),)
    assert store.coverage("ETHUSDT", TRADE, H00) == ((H00, last + 1),)
    assert written(TRADE, H23).partial and written(TRADE, H00).partial
    bba = store.read_hour("ETHUSDT", BBA, H00)
    assert store.coverage("ETHUSDT", BBA, H00) == ((H00, bba[-1]["event_ts"] + 1),)
    assert store.coverage("ETHUSDT", DEPTH_SNAPSHOT, H23) == ((H23, H00),)
    assert not written(DEPTH_SNAPSHOT, H23).partial
    # the object says so in its S3 metadata, in ms from the start of its hour
    head = aws_client("s3", aws_settings).head_object(
        Bucket=aws_settings.bucket, Key=written(TRADE, H00).key
    )
    assert head["Metadata"]["coverage"] == f"[[0,{last + 1 - H00}]]"


def test_cli_load_capture(aws, monkeypatch, capsys) -> None:
    from ingest_pipeline.cli import main

    monkeypatch.setenv("INGEST_ENV", "local")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
    path = CAPTURES / "ethusdt_20240809.gz"
    assert main(["load-capture", str(path), "--symbols", "ETHUSDT"]) == 0
    out = capsys.readouterr().out
    assert "0 rejected" in out and "/ETHUSDT/trade/" in out and "BTCUSDT" not in out
    store = BronzeStore(aws_client("s3", aws.settings), aws.settings.bucket, "bronze")
    assert store.read_hour("ETHUSDT", TRADE, H00)
