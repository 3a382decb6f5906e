"""Unit tests of the streamer's pieces: no sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_pipeline.binance.stream import (
    AttemptLimiter,
    ShardConnection,
    StreamConfig,
    combined_url,
    shard_streams,
    stream_names,
)
from ingest_pipeline.settings import load_settings
from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.storage.kinesis import ProducerStats
from ingest_pipeline.streaming import Streamer, StreamerConfig
from ingest_pipeline.streaming.deadletter import DeadLetterWriter
from ingest_pipeline.streaming.streamer import DedupWindow


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def put(self, stream: str, partition_key: str, data: bytes) -> None:
        self.records.append((stream, partition_key, orjson.loads(data)))

    def flush(self, timeout_s: float = 0) -> bool:
        return True

    def close(self, timeout_s: float = 0) -> bool:
        return True

    def stats(self) -> ProducerStats:
        n = len(self.records)
        return ProducerStats(n, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                             CircuitState.CLOSED, 0, 0)  # fmt: skip


def make(tmp_path: Path) -> tuple[Streamer, ListSink]:
    settings = load_settings("local", environ={})
    sink = ListSink()
    cfg = StreamerConfig(deadletter_dir=str(tmp_path / "dl"), spill_dir=str(tmp_path / "sp"))
    return Streamer(settings, cfg, producer=sink), sink


def wrap(stream: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def depth(U: int, u: int, sym: str = "BTCUSDT") -> bytes:
    data = {"e": "depthUpdate", "E": 1, "s": sym, "U": U, "u": u, "b": [["1.0", "0"]], "a": []}
    return wrap(f"{sym.lower()}@depth@100ms", data)


def trade(t: int, sym: str = "BTCUSDT") -> bytes:
    data = {"e": "trade", "E": 1, "s": sym, "t": t, "p": "1.5", "q": "2", "T": 5, "m": True}
    return wrap(f"{sym.lower()}@trade", data)


def test_urls_and_sharding() -> None:
    assert stream_names(["BTCUSDT"]) == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "btcusdt@depth@100ms",
    ]
    assert (
        combined_url("ws://h:1/", ["a@trade", "b@trade"])
        == "ws://h:1/stream?streams=a@trade/b@trade"
    )
    symbols = [f"S{i}USDT" for i in range(700)]
    shards = shard_streams(symbols)
    assert [len(s) for s in shards] == [1023, 1023, 54]  # 341 symbols x 3 streams per shard
    assert sum(shards, []) == stream_names(symbols)
    with pytest.raises(ValueError):
        combined_url("ws://h", ["x"] * 1025)


def test_attempt_limiter_caps_attempts_per_window() -> None:
    now = [0.0]
    lim = AttemptLimiter(max_attempts=300, window_s=300.0, clock=lambda: now[0])

    async def burst() -> None:
        for _ in range(300):
            await lim.acquire()

    asyncio.run(burst())
    assert lim.delay() == pytest.approx(300.0)
    now[0] = 150.0
    assert lim.delay() == pytest.approx(150.0)
    now[0] = 300.0
    assert lim.delay() == 0.0


def test_backoff_is_capped_full_jitter() -> None:
    async def check() -> None:
        cfg = StreamConfig(backoff_base_s=0.5, backoff_max_s=30.0)
        sc = ShardConnection(0, "ws://x", ["a@trade"], lambda *a: False, None, AttemptLimiter(),
                             cfg, random.Random(1))  # type: ignore[arg-type]  # fmt: skip
        assert sc.backoff_delay() == 0.0
        for failures, cap in ((1, 1.0), (3, 4.0), (10, 30.0), (60, 30.0)):
            sc.failures = failures
            delays = [sc.backoff_delay() for _ in range(2000)]
            assert 0 <= min(delays) < cap * 0.05 and cap * 0.95 < max(delays) <= cap

    asyncio.run(check())


def test_dedup_window_is_bounded() -> None:
    w = DedupWindow(3)
    assert [w.add(k) for k in (1, 2, 1, 3, 4)] == [True, True, False, True, True]
    assert len(w) == 3 and w.add(1)  # 1 fell out of the window


def test_routing_dedup_and_depth_gaps(tmp_path: Path) -> None:
    s, sink = make(tmp_path)
    for frame in (trade(10), trade(10), depth(1, 5), depth(6, 9), depth(6, 9), depth(15, 20),
                  depth(21, 22), depth(3, 4)):  # fmt: skip
        assert s.on_frame(frame, 1000) is False
    bba = {"u": 7, "s": "ETHUSDT", "b": "1", "B": "2", "a": "3", "A": "4"}
    s.on_frame(wrap("ethusdt@bookTicker", bba), 1000)
    streams = [(st, pk) for st, pk, _ in sink.records]
    assert streams[0] == ("binance-trade-local", "BTCUSDT")
    assert streams[-1] == ("binance-bba-local", "ETHUSDT")
    diffs = [r for st, _, r in sink.records if st == "binance-depth-local"]
    assert [(d["first_update_id"], d.get("gap")) for d in diffs] == [
        (1, None),
        (6, None),
        (15, True),
        (21, None),
        (3, None),
    ]
    assert s.duplicates == {"trade": 1, "bba": 0, "depth_delta": 1}
    assert s.gaps["BTCUSDT"] == 1 and s.counts["depth_stale"] == 1
    assert sink.records[0][2]["ingest_ts"] == 1000


def test_malformed_and_control_frames(tmp_path: Path) -> None:
    s, sink = make(tmp_path)
    bad = [b'{"stream":"btcusdt@trade","data":{"e":"trade"', trade(1, "DOGEUSDT"),
           b"\xff\xfe", b'{"stream":"x@kline_1m","data":{"e":"aggTrade","E":1,"s":"BTCUSDT",'
           b'"a":1,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}}']  # fmt: skip
    for frame in bad:
        s.on_frame(frame, 3_600_000 * 5)
    assert s.on_frame(b'{"result":null,"id":1}', 1) is False
    assert s.on_frame(b'{"e":"serverShutdown","E":1}', 1) is True
    assert not sink.records and s.counts["malformed"] == 4 and s.counts["control"] == 1
    (f,) = (tmp_path / "dl").glob("*.jsonl")
    assert f.name == "ws-deadletter-1970010105.jsonl"
    lines = [orjson.loads(x) for x in f.read_bytes().splitlines()]
    assert [x["raw"] for x in lines][:2] == [bad[0].decode(), bad[1].decode()]
    assert lines[2]["raw_encoding"] == "base64"
    assert "unexpected symbol" in lines[1]["reason"] and "agg_trade" in lines[3]["reason"]


def test_dead_letter_rotates_hourly(tmp_path: Path) -> None:
    w = DeadLetterWriter(tmp_path)
    w.write("a", "x", 3_600_000 * 10 + 5)
    w.write("b", "y", 3_600_000 * 11)
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ws-deadletter-1970010110.jsonl",
        "ws-deadletter-1970010111.jsonl",
    ]


def test_health_before_start(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    h = s.health()
    assert h["status"] == "down" and h["reasons"] == ["streamer created"]
    assert dataclasses.is_dataclass(s.cfg)
