"""The online feature consumer against the real moto server: rows equal the offline form's."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.features import GridRange, SymbolInputs, compute_features, rows_to_frame
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.streaming.online_features import OnlineFeatureConsumer, row_json
from ingest_pipeline.timeutil import now_ms

SYM = "OFTESTUSDT"
MINUTES = 3


def synthetic(t0: int, end: int, seed: int = 11) -> tuple[list[dict], list[dict]]:
    """Trades and BBAs of ``[t0, end)`` shaped like the streamer's (source "sbe"), plus a few
    outside it; BBA ``event_ts`` is the receive time."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(t0 - 5_000, end + 5_000, 4 * (end - t0) // 1000))
    times[50:56] = times[50]  # a burst on one millisecond
    times = times[(times < t0 + 40_000) | (times > t0 + 55_000)]  # 15 s without trades
    trades, price = [], 100.0
    for i, t in enumerate(times.tolist()):
        price = round(price * float(np.exp(rng.normal(0, 3e-4))), 4)
        trades.append({
            "symbol": SYM, "event_ts": t, "ingest_ts": t + 30, "trade_id": 10_000 + i,
            "price": price, "qty": round(float(rng.exponential(0.2)) + 1e-4, 4),
            "is_buyer_maker": bool(rng.random() < 0.45), "source": "sbe",
        })  # fmt: skip
    bbas = []
    for u, t in enumerate(range(t0 + 1_000 + 137, end + 3_000, 700)):
        mid = 100 + float(np.sin(t / 7e4))
        bbas.append({
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "bid_px": round(mid - 0.01, 4),
            "bid_sz": float(rng.uniform(0.1, 3)), "ask_px": round(mid + 0.01, 4),
            "ask_sz": float(rng.uniform(0.1, 3)), "source": "sbe", "update_id": 500 + u,
        })  # fmt: skip
    return trades, bbas


def put(kinesis: Any, stream: str, records: list[dict]) -> None:
    for i in range(0, len(records), 500):
        batch = [
            {"Data": orjson.dumps(r), "PartitionKey": r.get("symbol", "X")}
            for r in records[i : i + 500]
        ]
        resp = kinesis.put_records(StreamName=stream, Records=batch)
        assert resp["FailedRecordCount"] == 0


@pytest.fixture
def streams(aws_settings: Settings) -> Settings:
    """Settings with three fresh streams of the test's own (trades on two shards)."""
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        aws_settings,
        kinesis_trade_stream=f"of-trade-{tag}",
        kinesis_bba_stream=f"of-bba-{tag}",
        kinesis_depth_stream=f"of-depth-{tag}",
    )
    kinesis = aws_client("kinesis", s)
    for name, shards in zip(s.kinesis_streams, (2, 1, 1), strict=True):
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    waiter = kinesis.get_waiter("stream_exists")
    for name in s.kinesis_streams:
        waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return s


def assert_parity(offline: pd.DataFrame, online: pd.DataFrame) -> None:
    assert list(offline.columns) == list(online.columns)
    assert offline["ts"].tolist() == online["ts"].tolist()
    for col in offline.columns[2:]:
        a, b = offline[col].to_numpy(), online[col].to_numpy()
        if col == "complete":
            assert (a == b).all(), col
            continue
        na, nb = np.isnan(a), np.isnan(b)
        assert (na == nb).all(), f"{col}: nulls differ at {np.flatnonzero(na != nb)[:5]}"
        np.testing.assert_allclose(a[~na], b[~na], rtol=1e-9, atol=1e-12, err_msg=col)


def test_consumer_rows_equal_offline(streams: Settings) -> None:
    kinesis = aws_client("kinesis", streams)
    t0 = (now_ms() // 60_000 - 10) * 60_000  # ten minutes ago, on the minute
    end = t0 + MINUTES * 60_000
    trades, bbas = synthetic(t0, end)
    other = [dict(t, symbol="OTHERUSDT", trade_id=t["trade_id"] + 10**6) for t in trades[:200]]
    # The trade stream is written (and so read) well ahead of the BBA stream: steps must not
    # close on the trades alone, or every BBA would be late.
    put(kinesis, streams.kinesis_trade_stream, other + trades)
    put(kinesis, streams.kinesis_bba_stream, bbas)
    kinesis.put_record(StreamName=streams.kinesis_bba_stream, Data=b"{not json",
                       PartitionKey=SYM)  # fmt: skip
    no_id = orjson.dumps({"symbol": SYM, "event_ts": t0 + 5})
    kinesis.put_record(StreamName=streams.kinesis_trade_stream, Data=no_id, PartitionKey=SYM)

    lines: list[bytes] = []
    s3 = aws_client("s3", streams)
    consumer = OnlineFeatureConsumer(
        kinesis,
        streams,
        lambda row: lines.append(row_json(row)),
        symbols=(SYM,),
        start_ms=t0,
        end_ms=end,
        bronze=BronzeStore(s3, streams.bucket, streams.bronze_prefix),  # empty: no snapshot
    )
    stop = threading.Event()
    timer = threading.Timer(25, stop.set)
    timer.start()
    try:
        consumer.run(stop)
    finally:
        timer.cancel()
    assert consumer.finished, consumer.summary()
    summary = consumer.summary()
    assert summary["malformed"] == {streams.kinesis_bba_stream: 1, streams.kinesis_trade_stream: 1}
    assert summary["late"] == {}
    assert summary["other_symbols"] == len(other)
    assert summary["before_start"] > 0 and summary["after_end"] > 0
    assert len(consumer._shards) == 4  # every shard of the three streams

    rows = [orjson.loads(line) for line in lines]
    assert all(r["symbol"] == SYM for r in rows)
    rows = [{k: (np.nan if v is None else v) for k, v in r.items()} for r in rows]
    online = rows_to_frame(rows)

    def inside(rs: list[dict]) -> list[dict]:
        return [r for r in rs if t0 <= r["event_ts"] < end]

    offline = compute_features(
        SYM, SymbolInputs(trades=inside(trades), bba=inside(bbas)), GridRange(t0, end, t0, end)
    ).frame
    assert len(offline) == MINUTES * 60
    assert_parity(offline, online)
    # the fixture exercises what it should
    assert offline["vwap"].isna().sum() >= 10  # the silent 15 s
    assert offline["mid"].notna().sum() > 150 and offline["ret_60s"].notna().any()
    assert offline["fwd_ret_60s"].isna().sum() >= 60  # labels past the end are null
    assert not offline["complete"].any()  # no book, no klines: no row is complete
    assert offline["depth_imbalance_5"].isna().all()  # no snapshot, no book


def test_cli_parser_has_features() -> None:
    from ingest_pipeline.cli import build_parser

    args = build_parser().parse_args(
        ["features", "--online", "--symbols", "BTCUSDT", "--from", "2024-08-09T00:00:00",
         "--duration", "5"]
    )  # fmt: skip
    # --from is parsed at the command line (a bad time is a usage error): epoch ms, UTC.
    assert args.online and args.from_ == 1723161600000 and args.duration == 5
