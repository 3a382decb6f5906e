"""A deterministic synthetic spot market: trades, aggTrades, klines and order books.

Everything is a pure function of (symbol spec, genesis, hour or depth batch): no I/O, no clock.
Callers pass ``now_ms`` so that data after "now" stays invisible, like on the real exchange.

Shape of the model, per symbol:
- Hours are counted from ``genesis_ms``. Cumulative counts are closed forms of the hour index,
  so trade ids (``C(h)``), aggTrade ids (``A(h)``) and depth update ids (``U(b)``) are contiguous
  and found in O(1) without walking history.
- The price is a path of best-bid ticks sampled every 100 ms depth batch: a closed-form anchor at
  each hour start, joined inside the hour by a Brownian bridge, so hours glue together.
- Taker orders arrive at millisecond times; each one walks 1..k price levels from the touch
  (one aggTrade per level) and fills 1..n maker orders per level (one trade each).
- Prices are integer ticks and quantities integer steps, so every sum is exact.

Cost: one hour of a 60k trades/hour symbol generates in ~6 ms and is cached (LRU). Klines of
1h or less come straight from an hour's trades; longer ones sum per-hour summaries, so a 1d
candle costs 24 hour generations the first time (1w/1M requests over many candles are slow).
"""

from __future__ import annotations

import math
import threading
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
    kline_open_at_or_after,
    kline_prev,
    mix64,
    mix_np,
    stable_u64,
    unit,
)

