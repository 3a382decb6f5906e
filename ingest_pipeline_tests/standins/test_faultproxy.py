"""The fault proxy in front of the moto server: what passes, what is injected, and that a
throttled entry is really not stored."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.faultproxy import THROTTLE_CODE, FaultProxy
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.bronze import BronzeStore

ONE_ATTEMPT = Config(
    connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1, "mode": "standard"}
)


@pytest.fixture
def direct(aws: EmbeddedAWS) -> Any:
    return aws_client("kinesis", aws.settings)


@pytest.fixture
def stream(direct: Any) -> Iterator[str]:
    name = f"proxy-{uuid.uuid4().hex[:12]}"
    direct.create_stream(StreamName=name, ShardCount=1)
    direct.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
    yield name
    direct.delete_stream(StreamName=name)


def via(proxy: FaultProxy) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=ONE_ATTEMPT,
    )


def stored(direct: Any, stream: str) -> list[bytes]:
    shard = direct.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    it = direct.get_shard_iterator(
        StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return [r["Data"] for r in direct.get_records(ShardIterator=it, Limit=10_000)["Records"]]


def records(n: int) -> list[dict[str, Any]]:
    return [{"Data": b"r%d" % i, "PartitionKey": "BTCUSDT"} for i in range(n)]


def test_passes_requests_through(aws: EmbeddedAWS, direct: Any, stream: str) -> None:
    with FaultProxy(aws.endpoint_url) as proxy:
        out = via(proxy).put_records(StreamName=stream, Records=records(20))
        assert out["FailedRecordCount"] == 0
        assert via(proxy).describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert stored(direct, stream) == [b"r%d" % i for i in range(20)]
    assert proxy.put_records_batches == [(20, sum(len(b"r%d" % i) + 7 for i in range(20)))]


def test_throttled_entries_are_not_stored(aws: EmbeddedAWS, direct: Any, stream: str) -> None:
    with FaultProxy(aws.endpoint_url, seed=3) as proxy:
        proxy.throttle_fraction = 0.4
        out = via(proxy).put_records(StreamName=stream, Records=records(100))
    failed = [i for i, r in enumerate(out["Records"]) if r.get("ErrorCode") == THROTTLE_CODE]
    assert out["FailedRecordCount"] == len(failed) == proxy.counters["throttled_entries"]
    assert 20 < len(failed) < 60
    ok = [i for i, r in enumerate(out["Records"]) if "SequenceNumber" in r]
    assert len(ok) + len(failed) == 100
    assert stored(direct, stream) == [b"r%d" % i for i in ok]


def test_all_entries_throttled_is_answered_without_upstream(
    aws: EmbeddedAWS, direct: Any, stream: str
) -> None:
    with FaultProxy(aws.endpoint_url) as proxy:
        proxy.throttle_fraction = 1.0
        out = via(proxy).put_records(StreamName=stream, Records=records(5))
    assert out["FailedRecordCount"] == 5
    assert stored(direct, stream) == []


def test_same_seed_same_faults(aws: EmbeddedAWS, stream: str) -> None:
    def run() -> list[int]:
        with FaultProxy(aws.endpoint_url, seed=11) as proxy:
            proxy.throttle_fraction = 0.5
            out = via(proxy).put_records(StreamName=stream, Records=records(50))
        return [i for i, r in enumerate(out["Records"]) if "ErrorCode" in r]

    assert run() == run()


@pytest.mark.parametrize(
    ("fault", "error", "counter"),
    [
        ("error_5xx_fraction", botocore.exceptions.ClientError, "errors_5xx"),
        ("reset_fraction", botocore.exceptions.ConnectionClosedError, "resets"),
        ("unreachable", botocore.exceptions.ConnectionClosedError, "refused"),
    ],
)
def test_whole_call_faults(
    fault: str, error: type[Exception], counter: str, aws: EmbeddedAWS, direct: Any, stream: str
) -> None:
    with FaultProxy(aws.endpoint_url) as proxy:
        setattr(proxy, fault, True if fault == "unreachable" else 1.0)
        with pytest.raises(error) as exc:
            via(proxy).put_records(StreamName=stream, Records=records(3))
        if fault == "error_5xx_fraction":
            assert exc.value.response["Error"]["Code"] in ("InternalFailure", "ServiceUnavailable")
        proxy.reset_faults()
        via(proxy).put_records(StreamName=stream, Records=records(1))
    assert proxy.counters[counter] == 1
    # The failed call was never forwarded.
    assert stored(direct, stream) == [b"r0"]


def test_stall_delays_the_answer_after_the_upstream_call(
    aws: EmbeddedAWS, direct: Any, stream: str
) -> None:
    with FaultProxy(aws.endpoint_url) as proxy:
        proxy.stall_seconds = 0.4
        t0 = time.monotonic()
        via(proxy).put_records(StreamName=stream, Records=records(1))
        assert time.monotonic() - t0 >= 0.4
        proxy.stall_seconds = 1.5
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            via(proxy).put_records(StreamName=stream, Records=records(2))
    assert proxy.counters["stalls"] == 2
    # The timed-out call was stored: the client cannot know, hence at-least-once.
    assert stored(direct, stream) == [b"r0", b"r0", b"r1"]


HOUR = 1_723_161_600_000  # 2024-08-09 00:00 UTC


def test_head_through_the_proxy_keeps_content_length_and_a_rerun_is_unchanged(
    aws_settings: Settings,
) -> None:
    """S3 HEAD answers carry the object's size with no body; the proxy used to drop it (so
    ``ContentLength`` read 0) and a bronze re-run through it reported a 0-byte object."""
    direct = aws_client("s3", aws_settings)
    body = bytes(range(256)) * 37  # 9472 bytes, not text: passed byte for byte
    direct.put_object(Bucket=aws_settings.bucket, Key="k/object.bin", Body=body)
    with FaultProxy(aws_settings.aws_endpoint_url or "") as proxy:
        proxied = dataclasses.replace(aws_settings, aws_endpoint_url=proxy.url)
        s3 = aws_client("s3", proxied)
        head = s3.head_object(Bucket=aws_settings.bucket, Key="k/object.bin")
        assert head["ContentLength"] == len(body)
        assert (
            head["ETag"]
            == direct.head_object(Bucket=aws_settings.bucket, Key="k/object.bin")["ETag"]
        )
        got = s3.get_object(Bucket=aws_settings.bucket, Key="k/object.bin")
        assert got["ContentLength"] == len(body) and got["Body"].read() == body

        store = BronzeStore(s3, aws_settings.bucket, aws_settings.bronze_prefix)
        # aggTrades carry the range of trade ids they aggregate (their object's HEAD says it).
        records = [
            {
                "symbol": "BTCUSDT",
                "trade_id": i,
                "first_trade_id": 2 * i,
                "last_trade_id": 2 * i + 1,
                "event_ts": HOUR + i,
                "ingest_ts": HOUR + i,
            }
            for i in range(50)
        ]
        first = store.write_hour("BTCUSDT", AGG_TRADES, HOUR, records)
        again = store.write_hour("BTCUSDT", AGG_TRADES, HOUR, records)
    assert first.action == "created" and again.action == "unchanged"
    assert again.bytes == first.bytes > 0
