"""A deterministic synthetic spot market: trades, aggTrades, klines and order books.

Everything is a pure function of (symbol spec, genesis, hour or depth batch): no I/O, no clock.
Callers pass ``now_ms`` so that data after "now" stays invisible, like on the real exchange.

Shape of the model, per symbol (:class:`SymbolModel`, the closed forms here, the rest beside):
- Hours are counted from ``genesis_ms``. Cumulative counts are closed forms of the hour index,
  so trade ids (``C(h)``), aggTrade ids (``A(h)``) and depth update ids (``U(b)``) are contiguous
  and found in O(1) without walking history.
- The price is a path of best-bid ticks sampled every 100 ms depth batch: a closed-form anchor at
  each hour start, joined inside the hour by a Brownian bridge, so hours glue together.
- An hour's trades come from its ids and price path (``market_trades.py``); REST's selections
  walk the hours (``market_select.py``); klines aggregate them (``market_klines.py``).
- The order book at each depth batch and the diffs between batches: ``market_depth.py``.
- Prices are integer ticks and quantities integer steps, so every sum is exact.

Cost: one hour of a 60k trades/hour symbol generates in ~6 ms and is cached (LRU). Klines of
1h or less come straight from an hour's trades; longer ones sum per-hour summaries, so a 1d
candle costs 24 hour generations the first time (1w/1M requests over many candles are slow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ingest_pipeline.standins.simulator.basics import (
    BATCH_MS,
    BATCHES_PER_HOUR,
    GENESIS_MS,
    HOUR_MS,
    KLINE_INTERVAL_MS,
    LRU,
    MASK64,
    MAX_BOOK_LEVELS,
    AggTrades,
    Book,
    DepthDiff,
    HourData,
    Kline,
    SymbolSpec,
    Trades,
    kline_next,
    kline_open,
    stable_u64,
    unit,
)
from ingest_pipeline.standins.simulator.market_depth import DepthBook
from ingest_pipeline.standins.simulator.market_klines import (
    hour_candle,
    kline_opens,
    merged_candle,
    short_klines,
)
from ingest_pipeline.standins.simulator.market_select import (
    aggs_of,
    trades_of,
    walk_back,
    walk_forward,
)
from ingest_pipeline.standins.simulator.market_trades import make_hour

_DIURNAL_AMPLITUDE = 0.3  # relative swing of the hourly trade rate over a day
_COUNT_NOISE = 0.1  # relative hour-to-hour noise of the trade count
_AGGS_PER_TRADE = 0.6  # aggTrades per trade: most aggTrades hold 1-2 trades
_ANCHOR_WAVES = ((72, 0.03), (264, 0.06), (888, 0.1), (2424, 0.2), (8760, 0.35), (24000, 0.5))


@dataclass
class SymbolModel:
    """The synthetic market of one symbol."""

    spec: SymbolSpec
    genesis_ms: int = GENESIS_MS
    cache_hours: int = 48
    _key: int = field(init=False)
    _hours: LRU[int, HourData] = field(init=False)
    _paths: LRU[int, tuple[np.ndarray, np.ndarray]] = field(init=False)
    _summaries: LRU[int, Kline | None] = field(init=False)

    def __post_init__(self) -> None:
        self._key = stable_u64(f"{self.spec.symbol}|{self.spec.seed}")
        self._hours = LRU(self.cache_hours)
        self._paths = LRU(self.cache_hours)
        self._summaries = LRU(200_000)
        self._phase = 2 * math.pi * unit(self._key, 1)
        self._c0 = self._cum_raw(0)
        self._tick = 10.0**-self.spec.price_decimals
        self._depth = DepthBook(self.spec, self._key, self.path)

    # ---- clock -----------------------------------------------------------------------------
    def hour_of(self, ms: int) -> int:
        """Hour index (from genesis) holding ``ms``; negative before genesis."""
        return (ms - self.genesis_ms) // HOUR_MS

    def hour_start(self, h: int) -> int:
        return self.genesis_ms + h * HOUR_MS

    def batch_of(self, ms: int) -> int:
        return (ms - self.genesis_ms) // BATCH_MS

    # ---- closed-form counters --------------------------------------------------------------
    def _cum_raw(self, h: int) -> int:
        mean = self.spec.trades_per_hour
        # Integral of a diurnal rate mean*(1 + a*sin), so hourly counts swing by about +-a.
        diurnal = -mean * _DIURNAL_AMPLITUDE * 24 / (2 * math.pi)
        diurnal *= math.cos(2 * math.pi * h / 24 + self._phase)
        noise = mean * _COUNT_NOISE * (2 * unit(self._key ^ 0xC0, h) - 1)
        return math.floor(mean * h + diurnal + noise)

    def trade_id_start(self, h: int) -> int:
        """C(h): id of the first trade of hour h (trade ids start at 0 at genesis)."""
        return self._cum_raw(max(h, 0)) - self._c0

    def agg_id_start(self, h: int) -> int:
        """A(h): id of the first aggTrade of hour h; A(h+1)-A(h) is the hour's aggTrade count."""
        return math.floor(self.trade_id_start(h) * _AGGS_PER_TRADE)

    def hour_of_trade_id(self, trade_id: int, max_hour: int) -> int:
        return self._search(self.trade_id_start, trade_id, max_hour)

    def hour_of_agg_id(self, agg_id: int, max_hour: int) -> int:
        return self._search(self.agg_id_start, agg_id, max_hour)

    @staticmethod
    def _search(start: Callable[[int], int], ident: int, max_hour: int) -> int:
        """Last hour h in [0, max_hour] with start(h) <= ident (start is increasing)."""
        lo, hi = 0, max_hour
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if start(mid) <= ident:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # ---- price path ------------------------------------------------------------------------
    def anchor(self, h: int) -> int:
        """Best bid (ticks) at the start of hour h: smooth waves plus hourly noise, O(1)."""
        log_p = math.log(self.spec.base_price)
        for i, (period, amp) in enumerate(_ANCHOR_WAVES):
            log_p += amp * math.sin(
                2 * math.pi * h / period + 2 * math.pi * unit(self._key, 10 + i)
            )
        log_p += self.spec.hourly_vol * math.sqrt(3) * (2 * unit(self._key ^ 0xA0, h) - 1)
        return max(2, round(math.exp(log_p) / self._tick))

    def path(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Best bid and spread (ticks) at each depth batch of hour h (36001 points, both ends)."""
        return self._paths.get(h, lambda: self._make_path(h))

    def _make_path(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        a0, a1 = self.anchor(h), self.anchor(h + 1)
        rng = np.random.Generator(np.random.PCG64([self._key, h & MASK64, 1]))
        sigma = 0.5 * (a0 + a1) * self.spec.hourly_vol / math.sqrt(BATCHES_PER_HOUR)
        walk = np.empty(BATCHES_PER_HOUR + 1)
        walk[0] = 0.0
        np.cumsum(rng.standard_normal(BATCHES_PER_HOUR) * sigma, out=walk[1:])
        frac = np.arange(BATCHES_PER_HOUR + 1) / BATCHES_PER_HOUR
        bid = np.rint(a0 + (a1 - a0) * frac + walk - frac * walk[-1]).astype(np.int64)
        bid[0], bid[-1] = a0, a1  # exact glue with the neighbouring hours
        np.maximum(bid, 1, out=bid)
        # Mostly a one-tick spread, sometimes wider for a moment.
        spread = 1 + (rng.random(BATCHES_PER_HOUR + 1) < 0.05) * rng.integers(
            1, 4, BATCHES_PER_HOUR + 1
        )
        return bid, spread.astype(np.int64)

    # ---- trades (market_trades.py) ---------------------------------------------------------
    def hour(self, h: int) -> HourData:
        """All trades of hour h (h >= 0), including the part after now: callers cut it."""
        return self._hours.get(h, lambda: self._make_hour(h))

    def _make_hour(self, h: int) -> HourData:
        trade_ids = self.trade_id_start(h), self.trade_id_start(h + 1)
        agg_ids = self.agg_id_start(h), self.agg_id_start(h + 1)
        path = self.path(h)
        return make_hour(self.spec, self._key, h, trade_ids, agg_ids, self.hour_start(h), path)

    # ---- trade and aggTrade selections (market_select.py) ----------------------------------
    def trades_from_id(self, from_id: int, limit: int, now_ms: int) -> Trades:
        """Up to ``limit`` trades with id >= from_id that happened by now."""
        h_now = self.hour_of(now_ms)
        h = self.hour_of_trade_id(max(from_id, 0), h_now)
        return trades_of(
            walk_forward(
                self.hour,
                h,
                h_now,
                limit,
                lambda hd: (max(from_id - hd.first_trade_id, 0), hd.visible_trades(now_ms)),
            )
        )

    def recent_trades(self, limit: int, now_ms: int) -> Trades:
        """The ``limit`` most recent trades."""
        return trades_of(
            walk_back(self.hour, self.hour_of(now_ms), limit, lambda hd: hd.visible_trades(now_ms))
        )

    def aggs_from_id(self, from_id: int, limit: int, now_ms: int) -> AggTrades:
        h_now = self.hour_of(now_ms)
        h = self.hour_of_agg_id(max(from_id, 0), h_now)
        return aggs_of(
            walk_forward(
                self.hour,
                h,
                h_now,
                limit,
                lambda hd: (max(from_id - hd.first_agg_id, 0), hd.visible_aggs(now_ms)),
            )
        )

    def aggs_by_time(self, start_ms: int, end_ms: int, limit: int, now_ms: int) -> AggTrades:
        """First ``limit`` aggTrades with start <= T <= end (both inclusive), by now."""
        end_ms = min(end_ms, now_ms)

        def rows(hd: HourData) -> tuple[int, int]:
            agg_time = hd.time[hd.agg_first]
            lo = int(np.searchsorted(agg_time, start_ms, side="left"))
            return lo, int(np.searchsorted(agg_time, end_ms, side="right"))

        h, h_end = max(self.hour_of(start_ms), 0), self.hour_of(end_ms)
        return aggs_of(walk_forward(self.hour, h, h_end, limit, rows))

    def recent_aggs(self, limit: int, now_ms: int) -> AggTrades:
        return aggs_of(
            walk_back(self.hour, self.hour_of(now_ms), limit, lambda hd: hd.visible_aggs(now_ms))
        )

    # ---- klines (market_klines.py) ---------------------------------------------------------
    def first_trade_ms(self) -> int:
        return int(self.hour(0).time[0])

    def klines(
        self, interval: str, start_ms: int | None, end_ms: int | None, limit: int, now_ms: int
    ) -> list[Kline]:
        """Binance's klines selection: open_time in [start, end], at most ``limit``, by now.

        Without startTime the most recent ``limit`` candles up to endTime (or now) are returned.
        Candles before the symbol's first trade do not exist.
        """
        if self.hour_of(now_ms) < 0:
            return []
        first = kline_open(interval, self.first_trade_ms())
        last = kline_open(interval, min(end_ms if end_ms is not None else now_ms, now_ms))
        opens = kline_opens(interval, first, last, start_ms, limit)
        if not opens:
            return []
        if interval in KLINE_INTERVAL_MS and KLINE_INTERVAL_MS[interval] <= HOUR_MS:
            width = KLINE_INTERVAL_MS[interval]
            return short_klines(self.hour, self._prev_close, self.genesis_ms, width, opens, now_ms)
        return [self._long_kline(t, kline_next(interval, t), now_ms) for t in opens]

    def _prev_close(self, h: int) -> int:
        """Close of the hour before h: the last trade price; the anchor before genesis."""
        return int(self.hour(h - 1).price[-1]) if h > 0 else self.anchor(0)

    def hour_summary(self, h: int, now_ms: int) -> Kline | None:
        """One-hour candle of hour h as visible at now; None when no trade is visible yet."""
        if self.hour_start(h + 1) <= now_ms:
            return self._summaries.get(h, lambda: self._hour_candle(h, None))
        return self._hour_candle(h, now_ms)

    def _hour_candle(self, h: int, now_ms: int | None) -> Kline | None:
        hd = self.hour(h)
        vis = hd.n_trades if now_ms is None else hd.visible_trades(now_ms)
        return hour_candle(hd, self.hour_start(h), vis)

    def _long_kline(self, open_ms: int, next_open_ms: int, now_ms: int) -> Kline:
        h0, h1 = (
            max(self.hour_of(open_ms), 0),
            min(self.hour_of(next_open_ms - 1), self.hour_of(now_ms)),
        )
        parts = [s for s in (self.hour_summary(h, now_ms) for h in range(h0, h1 + 1)) if s]
        if not parts:
            c = self._prev_close(h0)
            return Kline(open_ms, next_open_ms - 1, c, c, c, c, 0, 0, 0, 0, 0)
        return merged_candle(open_ms, next_open_ms, parts)

    # ---- order book (market_depth.py) ------------------------------------------------------
    def update_id(self, batch: int) -> int:
        """U(b): cumulative depth update counter, strictly increasing by >= 1 per batch."""
        return self._depth.update_id(batch)

    def touch(self, batch: int) -> tuple[int, int]:
        """(best bid, best ask) in ticks at a depth batch."""
        return self._depth.touch(batch)

    def level_qty(self, prices: np.ndarray, batch: int) -> np.ndarray:
        """Resting size (steps) of each price level at a batch."""
        return self._depth.level_qty(prices, batch)

    def book(self, batch: int, limit: int = MAX_BOOK_LEVELS) -> Book:
        """Book at a depth batch: ``limit`` contiguous tick levels a side from the touch."""
        return self._depth.book(batch, limit)

    def book_diff(self, batch: int) -> DepthDiff:
        """What changed between book(batch-1) and book(batch): a ``depthUpdate``."""
        return self._depth.book_diff(batch)

    def _book_diff_full(self, batch: int) -> DepthDiff:
        """:meth:`book_diff` the slow way, level by level (the baseline of bench/)."""
        return self._depth.book_diff_full(batch)


class Market:
    """The synthetic exchange: one :class:`SymbolModel` per listed symbol."""

    def __init__(
        self, symbols: Sequence[SymbolSpec], genesis_ms: int = GENESIS_MS, cache_hours: int = 48
    ) -> None:
        self.genesis_ms = genesis_ms
        self.models: dict[str, SymbolModel] = {
            s.symbol: SymbolModel(s, genesis_ms, cache_hours) for s in symbols
        }

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.models

    def __getitem__(self, symbol: str) -> SymbolModel:
        return self.models[symbol]

    @property
    def specs(self) -> list[SymbolSpec]:
        return [m.spec for m in self.models.values()]