_DIURNAL_AMPLITUDE = 0.3  # relative swing of the hourly trade rate over a day
_COUNT_NOISE = 0.1  # relative hour-to-hour noise of the trade count
_AGGS_PER_TRADE = 0.6  # aggTrades per trade: most aggTrades hold 1-2 trades
_ORDERS_PER_AGG = 0.75  # taker orders per aggTrade: most orders take one level
_BURST_PROB = 0.25  # share of busy hours holding one millisecond with >1000 trades
_TICK_CHUNK = 100  # depth batches whose level ticks are scheduled at once (see book_diff)
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
    _summaries: LRU[int, Kline] = field(init=False)

    def __post_init__(self) -> None:
        self._key = stable_u64(f"{self.spec.symbol}|{self.spec.seed}")
        self._hours = LRU(self.cache_hours)
        self._paths = LRU(self.cache_hours)
        self._summaries = LRU(200_000)
        self._phase = 2 * math.pi * unit(self._key, 1)
        self._c0 = self._cum_raw(0)
        self._updates_per_batch = 4 + self.spec.trades_per_hour // 10_000
        self._tick = 10.0**-self.spec.price_decimals
        self._step = 10.0**-self.spec.qty_decimals
        self._chunk: _TickChunk | None = None
        self._diff_lock = threading.Lock()

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

    def update_id(self, batch: int) -> int:
        """U(b): cumulative depth update counter, strictly increasing by >= 1 per batch."""
        c = self._updates_per_batch
        return c * batch + mix64(self._key ^ 0xB0 ^ mix64(batch & MASK64)) % c

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

    # ---- trades ----------------------------------------------------------------------------
    def hour(self, h: int) -> HourData:
        """All trades of hour h (h >= 0), including the part after now: callers cut it."""
        return self._hours.get(h, lambda: self._make_hour(h))

    def _make_hour(self, h: int) -> HourData:
        c0, c1 = self.trade_id_start(h), self.trade_id_start(h + 1)
        a0, a1 = self.agg_id_start(h), self.agg_id_start(h + 1)
        n, g = c1 - c0, a1 - a0
        rng = np.random.Generator(np.random.PCG64([self._key, h & MASK64, 0]))

        agg_sizes = _composition(rng, n, g)
        orders = max(1, round(g * _ORDERS_PER_AGG))
        order_aggs = _composition(rng, g, orders)
        order_first_agg = np.concatenate(([0], np.cumsum(order_aggs)[:-1]))
        if self.spec.trades_per_hour >= 20_000 and unit(self._key ^ 0xB1, h) < _BURST_PROB:
            # A liquidation-like burst: many taker orders in one millisecond, >1000 trades, so
            # clients paging by time must step through one millisecond several pages long.
            # The burst comes on top of the hour's flow: its orders share one time slot, so
            # the minutes around it keep their usual activity (no silent stretch after it).
            trades_per_order = np.add.reduceat(agg_sizes, order_first_agg)
            i0 = int(rng.integers(0, orders // 2))
            need = 1001 + int(rng.integers(0, 600))
            j = min(int(np.searchsorted(np.cumsum(trades_per_order[i0:]), need)) + i0 + 1, orders)
            slots = np.sort(rng.integers(0, HOUR_MS, orders - (j - i0) + 1))
            order_time = np.concatenate((slots[:i0], np.full(j - i0, slots[i0]), slots[i0 + 1 :]))
        else:
            order_time = np.sort(rng.integers(0, HOUR_MS, orders))

        is_buy = rng.random(orders) < 0.5
        agg_order = np.repeat(np.arange(orders), order_aggs)
        level = np.arange(g) - order_first_agg[agg_order]
        batch = order_time // BATCH_MS
        bid, spread = self.path(h)
        order_bid, order_ask = bid[batch], bid[batch] + spread[batch]
        agg_buy = is_buy[agg_order]
        # Taker buys lift the asks upwards from the touch, taker sells hit the bids downwards.
        agg_px = np.where(agg_buy, order_ask[agg_order] + level, order_bid[agg_order] - level)
        np.maximum(agg_px, 1, out=agg_px)

        trade_agg = np.repeat(np.arange(g), agg_sizes)
        time = (order_time[agg_order][trade_agg] + self.hour_start(h)).astype(np.int64)
        mean_steps = self.spec.trade_notional / (self.spec.base_price * self._step)
        sigma = 1.2
        raw = rng.lognormal(math.log(max(mean_steps, 1.0)) - sigma * sigma / 2, sigma, n)
        qty = np.maximum(np.floor(raw), 1).astype(np.int64)
        agg_first = np.concatenate(([0], np.cumsum(agg_sizes)[:-1])).astype(np.int64)
        return HourData(
            hour=h,
            first_trade_id=c0,
            first_agg_id=a0,
            time=time,
            price=agg_px[trade_agg].astype(np.int64),
            qty=qty,
            buyer_maker=~agg_buy[trade_agg],  # a taker buy means the buyer was not the maker
            agg_first=agg_first,
            agg_last=agg_first + agg_sizes - 1,
            agg_qty=np.add.reduceat(qty, agg_first),
        )

    def _max_hour(self, now_ms: int) -> int:
        return self.hour_of(now_ms)

    def trades_from_id(self, from_id: int, limit: int, now_ms: int) -> Trades:
        """Up to ``limit`` trades with id >= from_id that happened by now."""
        h_now = self._max_hour(now_ms)
        if h_now < 0:
            return _empty_trades()
        h = self.hour_of_trade_id(max(from_id, 0), h_now)
        parts: list[tuple[HourData, int, int]] = []
        got = 0
        while got < limit and h <= h_now:
            hd = self.hour(h)
            lo = max(from_id - hd.first_trade_id, 0)
            hi = min(hd.visible_trades(now_ms), lo + limit - got)
            if hi > lo:
                parts.append((hd, lo, hi))
                got += hi - lo
            h += 1
        return _concat_trades(parts)

    def recent_trades(self, limit: int, now_ms: int) -> Trades:
        """The ``limit`` most recent trades."""
        h = self._max_hour(now_ms)
        parts: list[tuple[HourData, int, int]] = []
        need = limit
        while need > 0 and h >= 0:
            hd = self.hour(h)
            hi = hd.visible_trades(now_ms)
            lo = max(0, hi - need)
            if hi > lo:
                parts.append((hd, lo, hi))
                need -= hi - lo
            h -= 1
        return _concat_trades(parts[::-1])

    # ---- aggTrades -------------------------------------------------------------------------
    def aggs_from_id(self, from_id: int, limit: int, now_ms: int) -> AggTrades:
        h_now = self._max_hour(now_ms)
        if h_now < 0:
            return _empty_aggs()
        h = self.hour_of_agg_id(max(from_id, 0), h_now)
        parts: list[tuple[HourData, int, int]] = []
        got = 0
        while got < limit and h <= h_now:
            hd = self.hour(h)
            lo = max(from_id - hd.first_agg_id, 0)
            hi = min(hd.visible_aggs(now_ms), lo + limit - got)
            if hi > lo:
                parts.append((hd, lo, hi))
                got += hi - lo
            h += 1
        return _concat_aggs(parts)

    def aggs_by_time(self, start_ms: int, end_ms: int, limit: int, now_ms: int) -> AggTrades:
        """First ``limit`` aggTrades with start <= T <= end (both inclusive), by now."""
        end_ms = min(end_ms, now_ms)
        h, h_end = max(self.hour_of(start_ms), 0), self.hour_of(end_ms)
        parts: list[tuple[HourData, int, int]] = []
        got = 0
        while got < limit and h <= h_end:
            hd = self.hour(h)
            agg_time = hd.time[hd.agg_first]
            lo = int(np.searchsorted(agg_time, start_ms, side="left"))
            hi = min(int(np.searchsorted(agg_time, end_ms, side="right")), lo + limit - got)
            if hi > lo:
                parts.append((hd, lo, hi))
                got += hi - lo
            h += 1
        return _concat_aggs(parts)

    def recent_aggs(self, limit: int, now_ms: int) -> AggTrades:
        h = self._max_hour(now_ms)
        parts: list[tuple[HourData, int, int]] = []
        need = limit
        while need > 0 and h >= 0:
            hd = self.hour(h)
            hi = hd.visible_aggs(now_ms)
            lo = max(0, hi - need)
            if hi > lo:
                parts.append((hd, lo, hi))
                need -= hi - lo
            h -= 1
        return _concat_aggs(parts[::-1])

    # ---- klines ----------------------------------------------------------------------------
    def first_trade_ms(self) -> int:
        return int(self.hour(0).time[0])

    def klines(
        self, interval: str, start_ms: int | None, end_ms: int | None, limit: int, now_ms: int
    ) -> list[Kline]:
        """Binance's klines selection: open_time in [start, end], at most ``limit``, by now.

        Without startTime the most recent ``limit`` candles up to endTime (or now) are returned.
        Candles before the symbol's first trade do not exist.
        """
        if self._max_hour(now_ms) < 0:
            return []
        first = kline_open(interval, self.first_trade_ms())
        last = kline_open(interval, min(end_ms if end_ms is not None else now_ms, now_ms))
        if start_ms is not None:
            lo = max(first, kline_open_at_or_after(interval, start_ms))
            opens = []
            t = lo
            while t <= last and len(opens) < limit:
                opens.append(t)
                t = kline_next(interval, t)
        else:
            opens = []
            t = last
            while t >= first and len(opens) < limit:
                opens.append(t)
                t = kline_prev(interval, t)
            opens.reverse()
        if not opens:
            return []
        if interval in KLINE_INTERVAL_MS and KLINE_INTERVAL_MS[interval] <= HOUR_MS:
            return self._short_klines(KLINE_INTERVAL_MS[interval], opens, now_ms)
        return [self._long_kline(t, kline_next(interval, t), now_ms) for t in opens]

    def _prev_close(self, h: int) -> int:
        """Close of the hour before h: the last trade price; the anchor before genesis."""
        return int(self.hour(h - 1).price[-1]) if h > 0 else self.anchor(0)

    def _short_klines(self, width: int, opens: list[int], now_ms: int) -> list[Kline]:
        out: list[Kline] = []
        by_hour: dict[int, list[int]] = {}
        for t in opens:
            by_hour.setdefault(self.hour_of(t), []).append(t)
        prev_close: int | None = None
        for h, hour_opens in by_hour.items():
            hd = self.hour(h)
            vis = hd.visible_trades(now_ms)
            h0 = self.hour_start(h)
            nb = HOUR_MS // width
            bucket = (hd.time[:vis] - h0) // width
            px, qty, buy = hd.price[:vis], hd.qty[:vis], ~hd.buyer_maker[:vis]
            quote = px * qty
            first = np.searchsorted(bucket, np.arange(nb), side="left")
            end = np.searchsorted(bucket, np.arange(nb), side="right")
            # Bucket sums as differences of integer prefix sums: exact, unlike float bincount.
            vol, qv, tbv, tbq = (
                _bucket_sums(x, first, end) for x in (qty, quote, qty * buy, quote * buy)
            )
            count = end - first
            if prev_close is None:
                prev_close = self._prev_close(h)
                k0 = (hour_opens[0] - h0) // width
                if k0 > 0:  # the close just before the first requested candle
                    before = int(first[k0])
                    if before > 0:
                        prev_close = int(px[before - 1])
            for t in hour_opens:
                k = (t - h0) // width
                i, j = int(first[k]), int(end[k])
                if j > i:
                    o, c = int(px[i]), int(px[j - 1])
                    hi, lo = int(px[i:j].max()), int(px[i:j].min())
                    prev_close = c
                else:
                    o = hi = lo = c = prev_close
                out.append(
                    Kline(
                        t,
                        t + width - 1,
                        o,
                        hi,
                        lo,
                        c,
                        int(vol[k]),
                        int(qv[k]),
                        int(count[k]),
                        int(tbv[k]),
                        int(tbq[k]),
                    )
                )
        return out

    def hour_summary(self, h: int, now_ms: int) -> Kline | None:
        """One-hour candle of hour h as visible at now; None when no trade is visible yet."""
        if self.hour_start(h + 1) <= now_ms:
            return self._summaries.get(h, lambda: self._summarize(h, None))
        return self._summarize(h, now_ms)

    def _summarize(self, h: int, now_ms: int | None) -> Kline | None:
        hd = self.hour(h)
        vis = hd.n_trades if now_ms is None else hd.visible_trades(now_ms)
        if vis == 0:
            return None
        px, qty, buy = hd.price[:vis], hd.qty[:vis], ~hd.buyer_maker[:vis]
        quote = px * qty
        t0 = self.hour_start(h)
        return Kline(
            t0,
            t0 + HOUR_MS - 1,
            int(px[0]),
            int(px.max()),
            int(px.min()),
            int(px[-1]),
            int(qty.sum()),
            int(quote.sum()),
            vis,
            int(qty[buy].sum()),
            int(quote[buy].sum()),
        )

    def _long_kline(self, open_ms: int, next_open_ms: int, now_ms: int) -> Kline:
        h0, h1 = (
            max(self.hour_of(open_ms), 0),
            min(self.hour_of(next_open_ms - 1), self.hour_of(now_ms)),
        )
        parts = [s for s in (self.hour_summary(h, now_ms) for h in range(h0, h1 + 1)) if s]
        if not parts:
            c = self._prev_close(h0)
            return Kline(open_ms, next_open_ms - 1, c, c, c, c, 0, 0, 0, 0, 0)
        return Kline(
            open_ms,
            next_open_ms - 1,
            parts[0].open,
            max(p.high for p in parts),
            min(p.low for p in parts),
            parts[-1].close,
            sum(p.volume for p in parts),
            sum(p.quote_volume for p in parts),
            sum(p.count for p in parts),
            sum(p.taker_buy_volume for p in parts),
            sum(p.taker_buy_quote for p in parts),
        )

    # ---- order book ------------------------------------------------------------------------
    def touch(self, batch: int) -> tuple[int, int]:
        """(best bid, best ask) in ticks at a depth batch."""
        h, j = divmod(batch, BATCHES_PER_HOUR)
        bid, spread = self.path(h)
        return int(bid[j]), int(bid[j] + spread[j])

    def level_qty(self, prices: np.ndarray, batch: int) -> np.ndarray:
        """Resting size (steps) of each price level at a batch.

        A level's size is redrawn at its own epochs: every level has a hashed period (2-60 s)
        and phase, so the levels that change between batch b-1 and b are exactly those whose
        epoch number ticks over: a diff stream can find them without rebuilding the book.
        """
        hp, period, phase = self._level_hash(prices)
        return self._qty(hp, (np.uint64(batch) + phase) // period)

    def _level_hash(self, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hash, period, phase) of each price level, as uint64 arrays."""
        p = prices.astype(np.uint64) ^ np.uint64(self._key)
        hp = mix_np(p)
        period = np.uint64(20) + hp % np.uint64(580)
        phase = (hp >> np.uint64(20)) % period
        return hp, period, phase

    def _qty(self, hp: np.ndarray, epoch: np.ndarray) -> np.ndarray:
        """Size of levels with hash ``hp`` in their ``epoch`` (the draw behind ``level_qty``)."""
        u = (mix_np(hp ^ mix_np(epoch)) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        mean_steps = 4 * self.spec.trade_notional / (self.spec.base_price * self._step)
        return np.maximum(np.floor(-np.log1p(-u) * mean_steps), 1).astype(np.int64)

    def book(self, batch: int, limit: int = MAX_BOOK_LEVELS) -> Book:
        """Book at a depth batch: ``limit`` contiguous tick levels a side from the touch."""
        bid, ask = self.touch(batch)
        depth = min(limit, MAX_BOOK_LEVELS)
        bid_px = bid - np.arange(min(depth, bid), dtype=np.int64)
        ask_px = ask + np.arange(depth, dtype=np.int64)
        return Book(
            batch=batch,
            last_update_id=self.update_id(batch),
            bid_px=bid_px,
            bid_qty=self.level_qty(bid_px, batch),
            ask_px=ask_px,
            ask_qty=self.level_qty(ask_px, batch),
        )

    def book_diff(self, batch: int) -> DepthDiff:
        """What changed between book(batch-1) and book(batch) (full 5000-level windows).

        Levels leaving the window, or crossing to the other side, get size 0; applying the diff
        to book(batch-1) gives book(batch) exactly. ``first_update_id`` is U(batch-1)+1.

        Equal to :meth:`_book_diff_full` (both books compared level by level) at a fraction of
        its cost: a level staying in its side's window changes only when its epoch ticks over
        to a different draw, and those ticks are scheduled once per chunk of batches, over
        every price the chunk's windows reach (:class:`_TickChunk`). Sizes of all those levels
        are kept current as batches are asked for in order, so a level entering a window is a
        lookup.
        """
        with self._diff_lock:
            ch = self._chunk
            if ch is None or not ch.b0 <= batch < ch.b0 + _TICK_CHUNK:
                ch = self._chunk = _TickChunk(self, batch // _TICK_CHUNK * _TICK_CHUNK)
            return ch.diff(batch)

    def _book_diff_full(self, batch: int) -> DepthDiff:
        """The reference for :meth:`book_diff`: both books compared level by level."""
        (pb, pa), (cb, ca) = self.touch(batch - 1), self.touch(batch)
        sides = []
        for prev_top, cur_top, sign in ((pb, cb, -1), (pa, ca, 1)):
            # A side's window is [top, top + sign*(depth-1)], clipped to positive prices.
            prev_far, cur_far = (
                prev_top + sign * (MAX_BOOK_LEVELS - 1),
                cur_top + sign * (MAX_BOOK_LEVELS - 1),
            )
            lo = max(1, min(prev_top, cur_top, prev_far, cur_far))
            hi = max(prev_top, cur_top, prev_far, cur_far)
            px = np.arange(lo, hi + 1, dtype=np.int64)
            in_prev = (px >= min(prev_top, prev_far)) & (px <= max(prev_top, prev_far))
            in_cur = (px >= min(cur_top, cur_far)) & (px <= max(cur_top, cur_far))
            before = np.where(in_prev, self.level_qty(px, batch - 1), 0)
            after = np.where(in_cur, self.level_qty(px, batch), 0)
            changed = before != after
            order = slice(None, None, -1) if sign < 0 else slice(None)  # bids best first
            sides.append((px[changed][order], after[changed][order]))
        return DepthDiff(
            batch=batch,
            first_update_id=self.update_id(batch - 1) + 1,
            final_update_id=self.update_id(batch),
            bid_px=sides[0][0],
            bid_qty=sides[0][1],
            ask_px=sides[1][0],
            ask_qty=sides[1][1],
        )


class _TickChunk:
    """Level-size ticks of one symbol over ``_TICK_CHUNK`` depth batches from ``b0``.

    Covers every price that a bid or ask window of batches ``b0-1 .. b0+_TICK_CHUNK-1``
    reaches; ``qty`` holds the size of each of those levels at batch ``at``.
    """

    def __init__(self, model: SymbolModel, b0: int) -> None:
        self.model = model
        self.b0 = b0
        b1 = b0 + _TICK_CHUNK  # exclusive
        bids: list[int] = []
        asks: list[int] = []
        for h in range((b0 - 1) // BATCHES_PER_HOUR, (b1 - 1) // BATCHES_PER_HOUR + 1):
            bid, spread = model.path(h)
            j0 = max(b0 - 1 - h * BATCHES_PER_HOUR, 0)
            j1 = min(b1 - 1 - h * BATCHES_PER_HOUR, BATCHES_PER_HOUR - 1) + 1  # as touch()
            bids += bid[j0:j1].tolist()
            asks += (bid[j0:j1] + spread[j0:j1]).tolist()
        self.bids, self.asks = bids, asks  # touch of batches b0-1 .. b1-1
        self.base = base = max(1, min(bids) - MAX_BOOK_LEVELS + 1)
        prices = np.arange(base, max(asks) + MAX_BOOK_LEVELS)
        self.hp, self.period, self.phase = hp, period, phase = model._level_hash(prices)
        # A level's epoch ticks over at batch b when (b + phase) % period == 0.
        ub0 = np.uint64(b0)
        first = (period - (ub0 + phase) % period) % period  # offset of its first tick >= b0
        due = first < np.uint64(_TICK_CHUNK)
        count = np.zeros(prices.size, dtype=np.int64)
        count[due] = ((np.uint64(_TICK_CHUNK - 1) - first[due]) // period[due] + 1).astype(np.int64)
        idx = np.repeat(np.arange(prices.size), count)
        k = (np.arange(idx.size) - (np.cumsum(count) - count)[idx]).astype(np.uint64)
        off = first[idx] + k * period[idx]  # batch - b0
        epoch = (ub0 + off + phase[idx]) // period[idx]
        new = model._qty(hp[idx], epoch)
        keep = new != model._qty(hp[idx], epoch - np.uint64(1))  # a redraw may land equal
        off, px, new = off[keep].astype(np.int64), prices[idx[keep]], new[keep]
        order = np.argsort(off, kind="stable")  # by batch, then by price ascending
        off, px_l, new_l = off[order], px[order].tolist(), new[order].tolist()
        bounds = np.searchsorted(off, np.arange(_TICK_CHUNK + 1)).tolist()
        self.ticks = [
            (px_l[bounds[i] : bounds[i + 1]], new_l[bounds[i] : bounds[i + 1]])
            for i in range(_TICK_CHUNK)
        ]
        self.at = b0 - 1
        self.qty: list[int] = self._sizes_at(b0 - 1)

    def _sizes_at(self, batch: int) -> list[int]:
        return self.model._qty(self.hp, (np.uint64(batch) + self.phase) // self.period).tolist()

    def diff(self, batch: int) -> DepthDiff:
        i = batch - self.b0
        if self.at != batch - 1:  # not asked in order: rebuild the sizes at batch-1
            self.qty = self._sizes_at(batch - 1)
        qty, base = self.qty, self.base
        tick_px, tick_qty = self.ticks[i]
        for p, q in zip(tick_px, tick_qty, strict=True):
            qty[p - base] = q
        self.at = batch
        pb, pa, cb, ca = self.bids[i], self.asks[i], self.bids[i + 1], self.asks[i + 1]
        sides = []
        for prev, cur in (
            ((max(1, pb - MAX_BOOK_LEVELS + 1), pb), (max(1, cb - MAX_BOOK_LEVELS + 1), cb)),
            ((pa, pa + MAX_BOOK_LEVELS - 1), (ca, ca + MAX_BOOK_LEVELS - 1)),
        ):
            # Ascending price order: below the overlap, the overlap's ticks, above it. A range
            # of the previous window only is removed (0), one of the current only enters.
            lo, hi = max(prev[0], cur[0]), min(prev[1], cur[1])
            if lo > hi:  # no overlap
                ranges = sorted((prev, cur))
                below, above, mid = ranges[0], ranges[1], None
            else:
                below = (min(prev[0], cur[0]), lo - 1)
                above = (hi + 1, max(prev[1], cur[1]))
                mid = (lo, hi)
            px: list[int] = []
            qs: list[int] = []
            for r in (below, mid, above):
                if r is None or r[0] > r[1]:
                    continue
                if r is mid:
                    for p, q in zip(tick_px, tick_qty, strict=True):
                        if lo <= p <= hi:
                            px.append(p)
                            qs.append(q)
                    continue
                px.extend(range(r[0], r[1] + 1))
                if cur[0] <= r[0] <= cur[1]:  # entering
                    qs.extend(qty[r[0] - base : r[1] + 1 - base])
                else:  # leaving
                    qs.extend([0] * (r[1] + 1 - r[0]))
            sides.append((np.array(px, dtype=np.int64), np.array(qs, dtype=np.int64)))
        model = self.model
        return DepthDiff(
            batch=batch,
            first_update_id=model.update_id(batch - 1) + 1,
            final_update_id=model.update_id(batch),
            bid_px=sides[0][0][::-1],  # bids best first
            bid_qty=sides[0][1][::-1],
            ask_px=sides[1][0],
            ask_qty=sides[1][1],
        )


def _bucket_sums(x: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    cs = np.concatenate(([0], np.cumsum(x, dtype=np.int64)))
    return cs[end] - cs[first]


def _composition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """Random split of ``total`` into ``parts`` positive integers (order kept)."""
    if parts >= total:
        return np.ones(total, dtype=np.int64)
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate(([0], cuts, [total]))).astype(np.int64)


def _empty_trades() -> Trades:
    e = np.empty(0, dtype=np.int64)
    return Trades(e, e, e, e, np.empty(0, dtype=bool))


def _empty_aggs() -> AggTrades:
    e = np.empty(0, dtype=np.int64)
    return AggTrades(e, e, e, e, e, e, np.empty(0, dtype=bool))


def _concat_trades(parts: list[tuple[HourData, int, int]]) -> Trades:
    if not parts:
        return _empty_trades()
    return Trades(
        ids=np.concatenate([hd.first_trade_id + np.arange(lo, hi) for hd, lo, hi in parts]),
        time=np.concatenate([hd.time[lo:hi] for hd, lo, hi in parts]),
        price=np.concatenate([hd.price[lo:hi] for hd, lo, hi in parts]),
        qty=np.concatenate([hd.qty[lo:hi] for hd, lo, hi in parts]),
        buyer_maker=np.concatenate([hd.buyer_maker[lo:hi] for hd, lo, hi in parts]),
    )


def _concat_aggs(parts: list[tuple[HourData, int, int]]) -> AggTrades:
    if not parts:
        return _empty_aggs()

    def cat(f: Callable[[HourData, int, int], np.ndarray]) -> np.ndarray:
        return np.concatenate([f(hd, lo, hi) for hd, lo, hi in parts])

    return AggTrades(
        ids=cat(lambda hd, lo, hi: hd.first_agg_id + np.arange(lo, hi)),
        price=cat(lambda hd, lo, hi: hd.price[hd.agg_first[lo:hi]]),
        qty=cat(lambda hd, lo, hi: hd.agg_qty[lo:hi]),
        first_id=cat(lambda hd, lo, hi: hd.first_trade_id + hd.agg_first[lo:hi]),
        last_id=cat(lambda hd, lo, hi: hd.first_trade_id + hd.agg_last[lo:hi]),
        time=cat(lambda hd, lo, hi: hd.time[hd.agg_first[lo:hi]]),
        buyer_maker=cat(lambda hd, lo, hi: hd.buyer_maker[hd.agg_first[lo:hi]]),
    )


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
