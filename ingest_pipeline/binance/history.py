"""One hour of history from Binance REST, normalized: the I/O edge between client and records.

Each function returns every record of its slice plus every payload that could not become a
record (with its reason), so a caller can land the one and dead-letter the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ingest_pipeline.binance.normalize import (
    agg_trade_from_rest,
    depth_snapshot_from_rest,
    kline_from_rest,
    normalize_page,
    trade_from_rest,
)
from ingest_pipeline.binance.rest import BinanceRestClient, Page, read_ahead
from ingest_pipeline.records import MalformedPayload, Record
from ingest_pipeline.timeutil import HOUR_MS


@dataclass
class Fetched:
    records: list[Record] = field(default_factory=list)
    # {"reason": ..., "raw": ...} for each payload that could not become a record.
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def add_pages(self, pages: Iterable[Page], fn: Callable[..., Record], **kwargs: Any) -> None:
        for page in pages:
            good, bad = normalize_page(fn, page.items, ingest_ts=page.received_ms, **kwargs)
            self.records.extend(good)
            self.rejects.extend({"reason": r.reason, "raw": r.raw} for r in bad)


def fetch_agg_trades(client: BinanceRestClient, symbol: str, hour_ms: int) -> Fetched:
    out = Fetched()
    out.add_pages(
        read_ahead(client.agg_trades_hour(symbol, hour_ms)), agg_trade_from_rest, symbol=symbol
    )
    return out


def fetch_trades(client: BinanceRestClient, symbol: str, first_id: int, last_id: int) -> Fetched:
    """The individual trades ``first_id..last_id`` (an hour's range comes from its aggTrades)."""
    out = Fetched()
    out.add_pages(
        read_ahead(client.historical_trades_range(symbol, first_id, last_id)),
        trade_from_rest,
        symbol=symbol,
    )
    return out


def fetch_klines(client: BinanceRestClient, symbol: str, interval: str, hour_ms: int) -> Fetched:
    out = Fetched()
    out.add_pages(
        client.klines(symbol, interval, hour_ms, hour_ms + HOUR_MS),
        kline_from_rest,
        symbol=symbol,
        interval=interval,
    )
    return out


def fetch_depth_snapshot(client: BinanceRestClient, symbol: str, limit: int) -> Fetched:
    """The live book, stamped with Binance's clock (local receive time + measured offset)."""
    time_page = client.get("/api/v3/time", {}, 1)
    offset = int(time_page.items["serverTime"]) - time_page.received_ms
    page = client.depth(symbol, limit)
    out = Fetched()
    try:
        out.records.append(
            depth_snapshot_from_rest(
                page.items, symbol, page.received_ms + offset, page.received_ms
            )
        )
    except MalformedPayload as exc:
        out.rejects.append({"reason": exc.reason, "raw": exc.raw})
    return out
