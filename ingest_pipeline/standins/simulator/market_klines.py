"""Klines from generated hours: Binance's candle selection, candles of 1h or less straight
from an hour's trades, longer ones merged from per-hour summaries. Pure: hours come in through
the ``hour`` and ``prev_close`` callables of the symbol's model (``market.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ingest_pipeline.standins.simulator.basics import (
    HOUR_MS,
    HourData,
    Kline,
    kline_next,
    kline_open_at_or_after,
    kline_prev,
)


def kline_opens(
    interval: str, first: int, last: int, start_ms: int | None, limit: int
) -> list[int]:
    """Open times of the selected candles between the ``first`` and ``last`` that exist: from
    ``start_ms`` onwards when given, else the most recent ``limit`` up to ``last``."""
    opens = []
    if start_ms is not None:
        t = max(first, kline_open_at_or_after(interval, start_ms))
        while t <= last and len(opens) < limit:
            opens.append(t)
            t = kline_next(interval, t)
        return opens
    t = last
    while t >= first and len(opens) < limit:
        opens.append(t)
        t = kline_prev(interval, t)
    opens.reverse()
    return opens


def short_klines(
    hour: Callable[[int], HourData],
    prev_close: Callable[[int], int],
    genesis_ms: int,
    width: int,
    opens: list[int],
    now_ms: int,
) -> list[Kline]:
    """Candles of ``width`` ms (dividing an hour) opening at ``opens``, from the trades visible
    at ``now_ms``; a candle without trades repeats the previous close."""
    out: list[Kline] = []
    by_hour: dict[int, list[int]] = {}
    for t in opens:
        by_hour.setdefault((t - genesis_ms) // HOUR_MS, []).append(t)
    close: int | None = None
    for h, hour_opens in by_hour.items():
        hd = hour(h)
        vis = hd.visible_trades(now_ms)
        h0 = genesis_ms + h * HOUR_MS
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
        if close is None:
            close = prev_close(h)
            k0 = (hour_opens[0] - h0) // width
            if k0 > 0:  # the close just before the first requested candle
                before = int(first[k0])
                if before > 0:
                    close = int(px[before - 1])
        for t in hour_opens:
            k = (t - h0) // width
            i, j = int(first[k]), int(end[k])
            if j > i:
                o, c = int(px[i]), int(px[j - 1])
                hi, lo = int(px[i:j].max()), int(px[i:j].min())
                close = c
            else:
                o = hi = lo = c = close
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


def hour_candle(hd: HourData, t0: int, vis: int) -> Kline | None:
    """One-hour candle (opening at ``t0``) of the hour's first ``vis`` trades; None if none."""
    if vis == 0:
        return None
    px, qty, buy = hd.price[:vis], hd.qty[:vis], ~hd.buyer_maker[:vis]
    quote = px * qty
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


def merged_candle(open_ms: int, next_open_ms: int, parts: Sequence[Kline]) -> Kline:
    """A candle longer than an hour from the candles of its hours with trades (at least one)."""
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


def _bucket_sums(x: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    cs = np.concatenate(([0], np.cumsum(x, dtype=np.int64)))
    return cs[end] - cs[first]
