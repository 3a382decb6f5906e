"""One hour of a symbol's trades, generated from its ids and price path (``market.py``).

Taker orders arrive at millisecond times; each one walks 1..k price levels from the touch
(one aggTrade per level) and fills 1..n maker orders per level (one trade each). Busy hours
sometimes hold a liquidation-like burst: over 1000 trades in one millisecond. Pure: the output
is a function of the arguments only (one seeded generator per symbol-hour).
"""

from __future__ import annotations

import math

import numpy as np

from ingest_pipeline.standins.simulator.basics import (
    BATCH_MS,
    HOUR_MS,
    MASK64,
    HourData,
    SymbolSpec,
    unit,
)

_ORDERS_PER_AGG = 0.75  # taker orders per aggTrade: most orders take one level
_BURST_PROB = 0.25  # share of busy hours holding one millisecond with >1000 trades
_BURST_MIN_TRADES_PER_HOUR = 20_000  # symbols busy enough for a burst
_QTY_SIGMA = 1.2  # log-normal spread of trade sizes


def make_hour(
    spec: SymbolSpec,
    key: int,
    h: int,
    trade_ids: tuple[int, int],
    agg_ids: tuple[int, int],
    start_ms: int,
    path: tuple[np.ndarray, np.ndarray],
) -> HourData:
    """Trades of hour ``h`` (starting at ``start_ms``) with ids ``[trade_ids)``, aggTrade ids
    ``[agg_ids)``, at the prices of ``path`` (best bid and spread per depth batch, in ticks)."""
    (c0, c1), (a0, a1) = trade_ids, agg_ids
    n, g = c1 - c0, a1 - a0
    rng = np.random.Generator(np.random.PCG64([key, h & MASK64, 0]))

    agg_sizes = _composition(rng, n, g)
    orders = max(1, round(g * _ORDERS_PER_AGG))
    order_aggs = _composition(rng, g, orders)
    order_first_agg = np.concatenate(([0], np.cumsum(order_aggs)[:-1]))
    if spec.trades_per_hour >= _BURST_MIN_TRADES_PER_HOUR and unit(key ^ 0xB1, h) < _BURST_PROB:
        trades_per_order = np.add.reduceat(agg_sizes, order_first_agg)
        order_time = _order_times_with_burst(rng, orders, trades_per_order)
    else:
        order_time = np.sort(rng.integers(0, HOUR_MS, orders))

    is_buy = rng.random(orders) < 0.5
    agg_order = np.repeat(np.arange(orders), order_aggs)
    level = np.arange(g) - order_first_agg[agg_order]
    batch = order_time // BATCH_MS
    bid, spread = path
    order_bid, order_ask = bid[batch], bid[batch] + spread[batch]
    agg_buy = is_buy[agg_order]
    # Taker buys lift the asks upwards from the touch, taker sells hit the bids downwards.
    agg_px = np.where(agg_buy, order_ask[agg_order] + level, order_bid[agg_order] - level)
    np.maximum(agg_px, 1, out=agg_px)

    trade_agg = np.repeat(np.arange(g), agg_sizes)
    time = (order_time[agg_order][trade_agg] + start_ms).astype(np.int64)
    step = 10.0**-spec.qty_decimals
    mean_steps = spec.trade_notional / (spec.base_price * step)
    raw = rng.lognormal(math.log(max(mean_steps, 1.0)) - _QTY_SIGMA * _QTY_SIGMA / 2, _QTY_SIGMA, n)
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


def _order_times_with_burst(
    rng: np.random.Generator, orders: int, trades_per_order: np.ndarray
) -> np.ndarray:
    """Sorted times (ms into the hour) of ``orders`` taker orders, a run of which shares one
    millisecond.

    A liquidation-like burst: many taker orders in one millisecond, >1000 trades, so clients
    paging by time must step through one millisecond several pages long. The burst comes on top
    of the hour's flow: its orders share one time slot, so the minutes around it keep their
    usual activity (no silent stretch after it).
    """
    i0 = int(rng.integers(0, orders // 2))
    need = 1001 + int(rng.integers(0, 600))
    j = min(int(np.searchsorted(np.cumsum(trades_per_order[i0:]), need)) + i0 + 1, orders)
    slots = np.sort(rng.integers(0, HOUR_MS, orders - (j - i0) + 1))
    return np.concatenate((slots[:i0], np.full(j - i0, slots[i0]), slots[i0 + 1 :]))


def _composition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """Random split of ``total`` into ``parts`` positive integers (order kept)."""
    if parts >= total:
        return np.ones(total, dtype=np.int64)
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate(([0], cuts, [total]))).astype(np.int64)
