"""Selections of trades and aggTrades across generated hours, the way REST pages them.

One walk forwards (from an id or a time, up to a limit) and one backwards (the most recent),
whatever is selected: each hour says which of its rows qualify, as a ``[lo, end)`` range of its
trades or of its aggTrades, and the walk cuts the ranges to the limit. Pure: hours come in
through the ``hour`` callable of the symbol's model (``market.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ingest_pipeline.standins.simulator.basics import AggTrades, HourData, Trades

# Rows [lo, hi) of one hour's trades or aggTrades.
Part = tuple[HourData, int, int]


def walk_forward(
    hour: Callable[[int], HourData],
    h: int,
    h_end: int,
    limit: int,
    rows: Callable[[HourData], tuple[int, int]],
) -> list[Part]:
    """The first ``limit`` qualifying rows of hours ``h .. h_end``, in order; ``rows`` gives the
    ``[lo, end)`` range of an hour's qualifying rows."""
    parts: list[Part] = []
    got = 0
    while got < limit and h <= h_end:
        hd = hour(h)
        lo, end = rows(hd)
        hi = min(end, lo + limit - got)
        if hi > lo:
            parts.append((hd, lo, hi))
            got += hi - lo
        h += 1
    return parts


def walk_back(
    hour: Callable[[int], HourData], h: int, limit: int, visible: Callable[[HourData], int]
) -> list[Part]:
    """The last ``limit`` rows of hours ``0 .. h``, in order; ``visible`` gives how many of an
    hour's rows exist."""
    parts: list[Part] = []
    need = limit
    while need > 0 and h >= 0:
        hd = hour(h)
        hi = visible(hd)
        lo = max(0, hi - need)
        if hi > lo:
            parts.append((hd, lo, hi))
            need -= hi - lo
        h -= 1
    return parts[::-1]


def trades_of(parts: list[Part]) -> Trades:
    """The trades of ``parts`` (ranges of trades), as one selection."""
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return Trades(e, e, e, e, np.empty(0, dtype=bool))
    return Trades(
        ids=np.concatenate([hd.first_trade_id + np.arange(lo, hi) for hd, lo, hi in parts]),
        time=np.concatenate([hd.time[lo:hi] for hd, lo, hi in parts]),
        price=np.concatenate([hd.price[lo:hi] for hd, lo, hi in parts]),
        qty=np.concatenate([hd.qty[lo:hi] for hd, lo, hi in parts]),
        buyer_maker=np.concatenate([hd.buyer_maker[lo:hi] for hd, lo, hi in parts]),
    )


def aggs_of(parts: list[Part]) -> AggTrades:
    """The aggTrades of ``parts`` (ranges of aggTrades), as one selection."""
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return AggTrades(e, e, e, e, e, e, np.empty(0, dtype=bool))

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
