"""Load the real Binance captures (``data/binance-capture`` in the repository) as records in arrival
order: ``(data_type, record)`` with data types of ``ingest_pipeline.records``."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from ingest_pipeline.binance.normalize import (
    AGG_TRADE,
    KLINE,
    depth_snapshot_from_rest,
    parse_ws_message,
)
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT
from ingest_pipeline_tests.paths import CAPTURES

KLINE_TYPE = "klines_1m"


def _hftbacktest_lines(symbol: str) -> Iterator[tuple[int, bytes]]:
    for day in ("20240808", "20240809"):
        with gzip.open(CAPTURES / f"{symbol.lower()}_{day}.gz", "rb") as fh:
            for line in fh:
                ns, _, payload = line.partition(b" ")
                yield int(ns) // 1_000_000, payload


@lru_cache(maxsize=4)
def capture_records(symbol: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """BTCUSDT / ETHUSDT session (both files), in arrival order. The REST snapshot line gets
    ``timestamp = ingest_ts`` = its receive time (the recorder kept no server time)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for recv_ms, payload in _hftbacktest_lines(symbol):
        if payload.startswith(b'{"lastUpdateId"'):
            raw = orjson.loads(payload)
            out.append((DEPTH_SNAPSHOT, depth_snapshot_from_rest(raw, symbol, recv_ms, recv_ms)))
            continue
        data_type, record = parse_ws_message(payload, recv_ms)
        out.append((data_type, record))
    return tuple(out)


_WS_LINE = re.compile(rb"^(\d+\.\d+): (.*)$")
_HTTP_LINE = re.compile(rb"^https://\S+symbol=(\w+)&\S* -> (\d+\.\d+): (.*)$")


def cryptofeed_records(root: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The cryptofeed 2021 sample: snapshots (http file) and WS messages merged by receive
    time. aggTrades become trades, klines ``klines_1m``."""
    root = root or CAPTURES / "cryptofeed-2021"
    items: list[tuple[float, int, str, dict[str, Any]]] = []
    seq = 0
    for line in (root / "BINANCE.http.0.0").read_bytes().splitlines():
        m = _HTTP_LINE.match(line)
        if not m:
            continue
        symbol = m.group(1).decode()
        recv = float(m.group(2))
        snap = depth_snapshot_from_rest(
            orjson.loads(m.group(3)), symbol, int(recv * 1000), int(recv * 1000)
        )
        items.append((recv, seq, DEPTH_SNAPSHOT, snap))
        seq += 1
    for line in (root / "BINANCE.ws.1.0").read_bytes().splitlines()[1:]:
        m = _WS_LINE.match(line)
        if not m:
            continue
        recv = float(m.group(1))
        data_type, record = parse_ws_message(m.group(2), int(recv * 1000))
        if data_type == AGG_TRADE:
            data_type = AGG_TRADES
        elif data_type == KLINE:
            data_type = KLINE_TYPE
        items.append((recv, seq, data_type, record))
        seq += 1
    items.sort(key=lambda t: (t[0], t[1]))
    return [(dt, rec) for _, _, dt, rec in items]
