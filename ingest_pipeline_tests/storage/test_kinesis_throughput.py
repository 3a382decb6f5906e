"""Producer throughput in the same run: into a no-op client (the producer's own cost) and into
the moto server (the emulator's cost dominates). Printed with ``-s``; the floors only catch a
gross regression on a 2-core machine."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ingest_pipeline.aws import aws_client
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.kinesis import KinesisProducer, NoopKinesisClient, ProducerConfig
from ingest_pipeline_tests.storage.test_kinesis import client_for, read_stream

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")


def trade(i: int) -> tuple[str, bytes]:
    sym = SYMBOLS[i % len(SYMBOLS)]
    rec = {
        "k": sym,
        "i": i // len(SYMBOLS),
        "event_ts": 1722470400000 + i,
        "price": "64123.45",
        "qty": "0.00123",
        "is_buyer_maker": bool(i & 1),
    }
    return sym, orjson.dumps(rec)


def rate(producer: KinesisProducer, streams: list[str], n: int) -> tuple[float, float]:
    """Records/s accepted by ``put`` alone, and end to end until flushed."""
    payloads = [trade(i) for i in range(n)]
    t0 = time.perf_counter()
    for i, (sym, data) in enumerate(payloads):
        producer.put(streams[i % len(streams)], sym, data)
    t_put = time.perf_counter() - t0
    assert producer.flush(60)
    t_all = time.perf_counter() - t0
    return n / t_put, n / t_all


def test_throughput_noop_vs_moto(aws: EmbeddedAWS, tmp_path: Path) -> None:
    cfg = ProducerConfig(linger_s=0.05)
    with KinesisProducer(NoopKinesisClient(), tmp_path / "noop", cfg) as noop:
        noop_put, noop_all = rate(noop, ["a", "b", "c"], 200_000)

    kinesis: Any = aws_client("kinesis", aws.settings)
    streams = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for s in streams:
        kinesis.create_stream(StreamName=s, ShardCount=1)
    for s in streams:
        kinesis.get_waiter("stream_exists").wait(StreamName=s, WaiterConfig={"Delay": 0.1})
    with KinesisProducer(client_for(aws.endpoint_url), tmp_path / "moto", cfg) as moto:
        moto_put, moto_all = rate(moto, streams, 6000)
    assert sum(len(read_stream(kinesis, s).counts) for s in streams) == 6000
    for s in streams:
        kinesis.delete_stream(StreamName=s)

    print(
        f"\nproducer throughput (records/s): no-op put {noop_put:,.0f}, no-op end-to-end "
        f"{noop_all:,.0f}; moto put {moto_put:,.0f}, moto end-to-end {moto_all:,.0f}"
    )
    assert noop_all > 20_000
    assert moto_all > 500
