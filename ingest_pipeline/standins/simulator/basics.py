"""What the simulator's market, REST, WebSocket, archive and replay share: units and limits,
deterministic hashing, exact decimal formatting, the symbol spec, the value types of generated
data, a small LRU and the kline calendar (Binance's candle boundaries, weeks on Monday, 1M by
calendar month). Pure: no I/O, no clock."""

from __future__ import annotations

import calendar
import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import numpy as np

HOUR_MS = 3_600_000
BATCH_MS = 100
BATCHES_PER_HOUR = HOUR_MS // BATCH_MS
MAX_BOOK_LEVELS = 5000
GENESIS_MS = 1_499_990_400_000  # 2017-07-14T00:00:00Z
PRICE_DECIMALS = 8  # Binance writes every price/qty/volume with 8 decimals

MASK64 = (1 << 64) - 1

# Kline intervals that divide an hour are aggregated straight from trades; longer ones from
# per-hour summaries. 1M is calendar based and handled apart.
KLINE_INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": 24 * HOUR_MS,
    "3d": 72 * HOUR_MS,
    "1w": 168 * HOUR_MS,
}
KLINE_INTERVALS: tuple[str, ...] = (*KLINE_INTERVAL_MS, "1M")
# 1970-01-01 was a Thursday; Binance weeks open on Monday 00:00 UTC.
_WEEK_OFFSET_MS = 4 * 24 * HOUR_MS


def stable_u64(text: str) -> int:
    """64-bit hash of a string that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def mix64(x: int) -> int:
    """splitmix64 finalizer on Python ints: cheap O(1) per-index randomness."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def unit(key: int, i: int) -> float:
    """Uniform [0, 1) drawn from (key, i)."""
    return (mix64(key ^ mix64(i & MASK64)) >> 11) * (1.0 / (1 << 53))


