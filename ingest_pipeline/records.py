"""Normalized record types shared by bronze, Kinesis and features (SPEC §2).

Records are plain dicts typed with ``TypedDict``: they are built by the million on hot paths and
serialized straight to JSON, so a class per record would only add allocation and conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NotRequired, TypedDict


class MalformedPayload(ValueError):
    """A Binance payload that cannot become a record; carries the reason and the raw payload."""

    def __init__(self, reason: str, raw: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class MarketTrade(TypedDict):
    symbol: str
    event_ts: int
    ingest_ts: int
    trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool
    source: str
    # aggTrades only: the range of individual trade ids the aggregate covers.
    first_trade_id: NotRequired[int]
    last_trade_id: NotRequired[int]


class BestBidAsk(TypedDict):
    symbol: str
    # Spot bookTicker carries no exchange time: event_ts is the receive time (== ingest_ts).
    event_ts: int
    ingest_ts: int
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    source: str
    update_id: int


class DepthDelta(TypedDict):
    symbol: str
    event_ts: int
    ingest_ts: int
    # [price, size] decimal strings exactly as Binance sent them; size "0" removes a level.
    bids: list[list[str]]
    asks: list[list[str]]
    source: str
    first_update_id: int
    final_update_id: int
    # Set (true) by the streamer on the first diff after a gap (U != previous u + 1) in the
    # symbol's diff chain: the book must be re-synced from a new snapshot. Absent otherwise.
    gap: NotRequired[bool]


class Kline(TypedDict):
    open_time: int
    close_time: int
    open_price: float
    high_price: float
    low_price: float
    close_price: float
    volume: float
    quote_volume: float
    trade_count: int
    taker_buy_base_volume: float
    taker_buy_quote_volume: float
    symbol: str
    interval: str
    ingest_ts: int


class DepthSnapshot(TypedDict):
    symbol: str
    timestamp: int
    ingest_ts: int
    last_update_id: int
    bids: list[list[str]]
    asks: list[list[str]]
    source: str


# Field the streamer adds to every record it puts on Kinesis: the epoch of the lease it held
# (streaming/lease.py), so a consumer or an audit can tell which process produced a record.
# Not part of the records themselves: the stream archive drops it before bronze.
PRODUCER_EPOCH = "epoch"

SOURCE_REST = "rest"
# Name kept from the original design, which planned Binance's binary (SBE) stream.
SOURCE_WS = "sbe"

AGG_TRADES = "agg_trades"
TRADES = "trades"
DEPTH_SNAPSHOT = "depth_snapshot"
TRADE = "trade"
BBA = "bba"
DEPTH_DELTA = "depth_delta"
KLINES_PREFIX = "klines_"


def klines_type(interval: str) -> str:
    """Bronze data type of the klines of one interval, e.g. ``klines_1m``."""
    return f"{KLINES_PREFIX}{interval}"


Record = dict[str, Any]
RecordKey = Callable[[Record], Hashable]


def _trade_key(r: Record) -> Hashable:
    return (r["symbol"], r["trade_id"])


def _kline_key(r: Record) -> Hashable:
    return (r["symbol"], r["interval"], r["open_time"])


def _bba_key(r: Record) -> Hashable:
    return (r["symbol"], r["update_id"])


def _depth_delta_key(r: Record) -> Hashable:
    return (r["symbol"], r["final_update_id"])


def _snapshot_key(r: Record) -> Hashable:
    return (r["symbol"], r["last_update_id"])


_KEYS: dict[str, RecordKey] = {
    AGG_TRADES: _trade_key,
    TRADES: _trade_key,
    TRADE: _trade_key,
    BBA: _bba_key,
    DEPTH_DELTA: _depth_delta_key,
    DEPTH_SNAPSHOT: _snapshot_key,
}

# The field that places a record in an hour partition.
_TIME_FIELDS: dict[str, str] = {
    AGG_TRADES: "event_ts",
    TRADES: "event_ts",
    TRADE: "event_ts",
    BBA: "event_ts",
    DEPTH_DELTA: "event_ts",
    DEPTH_SNAPSHOT: "timestamp",
}


def record_key(data_type: str) -> RecordKey:
    """The deduplication / sort key of a bronze data type (SPEC §2 "Record keys")."""
    if data_type.startswith(KLINES_PREFIX):
        return _kline_key
    try:
        return _KEYS[data_type]
    except KeyError:
        raise ValueError(f"unknown data type {data_type!r}") from None


def time_field(data_type: str) -> str:
    """The field whose value (epoch ms) decides which hour a record belongs to."""
    if data_type.startswith(KLINES_PREFIX):
        return "open_time"
    try:
        return _TIME_FIELDS[data_type]
    except KeyError:
        raise ValueError(f"unknown data type {data_type!r}") from None


# The field that orders and identifies a record within one object (one symbol, one type):
# the last element of its record key.
_ID_FIELDS: dict[str, str] = {
    AGG_TRADES: "trade_id",
    TRADES: "trade_id",
    TRADE: "trade_id",
    BBA: "update_id",
    DEPTH_DELTA: "final_update_id",
    DEPTH_SNAPSHOT: "last_update_id",
}


def id_field(data_type: str) -> str:
    """The field that identifies a record among those of one symbol and data type."""
    if data_type.startswith(KLINES_PREFIX):
        return "open_time"
    try:
        return _ID_FIELDS[data_type]
    except KeyError:
        raise ValueError(f"unknown data type {data_type!r}") from None
