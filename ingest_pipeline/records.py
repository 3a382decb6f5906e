"""Normalized record types shared by bronze, Kinesis and features (SPEC §2), and the registry
of data types (``REGISTRY``: each type's record, key, time field, sources and Kinesis route).

Records are plain dicts typed with ``TypedDict``: they are built by the million on hot paths and
serialized straight to JSON, so a class per record would only add allocation and conversion.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NotRequired, TypedDict

from ingest_pipeline.timeutil import HOUR_MS


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


def kline_interval(data_type: str) -> str | None:
    """The interval of a ``klines_<interval>`` type (``klines_1m`` -> ``1m``); None otherwise."""
    return data_type[len(KLINES_PREFIX) :] if data_type.startswith(KLINES_PREFIX) else None


Record = dict[str, Any]
RecordKey = Callable[[Record], Hashable]

# --- the registry of data types ------------------------------------------------------------
#
# One entry per bronze data type says what the rest of the code needs to know about it: its
# record, key, time field, where it comes from and which Kinesis stream carries it. Bronze,
# the archive source, the streamer, the stream archive, online features and quality read it
# here, so adding or changing a type is an edit of this table (plus its TypedDict). Tables
# that remain elsewhere (a source's wire format, an asset's checks) are keyed by these names
# and checked against the registry by ingest_pipeline_tests/test_records_registry.py.

# Kinesis routes: the streams the streamer writes, one per kind of live data; the settings
# name the stream of each (``Settings.kinesis_routes``).
ROUTE_TRADE = "trade"
ROUTE_BBA = "bba"
ROUTE_DEPTH = "depth"
ROUTES = (ROUTE_TRADE, ROUTE_BBA, ROUTE_DEPTH)

# The registry's name of the klines family: its data types are ``klines_<interval>``.
KLINES = "klines"
_DAY_MS = 24 * HOUR_MS
# Width of each Binance kline interval ("1M", calendar months, has none).
KLINE_WIDTH_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000,
    "30m": 1_800_000, "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": _DAY_MS, "3d": 3 * _DAY_MS, "1w": 7 * _DAY_MS,
}  # fmt: skip
# The intervals bronze can hold: those that tile an hour, so that each hourly object is exactly
# the hour's klines and can be checked against the hour's trades. The longer ones (2h .. 1M)
# open in some hours only and cover trades of several: the settings refuse them.
KLINE_INTERVALS = tuple(i for i, w in KLINE_WIDTH_MS.items() if HOUR_MS % w == 0)

_AGG_ONLY = frozenset({"first_trade_id", "last_trade_id"})


@dataclass(frozen=True)
class DataType:
    """One bronze data type. Its ``name`` is also the S3 path segment and the last part of its
    asset key (``klines`` stands for its family: ``klines_<interval>``, one per interval)."""

    name: str
    # The TypedDict of its records.
    record: type
    # The record key: identity for deduplication and the sort order of a bronze object. Within
    # one object (one symbol, one type) every part but the last is constant.
    key_fields: tuple[str, ...]
    # The field (epoch ms) whose value places a record in its hour.
    time_field: str
    # Where its records come from: the REST endpoint (GET path), the public archive's folder
    # (``data/spot/daily/<folder>/``), the WebSocket stream (``<symbol>@<ws>``).
    rest: str | None = None
    archive: str | None = None
    ws: str | None = None
    # The Kinesis stream that carries its records (one of ``ROUTES``; None: not on Kinesis).
    route: str | None = None
    # Fields of ``record`` its records may lack, and those they never carry (``NotRequired``
    # in the TypedDict either way: a record shared by several types).
    optional: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()
    # klines: the intervals bronze can hold.
    intervals: tuple[str, ...] = ()

    @property
    def id_field(self) -> str:
        """The field that identifies and orders a record among those of one symbol and type:
        the last field of the key (Binance's id; a kline's open time)."""
        return self.key_fields[-1]

    @cached_property
    def key(self) -> RecordKey:
        """The record key of a record: the tuple of its ``key_fields``."""
        return operator.itemgetter(*self.key_fields)

    def fields(self) -> dict[str, Any]:
        """The record's fields and their types, in declaration order, without ``absent``."""
        hints = typing.get_type_hints(self.record)
        return {name: tp for name, tp in hints.items() if name not in self.absent}


REGISTRY = (
    DataType(
        AGG_TRADES, MarketTrade, ("symbol", "trade_id"), "event_ts",
        rest="/api/v3/aggTrades", archive="aggTrades",
    ),
    DataType(
        TRADES, MarketTrade, ("symbol", "trade_id"), "event_ts",
        rest="/api/v3/historicalTrades", archive="trades", absent=_AGG_ONLY,
    ),
    DataType(
        KLINES, Kline, ("symbol", "interval", "open_time"), "open_time",
        rest="/api/v3/klines", archive="klines", intervals=KLINE_INTERVALS,
    ),
    # The streamer fills the trade ids it missed from historicalTrades.
    DataType(
        TRADE, MarketTrade, ("symbol", "trade_id"), "event_ts",
        rest="/api/v3/historicalTrades", ws="trade", route=ROUTE_TRADE, absent=_AGG_ONLY,
    ),
    # Spot bookTicker carries no exchange time: event_ts is the receive time.
    DataType(
        BBA, BestBidAsk, ("symbol", "update_id"), "event_ts", ws="bookTicker", route=ROUTE_BBA
    ),
    DataType(
        DEPTH_DELTA, DepthDelta, ("symbol", "final_update_id"), "event_ts",
        ws="depth@100ms", route=ROUTE_DEPTH, optional=frozenset({"gap"}),
    ),
    # Captured hourly from REST; the streamer also publishes one on the depth stream after each
    # start and chain gap (a resync point for every book downstream).
    DataType(
        DEPTH_SNAPSHOT, DepthSnapshot, ("symbol", "last_update_id"), "timestamp",
        rest="/api/v3/depth", route=ROUTE_DEPTH,
    ),
)  # fmt: skip
_BY_NAME = {t.name: t for t in REGISTRY}
# The types the streamer reads from the WebSocket, in the order it reports them.
STREAMED = tuple(t for t in REGISTRY if t.ws is not None)


def datatype(data_type: str) -> DataType:
    """The registry entry of a bronze data type (``klines_<interval>``: the klines entry)."""
    if data_type.startswith(KLINES_PREFIX):
        return _BY_NAME[KLINES]
    try:
        return _BY_NAME[data_type]
    except KeyError:
        raise ValueError(f"unknown data type {data_type!r}") from None


def on_route(route: str) -> tuple[DataType, ...]:
    """The types whose records travel on the Kinesis stream of ``route``."""
    return tuple(t for t in REGISTRY if t.route == route)


def live_type(route: str) -> DataType:
    """The WebSocket type a route exists for (the depth stream also carries snapshots)."""
    (streamed,) = (t for t in on_route(route) if t.ws is not None)
    return streamed


def record_key(data_type: str) -> RecordKey:
    """The deduplication / sort key of a bronze data type (SPEC §2 "Record keys")."""
    return datatype(data_type).key


def time_field(data_type: str) -> str:
    """The field whose value (epoch ms) decides which hour a record belongs to."""
    return datatype(data_type).time_field


def id_field(data_type: str) -> str:
    """The field that identifies a record among those of one symbol and data type."""
    return datatype(data_type).id_field