def mix_np(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (numpy wraps on overflow, which is what we want)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def decimals_of(step: str) -> int:
    """Decimals of a power-of-ten step written as a string ("0.01" -> 2, "1" -> 0)."""
    value = float(step)
    dec = round(-math.log10(value))
    if dec < 0 or abs(value - 10.0**-dec) > 1e-15:
        raise ValueError(f"step {step!r} must be a power of ten <= 1")
    return dec


def format_units(units: int, decimals: int) -> str:
    """Integer ``units`` of 10**-decimals as Binance's 8-decimal string."""
    if decimals <= PRICE_DECIMALS:
        v = units * 10 ** (PRICE_DECIMALS - decimals)
    else:  # round half to even, as Decimal quantize would
        q, r = divmod(units, 10 ** (decimals - PRICE_DECIMALS))
        half = 10 ** (decimals - PRICE_DECIMALS) // 2
        v = q + (1 if r > half or (r == half and q % 2) else 0)
    return f"{v // 10**PRICE_DECIMALS}.{v % 10**PRICE_DECIMALS:08d}"


@dataclass(frozen=True)
class SymbolSpec:
    """One listed symbol and the knobs of its synthetic market."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    base_price: float = 40_000.0
    trades_per_hour: int = 60_000
    seed: int = 0
    trade_notional: float = 500.0  # mean quote value of one trade
    hourly_vol: float = 0.004  # std of the log price over an hour

    def __post_init__(self) -> None:
        if self.trades_per_hour < 10:
            raise ValueError("trades_per_hour must be >= 10")
        decimals_of(self.tick_size)
        decimals_of(self.step_size)

    @property
    def price_decimals(self) -> int:
        return decimals_of(self.tick_size)

    @property
    def qty_decimals(self) -> int:
        return decimals_of(self.step_size)


def default_universe(extra_symbols: int = 0) -> list[SymbolSpec]:
    """The default listed symbols, plus ``extra_symbols`` generated ones for scale tests."""
    specs = [
        SymbolSpec("BTCUSDT", "BTC", "USDT", "0.01", "0.00001", 40_000.0, 60_000),
        SymbolSpec("ETHUSDT", "ETH", "USDT", "0.01", "0.0001", 2_500.0, 40_000),
        SymbolSpec("BNBUSDT", "BNB", "USDT", "0.01", "0.001", 400.0, 8_000),
        SymbolSpec("SOLUSDT", "SOL", "USDT", "0.01", "0.001", 100.0, 10_000),
        SymbolSpec("XRPUSDT", "XRP", "USDT", "0.0001", "0.1", 0.6, 6_000),
        # A real Binance listing whose base asset is not ASCII: URL-encoded in requests.
        SymbolSpec("币安人生USDT", "币安人生", "USDT", "0.0001", "1", 0.15, 3_000),
    ]
    for i in range(1, extra_symbols + 1):
        base = f"SYM{i:04d}"
        price = 1.0 + 99.0 * unit(stable_u64(base), 0)
        specs.append(SymbolSpec(f"{base}USDT", base, "USDT", "0.0001", "0.1", price, 500))
    return specs


@dataclass(frozen=True)
class HourData:
    """All trades and aggTrades of one hour, as parallel arrays (trades sorted by id)."""

    hour: int
    first_trade_id: int
    first_agg_id: int
    time: np.ndarray  # int64 ms, non-decreasing
    price: np.ndarray  # int64 ticks
    qty: np.ndarray  # int64 steps
    buyer_maker: np.ndarray  # bool
    agg_first: np.ndarray  # int64 local trade index of each aggTrade's first trade
    agg_last: np.ndarray
    agg_qty: np.ndarray  # int64 steps

    @property
    def n_trades(self) -> int:
        return int(self.time.size)

    @property
    def n_aggs(self) -> int:
        return int(self.agg_first.size)

    def visible_trades(self, now_ms: int) -> int:
        """How many of the hour's trades have happened by ``now_ms`` (inclusive)."""
        return int(np.searchsorted(self.time, now_ms, side="right"))

    def visible_aggs(self, now_ms: int) -> int:
        return int(np.searchsorted(self.time[self.agg_first], now_ms, side="right"))


@dataclass(frozen=True)
class Trades:
    """A selection of trades, ready to be written out."""

    ids: np.ndarray
    time: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    buyer_maker: np.ndarray


@dataclass(frozen=True)
class AggTrades:
    ids: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    first_id: np.ndarray
    last_id: np.ndarray
    time: np.ndarray
    buyer_maker: np.ndarray


@dataclass(frozen=True)
class Kline:
    """One candle; money in integer units (price ticks, qty steps, quote = ticks*steps)."""

    open_time: int
    close_time: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    quote_volume: int
    count: int
    taker_buy_volume: int
    taker_buy_quote: int


@dataclass(frozen=True)
class Book:
    """Order book at one depth batch: levels best first, as (ticks, steps) arrays."""

    batch: int
    last_update_id: int
    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray


@dataclass(frozen=True)
class DepthDiff:
    """Changed levels between two consecutive batches (a ``depthUpdate``); size 0 = removed."""

    batch: int
    first_update_id: int
    final_update_id: int
    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray


K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Tiny thread-safe LRU; generation runs outside the lock (results are deterministic)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._size:
                self._data.popitem(last=False)
        return value


# ---- kline calendar -------------------------------------------------------------------------
def month_start(ms: int, add: int = 0) -> int:
    d = datetime.fromtimestamp(ms / 1000, UTC)
    y, m = divmod(d.year * 12 + d.month - 1 + add, 12)
    return calendar.timegm((y, m + 1, 1, 0, 0, 0)) * 1000


def kline_open(interval: str, ms: int) -> int:
    """Open time of the candle holding ``ms``."""
    if interval == "1M":
        return month_start(ms)
    width = KLINE_INTERVAL_MS[interval]
    offset = _WEEK_OFFSET_MS if interval == "1w" else 0
    return (ms - offset) // width * width + offset


def kline_open_at_or_after(interval: str, ms: int) -> int:
    t = kline_open(interval, ms)
    return t if t == ms else kline_next(interval, t)


def kline_next(interval: str, open_ms: int) -> int:
    if interval == "1M":
        return month_start(open_ms, 1)
    return open_ms + KLINE_INTERVAL_MS[interval]


def kline_prev(interval: str, open_ms: int) -> int:
    if interval == "1M":
        return month_start(open_ms, -1)
    return open_ms - KLINE_INTERVAL_MS[interval]
